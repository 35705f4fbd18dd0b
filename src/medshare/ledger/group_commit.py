"""Group commit: the transactions of concurrent callers go to the ledger in one batch.

Why: every read is logged on the ledger *before* the record is released, so a read waits
for one block. If callers submitted one by one, reads would queue behind each other's
blocks (one read per block, whatever the load); and two callers signing with the same key
at once (a hospital's node logs the reads of every device-held identity) would both take
the same nonce. :class:`GroupCommitter` is the one place a process's own transactions are
signed and submitted: a caller hands in what it wants committed and waits; whoever finds
no batch in flight becomes the leader, takes everything queued so far, signs it with
consecutive nonces per key (continuing from the nonces its earlier batches used), submits
it as one batch and hands every caller its own committed transactions. Callers that
arrive meanwhile form the next batch, so under load a block carries many reads and each
read waits about one block.

A batch that fails is not failed for everyone: the callers whose transactions all
committed get them, the caller whose transaction was refused gets the refusal, and the
others are retried alone (signed afresh from the ledger's nonces).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medshare.crypto.signing import SigningKey
from medshare.ledger.port import CommittedTx, LedgerPort, TxRejected
from medshare.ledger.types import LedgerFormatError, Tx, TxKind

# What a caller asks to commit: transactions to sign here, or signed ones to relay.
ToSign = tuple[SigningKey, TxKind, Sequence[Mapping[str, Any]]]
Part = ToSign | Tx


@dataclass
class _Request:
    parts: Sequence[Part]
    done: bool = False
    result: list[CommittedTx] = field(default_factory=list)
    error: BaseException | None = None
    txs: list[Tx] = field(default_factory=list)

    def finish(self, result: list[CommittedTx] | None = None, error: BaseException | None = None):
        self.result, self.error, self.done = result or [], error, True

    def outcome(self) -> list[CommittedTx]:
        if self.error is not None:
            raise self.error
        return self.result


class GroupCommitter:
    """Signs and submits the process's transactions, batching concurrent callers."""

    def __init__(self, ledger: LedgerPort) -> None:
        self._ledger = ledger
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._leading = False
        self._next: dict[bytes, int] = {}  # nonce after this process's last committed tx

    def commit(self, parts: Sequence[Part]) -> list[CommittedTx]:
        """Commit ``parts`` in this order (contiguously in one block, unless the batch had
        to be retried); returns the committed transactions, or raises what the ledger
        said (:class:`TxRejected` with the caller's own index)."""
        request = _Request(list(parts))
        if not request.parts:
            return []
        with self._cond:
            self._queue.append(request)
            while not request.done and self._leading:
                self._cond.wait()
            if request.done:
                return request.outcome()
            self._leading = True
            group, self._queue = self._queue, []
        try:
            self._run(group)
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()
        return request.outcome()

    def _run(self, group: list[_Request]) -> None:
        used: dict[bytes, int] = {}
        batch: list[Tx] = []
        signed: list[_Request] = []
        for request in group:
            try:
                request.txs = self._sign(request.parts, used)
            except TxRejected as exc:
                request.finish(error=exc)
                continue
            batch += request.txs
            signed.append(request)
        if not batch:
            return
        try:
            committed = self._ledger.submit(batch)
        except TxRejected as exc:
            self._forget(batch)
            self._after_failure(signed, exc)
            return
        except BaseException as exc:
            self._forget(batch)
            for request in signed:
                request.finish(error=exc)
            return
        for tx in batch:
            self._next[tx.sender] = max(self._next.get(tx.sender, 0), tx.nonce + 1)
        start = 0
        for request in signed:
            request.finish(committed[start : start + len(request.txs)])
            start += len(request.txs)

    def _after_failure(self, signed: list[_Request], exc: TxRejected) -> None:
        """Each caller of a failed batch: its committed txs, its own refusal, or a retry."""
        committed = {c.tx.txid: c for c in exc.committed}
        start = 0
        for request in signed:
            end = start + len(request.txs)
            if all(tx.txid in committed for tx in request.txs):
                request.finish([committed[tx.txid] for tx in request.txs])
            elif exc.index is not None and start <= exc.index < end:
                request.finish(error=_shifted(exc, start, committed, request.txs))
            elif len(signed) == 1:
                request.finish(error=exc)
            else:
                try:
                    request.finish(self._ledger.submit(self._sign(request.parts, {})))
                except BaseException as retry_error:
                    request.finish(error=retry_error)
            start = end

    def _sign(self, parts: Sequence[Part], used: dict[bytes, int]) -> list[Tx]:
        """The parts as signed txs; ``used`` counts the nonces this batch took per key
        (updated only if every part signs)."""
        mine = dict(used)
        txs: list[Tx] = []
        chain = self._ledger.chain_id
        for part in parts:
            if isinstance(part, Tx):
                txs.append(part)
                continue
            key, kind, bodies = part
            base = max(self._ledger.next_nonce(key.public), self._next.get(key.public, 0))
            for body in bodies:
                nonce = base + mine.get(key.public, 0)
                try:
                    txs.append(Tx.create(kind, body, nonce, key, chain=chain))
                except (LedgerFormatError, ValueError) as exc:
                    raise TxRejected(f"malformed: {exc}", index=len(txs)) from None
                mine[key.public] = mine.get(key.public, 0) + 1
        used.update(mine)
        return txs

    def _forget(self, batch: Sequence[Tx]) -> None:
        """After a failed batch the ledger's own nonces are the truth again."""
        for tx in batch:
            self._next.pop(tx.sender, None)


def _shifted(
    exc: TxRejected, start: int, committed: Mapping[str, CommittedTx], txs: Sequence[Tx]
) -> TxRejected:
    """The refusal as the caller sees it: the index within its own transactions."""
    mine = [committed[tx.txid] for tx in txs if tx.txid in committed]
    return TxRejected(exc.reason, index=exc.index - start, code=exc.code, committed=mine)
