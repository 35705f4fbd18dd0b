"""An embedded consortium ledger: N validator nodes in one process, one SQLite file each.

The records service runs as a short-lived CLI process, so it cannot keep a network of node
processes around; instead every invocation opens the consortium's nodes in-process
(:class:`~medshare.ledger.cluster.InProcessCluster`: real consensus, real signatures, a
simulated network and clock), submits its transactions, waits until they are committed by
the elected committee, and closes. What survives between invocations is on disk::

    <directory>/ledger.json     genesis chain config and node names (no secrets)
    <directory>/keys/<i>.key    node i's Ed25519 seed, hex, mode 0600
    <directory>/node-<i>.db     node i's SQLite store: blocks, tx index, consensus WAL
    <directory>/ledger.lock     flock'ed while open: two processes signing with the same
                                validator keys would equivocate

Re-opening restores every node from its own database (blocks re-verified from genesis,
consensus WAL reloaded), never from a replay into fresh files. A node whose database no
longer verifies stays down (see :attr:`EmbeddedLedger.boot_failures`) while the others go
on, exactly as a crashed node would: one damaged file must not stop the consortium.

Time: block timestamps must strictly increase (and stay below ``MAX_TIMESTAMP_MS``), but
the simulated clock of an in-process cluster may run ahead of the wall clock (round
timeouts advance it in jumps). So each open starts the clock at ``max(wall clock, last
committed block time + 1)``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from medshare.crypto.signing import InvalidSignature, SigningKey
from medshare.fileio import write_file
from medshare.ledger import audit, chain, election
from medshare.ledger.cluster import InProcessCluster, LivenessError, Node
from medshare.ledger.consensus import WalCorrupted
from medshare.ledger.node import MAX_MEMPOOL, Rejected
from medshare.ledger.replay_cache import ReplayCache
from medshare.ledger.store import BlockStore, SQLiteStore, StoreCorrupted
from medshare.ledger.types import Block, LedgerFormatError, Tx, TxKind, quorum

__all__ = [
    "CommittedTx",
    "EmbeddedLedger",
    "LedgerUnavailable",
    "NodeCheck",
    "TxRejected",
]

LEDGER_FILE = "ledger.json"
LOCK_FILE = "ledger.lock"
KEYS_DIR = "keys"
FORMAT = "medshare-embedded-ledger"
# 2: transactions name their chain (``Tx.chain``); a version-1 ledger's transactions do
# not verify under the current rules, so it is refused with a clear message.
FORMAT_VERSION = 2
INITIAL_REPUTATION = 1000
# A block takes a few hundred steps (messages and timers) with 7 nodes; a round lost to a
# crashed proposer a few hundred more. The budget allows for many lost rounds, yet gives up
# within seconds when the committee has no quorum left.
STEP_BUDGET = 50_000
STEPS_PER_TX = 20
# Simulated ms without a commit after which a node re-sends its own votes of the current
# height: while more than f members were down, their messages were lost, and a round that
# waits for 2f+1 messages has no timeout running; without this the nodes would stay stuck
# even after the missing members are restarted.
REGOSSIP_MS = 1000

# What a node's boot raises when its database or WAL is damaged or belongs elsewhere.
_BOOT_ERRORS = (StoreCorrupted, WalCorrupted, ValueError, sqlite3.DatabaseError)


# --- results and errors -------------------------------------------------------------------------


@dataclass(frozen=True)
class CommittedTx:
    """A transaction as committed: where it sits in the chain and when."""

    height: int
    index: int  # position in the block
    timestamp_ms: int  # the block's timestamp
    tx: Tx


@dataclass(frozen=True)
class NodeCheck:
    """One node database re-verified from genesis. ``height`` is the last height that
    verified; ``error`` (when not ok) starts with the first bad height."""

    name: str
    ok: bool
    height: int
    error: str | None


class LedgerUnavailable(RuntimeError):
    """The ledger cannot be opened or cannot commit: directory missing or not a ledger, in use
    by another process, or too few committee members running to reach a quorum."""


class TxRejected(ValueError):
    """A transaction of a batch the ledger will not commit (bad signature, replay, nonce gap,
    malformed). ``index`` is its position in the batch; ``committed`` lists the transactions
    of the batch that were nevertheless committed (empty unless the refusal came from a node
    after earlier transactions had been handed over)."""

    def __init__(
        self, reason: str, *, index: int | None = None, committed: Sequence[CommittedTx] = ()
    ) -> None:
        where = "" if index is None else f"transaction {index}: "
        super().__init__(f"{where}{reason}")
        self.reason, self.index, self.committed = reason, index, list(committed)


# --- files --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Where the files of a ledger directory live (one place names them all)."""

    directory: Path

    @property
    def manifest(self) -> Path:
        return self.directory / LEDGER_FILE

    @property
    def lock(self) -> Path:
        return self.directory / LOCK_FILE

    def key(self, i: int) -> Path:
        return self.directory / KEYS_DIR / f"{i}.key"

    def db(self, i: int) -> Path:
        return self.directory / f"node-{i}.db"

    def existing_ledger_files(self) -> list[Path]:
        """Files that show a ledger (or a half-created one) already lives here."""
        if not self.directory.is_dir():
            return []
        found = [self.manifest, self.directory / KEYS_DIR]
        return [p for p in found if p.exists()] + sorted(self.directory.glob("node-*.db"))


@dataclass(frozen=True)
class _Manifest:
    """``ledger.json``: the genesis every node must agree on, and the nodes' names."""

    config: chain.ChainConfig
    names: tuple[str, ...]

    def encode(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "chain": self.config.to_json(),
            "nodes": list(self.names),
        }
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def load(cls, layout: _Layout) -> _Manifest:
        if not layout.directory.is_dir():
            raise LedgerUnavailable(f"no ledger directory {layout.directory}")
        try:
            doc = json.loads(layout.manifest.read_bytes())
        except FileNotFoundError:
            raise LedgerUnavailable(
                f"{layout.directory} is not a ledger (no {LEDGER_FILE})"
            ) from None
        except (OSError, ValueError) as exc:
            raise LedgerUnavailable(f"{layout.manifest} does not read as JSON: {exc}") from None
        return cls._from_json(doc, layout.manifest)

    @classmethod
    def _from_json(cls, doc: object, path: Path) -> _Manifest:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise LedgerUnavailable(f"{path} is not an embedded ledger manifest")
        if doc.get("version") == 1:
            raise LedgerUnavailable(
                f"{path} was made by an earlier medshare whose transactions did not name "
                "their chain; create a new data directory with `medshare init`"
            )
        if doc.get("version") != FORMAT_VERSION:
            raise LedgerUnavailable(f"{path} has unsupported version {doc.get('version')!r}")
        try:
            config = chain.ChainConfig.from_json(doc["chain"])
        except (KeyError, TypeError, LedgerFormatError) as exc:
            raise LedgerUnavailable(f"{path}: bad chain config: {exc}") from None
        names = doc.get("nodes")
        if names != [v.name for v in config.validators]:
            raise LedgerUnavailable(f"{path}: node names do not match the genesis validators")
        return cls(config, tuple(names))


def _write_key(path: Path, key: SigningKey) -> None:
    write_file(path, key.seed.hex().encode() + b"\n", secret=True)


def _read_key(path: Path, expected_public: bytes) -> SigningKey:
    """A node's key, which must be the one genesis names for that node."""
    try:
        key = SigningKey(bytes.fromhex(path.read_text().strip()))
    except FileNotFoundError:
        raise LedgerUnavailable(f"node key {path} is missing") from None
    except (OSError, ValueError) as exc:
        raise LedgerUnavailable(f"node key {path} does not hold a hex seed: {exc}") from None
    if key.public != expected_public:
        raise LedgerUnavailable(f"node key {path} is not the key genesis names for that node")
    return key


def _init_db(path: Path, config: chain.ChainConfig) -> None:
    store = SQLiteStore(path)
    try:
        audit.init_store(store, config)
    finally:
        store.close()


def _open_stores(layout: _Layout, count: int) -> list[SQLiteStore]:
    """Every node's database, which must exist: a new empty file would silently make a node
    start over from genesis instead of reporting the loss."""
    stores: list[SQLiteStore] = []
    try:
        for i in range(count):
            if not layout.db(i).is_file():
                raise LedgerUnavailable(f"node database {layout.db(i)} is missing")
            try:
                stores.append(SQLiteStore(layout.db(i)))
            except StoreCorrupted as exc:
                raise LedgerUnavailable(str(exc)) from None
    except BaseException:
        _close_all(stores)
        raise
    return stores


def _close_all(stores: Sequence[BlockStore]) -> None:
    for store in stores:
        store.close()


def _acquire_lock(layout: _Layout) -> int:
    """An exclusive, non-blocking flock on ``ledger.lock``; held until :meth:`close`."""
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LedgerUnavailable(f"{layout.directory} is open in another process") from None
    return fd


def _release_lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


# --- genesis and time ---------------------------------------------------------------------------


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_names(node_names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(node_names)
    if not names:
        raise ValueError("a ledger needs at least one node")
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError("node names must be distinct, non-empty strings")
    return names


def _genesis(
    keys: Sequence[SigningKey],
    names: Sequence[str],
    *,
    committee_size: int,
    chain_name: str,
    epoch_blocks: int | None,
) -> chain.ChainConfig:
    if not 1 <= committee_size <= len(names):
        raise ValueError(f"committee size must be between 1 and {len(names)} (the nodes)")
    if epoch_blocks is not None and epoch_blocks < 1:
        raise ValueError("an epoch must last at least one block")
    validators = tuple(
        election.Validator(k.public, name, INITIAL_REPUTATION)
        for k, name in zip(keys, names, strict=True)
    )
    extra = {} if epoch_blocks is None else {"epoch_length": epoch_blocks}
    return chain.ChainConfig(
        chain_name,
        validators,
        committee_size=committee_size,
        genesis_time_ms=_wall_ms(),
        **extra,
    )


def _head_time(store: BlockStore) -> int | None:
    try:
        head = store.get(store.height())
    except StoreCorrupted:
        return None
    return None if head is None else head.header.timestamp_ms


def _clock_start(stores: Sequence[BlockStore], wall_ms: int) -> int:
    """``max(wall clock, last block time + 1)``, read from the databases before any node
    boots (their timers are scheduled relative to it). The last block time taken is the
    (f+1)-th latest head time, f = ⌊(n−1)/3⌋, so up to f databases with a forged far-future
    head cannot drag the clock along; :func:`_advance_clock` then settles it from the
    chain the nodes verified while booting."""
    times = sorted((t for t in map(_head_time, stores) if t is not None), reverse=True)
    trusted = times[min(len(times) - 1, (len(stores) - 1) // 3)] if times else wall_ms
    return _checked_time(max(wall_ms, trusted + 1))


def _advance_clock(cluster: InProcessCluster) -> None:
    """Move the clock past the head every running node verified (never back)."""
    heads = [n.state.head_time_ms for n in cluster.nodes if n.alive]
    cluster.now_ms = _checked_time(max([cluster.now_ms, *(h + 1 for h in heads)]))


def _checked_time(ms: int) -> int:
    if ms > chain.MAX_TIMESTAMP_MS:
        raise LedgerUnavailable(f"clock {ms} ms is beyond the chain's limit; no block can follow")
    return ms


# --- the cluster --------------------------------------------------------------------------------


class _TolerantCluster(InProcessCluster):
    """An in-process cluster in which a node whose database or WAL does not load stays down
    (as if crashed) instead of aborting everyone's boot; the reason is kept per node."""

    def __init__(self, *args, **kwargs) -> None:
        self.boot_failures: dict[int, str] = {}
        super().__init__(*args, **kwargs)

    def _boot(self, node: Node, *, catch_up: bool) -> None:
        try:
            super()._boot(node, catch_up=catch_up)
        except _BOOT_ERRORS as exc:
            node.runtime = None
            node.incarnation += 1  # timers of the failed boot, if any, die with it
            self.boot_failures[node.index] = f"{type(exc).__name__}: {exc}"
        else:
            self.boot_failures.pop(node.index, None)


# --- batch checks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _View:
    """What a batch is checked against: one running node's committed state, its store (for
    replays) and its mempool (transactions handed over earlier that did not commit yet)."""

    state: chain.ChainState
    store: BlockStore
    pending: Mapping[tuple[bytes, int], str]  # (sender, nonce) -> txid


def _view(node: Node) -> _View:
    state = node.state
    pending = {
        (tx.sender, tx.nonce): tx.txid for tx in node.mempool.take(MAX_MEMPOOL, state.next_nonce)
    }
    return _View(state, node.store, pending)


def _malformed(tx: object) -> str | None:
    """Why ``tx`` would not survive the round trip through a stored block, if it would not
    (a committed block that no longer decodes would count as a corrupted database)."""
    if not isinstance(tx, Tx):
        return f"not a transaction: {type(tx).__name__}"
    try:
        again = Tx.from_json(json.loads(tx.encode()))
    except (LedgerFormatError, ValueError, TypeError, AttributeError) as exc:
        return f"malformed: {exc}"  # e.g. a missing field, a non-JSON body, a str kind
    return None if again.encode() == tx.encode() else "malformed: does not encode canonically"


def _nonce_problem(tx: Tx, view: _View, expected: dict[bytes, int]) -> str | None:
    """Nonces of one sender must continue its committed count without gaps, and must not
    collide with a different transaction still pending from an earlier submit."""
    want = expected.get(tx.sender, view.state.next_nonce(tx.sender))
    if tx.nonce < want:
        return f"stale nonce {tx.nonce} (the sender's next is {want}): replayed or used"
    held = view.pending.get((tx.sender, tx.nonce))
    if held is not None and held != tx.txid:
        return f"nonce {tx.nonce} is held by pending transaction {held[:12]} of this sender"
    if tx.nonce > want:
        return f"nonce gap: {tx.nonce} given, {want} expected next for this sender"
    expected[tx.sender] = want + 1
    return None


def _rejection(tx: Tx, view: _View, seen: set[str], expected: dict[bytes, int]) -> str | None:
    reason = _malformed(tx)
    if reason is not None:
        return reason
    if tx.chain != view.state.config.chain_id:
        return "signed for another chain (replayed from elsewhere?)"
    if tx.txid in seen:
        return "duplicate: twice in this batch"
    seen.add(tx.txid)
    where = view.store.find_tx(tx.txid)
    if where is not None:
        return f"duplicate: already committed at height {where[0]} (a replay)"
    try:
        tx.verify()
    except InvalidSignature:
        return "invalid signature"
    return _nonce_problem(tx, view, expected)


def _check_batch(txs: Sequence[Tx], view: _View) -> None:
    """Reject the whole batch before any of it reaches a node, so a refusal never leaves
    part of the batch committed behind the caller's back."""
    seen: set[str] = set()
    expected: dict[bytes, int] = {}
    for i, tx in enumerate(txs):
        reason = _rejection(tx, view, seen, expected)
        if reason is not None:
            raise TxRejected(reason, index=i)


# --- the ledger ---------------------------------------------------------------------------------


class EmbeddedLedger:
    """The consortium's nodes, opened in this process for one session; see the module doc.

    Not thread-safe: one caller drives it (the cluster is single-threaded by contract)."""

    def __init__(
        self, layout: _Layout, manifest: _Manifest, cluster: _TolerantCluster, lock_fd: int
    ) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self._layout, self._manifest = layout, manifest
        self._cluster, self._lock_fd = cluster, lock_fd
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        node_names: Sequence[str],
        *,
        committee_size: int = 4,
        chain_name: str = "medshare",
        epoch_blocks: int | None = None,
    ) -> EmbeddedLedger:
        """Generate node keys and genesis, write every file, then :meth:`open` the ledger.

        Refuses (``FileExistsError``) a directory that already holds a ledger or the
        remains of a half-created one. The manifest is written last, so a crash during
        creation never leaves something that opens as a ledger."""
        layout = _Layout(Path(directory))
        names = _check_names(node_names)
        existing = layout.existing_ledger_files()
        if existing:
            raise FileExistsError(f"{layout.directory} already holds a ledger ({existing[0]})")
        keys = [SigningKey.generate() for _ in names]
        config = _genesis(
            keys,
            names,
            committee_size=committee_size,
            chain_name=chain_name,
            epoch_blocks=epoch_blocks,
        )
        layout.key(0).parent.mkdir(mode=0o700, parents=True)
        for i, key in enumerate(keys):
            _write_key(layout.key(i), key)
        for i in range(len(keys)):
            _init_db(layout.db(i), config)
        write_file(layout.manifest, _Manifest(config, names).encode())
        return cls.open(layout.directory)

    @classmethod
    def open(cls, directory: Path) -> EmbeddedLedger:
        """Boot every node from its database and WAL; raises :class:`LedgerUnavailable` if the
        directory is no ledger, is open elsewhere, or no node can start."""
        layout = _Layout(Path(directory))
        manifest = _Manifest.load(layout)
        lock_fd = _acquire_lock(layout)
        try:
            cluster = cls._boot(layout, manifest)
        except BaseException:
            _release_lock(lock_fd)
            raise
        return cls(layout, manifest, cluster, lock_fd)

    @staticmethod
    def _boot(layout: _Layout, manifest: _Manifest) -> _TolerantCluster:
        validators = manifest.config.validators
        keys = [_read_key(layout.key(i), v.public) for i, v in enumerate(validators)]
        stores = _open_stores(layout, len(keys))
        try:
            start = _clock_start(stores, _wall_ms())
            # The nodes' databases are copies of one chain: verify each distinct block once
            # for this open, not once per node (a differing row is still verified on its own).
            cluster = _TolerantCluster(
                manifest.config,
                keys,
                stores,
                start_ms=start,
                regossip_ms=REGOSSIP_MS,
                replay_cache=ReplayCache(),
            )
            if not any(n.alive for n in cluster.nodes):
                why = "; ".join(
                    f"{manifest.names[i]}: {e}" for i, e in cluster.boot_failures.items()
                )
                raise LedgerUnavailable(f"no node starts: {why}")
            _advance_clock(cluster)
        except BaseException:
            _close_all(stores)
            raise
        return cluster

    def close(self) -> None:
        """Stop every node and close its database (pending, uncommitted transactions are
        dropped with the mempools); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for node in self._cluster.nodes:
                if node.alive:
                    self._cluster.crash(node.index)
            _close_all([node.store for node in self._cluster.nodes])
        finally:
            _release_lock(self._lock_fd)

    def __enter__(self) -> EmbeddedLedger:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------

    @property
    def node_names(self) -> tuple[str, ...]:
        return self._manifest.names

    @property
    def boot_failures(self) -> Mapping[str, str]:
        """Nodes that did not start (at open or restart) and why, by name."""
        return {self.node_names[i]: why for i, why in self._cluster.boot_failures.items()}

    def height(self) -> int:
        return self._top().state.height

    @property
    def chain_id(self) -> str:
        """What this consortium's transactions sign to name it (see ``ChainConfig.chain_id``)."""
        return self._manifest.config.chain_id

    def next_nonce(self, sender: bytes) -> int:
        """The sender's next nonce in the committed state (pending transactions not counted)."""
        return self._top().state.next_nonce(sender)

    def txs(self, kind: TxKind | None = None, start_height: int = 1) -> Iterator[CommittedTx]:
        """Committed transactions in chain order, up to the height at the time of the call.

        Blocks are read one query at a time, so the caller may submit while iterating."""
        node = self._top()
        return _committed_txs(node.store, kind, max(start_height, 1), node.state.height)

    def find(self, txid: str) -> CommittedTx | None:
        store = self._top().store
        where = store.find_tx(txid)
        return None if where is None else _committed_at(store, *where)

    def committee(self) -> tuple[str, ...]:
        """Names of the committee elected for the height being decided now."""
        node = self._top()
        return tuple(_name(node.state, member) for member in node.core.committee)

    def alive(self) -> list[bool]:
        self._check_open()
        return [node.alive for node in self._cluster.nodes]

    def verify(self) -> list[NodeCheck]:
        """Re-verify every node's database from genesis through a separate read-only
        connection (what is on disk, not what a running node holds in memory)."""
        self._check_open()
        return [_check_db(name, self._layout.db(i)) for i, name in enumerate(self.node_names)]

    # --- writing ---------------------------------------------------------------------------

    def submit(self, txs: Sequence[Tx]) -> list[CommittedTx]:
        """Commit ``txs`` and return them in the order given, or raise.

        The whole batch is checked first and refused as a whole (:class:`TxRejected`), so a
        refusal never leaves part of it committed. Then it goes to a running node, and the
        cluster runs block by block (every running node reaching each block) until every
        transaction is committed; :class:`LedgerUnavailable` if that takes more than a step
        budget (transactions already handed over stay pending for the rest of the session,
        and submitting the same transactions again resumes them)."""
        batch = list(txs)
        if not batch:
            return []
        node = self._top()
        _check_batch(batch, _view(node))
        self._require_quorum(node)
        handed, refusal = _hand_over(batch, node)
        committed = self._await(batch[:handed])
        if refusal is not None:
            raise TxRejected(refusal, index=handed, committed=committed)
        return committed

    def sign_and_submit(
        self, key: SigningKey, kind: TxKind, bodies: Sequence[Mapping]
    ) -> list[CommittedTx]:
        """Sign one transaction per body with consecutive nonces from the committed next
        nonce of ``key``, and :meth:`submit` them."""
        start = self.next_nonce(key.public)
        txs = []
        for i, body in enumerate(bodies):
            try:
                txs.append(Tx.create(kind, body, start + i, key, chain=self.chain_id))
            except ValueError as exc:
                raise TxRejected(f"malformed: {exc}", index=i) from None
        return self.submit(txs)

    # --- faults ----------------------------------------------------------------------------

    def kill_node(self, i: int) -> None:
        """Crash node ``i`` for the rest of this session; its database survives."""
        self._node(i)
        self._cluster.crash(i)

    def restart_node(self, i: int) -> None:
        """Reboot node ``i`` from its database and WAL, and run until it has caught up with
        the running nodes' head; :class:`LedgerUnavailable` if it does not start."""
        if self._node(i).alive:
            return
        self._cluster.restart(i)
        if not self._node(i).alive:
            why = self._cluster.boot_failures.get(i, "unknown")
            raise LedgerUnavailable(f"node {self.node_names[i]} does not start: {why}")
        target = max(n.state.height for n in self._cluster.nodes if n.alive)
        self._run_until(target, STEP_BUDGET)

    # --- internals -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerUnavailable("the ledger is closed")

    def _node(self, i: int) -> Node:
        self._check_open()
        if not 0 <= i < len(self._cluster.nodes):
            raise IndexError(f"no node {i}: the ledger has {len(self._cluster.nodes)} nodes")
        return self._cluster.node(i)

    def _top(self) -> Node:
        """The running node with the highest committed height (reads go there)."""
        self._check_open()
        running = [n for n in self._cluster.nodes if n.alive]
        if not running:
            raise LedgerUnavailable("no node is running")
        return max(running, key=lambda n: (n.state.height, -n.index))

    def _require_quorum(self, node: Node) -> None:
        """Fail at once, not after a step budget, when the committee deciding the next
        height cannot reach 2f+1 votes with the nodes that are running."""
        committee = node.core.committee
        up = [n for n in self._cluster.nodes if n.alive and n.public in committee]
        need = quorum(len(committee))
        if len(up) < need:
            down = [_name(node.state, m) for m in committee if m not in {n.public for n in up}]
            raise LedgerUnavailable(
                f"only {len(up)} of the {len(committee)} committee members for height "
                f"{node.core.height} are running (down: {', '.join(down)}); {need} are needed"
            )

    def _await(self, batch: Sequence[Tx]) -> list[CommittedTx]:
        """Run the cluster block by block until every transaction of ``batch`` is committed."""
        budget = STEP_BUDGET + STEPS_PER_TX * len(batch)
        found: dict[str, tuple[int, int]] = {}
        while True:
            node = self._top()
            for tx in batch:
                if tx.txid not in found:
                    where = node.store.find_tx(tx.txid)
                    if where is not None:
                        found[tx.txid] = where
            if len(found) == len(batch):
                return [_committed_at(node.store, *found[tx.txid]) for tx in batch]
            budget -= self._run_until(node.state.height + 1, budget, len(batch) - len(found))

    def _run_until(self, height: int, budget: int, waiting: int = 0) -> int:
        try:
            return self._cluster.run_until_height(height, max_steps=max(budget, 0))
        except LivenessError:
            up = sum(self.alive())
            pending = f"; {waiting} transaction(s) still pending" if waiting else ""
            raise LedgerUnavailable(
                f"no progress to height {height} within the step budget, with {up} of "
                f"{len(self.node_names)} nodes running{pending}"
            ) from None


def _hand_over(batch: Sequence[Tx], node: Node) -> tuple[int, str | None]:
    """Give the batch to ``node`` (which gossips it); returns how many it took and, if it
    refused one (e.g. mempool full), why. A transaction it already holds from an earlier,
    unfinished submit counts as taken."""
    runtime = node.runtime
    assert runtime is not None  # the caller picked a running node
    for i, tx in enumerate(batch):
        if tx.txid in runtime.mempool:
            continue
        try:
            runtime.submit(tx)
        except Rejected as exc:
            return i, str(exc)
    return len(batch), None


def _name(state: chain.ChainState, public: bytes) -> str:
    validator = state.validator(public)
    return validator.name if validator is not None else public.hex()[:16]


def _committed_at(store: BlockStore, height: int, index: int) -> CommittedTx:
    block = _block(store, height)
    return CommittedTx(height, index, block.header.timestamp_ms, block.txs[index])


def _block(store: BlockStore, height: int) -> Block:
    block = store.get(height)
    if block is None:
        raise StoreCorrupted(f"block {height} is indexed but missing")
    return block


def _committed_txs(
    store: BlockStore, kind: TxKind | None, start: int, stop: int
) -> Iterator[CommittedTx]:
    for height in range(start, stop + 1):
        block = _block(store, height)
        for index, tx in enumerate(block.txs):
            if kind is None or tx.kind == kind:
                yield CommittedTx(height, index, block.header.timestamp_ms, tx)


def _check_db(name: str, path: Path) -> NodeCheck:
    try:
        store = SQLiteStore(path, readonly=True)
    except StoreCorrupted as exc:
        return NodeCheck(name, False, -1, f"height 0: database does not open: {exc}")
    try:
        report = audit.verify_chain(store)
    finally:
        store.close()
    if report.ok:
        return NodeCheck(name, True, report.height, None)
    return NodeCheck(
        name, False, report.height, f"height {report.first_bad_height}: {report.reason}"
    )
