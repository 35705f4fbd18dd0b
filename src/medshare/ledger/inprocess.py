"""The ledger application in this process, without consensus: a harness for tests and
offline use behind the same :class:`~medshare.ledger.port.LedgerPort` as CometBFT.

It drives :class:`~medshare.ledger.app.abci.LedgerApplication` with CometBFT's own ABCI
messages, as one node whose whole committee always agrees: :meth:`InProcessLedger.submit`
runs ``CheckTx`` on each transaction, then one ``FinalizeBlock`` carrying them all and
``Commit``. It moves bytes and plays the engine's part only where CometBFT would:

* the commit report (``decided_last_commit``) says every member of the previous height's
  validator set signed; the proposer is the first member of this height's set;
* validator sets follow the application's ``ValidatorUpdates`` the way CometBFT applies
  them (updates returned by block h change the set of height h+2);
* the block hash is SHA-256 over the height, time, previous hash and transactions;
* block time is the wall clock, strictly increasing.

Which transaction is valid, how a block changes the state, reputation and elections: all
of that is the application's (:mod:`medshare.ledger.app.rules`), never decided here.

A refusal by ``CheckTx`` refuses the whole batch before any block is made (nothing of it
commits). Files, in the ledger folder::

    inprocess.json   genesis (app_state) and node names; written last at creation
    keys/<i>.key     node i's Ed25519 seed, hex, mode 0600 (its "validator key")
    app.db           the application's state (:class:`~medshare.ledger.app.store.StateStore`)
    blocks.db        the blocks: time, hash, proposer, each tx with its result code, and
                     the validator set of every height, so reads and verification work
                     across processes
    ledger.lock      flock'ed while open (one writer: two would race for heights)

The blocks are written (one SQLite transaction) before the application's ``Commit``; a
process killed between the two leaves the application one block behind, and the next
open replays that block to it, as CometBFT's handshake does.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from medshare.crypto.signing import SigningKey
from medshare.fileio import write_file
from medshare.ledger import election
from medshare.ledger.app.abci import LedgerApplication
from medshare.ledger.app.genesis import MEMBER_POWER, Genesis
from medshare.ledger.app.rules import address
from medshare.ledger.app.store import StateCorrupted, StateStore
from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci
from medshare.ledger.cometbft.proto.tendermint.types import validator_pb2
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

T = TypeVar("T")

MANIFEST = "inprocess.json"
FORMAT = "medshare-inprocess-ledger"
VERSION = 1
KEYS_DIR = "keys"
APP_DB = "app.db"
BLOCKS_DB = "blocks.db"
LOCK_FILE = "ledger.lock"
INITIAL_REPUTATION = 1000
BLOCK_HASH_DOMAIN = b"medshare/inprocess-block/v1"
CHECK_NAME = "in-process"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    time_ms INTEGER NOT NULL,
    proposer BLOB NOT NULL,
    app_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS txs (
    height INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    txid TEXT NOT NULL,
    kind TEXT NOT NULL,
    raw BLOB NOT NULL,
    code INTEGER NOT NULL,
    log TEXT NOT NULL,
    PRIMARY KEY (height, idx)
);
CREATE INDEX IF NOT EXISTS txs_by_id ON txs (txid);
CREATE TABLE IF NOT EXISTS validator_sets (height INTEGER PRIMARY KEY, members TEXT NOT NULL);
"""


@dataclass(frozen=True)
class _Block:
    """A stored block: what its ``FinalizeBlock`` request is rebuilt from."""

    height: int
    hash: bytes
    time_ms: int
    proposer: bytes
    app_hash: bytes
    txs: tuple[bytes, ...]
    codes: tuple[int, ...]


def block_hash(height: int, time_ms: int, previous: bytes, txs: Sequence[bytes]) -> bytes:
    h = hashlib.sha256(BLOCK_HASH_DOMAIN)
    h.update(height.to_bytes(8, "big") + time_ms.to_bytes(8, "big") + previous)
    for raw in txs:
        h.update(len(raw).to_bytes(4, "big") + raw)
    return h.digest()


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _timestamp(ms: int) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def _members(doc: str) -> tuple[bytes, ...]:
    return tuple(bytes.fromhex(m) for m in json.loads(doc))


def _apply_updates(members: Sequence[bytes], updates: Sequence[abci.ValidatorUpdate]):
    """CometBFT's validator set change: power 0 removes, any other power adds or keeps."""
    out = set(members)
    for update in updates:
        key = update.pub_key.ed25519
        if update.power == 0:
            out.discard(key)
        else:
            out.add(key)
    return tuple(sorted(out))


class _Blocks:
    """``blocks.db``."""

    def __init__(self, path: Path) -> None:
        # Used by one thread at a time, not always the one that opened it (the HTTP
        # server serialises its calls into the service on a worker thread).
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def height(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(height), 0) FROM blocks").fetchone()[0]

    def validators(self, height: int) -> tuple[bytes, ...]:
        row = self.db.execute(
            "SELECT members FROM validator_sets WHERE height = ?", (height,)
        ).fetchone()
        if row is None:
            raise LedgerUnavailable(f"blocks.db has no validator set for height {height}")
        return _members(row[0])

    def block(self, height: int) -> _Block:
        row = self.db.execute(
            "SELECT hash, time_ms, proposer, app_hash FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        if row is None:
            raise LedgerUnavailable(f"blocks.db has no block {height}")
        txs = self.db.execute(
            "SELECT raw, code FROM txs WHERE height = ? ORDER BY idx", (height,)
        ).fetchall()
        return _Block(
            height,
            row[0],
            row[1],
            row[2],
            row[3],
            tuple(raw for raw, _ in txs),
            tuple(code for _, code in txs),
        )

    def head(self) -> tuple[bytes, int]:
        """(hash, time) of the last block; (b"", 0) before block 1."""
        row = self.db.execute(
            "SELECT hash, time_ms FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        return (row[0], row[1]) if row is not None else (b"", 0)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")


def _finalize_request(blocks: _Blocks, block: _Block) -> abci.RequestFinalizeBlock:
    """The ``FinalizeBlock`` request of a stored block (the same bytes every time)."""
    votes = []
    if block.height > 1:
        votes = [
            abci.VoteInfo(
                validator=abci.Validator(address=address(m), power=MEMBER_POWER),
                block_id_flag=validator_pb2.BLOCK_ID_FLAG_COMMIT,
            )
            for m in blocks.validators(block.height - 1)
        ]
    return abci.RequestFinalizeBlock(
        txs=list(block.txs),
        decided_last_commit=abci.CommitInfo(round=0, votes=votes),
        hash=block.hash,
        height=block.height,
        time=_timestamp(block.time_ms),
        proposer_address=block.proposer,
    )


def _locked(method: Callable[..., T]) -> Callable[..., T]:
    """Run ``method`` holding the ledger's lock."""

    @functools.wraps(method)
    def locked(self: InProcessLedger, *args: Any, **kwargs: Any) -> T:
        with self._mutex:
            return method(self, *args, **kwargs)

    return locked


class InProcessLedger:
    """See the module docstring. Thread-safe: one lock orders every call (a hospital server
    reads and commits from several request threads)."""

    def __init__(
        self,
        directory: Path,
        genesis: Genesis,
        names: tuple[str, ...],
        app: LedgerApplication,
        state_store: StateStore,
        blocks: _Blocks,
        lock_fd: int,
    ) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self.directory = directory
        self._genesis, self._names = genesis, names
        self._app, self._state_store, self._blocks = app, state_store, blocks
        self._lock_fd = lock_fd
        self._keys: dict[int, SigningKey] = {}
        self._closed = False
        self._mutex = threading.RLock()

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        nodes: int,
        committee: int,
        epoch: int = 100,
        chain_name: str = "medshare",
        names: Sequence[str] | None = None,
    ) -> InProcessLedger:
        """Generate node keys and genesis, initialise the application (``InitChain``) and
        the block store, write the manifest last, then :meth:`open`. Refuses a folder that
        already holds a ledger (``FileExistsError``)."""
        directory = Path(directory)
        if not 1 <= committee <= nodes:
            raise ValueError(f"the committee must have 1..{nodes} members")
        existing = [p for p in (MANIFEST, KEYS_DIR, APP_DB, BLOCKS_DB) if (directory / p).exists()]
        if existing:
            raise FileExistsError(f"{directory} already holds a ledger ({existing[0]})")
        keys = [SigningKey.generate() for _ in range(nodes)]
        names = tuple(names) if names is not None else tuple(f"node-{i}" for i in range(nodes))
        if len(names) != nodes:
            raise ValueError(f"{nodes} nodes need {nodes} names, got {len(names)}")
        genesis = Genesis(
            chain_name,
            tuple(
                election.Validator(k.public, n, INITIAL_REPUTATION)
                for k, n in zip(keys, names, strict=True)
            ),
            epoch_length=epoch,
            committee_size=committee,
        )
        (directory / KEYS_DIR).mkdir(mode=0o700, parents=True)
        for i, key in enumerate(keys):
            write_file(
                directory / KEYS_DIR / f"{i}.key", key.seed.hex().encode() + b"\n", secret=True
            )
        state_store = StateStore(directory / APP_DB)
        blocks = _Blocks(directory / BLOCKS_DB)
        try:
            response = LedgerApplication(state_store).init_chain(
                abci.RequestInitChain(
                    chain_id=f"medshare-{genesis.chain_id}",
                    app_state_bytes=json.dumps(genesis.to_json()).encode(),
                    initial_height=1,
                )
            )
            first = _apply_updates((), response.validators)
            with blocks.transaction():
                for height in (1, 2):
                    blocks.db.execute(
                        "INSERT INTO validator_sets VALUES (?, ?)",
                        (height, json.dumps([m.hex() for m in first])),
                    )
        finally:
            state_store.close()
            blocks.close()
        doc = {"format": FORMAT, "version": VERSION, "genesis": genesis.to_json(), "nodes": names}
        write_file(directory / MANIFEST, (json.dumps(doc, indent=1) + "\n").encode())
        return cls.open(directory)

    @classmethod
    def open(cls, directory: Path) -> InProcessLedger:
        """Open the ledger in ``directory`` (replaying a block the application missed);
        :class:`LedgerUnavailable` if it is no ledger, damaged or open elsewhere."""
        directory = Path(directory)
        genesis, names = _load_manifest(directory)
        lock_fd = lock_file(directory / LOCK_FILE, f"{directory} is open in another process")
        state_store: StateStore | None = None
        blocks: _Blocks | None = None
        try:
            state_store = StateStore(directory / APP_DB)
            blocks = _Blocks(directory / BLOCKS_DB)
            app = LedgerApplication(state_store)
            ledger = cls(directory, genesis, names, app, state_store, blocks, lock_fd)
            ledger._handshake()
        except (StateCorrupted, sqlite3.DatabaseError) as exc:
            for part in (state_store, blocks):
                if part is not None:
                    part.close()
            unlock(lock_fd)
            raise LedgerUnavailable(f"the ledger in {directory} is damaged: {exc}") from None
        except BaseException:
            for part in (state_store, blocks):
                if part is not None:
                    part.close()
            unlock(lock_fd)
            raise
        return ledger

    def _handshake(self) -> None:
        """Bring the application up to the stored blocks (at most one behind)."""
        info = self._app.info(abci.RequestInfo())
        app_height, stored = info.last_block_height, self._blocks.height()
        if app_height == stored:
            return
        if app_height != stored - 1:
            raise StateCorrupted(
                f"the application is at height {app_height}, the blocks at {stored}"
            )
        block = self._blocks.block(stored)
        response = self._app.finalize_block(_finalize_request(self._blocks, block))
        if response.app_hash != block.app_hash:
            raise StateCorrupted(f"replaying block {stored} gives another app hash")
        self._app.commit(abci.RequestCommit())

    @_locked
    def close(self) -> None:
        """Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._state_store.close()
            self._blocks.close()
        finally:
            unlock(self._lock_fd)

    def __enter__(self) -> InProcessLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------

    @property
    def chain_id(self) -> str:
        return self._genesis.chain_id

    @property
    def node_names(self) -> tuple[str, ...]:
        return self._names

    def node_public(self, index: int) -> bytes:
        if not 0 <= index < len(self._names):
            raise LedgerUnavailable(f"no node {index}: the ledger has {len(self._names)} nodes")
        return self._genesis.nodes[index].public

    @_locked
    def node_key(self, index: int) -> SigningKey:
        if not 0 <= index < len(self._names):
            raise LedgerUnavailable(f"no node {index}: the ledger has {len(self._names)} nodes")
        key = self._keys.get(index)
        if key is None:
            path = self.directory / KEYS_DIR / f"{index}.key"
            try:
                key = SigningKey(bytes.fromhex(path.read_text().strip()))
            except (OSError, ValueError) as exc:
                raise LedgerUnavailable(f"node key {path} is unreadable: {exc}") from None
            if key.public != self._genesis.nodes[index].public:
                raise LedgerUnavailable(f"node key {path} is not the key genesis names")
            self._keys[index] = key
        return key

    @_locked
    def height(self) -> int:
        self._check_open()
        return self._blocks.height()

    @_locked
    def _query(self, path: str, data: bytes = b"") -> dict:
        self._check_open()
        response = self._app.query(abci.RequestQuery(path=path, data=data))
        if response.code != 0:
            raise LedgerUnavailable(f"query {path}: {response.log}")
        return json.loads(response.value)

    def next_nonce(self, sender: bytes) -> int:
        return int(self._query("/nonce", sender)["next_nonce"])

    def registered(self, public: bytes) -> str | None:
        return self._query("/identity", public)["identity"]

    def published(self, name: str) -> str | None:
        return self._query("/published", name.encode())["digest"]

    def committee(self) -> tuple[str, ...]:
        return tuple(m["name"] for m in self._query("/state")["committee"])

    def chain_nodes(self) -> dict[bytes, str]:
        nodes = self._query("/state")["nodes"]
        return {bytes.fromhex(n["public"]): n["name"] for n in nodes if not n["ejected"]}

    @_locked
    def txs(self, kind: TxKind | None = None, start_height: int = 1) -> Iterator[CommittedTx]:
        self._check_open()
        query = (
            "SELECT t.height, t.idx, b.time_ms, t.raw FROM txs t JOIN blocks b USING (height) "
            "WHERE t.code = 0 AND t.height >= ?"
        )
        params: list[object] = [max(start_height, 1)]
        if kind is not None:
            query += " AND t.kind = ?"
            params.append(TxKind(kind).value)
        rows = self._blocks.db.execute(query + " ORDER BY t.height, t.idx", params).fetchall()
        return iter([CommittedTx(h, i, t, Tx.decode(raw)) for h, i, t, raw in rows])

    @_locked
    def find(self, txid: str) -> CommittedTx | None:
        self._check_open()
        row = self._blocks.db.execute(
            "SELECT t.height, t.idx, b.time_ms, t.raw FROM txs t JOIN blocks b USING (height) "
            "WHERE t.txid = ? AND t.code = 0",
            (txid,),
        ).fetchone()
        return None if row is None else CommittedTx(row[0], row[1], row[2], Tx.decode(row[3]))

    # --- writing ---------------------------------------------------------------------------

    @_locked
    def submit(
        self, txs: Sequence[Tx], *, on_broadcast: Callable[[], None] | None = None
    ) -> list[CommittedTx]:
        """``CheckTx`` each (a refusal refuses the batch: nothing commits), then one block.
        A transaction the rules skip in the block raises :class:`TxRejected` after the
        block is committed, with the applied ones in ``committed``."""
        self._check_open()
        batch = list(txs)
        if not batch:
            return []
        raws = []
        for i, tx in enumerate(batch):
            raw = tx.encode()
            response = self._app.check_tx(abci.RequestCheckTx(tx=raw, type=abci.CheckTxType.NEW))
            if response.code != 0:
                self._drop_mempool()
                raise TxRejected(response.log, index=i, code=response.code)
            raws.append(raw)
        if on_broadcast is not None:
            on_broadcast()
        block, codes, logs = self._commit_block(batch, raws)
        committed = [
            CommittedTx(block.height, i, block.time_ms, tx)
            for i, tx in enumerate(batch)
            if codes[i] == 0
        ]
        for i, code in enumerate(codes):
            if code != 0:
                raise TxRejected(logs[i], index=i, code=code, committed=committed)
        return committed

    def sign_and_submit(
        self, key: SigningKey, kind: TxKind, bodies: Sequence[Mapping]
    ) -> list[CommittedTx]:
        return self.submit(sign(self, key, kind, bodies))

    def _drop_mempool(self) -> None:
        """Forget transactions admitted by ``CheckTx`` for a batch that was refused (a node
        restart empties its mempool the same way)."""
        self._app = LedgerApplication(self._state_store)

    def _commit_block(
        self, batch: Sequence[Tx], raws: Sequence[bytes]
    ) -> tuple[_Block, list[int], list[str]]:
        previous, last_time = self._blocks.head()
        height = self._blocks.height() + 1
        when = max(_wall_ms(), last_time + 1)
        members = self._blocks.validators(height)
        block = _Block(
            height,
            block_hash(height, when, previous, raws),
            when,
            address(members[0]),
            b"",
            tuple(raws),
            (),
        )
        response = self._app.finalize_block(_finalize_request(self._blocks, block))
        codes = [r.code for r in response.tx_results]
        logs = [r.log for r in response.tx_results]
        following = _apply_updates(self._blocks.validators(height + 1), response.validator_updates)
        db = self._blocks.db
        with self._blocks.transaction():
            db.execute(
                "INSERT INTO blocks VALUES (?, ?, ?, ?, ?)",
                (height, block.hash, when, block.proposer, response.app_hash),
            )
            db.executemany(
                "INSERT INTO txs VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (height, i, tx.txid, tx.kind.value, raws[i], codes[i], logs[i])
                    for i, tx in enumerate(batch)
                ],
            )
            db.execute(
                "INSERT OR REPLACE INTO validator_sets VALUES (?, ?)",
                (height + 2, json.dumps([m.hex() for m in following])),
            )
        self._app.commit(abci.RequestCommit())
        return block, codes, logs

    # --- verification ----------------------------------------------------------------------

    @_locked
    def verify(self) -> list[NodeCheck]:
        """Replay every stored block from genesis through a fresh application in memory:
        each block's hash, every result code, every app hash and validator set must be
        what was stored. One entry (the harness is one node)."""
        self._check_open()
        store = StateStore(Path(":memory:"))
        height = 0
        try:
            app = LedgerApplication(store)
            response = app.init_chain(
                abci.RequestInitChain(app_state_bytes=json.dumps(self._genesis.to_json()).encode())
            )
            first = _apply_updates((), response.validators)
            for h in (1, 2):
                if self._blocks.validators(h) != first:
                    return [NodeCheck(CHECK_NAME, False, 0, f"height {h}: wrong validator set")]
            previous = b""
            for h in range(1, self._blocks.height() + 1):
                block = self._blocks.block(h)
                problem = self._replay(app, block, previous)
                if problem is not None:
                    return [NodeCheck(CHECK_NAME, False, height, f"height {h}: {problem}")]
                previous, height = block.hash, h
        except (LedgerUnavailable, LedgerFormatError, sqlite3.DatabaseError) as exc:
            return [NodeCheck(CHECK_NAME, False, height, f"height {height + 1}: {exc}")]
        finally:
            store.close()
        return [NodeCheck(CHECK_NAME, True, height, None)]

    def _replay(self, app: LedgerApplication, block: _Block, previous: bytes) -> str | None:
        if block.hash != block_hash(block.height, block.time_ms, previous, block.txs):
            return "block hash does not match its contents"
        members = self._blocks.validators(block.height)
        if not members or block.proposer != address(members[0]):
            return "proposer is not the first member of the validator set"
        response = app.finalize_block(_finalize_request(self._blocks, block))
        codes = tuple(r.code for r in response.tx_results)
        if codes != block.codes:
            return f"result codes {list(codes)}, stored {list(block.codes)}"
        if response.app_hash != block.app_hash:
            return "app hash differs from the stored one"
        following = _apply_updates(
            self._blocks.validators(block.height + 1), response.validator_updates
        )
        if self._blocks.validators(block.height + 2) != following:
            return f"validator set of height {block.height + 2} differs from the updates"
        app.commit(abci.RequestCommit())
        return None

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerUnavailable("the ledger is closed")


def _load_manifest(directory: Path) -> tuple[Genesis, tuple[str, ...]]:
    path = directory / MANIFEST
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise LedgerUnavailable(f"{directory} holds no in-process ledger (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise LedgerUnavailable(f"{path} does not read as JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise LedgerUnavailable(f"{path} is not an in-process ledger manifest (version {VERSION})")
    try:
        genesis = Genesis.from_json(doc["genesis"])
        names = tuple(str(n) for n in doc["nodes"])
    except (KeyError, TypeError, LedgerFormatError) as exc:
        raise LedgerUnavailable(f"{path}: {exc}") from None
    if names != tuple(v.name for v in genesis.nodes):
        raise LedgerUnavailable(f"{path}: node names do not match the genesis")
    return genesis, names
