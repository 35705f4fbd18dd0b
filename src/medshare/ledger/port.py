"""What the records service needs from the consortium ledger, and nothing more.

The service signs transactions with keys it holds (people's identity keys, a hospital's
node key), submits them, waits until they are committed, and reads committed ones back
(the patient's access log, anchors, key tags). :class:`LedgerPort` is that surface; two
implementations exist:

* :class:`medshare.ledger.comet_port.CometLedger`: a running consortium of CometBFT nodes
  with our ABCI application, over their RPC (what ``medshare init`` makes by default);
* :class:`medshare.ledger.inprocess.InProcessLedger`: the same application driven in this
  process without consensus (one block per submit), for tests and offline use.

Every rule about which transaction is valid lives in :mod:`medshare.ledger.app.rules`
and is applied by the application (``CheckTx``, ``FinalizeBlock``) behind either port.
A transaction the rules skip inside a decided block (non-zero result code) is not part of
the ledger as far as the service is concerned: ports return only applied ones from
:meth:`LedgerPort.txs` and :meth:`LedgerPort.find`, and :meth:`LedgerPort.submit` raises
:class:`TxRejected` for it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from medshare.crypto.signing import SigningKey
from medshare.ledger.types import LedgerFormatError, Tx, TxKind

__all__ = [
    "CommittedTx",
    "LedgerPort",
    "LedgerUnavailable",
    "NodeCheck",
    "TxRejected",
    "sign",
]


@dataclass(frozen=True)
class CommittedTx:
    """An applied transaction: where it sits in the chain and the block's time."""

    height: int
    index: int  # position in the block
    timestamp_ms: int  # the block's time (CometBFT's BFT time, or the harness's clock)
    tx: Tx


@dataclass(frozen=True)
class NodeCheck:
    """One node's chain re-verified from genesis. ``height`` is the last height that
    verified; ``error`` (when not ok) names the first bad height or why the node could not
    be read. ``running`` is False for a node that is stopped (nothing was checked)."""

    name: str
    ok: bool
    height: int
    error: str | None
    running: bool = True


class LedgerUnavailable(RuntimeError):
    """The ledger cannot be opened or does not commit in time (nodes down, folder in use
    by another process, no such ledger); the message says what to do."""


class TxRejected(ValueError):
    """A transaction of a batch was refused by ``CheckTx`` or skipped by the rules when
    its block was applied. ``index`` is its position in the batch, ``code`` the rule's
    code (:class:`medshare.ledger.app.rules.Code`), ``committed`` the transactions of the
    batch that were applied nevertheless (none, unless a ledger shared by several
    submitters accepted the ones before it)."""

    def __init__(
        self,
        reason: str,
        *,
        index: int | None = None,
        code: int | None = None,
        committed: Sequence[CommittedTx] = (),
    ) -> None:
        where = "" if index is None else f"transaction {index}: "
        super().__init__(f"{where}{reason}")
        self.reason, self.index, self.code = reason, index, code
        self.committed = list(committed)


@runtime_checkable
class LedgerPort(Protocol):
    """The ledger as the records service uses it (see the module docstring)."""

    @property
    def chain_id(self) -> str:
        """What every transaction signs to name this consortium's chain."""
        ...

    @property
    def node_names(self) -> tuple[str, ...]:
        """The consortium's nodes, in genesis order (``node-0``, ``node-1``, …)."""
        ...

    def node_key(self, index: int) -> SigningKey:
        """Node ``index``'s signing key (its validator key), held next to the node."""
        ...

    def chain_nodes(self) -> dict[bytes, str]:
        """The nodes the chain counts as members now (admitted, not ejected): public key
        -> name. What a server trusts a node key for, rather than any local list."""
        ...

    def node_public(self, index: int) -> bytes:
        """Node ``index``'s public validator key, as genesis names it (any node's, also
        one another party runs)."""
        ...

    def height(self) -> int: ...

    def next_nonce(self, sender: bytes) -> int:
        """The sender's next nonce in the committed state."""
        ...

    def registered(self, public: bytes) -> str | None:
        """The identity a node registered ``public`` under (``register_identity``)."""
        ...

    def published(self, name: str) -> str | None:
        """The digest its owner published under ``name`` (``publish_key``), if any."""
        ...

    def submit(
        self, txs: Sequence[Tx], *, on_broadcast: Callable[[], None] | None = None
    ) -> list[CommittedTx]:
        """Commit ``txs`` in order and return them as committed, or raise
        :class:`TxRejected` / :class:`LedgerUnavailable`. ``on_broadcast`` is called once
        every one of them passed ``CheckTx`` (they are in the mempool, in order), before
        the wait for their block: a caller may then submit its next transactions of the
        same keys, which line up behind these."""
        ...

    def sign_and_submit(
        self, key: SigningKey, kind: TxKind, bodies: Sequence[Mapping]
    ) -> list[CommittedTx]:
        """One transaction per body, consecutive nonces from ``key``'s next one."""
        ...

    def txs(self, kind: TxKind | None = None, start_height: int = 1) -> Iterator[CommittedTx]:
        """Applied transactions in chain order, up to the height at the time of the call."""
        ...

    def find(self, txid: str) -> CommittedTx | None: ...

    def committee(self) -> tuple[str, ...]:
        """Names of the committee the application elected (the current validators)."""
        ...

    def verify(self) -> list[NodeCheck]:
        """Re-verify the chain from genesis (every node it can read)."""
        ...

    def close(self) -> None: ...


def sign(
    ledger: LedgerPort, key: SigningKey, kind: TxKind, bodies: Sequence[Mapping], *, skip: int = 0
) -> list[Tx]:
    """Sign one transaction per body with consecutive nonces from ``key``'s committed next
    nonce (plus ``skip``, for transactions of the same key signed before these in one
    batch). A body the transaction format refuses raises :class:`TxRejected`."""
    start = ledger.next_nonce(key.public) + skip
    txs = []
    for i, body in enumerate(bodies):
        try:
            txs.append(Tx.create(kind, body, start + i, key, chain=ledger.chain_id))
        except (LedgerFormatError, ValueError) as exc:
            raise TxRejected(f"malformed: {exc}", index=i) from None
    return txs


def lock_file(path: Path, busy: str) -> int:
    """An exclusive, non-blocking flock on ``path`` (created if missing), held until
    :func:`unlock`; :class:`LedgerUnavailable` with the message ``busy`` if another
    process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LedgerUnavailable(busy) from None
    return fd


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
