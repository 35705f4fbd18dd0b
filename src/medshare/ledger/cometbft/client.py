"""The ledger client: submit signed transactions to CometBFT and learn when they commit.

Submitting is ``broadcast_tx_sync``: the node runs ``CheckTx`` and answers with its code;
code 0 means "in this node's mempool", nothing more. A transaction is committed when a
block carrying it is decided; its ``ExecTxResult`` code then says whether the rules
applied it (0) or skipped it. The client learns both by reading blocks in order.

**Retry rule** for a transaction acknowledged (code 0) but not seen committed in time
(the node may have crashed with it in its mempool): ask any node for it by hash; if no
node has it and the sender's committed nonce is still ≤ its nonce, broadcast the same
bytes again — at most one copy can ever commit, because its nonce is used by the first.
If the committed nonce has passed its nonce and no block holds its hash, it can never
commit (another transaction of the same key took that nonce) and is reported as not
committed. :meth:`LedgerClient.submit` applies this rule.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import httpx

from medshare.ledger.types import Tx

IN_CACHE = -2  # broadcast answer: the node has these bytes in its mempool cache
# How often a waiting submit asks the node for new blocks: a block is ~150 ms here, and a
# read waits for its access tx's block, so a slower poll shows in every read's latency.
POLL_S = 0.02


class LedgerUnavailable(RuntimeError):
    """No node answered, or a transaction did not commit in time."""


class OutcomeUnknown(LedgerUnavailable):
    """Transactions acknowledged but not seen committed in time, which may still commit
    (their nonces are not used yet): the caller must not sign them again with new nonces;
    :meth:`LedgerClient.submit` of the same transactions later resumes waiting."""

    def __init__(self, txids: list[str], timeout: float) -> None:
        super().__init__(
            f"{len(txids)} transaction(s) not seen in a block within {timeout:.0f} s: the "
            "outcome is unknown, they may still commit (submit the same ones again to wait)"
        )
        self.txids = txids


class NeverCommitted(LedgerUnavailable):
    """Transactions whose nonces were taken by other transactions: they can never commit."""

    def __init__(self, txids: list[str]) -> None:
        super().__init__(
            f"{len(txids)} transaction(s) can never commit: another transaction of the same "
            "sender took their nonce"
        )
        self.txids = txids


class TxRefused(ValueError):
    """A node's ``CheckTx`` refused the transaction; ``code`` and the log say why."""

    def __init__(self, txid: str, code: int, log: str) -> None:
        super().__init__(f"transaction {txid[:12]} refused (code {code}): {log}")
        self.txid = txid
        self.code = code
        self.log = log


@dataclass(frozen=True)
class Committed:
    txid: str
    height: int
    index: int
    code: int  # 0: applied; otherwise the rule that skipped it
    log: str = ""


def tx_hash(raw: bytes) -> str:
    """CometBFT's transaction hash (SHA-256 of the bytes), lower-case hex; equals
    :attr:`Tx.txid` for our canonical transactions."""
    return hashlib.sha256(raw).hexdigest()


class LedgerClient:
    """JSON-RPC over HTTP to one or more nodes (the first that answers serves a call)."""

    def __init__(self, rpc_urls: Sequence[str], *, timeout: float = 10.0) -> None:
        if not rpc_urls:
            raise ValueError("at least one RPC URL is needed")
        self._urls = list(rpc_urls)
        self._http = httpx.Client(timeout=timeout)
        self._ids = itertools.count(1)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- plain calls ----------------------------------------------------------------------

    def call(self, method: str, **params: object) -> dict:
        return self.batch([(method, params)])[0]

    def batch(self, calls: Sequence[tuple[str, dict]], *, errors: bool = False) -> list[dict]:
        """Several JSON-RPC calls in one request, answered in order. An error answer raises
        :class:`LedgerUnavailable`, or with ``errors`` is returned as ``{"error": …}``.
        No calls, no request (CometBFT answers an empty batch with an empty body)."""
        if not calls:
            return []
        last: Exception | None = None
        for url in self._urls:
            try:
                answers = self._ask(url, calls)
            except (httpx.HTTPError, json.JSONDecodeError) as exc:
                last = exc
                continue
            out = []
            for (method, _), answer in zip(calls, answers, strict=True):
                if errors and "error" in answer:
                    out.append({"error": answer["error"]})
                elif "error" in answer or "result" not in answer:
                    raise LedgerUnavailable(f"{method}: {answer.get('error', answer)}")
                else:
                    out.append(answer["result"])
            return out
        raise LedgerUnavailable(f"no node answered ({', '.join(self._urls)}): {last}")

    def _ask(self, url: str, calls: Sequence[tuple[str, dict]]) -> list[dict]:
        """One JSON-RPC batch to one node: its answers in the order of ``calls`` (``{}``
        for a call it did not answer). Raises the HTTP or JSON error of that node."""
        body = [
            {"jsonrpc": "2.0", "id": next(self._ids), "method": m, "params": p} for m, p in calls
        ]
        response = self._http.post(url, json=body)
        response.raise_for_status()
        answers = response.json()
        if not isinstance(answers, list):
            answers = [answers]
        by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
        return [by_id.get(request["id"], {}) for request in body]

    def height(self) -> int:
        return int(self.call("status")["sync_info"]["latest_block_height"])

    def query(self, path: str, data: bytes = b"") -> bytes:
        result = self.call("abci_query", path=path, data=data.hex())["response"]
        if int(result.get("code", 0)) != 0:
            raise LedgerUnavailable(f"query {path}: {result.get('log')}")
        return base64.b64decode(result.get("value") or "")

    def state(self) -> dict:
        return json.loads(self.query("/state"))

    def next_nonce(self, public: bytes) -> int:
        return int(json.loads(self.query("/nonce", public))["next_nonce"])

    def find(self, txid: str) -> Committed | None:
        """The committed transaction with this id, asking every node in turn (one that lost
        its index or is behind may not have it); None if none has it."""
        call = [("tx", {"hash": base64.b64encode(bytes.fromhex(txid)).decode()})]
        answered = False
        for url in self._urls:
            try:
                (answer,) = self._ask(url, call)
            except (httpx.HTTPError, json.JSONDecodeError):
                continue
            answered = True
            if "result" in answer:
                result = answer["result"]
                res = result.get("tx_result", {})
                return Committed(
                    txid,
                    int(result["height"]),
                    int(result["index"]),
                    int(res.get("code", 0)),
                    res.get("log", ""),
                )
            if "not found" not in str(answer.get("error", {}).get("data", "")):
                raise LedgerUnavailable(f"tx {txid[:12]}: {answer.get('error')}")
        if not answered:
            raise LedgerUnavailable(f"no node answered ({', '.join(self._urls)})")
        return None

    def block_txs(self, height: int) -> list[Committed] | None:
        """The transactions decided at ``height``, with their results; None while the node
        has not stored the results yet (``status`` may report a height a moment before)."""
        block, results = self.batch(
            [("block", {"height": str(height)}), ("block_results", {"height": str(height)})],
            errors=True,
        )
        if "error" in block or "error" in results:
            return None
        raws = block["block"]["data"].get("txs") or []
        codes = results.get("txs_results") or []
        return [
            Committed(
                tx_hash(base64.b64decode(raw)),
                height,
                i,
                int(codes[i].get("code", 0)) if i < len(codes) else -1,
                codes[i].get("log", "") if i < len(codes) else "",
            )
            for i, raw in enumerate(raws)
        ]

    # --- submitting -----------------------------------------------------------------------

    def broadcast(self, raws: Sequence[bytes], *, checked: bool = True) -> list[tuple[int, str]]:
        """``broadcast_tx_sync`` of each, in order, in one request: (code, log) each.
        A node that has the bytes in its mempool cache already (seen recently, committed
        or pending) answers :data:`IN_CACHE`.

        With ``checked=False`` it is ``broadcast_tx_async``: the node answers before its
        ``CheckTx`` ran, so code 0 means only "received"; a refused transaction is then
        learnt by its absence from the blocks. CometBFT serves a JSON-RPC batch one call
        after the other, and a sync call waits for its ``CheckTx`` round trip to the app,
        so a batch of sync calls costs one round trip each; async calls are pipelined to
        the app. A client keeping hundreds of transactions in flight uses async (about
        1.4× the committed tx/s on 4 nodes here); one that needs the refusal reason at
        once uses sync."""
        method = "broadcast_tx_sync" if checked else "broadcast_tx_async"
        answers = self.batch(
            [(method, {"tx": base64.b64encode(raw).decode()}) for raw in raws], errors=True
        )
        out = []
        for a in answers:
            if "error" in a:
                data = str(a["error"].get("data", a["error"].get("message", "")))
                out.append((IN_CACHE if "already exists in cache" in data else -1, data))
            else:
                out.append((int(a.get("code", 0)), a.get("log", "")))
        return out

    def submit(
        self,
        txs: Sequence[Tx],
        *,
        timeout: float = 30.0,
        on_broadcast: Callable[[], None] | None = None,
    ) -> list[Committed]:
        """Broadcast ``txs`` (in order) and wait until every one is committed.

        Raises :class:`TxRefused` for the first one ``CheckTx`` refused (those before it
        may still commit: the caller sees them through :meth:`find`), and
        :class:`OutcomeUnknown` when some are not committed within ``timeout`` but still
        may, :class:`NeverCommitted` when some never can (the retry rule of this module's
        docstring); both are :class:`LedgerUnavailable`."""
        if not txs:
            return []
        start = self.height()
        raws = [tx.encode() for tx in txs]
        found: dict[str, Committed] = {}
        for tx, (code, log) in zip(txs, self.broadcast(raws), strict=True):
            if code == IN_CACHE:  # seen before: maybe committed long ago
                committed = self.find(tx.txid)
                if committed is not None:
                    found[tx.txid] = committed
            elif code != 0:
                raise TxRefused(tx.txid, code, log)
        if on_broadcast is not None:
            on_broadcast()  # all in the mempool, in order: the caller may queue the next
        wanted = {tx.txid for tx in txs}
        found.update(self.wait(wanted - set(found), start, timeout=timeout / 2))
        if len(found) < len(wanted):
            self._retry([tx for tx in txs if tx.txid not in found], found)
            found.update(self.wait(wanted - set(found), start, timeout=timeout / 2))
        missing = [tx for tx in txs if tx.txid not in found]
        if missing:
            # Final only when a nonce was taken by another transaction (the retry rule).
            dead = [tx.txid for tx in missing if self.next_nonce(tx.sender) > tx.nonce]
            dead = [txid for txid in dead if self.find(txid) is None]
            if dead:
                raise NeverCommitted(dead)
            raise OutcomeUnknown([tx.txid for tx in missing], timeout)
        return [found[tx.txid] for tx in txs]

    def _retry(self, txs: Iterable[Tx], found: dict[str, Committed]) -> None:
        for tx in txs:
            committed = self.find(tx.txid)
            if committed is not None:
                found[tx.txid] = committed
            elif self.next_nonce(tx.sender) <= tx.nonce:
                self.broadcast([tx.encode()])

    def wait(
        self, txids: Iterable[str], from_height: int, *, timeout: float
    ) -> dict[str, Committed]:
        """Read blocks from ``from_height`` on until every id is seen or time runs out;
        then wait (within the same time) for the node's app to have applied the highest
        block seen. CometBFT serves a block's results as soon as ``FinalizeBlock`` ran,
        a moment before ``Commit`` makes them the app's state, and ``CheckTx`` and queries
        read that state: without this wait, a transaction sent right after ours (by the
        identity ours registered, say) could be refused by a state that lacks ours."""
        wanted = set(txids)
        found: dict[str, Committed] = {}
        next_height = max(from_height, 1)
        deadline = time.monotonic() + timeout
        while wanted - set(found) and time.monotonic() < deadline:
            top = self.height()
            while next_height <= top:
                decided = self.block_txs(next_height)
                if decided is None:
                    break
                for committed in decided:
                    if committed.txid in wanted:
                        found[committed.txid] = committed
                next_height += 1
            if wanted - set(found):
                time.sleep(POLL_S)
        if found:
            self._until_applied(max(c.height for c in found.values()), deadline)
        return found

    def applied_height(self) -> int:
        """The last height the app has committed (``abci_info``), which may trail the
        block store's height by the block being committed."""
        return int(self.call("abci_info")["response"].get("last_block_height", 0))

    def _until_applied(self, height: int, deadline: float) -> None:
        while self.applied_height() < height and time.monotonic() < deadline:
            time.sleep(POLL_S / 2)
