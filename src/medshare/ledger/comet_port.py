"""The records service's :class:`~medshare.ledger.port.LedgerPort` over a running
consortium of CometBFT nodes (:mod:`medshare.ledger.cometbft.network`) and their RPC.

Submitting goes through :class:`~medshare.ledger.cometbft.client.LedgerClient` (``CheckTx``
on ``broadcast_tx_sync``, then blocks read until every transaction is decided, with its
retry rule for a node that crashed holding them). Committed transactions are read back
from the kv transaction index (``tx_search`` by height range: the work grows with the
transactions, not with the empty blocks an idle chain keeps making), except the last 20
heights, which the index may not have caught up with: those are read block by block
(``blockchain`` headers with their transaction counts, then ``block`` and
``block_results`` of the heights that carry any). Blocks never change once decided, so
what was read is kept for the life of the object and later reads fetch only new heights.
``find`` asks the index (``tx``) for one hash.

A node's ledger transactions are signed with its validator key
(:func:`medshare.ledger.cometbft.home.validator_seed`), read from the node's folder.

One :class:`CometLedger` per network folder at a time (an flock on ``client.lock``): the
service's keys are used by one process, so nonces never race.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from medshare.crypto.signing import SigningKey
from medshare.ledger.cometbft import home as node_home
from medshare.ledger.cometbft import install, network
from medshare.ledger.cometbft import verify as chain_verify
from medshare.ledger.cometbft.client import Committed, LedgerClient, TxRefused
from medshare.ledger.cometbft.client import LedgerUnavailable as ClientUnavailable
from medshare.ledger.port import (
    CommittedTx,
    LedgerUnavailable,
    NodeCheck,
    TxRejected,
    lock_file,
    sign,
    unlock,
)
from medshare.ledger.types import LedgerFormatError, Tx, TxKind

LOCK_FILE = "client.lock"
SUBMIT_TIMEOUT_S = 30.0
META_PAGE = 20  # block metas per ``blockchain`` call (CometBFT's cap)
CALLS_PER_REQUEST = 60  # JSON-RPC calls per HTTP request (the node allows 256)
RESULTS_WAIT_S = 5.0  # ``block_results`` may lag ``status`` by a moment

Notice = Callable[[str], None]


def _ms(text: str) -> int:
    seconds, nanos = chain_verify.parse_time(text)
    return seconds * 1000 + nanos // 1_000_000


def start_stopped(net: network.Network, notice: Notice | None = None) -> list[int]:
    """Start every node of ``net`` that is not running and wait for their RPC; returns
    the indexes started."""
    stopped = [i for i in net.local_nodes() if not network.running(net, i)]
    if not stopped:
        return []
    if notice is not None:
        notice(f"starting ledger node(s) {', '.join(map(str, stopped))} in {net.directory}")
    for i in stopped:
        network.start(net, i, wait=False)
    deadline = time.monotonic() + network.START_TIMEOUT_S
    for i in stopped:
        network.wait_rpc(net, i, deadline)
    return stopped


class CometLedger:
    """See the module docstring. Use :meth:`open`."""

    def __init__(self, net: network.Network, lock_fd: int, *, timeout: float) -> None:
        self.network = net
        self._lock_fd = lock_fd
        self._timeout = timeout
        running = [n.rpc for i, n in enumerate(net.nodes) if network.running(net, i)]
        others = [n.rpc for n in net.nodes if n.rpc not in running]
        self._client = LedgerClient(running + others)
        self._keys: dict[int, SigningKey] = {}
        self._scanned = 0  # every height up to this one is in self._committed
        self._committed: list[CommittedTx] = []
        self._by_id: dict[str, CommittedTx] = {}
        self._times: dict[int, int] = {}
        self._closed = False

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        start: bool = True,
        notice: Notice | None = None,
        timeout: float = SUBMIT_TIMEOUT_S,
    ) -> CometLedger:
        """Connect to the network in ``directory``. When no node runs (after ``medshare
        net down`` or a reboot) and ``start`` is set, the nodes are started first (they
        keep running after this process ends); a network with some nodes down is used as
        it is (consensus goes on while more than 2/3 of the committee's power runs)."""
        directory = Path(directory)
        try:
            net = network.Network.load(directory)
        except network.NetworkError as exc:
            raise LedgerUnavailable(str(exc)) from None
        lock_fd = lock_file(
            directory / LOCK_FILE,
            f"the ledger in {directory} is in use by another medshare process",
        )
        try:
            local = net.local_nodes()
            if local and not any(network.running(net, i) for i in local):
                if not start:
                    raise LedgerUnavailable(
                        f"no ledger node is running; start them with "
                        f"`medshare net restart --dir {directory} --node I` for each node"
                    )
                try:
                    start_stopped(net, notice)
                except (network.NetworkError, install.EngineMissing) as exc:
                    raise LedgerUnavailable(f"the ledger nodes do not start: {exc}") from None
            return cls(net, lock_fd, timeout=timeout)
        except BaseException:
            unlock(lock_fd)
            raise

    def close(self) -> None:
        """Disconnect (the nodes keep running); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client.close()
        finally:
            unlock(self._lock_fd)

    @staticmethod
    def _verify_one(url: str, stop: int, trusted: dict) -> chain_verify.ChainReport:
        """One node's chain, re-verified; asked twice before it counts as unreachable."""
        try:
            return chain_verify.verify_node(url, to=stop, genesis=trusted)
        except ClientUnavailable:
            time.sleep(1.0)
            return chain_verify.verify_node(url, to=stop, genesis=trusted)

    def __enter__(self) -> CometLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _rpc(self) -> Iterator[None]:
        if self._closed:
            raise LedgerUnavailable("the ledger connection is closed")
        try:
            yield
        except ClientUnavailable as exc:
            net = self.network
            down = [i for i in net.local_nodes() if not network.running(net, i)]
            hint = (
                f"nodes {', '.join(map(str, down))} of {len(net.nodes)} are not running "
                f"(start one with `medshare net restart --dir {net.directory} --node I`)"
                if down
                else f"see `medshare net status --dir {net.directory}`"
            )
            raise LedgerUnavailable(f"the ledger does not answer in time ({exc}); {hint}") from None

    # --- reading ---------------------------------------------------------------------------

    @property
    def chain_id(self) -> str:
        return self.network.chain_id

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.network.nodes)

    def node_public(self, index: int) -> bytes:
        try:
            return bytes.fromhex(self.network.node(index).public)
        except network.NetworkError as exc:
            raise LedgerUnavailable(str(exc)) from None

    def node_key(self, index: int) -> SigningKey:
        key = self._keys.get(index)
        if key is None:
            try:
                folder = self.network.node_dir(index)
                key = SigningKey(node_home.validator_seed(folder))
            except network.NetworkError as exc:
                raise LedgerUnavailable(str(exc)) from None
            except (OSError, ValueError, KeyError) as exc:
                raise LedgerUnavailable(
                    f"node {index}'s validator key is unreadable: {exc}"
                ) from None
            if key.public.hex() != self.network.nodes[index].public:
                raise LedgerUnavailable(f"node {index}'s validator key is not the one in genesis")
            self._keys[index] = key
        return key

    def height(self) -> int:
        with self._rpc():
            return self._client.height()

    def next_nonce(self, sender: bytes) -> int:
        with self._rpc():
            return self._client.next_nonce(sender)

    def registered(self, public: bytes) -> str | None:
        with self._rpc():
            return json.loads(self._client.query("/identity", public))["identity"]

    def published(self, name: str) -> str | None:
        with self._rpc():
            return json.loads(self._client.query("/published", name.encode()))["digest"]

    def committee(self) -> tuple[str, ...]:
        with self._rpc():
            return tuple(m["name"] for m in self._client.state()["committee"])

    def chain_nodes(self) -> dict[bytes, str]:
        with self._rpc():
            nodes = self._client.state()["nodes"]
        return {bytes.fromhex(n["public"]): n["name"] for n in nodes if not n["ejected"]}

    def txs(self, kind: TxKind | None = None, start_height: int = 1) -> Iterator[CommittedTx]:
        with self._rpc():
            self._scan(self._client.height())
        wanted = None if kind is None else TxKind(kind)
        return (
            c
            for c in list(self._committed)
            if c.height >= start_height and (wanted is None or c.tx.kind == wanted)
        )

    def find(self, txid: str) -> CommittedTx | None:
        known = self._by_id.get(txid)
        if known is not None:
            return known
        try:
            raw_hash = bytes.fromhex(txid)
        except ValueError:
            return None
        with self._rpc():
            answer = self._client.batch(
                [("tx", {"hash": base64.b64encode(raw_hash).decode()})], errors=True
            )[0]
            if "error" in answer or int(answer.get("tx_result", {}).get("code", 0)) != 0:
                return None
            height = int(answer["height"])
            tx = Tx.decode(base64.b64decode(answer["tx"]))
            return CommittedTx(height, int(answer["index"]), self._time_of(height), tx)

    def _time_of(self, height: int) -> int:
        if height not in self._times:
            header = self._client.call("header", height=str(height))["header"]
            self._times[height] = _ms(header["time"])
        return self._times[height]

    def _scan(self, top: int) -> None:
        """Read heights ``self._scanned + 1`` … ``top`` into the cache: the transaction
        index for all but the last :data:`META_PAGE` heights (it lags a block's commit
        by a moment), block by block for those."""
        first = self._scanned + 1
        if top < first:
            return
        split = max(first - 1, top - META_PAGE)
        if split >= first:
            self._scan_index(first, split)
        self._scan_blocks(split + 1, top)
        self._scanned = top

    def _scan_index(self, low: int, high: int) -> None:
        """Heights ``low`` … ``high`` from ``tx_search`` (the kv indexer): work in the
        number of transactions, not of blocks; block times from ``header``."""
        query = f"tx.height>={low} AND tx.height<={high}"
        found: list[dict] = []
        page = 1
        while True:
            answer = self._client.call(
                "tx_search", query=query, page=str(page), per_page="100", order_by="asc"
            )
            found += answer.get("txs") or []
            if not answer.get("txs") or len(found) >= int(answer["total_count"]):
                break
            page += 1
        applied = sorted(
            (int(t["height"]), int(t["index"]), t["tx"])
            for t in found
            if int((t.get("tx_result") or {}).get("code", 0)) == 0
        )
        missing = sorted({h for h, _, _ in applied} - set(self._times))
        for start in range(0, len(missing), CALLS_PER_REQUEST):
            chunk = missing[start : start + CALLS_PER_REQUEST]
            answers = self._client.batch([("header", {"height": str(h)}) for h in chunk])
            for h, answer in zip(chunk, answers, strict=True):
                self._times[h] = _ms(answer["header"]["time"])
        for height, index, encoded in applied:
            self._remember(height, index, self._times[height], encoded)

    def _scan_blocks(self, low: int, high: int) -> None:
        """Heights ``low`` … ``high`` (at most :data:`META_PAGE`): their headers with
        ``blockchain``, then ``block`` and ``block_results`` of those with transactions."""
        if high < low:
            return
        metas = self._client.call("blockchain", minHeight=str(low), maxHeight=str(high))
        busy = []
        for meta in metas["block_metas"]:
            height = int(meta["header"]["height"])
            self._times[height] = _ms(meta["header"]["time"])
            if int(meta.get("num_txs", 0)) > 0:
                busy.append(height)
        for height, block, results in self._blocks(sorted(busy)):
            self._add(height, block, results)

    def _blocks(self, heights: Sequence[int]) -> list[tuple[int, dict, dict]]:
        """``block`` and ``block_results`` of each height (retried while results lag)."""
        calls = []
        for h in heights:
            calls.append(("block", {"height": str(h)}))
            calls.append(("block_results", {"height": str(h)}))
        deadline = time.monotonic() + RESULTS_WAIT_S
        while True:
            answers = self._client.batch(calls, errors=True)
            failed = next((a["error"] for a in answers if "error" in a), None)
            if failed is None:
                return [(h, answers[2 * i], answers[2 * i + 1]) for i, h in enumerate(heights)]
            if time.monotonic() > deadline:
                raise ClientUnavailable(f"block or results not served: {failed}")
            time.sleep(0.05)

    def _add(self, height: int, block: dict, results: dict) -> None:
        raws = block["block"]["data"].get("txs") or []
        codes = results.get("txs_results") or []
        when = _ms(block["block"]["header"]["time"])
        for index, encoded in enumerate(raws):
            if index < len(codes) and int(codes[index].get("code", 0)) == 0:
                self._remember(height, index, when, encoded)

    def _remember(self, height: int, index: int, when: int, encoded: str) -> None:
        try:
            tx = Tx.decode(base64.b64decode(encoded))
        except LedgerFormatError:
            return  # applied bytes always decode; defensive for a foreign chain
        committed = CommittedTx(height, index, when, tx)
        self._committed.append(committed)
        self._by_id[tx.txid] = committed

    # --- writing ---------------------------------------------------------------------------

    def submit(
        self, txs: Sequence[Tx], *, on_broadcast: Callable[[], None] | None = None
    ) -> list[CommittedTx]:
        """Broadcast and wait for commit. A refusal by ``CheckTx`` raises
        :class:`TxRejected` at once; the transactions of the batch before the refused one
        were accepted by a node and may still commit (they are waited for briefly and
        listed in ``committed``): on a shared network a batch cannot be withdrawn."""
        batch = list(txs)
        if not batch:
            return []
        with self._rpc():
            start = self._client.height()
            try:
                decided = self._client.submit(
                    batch, timeout=self._timeout, on_broadcast=on_broadcast
                )
            except TxRefused as exc:
                index = next(i for i, tx in enumerate(batch) if tx.txid == exc.txid)
                accepted = [tx.txid for tx in batch[:index]]
                found = self._client.wait(accepted, start, timeout=5.0) if accepted else {}
                committed = [
                    self._as_committed(tx, found[tx.txid])
                    for tx in batch[:index]
                    if tx.txid in found and found[tx.txid].code == 0
                ]
                raise TxRejected(exc.log, index=index, code=exc.code, committed=committed) from None
            out = [self._as_committed(tx, c) for tx, c in zip(batch, decided, strict=True)]
        applied = [c for c, d in zip(out, decided, strict=True) if d.code == 0]
        for c in applied:  # found by ``find`` even before the index has them
            self._by_id.setdefault(c.tx.txid, c)
        for i, d in enumerate(decided):
            if d.code != 0:
                raise TxRejected(d.log or "skipped", index=i, code=d.code, committed=applied)
        return out

    def _as_committed(self, tx: Tx, decided: Committed) -> CommittedTx:
        return CommittedTx(decided.height, decided.index, self._time_of(decided.height), tx)

    def sign_and_submit(
        self, key: SigningKey, kind: TxKind, bodies: Sequence[Mapping]
    ) -> list[CommittedTx]:
        return self.submit(sign(self, key, kind, bodies))

    # --- verification ----------------------------------------------------------------------

    def verify(self) -> list[NodeCheck]:
        """Re-verify the chain every running node serves, from the genesis this folder was
        created with (its first own node's ``genesis.json``, the trust anchor: a node
        serving another fails; nodes other parties run are read over RPC) with
        :func:`medshare.ledger.cometbft.verify.verify_node` (headers, commit signatures,
        validator sets, and a replay of the application), all up to the same height: the
        lowest of the running nodes' at the start. A stopped node is reported, not read."""
        net = self.network
        # this folder's running nodes, and the nodes other parties run (over RPC)
        running = [
            i for i in range(len(net.nodes)) if network.running(net, i) or not net.is_local(i)
        ]
        heights = {}
        for i in running:
            try:
                with LedgerClient([net.nodes[i].rpc], timeout=5.0) as one:
                    heights[i] = one.height()
            except ClientUnavailable:
                pass
        stop = min(heights.values()) if heights else 0
        anchor = net.node_dir(net.local_nodes()[0]) / "config" / "genesis.json"
        try:
            trusted = json.loads(anchor.read_text())
        except (OSError, ValueError) as exc:
            problem = f"cannot read the consortium's genesis {anchor}: {exc}"
            nodes = enumerate(net.nodes)
            return [NodeCheck(n.name, False, 0, problem, i in running) for i, n in nodes]
        checks = []
        for i, node in enumerate(net.nodes):
            if i not in running:
                how = f"`medshare net restart --dir {net.directory} --node {i}`"
                checks.append(NodeCheck(node.name, False, 0, f"not running (start: {how})", False))
                continue
            try:
                report = self._verify_one(node.rpc, stop, trusted)
            except ClientUnavailable as exc:
                # Unreachable (e.g. overloaded) is not a verdict on its chain: listed like a
                # stopped node, not counted as an integrity failure.
                checks.append(NodeCheck(node.name, False, 0, f"unreachable: {exc}", False))
                continue
            except ValueError as exc:
                checks.append(NodeCheck(node.name, False, 0, f"cannot be verified: {exc}"))
                continue
            error = None if report.ok else f"height {report.first_bad_height}: {report.problem}"
            checks.append(NodeCheck(node.name, report.ok, report.height, error))
        return checks
