"""The ABCI socket server: CometBFT's connections to our application.

Wire format (CometBFT v0.38 ``abci/types/messages.go``): each message is a protobuf
``Request`` or ``Response`` preceded by its length as an unsigned varint. CometBFT opens
four connections (consensus, mempool, query, snapshot) and sends requests on each in
order, expecting responses in the same order; it sends ``Flush`` when it wants buffered
responses written out. All connections are served by one asyncio loop, so application
methods run one at a time.

CometBFT's socket client asks for a flush after almost every request (its flush throttle
is 20 ns), so answering each ``Flush`` with its own write would cost one system call per
transaction. The server instead reads what the socket holds, answers every complete
request in it, and writes the answers once, if a ``Flush`` was among them: the same
answers in the same order, one write per read. Reading eagerly also keeps CometBFT's
writer from blocking on a full socket, during which its flush timer spins.

The server listens on a Unix socket in the node's own folder: only processes of the same
user can reach it, never another machine or another local user.

An exception inside the application is a bug, not bad input (transactions are judged by
return codes): the server answers it with ABCI's ``exception`` response, which makes
CometBFT stop instead of going on with a state it cannot trust.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from google.protobuf.message import DecodeError

from medshare.ledger.app.abci import LedgerApplication
from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci
from medshare.ledger.cometbft.varint import uvarint

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a decided block is at most consensus max_bytes (≪)
UNIX_PATH_MAX = 107
READ_CHUNK_BYTES = 1024 * 1024


class WireError(Exception):
    """A malformed frame: the connection is closed."""


def encode_frame(message: bytes) -> bytes:
    """``message`` preceded by its length as an unsigned varint."""
    return uvarint(len(message)) + message


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's payload, or None at a clean end of stream (reads no further than
    the frame, so the next one stays in ``reader``)."""
    prefix = bytearray()
    while True:
        try:
            prefix += await reader.readexactly(1)
        except asyncio.IncompleteReadError:
            if not prefix:
                return None
            raise WireError("stream ended inside a length prefix") from None
        length, _ = _prefix(prefix, 0)
        if length is not None:
            break
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise WireError("stream ended inside a message") from None


class FrameBuffer:
    """Bytes read so far, split into complete frames (the remainder waits for more)."""

    def __init__(self) -> None:
        self._data = bytearray()

    def __len__(self) -> int:
        return len(self._data)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk``; return the payloads of every frame now complete, in order."""
        self._data += chunk
        frames: list[bytes] = []
        start = 0
        data = self._data
        while True:
            length, body = _prefix(data, start)
            if length is None or body + length > len(data):
                break
            frames.append(bytes(data[body : body + length]))
            start = body + length
        del data[:start]
        return frames


def _prefix(data: bytearray, start: int) -> tuple[int | None, int]:
    """The length prefix at ``start`` and where its payload begins (None: incomplete)."""
    length = 0
    for i, shift in enumerate(range(0, 64, 7)):
        if start + i >= len(data):
            return None, 0
        byte = data[start + i]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if length > MAX_MESSAGE_BYTES:
                raise WireError(f"message of {length} bytes exceeds {MAX_MESSAGE_BYTES}")
            return length, start + i + 1
    raise WireError("length prefix longer than 10 bytes")


# The Request oneof fields answered by the application method of the same name.
_APP_METHODS = frozenset(
    {
        "info",
        "init_chain",
        "query",
        "check_tx",
        "commit",
        "list_snapshots",
        "offer_snapshot",
        "load_snapshot_chunk",
        "apply_snapshot_chunk",
        "prepare_proposal",
        "process_proposal",
        "extend_vote",
        "verify_vote_extension",
        "finalize_block",
    }
)


def handle(app: LedgerApplication, request: abci.Request) -> abci.Response:
    """One request → one response (pure dispatch; exceptions become ``exception``)."""
    kind = request.WhichOneof("value")
    if kind == "echo":
        return abci.Response(echo=abci.ResponseEcho(message=request.echo.message))
    if kind == "flush":
        return abci.Response(flush=abci.ResponseFlush())
    if kind not in _APP_METHODS:
        return abci.Response(exception=abci.ResponseException(error=f"unknown request {kind}"))
    try:
        result = getattr(app, kind)(getattr(request, kind))
    except Exception as exc:  # a bug in the app: CometBFT must stop, not go on
        log.exception("ABCI %s failed", kind)
        return abci.Response(exception=abci.ResponseException(error=f"{kind}: {exc}"))
    return abci.Response(**{kind: result})


class AbciServer:
    def __init__(self, app: LedgerApplication, socket_path: Path) -> None:
        if len(str(socket_path)) + len(".new") > UNIX_PATH_MAX:
            raise ValueError(f"socket path longer than {UNIX_PATH_MAX} bytes: {socket_path}")
        self._app = app
        self._path = socket_path

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameBuffer()
        pending = bytearray()
        try:
            while True:
                chunk = await reader.read(READ_CHUNK_BYTES)
                if not chunk:
                    if len(frames):
                        raise WireError("stream ended inside a message")
                    return
                write = False
                for payload in frames.feed(chunk):
                    request = abci.Request.FromString(payload)
                    response = handle(self._app, request)
                    pending += encode_frame(response.SerializeToString())
                    write = write or request.WhichOneof("value") == "flush"
                    write = write or response.WhichOneof("value") == "exception"
                if write:
                    writer.write(bytes(pending))
                    pending.clear()
                    await writer.drain()
        except (WireError, ConnectionError, DecodeError) as exc:
            log.warning("ABCI connection closed: %s", exc)
        finally:
            writer.close()

    async def serve(self, stop: asyncio.Event) -> None:
        """Listen until ``stop`` is set. The socket appears at its path only once it is
        listening, with mode 0600 (bound and chmod'ed under a temporary name, then renamed):
        whoever waits for the path (``network.start``, then CometBFT) never connects to a
        socket that is bound but not yet listening."""
        staging = self._path.with_name(self._path.name + ".new")
        for stale in (self._path, staging):
            stale.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self._connection, path=str(staging))
        os.chmod(staging, 0o600)
        os.rename(staging, self._path)
        async with server:
            await stop.wait()
        self._path.unlink(missing_ok=True)


def run(app: LedgerApplication, socket_path: Path) -> None:
    """Serve until SIGTERM or SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await AbciServer(app, socket_path).serve(stop)

    asyncio.run(main())
