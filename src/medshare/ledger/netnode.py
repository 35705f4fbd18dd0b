"""A ledger node as an operating-system process: one NodeRuntime, HTTP transport, real clock.

Threads and who owns what:

* the **event loop** (the main thread, :meth:`NodeProcess.run`) is the only code that
  touches the runtime, its core, mempool and SQLite store. Every input reaches it through
  one inbox: peer messages, client submissions, read queries and timers (a heap against
  ``time.monotonic()``);
* **HTTP server threads** (``ThreadingHTTPServer``) only decode requests and enqueue them;
  a request that needs an answer (``/tx``, ``/status``, ``/blocks``) waits for the loop
  to run it (bounded);
* one **sender thread per peer** drains a bounded queue with a persistent HTTP/1.1
  connection and short timeouts. A message that cannot be queued or sent is dropped:
  consensus tolerates loss (rounds time out) and sync recovers missed blocks. A
  :class:`~medshare.ledger.node.SyncRequest` to a peer becomes ``GET /blocks`` on that
  peer, whose answer comes back into the inbox as a :class:`~medshare.ledger.node.SyncReply`.

Write-ahead holds across processes: a ``Persist`` is on disk (SQLite, synchronous=FULL)
before the ``Broadcast`` after it is even queued, so a node killed at any instant and
restarted from its database never signs a conflicting vote; it replays its chain from
genesis, resumes from the WAL record and catches up from a peer.

Endpoints (canonical JSON in and out):

* ``POST /consensus`` ``{"from": <sender public hex>, "message": {"type", "body"}}``
  (proposal, vote, tx gossip, sync request/reply) → 202; 403 for an unknown sender;
* ``POST /tx`` a signed transaction → 200 ``{"txid"}`` or 400 ``{"error"}``;
* ``GET /status``, ``GET /blocks?from=H&limit=L``, ``GET /tx/<txid>`` (404 if not
  committed), ``GET /nonce/<sender public hex>`` (the sender's next committed nonce).

Transport is not authenticated (the node listens on 127.0.0.1 by default): everything that
changes state is signed (votes, proposals, transactions, certificates), so a forged message
is rejected by the core; the ``from`` field only steers relaying and replies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import heapq
import http.client
import itertools
import json
import logging
import queue
import signal
import stat
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from medshare.crypto import signing
from medshare.ledger import chain
from medshare.ledger.consensus import ConsensusConfig
from medshare.ledger.node import (
    SYNC_BATCH,
    Message,
    NodeRuntime,
    Rejected,
    SyncReply,
    SyncRequest,
    TimerEvent,
    message_from_json,
    message_to_json,
)
from medshare.ledger.store import SQLiteStore
from medshare.ledger.types import MAX_TX_BYTES, Block, LedgerFormatError, Tx, canonical

log = logging.getLogger("medshare.node")

DEFAULT_HOST = "127.0.0.1"
MAX_BODY_BYTES = 64 * 1024 * 1024  # a sync reply of 64 full blocks fits
MAX_INBOX = 20_000
CALL_TIMEOUT_S = 10.0

# Real-time defaults for a network on one machine (ms).
LOCAL_CONSENSUS = ConsensusConfig(
    propose_timeout_ms=400,
    propose_delta_ms=200,
    prevote_timeout_ms=200,
    prevote_delta_ms=100,
    precommit_timeout_ms=200,
    precommit_delta_ms=100,
)


class NodeError(Exception):
    """A node that cannot start or run (bad config, key, port in use, db locked)."""


class Unavailable(Exception):
    """The event loop cannot answer now (busy, stopping or stopped): HTTP 503."""


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerConfig:
    name: str
    public: bytes
    url: str

    def to_json(self) -> dict:
        return {"name": self.name, "public": self.public.hex(), "url": self.url}

    @classmethod
    def from_json(cls, doc: Any) -> PeerConfig:
        public = bytes.fromhex(doc["public"])
        if len(public) != signing.PUBLIC_KEY_BYTES:
            raise ValueError(f"peer {doc['name']!r}: public key must be 32 bytes of hex")
        _split_url(str(doc["url"]))
        return cls(str(doc["name"]), public, str(doc["url"]))


@dataclass(frozen=True)
class NodeConfig:
    """One node's configuration file. Relative paths are relative to the file's folder."""

    name: str
    key_file: Path
    port: int
    db: Path
    chain: chain.ChainConfig
    peers: tuple[PeerConfig, ...] = ()
    host: str = DEFAULT_HOST
    consensus: ConsensusConfig = field(default_factory=lambda: LOCAL_CONSENSUS)
    empty_block_interval_ms: int = 250
    batch_wait_ms: int = 20
    relay: bool = False  # every node sends to every peer directly
    sync_retry_ms: int = 1000
    regossip_ms: int = 500  # re-send own messages when nothing committed for this long

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "key_file": str(self.key_file),
            "host": self.host,
            "port": self.port,
            "db": str(self.db),
            "peers": [peer.to_json() for peer in self.peers],
            "chain": self.chain.to_json(),
            "consensus": dataclasses.asdict(self.consensus),
            "empty_block_interval_ms": self.empty_block_interval_ms,
            "batch_wait_ms": self.batch_wait_ms,
            "relay": self.relay,
            "sync_retry_ms": self.sync_retry_ms,
            "regossip_ms": self.regossip_ms,
        }

    @classmethod
    def from_json(cls, doc: Any, base: Path | None = None) -> NodeConfig:
        base = base or Path.cwd()
        try:
            known = {f.name for f in dataclasses.fields(ConsensusConfig)}
            timeouts = dict(doc.get("consensus", {}))
            unknown = set(timeouts) - known
            if unknown:
                raise ValueError(f"unknown consensus settings: {', '.join(sorted(unknown))}")
            consensus = dataclasses.replace(
                LOCAL_CONSENSUS, **{k: int(v) for k, v in timeouts.items()}
            )
            port = int(doc["port"])
            if not 0 < port < 65536:
                raise ValueError(f"port {port} out of range")
            return cls(
                name=str(doc["name"]),
                key_file=base / str(doc["key_file"]),
                port=port,
                db=base / str(doc["db"]),
                chain=chain.ChainConfig.from_json(doc["chain"]),
                peers=tuple(PeerConfig.from_json(p) for p in doc.get("peers", [])),
                host=str(doc.get("host", DEFAULT_HOST)),
                consensus=consensus,
                empty_block_interval_ms=int(doc.get("empty_block_interval_ms", 250)),
                batch_wait_ms=int(doc.get("batch_wait_ms", 20)),
                relay=bool(doc.get("relay", False)),
                sync_retry_ms=int(doc.get("sync_retry_ms", 1000)),
                regossip_ms=int(doc.get("regossip_ms", 500)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise NodeError(f"malformed node config: {detail}") from None

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise NodeError(f"no such config file: {path}") from None
        except (OSError, ValueError) as exc:
            raise NodeError(f"cannot read config {path}: {exc}") from None
        if not isinstance(doc, dict):
            raise NodeError(f"config {path} is not a JSON object")
        return cls.from_json(doc, path.resolve().parent)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def load_key(path: Path) -> signing.SigningKey:
    """A hex Ed25519 seed from a file readable by its owner only (0600)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except FileNotFoundError:
        raise NodeError(f"no such key file: {path}") from None
    except OSError as exc:
        raise NodeError(f"cannot read key file {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise NodeError(f"key file {path} is accessible by others; chmod 600 it")
    try:
        return signing.SigningKey(bytes.fromhex(text))
    except ValueError:
        raise NodeError(f"key file {path} does not hold a 32-byte hex seed") from None


def _split_url(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError(f"peer url must be http://host:port, got {url!r}")
    return parts.hostname, parts.port


# --- client side helper -------------------------------------------------------------------------


def request_json(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """One HTTP request with a canonical-JSON body; returns (status, decoded JSON body).
    Connection errors raise ``OSError`` (``urllib.error.URLError`` is one)."""
    data = None if body is None else canonical(body)
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, {"error": raw.decode(errors="replace")}


# --- transport ----------------------------------------------------------------------------------

_STOP = object()


class _PeerLink(threading.Thread):
    """Sends one peer's queued messages over a persistent connection; drops on failure."""

    def __init__(
        self,
        peer: PeerConfig,
        deliver: Callable[[bytes, Message], None],
        queue_size: int,
        timeout_s: float,
    ) -> None:
        super().__init__(name=f"send-{peer.name}", daemon=True)
        self.peer = peer
        self.host, self.port = _split_url(peer.url)
        self._deliver = deliver
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._timeout = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._up = True
        self.dropped = 0

    def offer(self, item: bytes | SyncRequest) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def stop(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=1.0)

    def run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            try:
                if isinstance(item, SyncRequest):
                    self._sync(item.from_height)
                else:
                    self._request("POST", "/consensus", item)
            except (OSError, http.client.HTTPException, LedgerFormatError, ValueError) as exc:
                self.dropped += 1
                self._close()
                if self._up:
                    self._up = False
                    log.warning("peer %s unreachable (%s); dropping", self.peer.name, exc)
            else:
                if not self._up:
                    self._up = True
                    log.warning("peer %s reachable again", self.peer.name)
        self._close()

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (0, 1):  # a kept-alive connection the peer closed: retry once
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self._timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._close()
                if attempt:
                    raise
                continue
            if resp.status >= 300:
                raise http.client.HTTPException(f"{self.peer.name}: HTTP {resp.status}")
            return data
        raise AssertionError("unreachable")  # pragma: no cover

    def _sync(self, from_height: int) -> None:
        data = self._request("GET", f"/blocks?from={from_height}&limit={SYNC_BATCH}")
        self._deliver(self.peer.public, SyncReply.from_json(json.loads(data)))

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class HttpTransport:
    """The :class:`~medshare.ledger.node.Transport` port over HTTP; peers are public keys."""

    def __init__(
        self,
        own: bytes,
        peers: Sequence[PeerConfig],
        deliver: Callable[[bytes, Message], None],
        *,
        queue_size: int = 1000,
        timeout_s: float = 2.0,
    ) -> None:
        self._own = own.hex()
        self._links = {p.public: _PeerLink(p, deliver, queue_size, timeout_s) for p in peers}
        self._order = [p.public for p in peers]

    def peers(self) -> list[bytes]:
        return self._order

    def send(self, dest: int | bytes, payload: Message) -> None:
        link = self._links.get(dest) if isinstance(dest, bytes) else None
        if link is None:
            return
        link.offer(payload if isinstance(payload, SyncRequest) else self._encode(payload))

    def broadcast(self, payload: Message) -> None:
        data = self._encode(payload)
        for link in self._links.values():
            link.offer(data)

    def _encode(self, payload: Message) -> bytes:
        return canonical({"from": self._own, "message": message_to_json(payload)})

    def start(self) -> None:
        for link in self._links.values():
            link.start()

    def stop(self) -> None:
        for link in self._links.values():
            link.stop()
        for link in self._links.values():
            link.join(timeout=2.0)

    @property
    def dropped(self) -> int:
        return sum(link.dropped for link in self._links.values())


# --- the process --------------------------------------------------------------------------------


class _WallClock:
    """The :class:`~medshare.ledger.node.Clock` port: wall time for timestamps, a heap of
    timers against the monotonic clock (drained by the event loop)."""

    def __init__(self) -> None:
        self._timers: list[tuple[float, int, TimerEvent]] = []
        self._seq = itertools.count()

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def schedule(self, delay_ms: int, event: TimerEvent) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay_ms / 1000, next(self._seq), event))

    def wait_s(self, cap: float) -> float:
        if not self._timers:
            return cap
        return min(cap, max(0.0, self._timers[0][0] - time.monotonic()))

    def due(self) -> list[TimerEvent]:
        now, out = time.monotonic(), []
        while self._timers and self._timers[0][0] <= now:
            out.append(heapq.heappop(self._timers)[2])
        return out


class _Call:
    """A function the event loop runs for an HTTP thread, which waits for the result."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class NodeProcess:
    """Everything of one node process. ``run()`` blocks in the event loop until
    :meth:`stop` (safe from a signal handler); then the server, senders and db close."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.key = load_key(config.key_file)
        if not config.chain.validators:
            raise NodeError("the chain config has no validators")
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopping = False
        self._lock = _lock_db(config.db)
        try:
            self._server = _make_server(self, config.host, config.port)
        except BaseException:
            self._lock.close()
            raise
        try:
            self.store = SQLiteStore(config.db)
        except BaseException:
            self._server.server_close()
            self._lock.close()
            raise
        self.clock = _WallClock()
        peers = [p for p in config.peers if p.public != self.key.public]
        self.transport = HttpTransport(self.key.public, peers, self.enqueue_message)
        self._known = {p.public for p in peers}
        self.runtime = NodeRuntime(
            self.key,
            config.chain,
            self.store,
            self.transport,
            self.clock,
            consensus=config.consensus,
            relay=config.relay,
            empty_block_interval_ms=config.empty_block_interval_ms,
            batch_wait_ms=config.batch_wait_ms,
            sync_retry_ms=config.sync_retry_ms,
            regossip_ms=config.regossip_ms,
            on_commit=self._log_commit,
        )

    # --- called from any thread ------------------------------------------------------------

    def enqueue_message(self, src: bytes, message: Message) -> bool:
        if src not in self._known or self._inbox.qsize() >= MAX_INBOX:
            return False
        self._inbox.put(("msg", src, message))
        return True

    def call(self, fn: Callable[[], Any], timeout: float = CALL_TIMEOUT_S) -> Any:
        """Run ``fn`` on the event loop and return its result (or raise its exception)."""
        item = _Call(fn)
        self._inbox.put(("call", item))
        if not item.done.wait(timeout):
            raise Unavailable("node is busy; retry")
        if item.error is not None:
            raise item.error
        return item.result

    def stop(self) -> None:
        """Ask the loop to finish (reentrant: SimpleQueue.put is safe in a signal handler)."""
        self._stopping = True
        self._inbox.put(("stop",))

    def is_peer(self, public: bytes) -> bool:
        return public in self._known

    # --- the event loop --------------------------------------------------------------------

    def run(self) -> None:
        server = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        try:
            self.transport.start()
            self.runtime.start(catch_up=True)
            server.start()
            log.info(
                "listening on %s at height %d (%d peers)",
                self.config.url,
                self.runtime.state.height,
                len(self._known),
            )
            while not self._stopping:
                try:
                    item = self._inbox.get(timeout=self.clock.wait_s(0.5))
                except queue.Empty:
                    item = None
                if item is not None:
                    self._handle(item)
                for event in self.clock.due():
                    self.runtime.fire(event)
        finally:
            self.runtime.halt()
            self._drain_calls()
            if server.is_alive():
                self._server.shutdown()
            self._server.server_close()
            self.transport.stop()
            height = self.store.height()
            self.store.close()
            self._lock.close()
            log.info("stopped at height %d", height)

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "msg":
            self.runtime.receive(item[1], item[2])
        elif kind == "call":
            call: _Call = item[1]
            try:
                call.result = call.fn()
            except Rejected as exc:
                call.error = exc
            except BaseException:
                call.error = Unavailable("internal error; the node stopped")
                raise  # fail-stop: a driver bug must not leave a half-updated node running
            finally:
                call.done.set()

    def _drain_calls(self) -> None:
        """Release HTTP threads still waiting on the loop (it is gone)."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item[0] == "call":
                item[1].error = Unavailable("node is shutting down")
                item[1].done.set()

    def _log_commit(self, block: Block) -> None:
        cert = block.certificate
        log.info(
            "committed height=%d hash=%s txs=%d round=%d signers=%d",
            block.height,
            block.hash[:16],
            len(block.txs),
            cert.round if cert is not None else -1,
            len(cert.signatures) if cert is not None else 0,
        )

    # --- queries the HTTP threads run on the loop ------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "public": self.key.public.hex(),
            "url": self.config.url,
            **self.runtime.status(),
            "dropped_sends": self.transport.dropped,
        }


def _lock_db(db: Path):
    """Hold an exclusive lock next to the database: two processes on one db could sign
    conflicting votes."""
    db.parent.mkdir(parents=True, exist_ok=True)
    handle = open(db.with_name(db.name + ".lock"), "a+")  # noqa: SIM115 - held for the run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise NodeError(f"database {db} is in use by another node process") from None
    return handle


# --- HTTP ---------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for the peers' sender threads
    server_version = "medshare-node"
    timeout = 30  # idle keep-alive connections close
    node: NodeProcess  # set on the subclass made by _make_server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one log line per block, not per request

    def _reply(self, status: int, doc: Any) -> None:
        data = canonical(doc)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self, limit: int) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._reply(411, {"error": "Content-Length required"})
            return None
        if not 0 <= length <= limit:
            self._reply(413, {"error": f"body larger than {limit} bytes"})
            self.close_connection = True
            return None
        return self.rfile.read(length)

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return self.node.call(fn)
        except Unavailable as exc:
            self._reply(503, {"error": str(exc)})
            raise _Answered from None

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path == "/consensus":
                self._post_consensus()
            elif path == "/tx":
                self._post_tx()
            else:
                self._reply(404, {"error": f"no such endpoint: POST {path}"})
        except _Answered:
            pass

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        path = parts.path.rstrip("/")
        try:
            if path == "/status":
                self._reply(200, self._call(self.node.status))
            elif path == "/blocks":
                self._get_blocks(urllib.parse.parse_qs(parts.query))
            elif path.startswith("/tx/"):
                self._get_tx(path.removeprefix("/tx/").lower())
            elif path.startswith("/nonce/"):
                self._get_nonce(path.removeprefix("/nonce/").lower())
            else:
                self._reply(404, {"error": f"no such endpoint: GET {path}"})
        except _Answered:
            pass

    def _post_consensus(self) -> None:
        data = self._body(MAX_BODY_BYTES)
        if data is None:
            return
        try:
            doc = json.loads(data)
            src = bytes.fromhex(doc["from"])
            message = message_from_json(doc["message"])
        except (ValueError, KeyError, TypeError, LedgerFormatError) as exc:
            self._reply(400, {"error": f"malformed message: {exc}"})
            return
        if not self.node.is_peer(src):
            self._reply(403, {"error": "unknown sender"})
        elif not self.node.enqueue_message(src, message):
            self._reply(503, {"error": "inbox full"})
        else:
            self._reply(202, {"ok": True})

    def _post_tx(self) -> None:
        data = self._body(MAX_TX_BYTES)
        if data is None:
            return
        try:
            tx = Tx.decode(data)
        except LedgerFormatError as exc:
            self._reply(400, {"error": f"malformed transaction: {exc}"})
            return
        try:
            txid = self._call(lambda: self.node.runtime.submit(tx))
        except Rejected as exc:
            self._reply(400, {"error": str(exc)})
            return
        self._reply(200, {"txid": txid})

    def _get_blocks(self, query: dict[str, list[str]]) -> None:
        try:
            start = int(query.get("from", ["1"])[0])
            limit = min(int(query.get("limit", [str(SYNC_BATCH)])[0]), SYNC_BATCH)
        except ValueError:
            self._reply(400, {"error": "from and limit must be integers"})
            return
        blocks = self._call(lambda: self.node.runtime.blocks(start, limit))
        self._reply(200, {"blocks": [block.to_json() for block in blocks]})

    def _get_tx(self, txid: str) -> None:
        where = self._call(lambda: self.node.runtime.store.find_tx(txid))
        if where is None:
            self._reply(404, {"error": f"transaction {txid} is not committed here"})
        else:
            self._reply(200, {"txid": txid, "height": where[0], "index": where[1]})

    def _get_nonce(self, sender: str) -> None:
        try:
            public = bytes.fromhex(sender)
        except ValueError:
            self._reply(400, {"error": "sender must be a hex public key"})
            return
        nonce = self._call(lambda: self.node.runtime.state.next_nonce(public))
        self._reply(200, {"sender": sender, "next_nonce": nonce})


class _Answered(Exception):
    """The handler already replied (e.g. 503); unwind."""


class _Server(ThreadingHTTPServer):
    block_on_close = False  # handler threads are daemons; keep-alive ones may idle

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client went away
        log.exception("error answering %s", client_address)


def _make_server(node: NodeProcess, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("NodeHandler", (_Handler,), {"node": node})
    try:
        server = _Server((host, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise NodeError(f"port {port} on {host} is already in use") from None
        raise NodeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return server


def serve(config_path: Path) -> None:
    """Run a node in the foreground until SIGTERM/SIGINT (``medshare node``)."""
    config = NodeConfig.load(config_path)
    if not log.handlers:
        handler = logging.StreamHandler()
        name = config.name.replace("%", "%%")
        handler.setFormatter(logging.Formatter(f"%(asctime)s {name} %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    node = NodeProcess(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: node.stop())
    node.run()
