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

The lead passes on as soon as a batch is in the mempool (``on_broadcast``), not when it
is committed: the next batch signs its nonces on from the ones in flight and lines up
behind it, so concurrent readers wait about one block, not one block per batch ahead.

A batch that ``CheckTx`` refuses is not failed for everyone: the leader still holds the
lead (nothing of the batch is in flight), so the callers whose transactions all
committed get them, the caller whose transaction was refused gets the refusal, and the
others are retried alone (signed afresh). A batch refused later, in its block, fails its
callers: batches behind it may have signed on from its nonces, so the nonces are read
from the ledger again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medshare.crypto.signing import SigningKey
from medshare.ledger.port import CommittedTx, LedgerPort, LedgerUnavailable, TxRejected
from medshare.ledger.types import LedgerFormatError, Tx, TxKind

# What a caller asks to commit: transactions to sign here, or signed ones to relay.
ToSign = tuple[SigningKey, TxKind, Sequence[Mapping[str, Any]]]
Part = ToSign | Tx


@dataclass
class _Request:
    parts: Sequence[Part]
    taken: bool = False  # by a leader, whose batch it is in
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
            # Wait for a leader to take this request and finish it, or for the lead.
            while not request.done and (self._leading or request.taken):
                self._cond.wait()
            if request.done:
                return request.outcome()
            self._leading = True
            group, self._queue = self._queue, []
            for taken in group:
                taken.taken = True
        released = threading.Event()

        def step_down() -> None:
            """Hand the lead on once this batch is in the mempool, in nonce order: the next
            batch signs on from these nonces and lines up behind it (pipelining)."""
            if not released.is_set():
                released.set()
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()

        try:
            self._run(group, step_down)
        finally:
            for taken in group:  # whatever went wrong, no caller of the batch waits forever
                if not taken.done:
                    taken.finish(error=LedgerUnavailable("the ledger batch failed; try again"))
            step_down()
            with self._cond:
                self._cond.notify_all()  # the group's callers: their results are in
        return request.outcome()

    def _run(self, group: list[_Request], step_down: Callable[[], None]) -> None:
        used: dict[bytes, int] = {}
        batch: list[Tx] = []
        signed: list[_Request] = []
        before = dict(self._next)
        for request in group:
            try:
                request.txs = self._sign(request.parts, used)
            except Exception as exc:  # this caller's problem (or the ledger's), not the batch's
                request.finish(error=exc)
                continue
            batch += request.txs
            signed.append(request)
        if not batch:
            return
        for tx in batch:  # in flight: the next batch signs on from here
            self._next[tx.sender] = max(self._next.get(tx.sender, 0), tx.nonce + 1)
        broadcast = threading.Event()

        def on_broadcast() -> None:
            broadcast.set()
            step_down()

        try:
            committed = self._ledger.submit(batch, on_broadcast=on_broadcast)
        except TxRejected as exc:
            if broadcast.is_set():  # refused in its block: later batches may be doomed too
                self._forget(batch)
                self._after_failure(signed, exc, retry=False)
            else:  # refused by CheckTx: still the leader, so nobody signed on from it
                self._rewind(batch, before, exc.committed)
                self._after_failure(signed, exc, retry=True)
            return
        except BaseException as exc:
            self._forget(batch)
            self._fail(signed, exc)
            return
        start = 0
        for request in signed:
            request.finish(committed[start : start + len(request.txs)])
            start += len(request.txs)

    @staticmethod
    def _fail(signed: list[_Request], exc: BaseException) -> None:
        for request in signed:
            request.finish(error=exc)

    def _after_failure(self, signed: list[_Request], exc: TxRejected, *, retry: bool) -> None:
        """Each caller of a failed batch: its committed txs, its own refusal, or a retry
        (only while the lead is still held: after a broadcast, the others get the error)."""
        committed = {c.tx.txid: c for c in exc.committed}
        start = 0
        for request in signed:
            end = start + len(request.txs)
            if all(tx.txid in committed for tx in request.txs):
                request.finish([committed[tx.txid] for tx in request.txs])
            elif exc.index is not None and start <= exc.index < end:
                request.finish(error=_shifted(exc, start, committed, request.txs))
            elif len(signed) == 1 or not retry:
                request.finish(error=exc)
            else:
                try:
                    retried = self._sign(request.parts, {})
                    request.finish(self._ledger.submit(retried))
                    for tx in retried:
                        self._next[tx.sender] = max(self._next.get(tx.sender, 0), tx.nonce + 1)
                except BaseException as retry_error:
                    self._forget(request.txs)
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

    def _rewind(
        self, batch: Sequence[Tx], before: Mapping[bytes, int], committed: Sequence[CommittedTx]
    ) -> None:
        """The nonces after a batch ``CheckTx`` refused: as they were before it, plus any of
        its transactions the ledger did commit; a key forgotten meanwhile (by an earlier
        batch that failed in its block) stays forgotten."""
        for key in {tx.sender for tx in batch}:
            if key not in self._next:
                continue
            known = [c.tx.nonce + 1 for c in committed if c.tx.sender == key]
            values = [v for v in (before.get(key), *known) if v is not None]
            if values:
                self._next[key] = max(values)
            else:
                self._next.pop(key)

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
