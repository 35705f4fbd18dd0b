"""The ABCI server's framing (FrameBuffer, one write per read) over a real Unix socket:
frames split across reads, many tiny frames in one read, huge or overlong length
prefixes, a flood on one connection while another waits. All resisted.

Echo and Flush need no application, so the server runs with none.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from medshare.ledger.cometbft import server
from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci


def _frame(request: abci.Request) -> bytes:
    return server.encode_frame(request.SerializeToString())


def _echo(message: str) -> bytes:
    return _frame(abci.Request(echo=abci.RequestEcho(message=message)))


FLUSH = _frame(abci.Request(flush=abci.RequestFlush()))


def _run(scenario) -> object:
    path = Path("/tmp") / f"abci-attack-{uuid.uuid4().hex[:12]}.sock"

    async def main():
        stop = asyncio.Event()
        serving = asyncio.create_task(server.AbciServer(None, path).serve(stop))  # type: ignore[arg-type]
        for _ in range(300):
            if path.exists():
                break
            await asyncio.sleep(0.01)
        try:
            return await asyncio.wait_for(scenario(path), timeout=20)
        finally:
            stop.set()
            await serving

    try:
        return asyncio.run(main())
    finally:
        path.unlink(missing_ok=True)


async def _read_echoes(reader, count: int) -> list[str]:
    out = []
    for _ in range(count):
        response = abci.Response.FromString(await server.read_frame(reader))
        kind = response.WhichOneof("value")
        out.append(response.echo.message if kind == "echo" else kind)
    return out


def test_resisted_frames_split_byte_by_byte_and_many_tiny_frames():
    async def scenario(path):
        reader, writer = await asyncio.open_unix_connection(str(path))
        data = _echo("split-" + "x" * 300) + FLUSH
        for i in range(len(data)):  # one byte per write, each read by the server on its own
            writer.write(data[i : i + 1])
            await writer.drain()
            if i % 50 == 0:
                await asyncio.sleep(0)
        first = await _read_echoes(reader, 2)
        burst = b"".join(_echo(str(i)) for i in range(5000)) + FLUSH
        writer.write(burst)
        await writer.drain()
        second = await _read_echoes(reader, 5001)
        writer.close()
        return first, second

    first, second = _run(scenario)
    assert first == ["split-" + "x" * 300, "flush"]
    assert second == [str(i) for i in range(5000)] + ["flush"]


def test_resisted_huge_and_overlong_length_prefixes_close_only_that_connection():
    async def scenario(path):
        outcomes = []
        for junk in (
            server.uvarint(server.MAX_MESSAGE_BYTES + 1),
            b"\xff" * 10 + b"\x01",  # 11-byte prefix
            server.uvarint(1 << 63),
        ):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(junk)
            await writer.drain()
            outcomes.append(await server.read_frame(reader))  # None: closed by the server
            writer.close()
        # A claimed 200 MiB frame holds only the bytes actually sent.
        buffer = server.FrameBuffer()
        assert buffer.feed(server.uvarint(200 * 1024 * 1024) + b"abc") == []
        outcomes.append(len(buffer))
        # The server still serves a fresh connection.
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(_echo("alive") + FLUSH)
        await writer.drain()
        outcomes.append(await _read_echoes(reader, 2))
        writer.close()
        return outcomes

    outcomes = _run(scenario)
    assert outcomes[:3] == [None, None, None]
    assert outcomes[3] < 16
    assert outcomes[4] == ["alive", "flush"]


def test_resisted_a_flood_on_one_connection_does_not_starve_another():
    async def scenario(path):
        _r1, w1 = await asyncio.open_unix_connection(str(path))
        r2, w2 = await asyncio.open_unix_connection(str(path))
        chunk = b"".join(_echo("f" * 100) for _ in range(2000))

        async def flood():
            for _ in range(40):  # 80,000 requests, never flushed
                w1.write(chunk)
                await w1.drain()

        flooding = asyncio.create_task(flood())
        await asyncio.sleep(0.05)
        start = time.monotonic()
        w2.write(_echo("ping") + FLUSH)
        await w2.drain()
        answer = await _read_echoes(r2, 2)
        latency = time.monotonic() - start
        await flooding
        w1.close()
        w2.close()
        return answer, latency

    answer, latency = _run(scenario)
    assert answer == ["ping", "flush"]
    assert latency < 2.0, latency
