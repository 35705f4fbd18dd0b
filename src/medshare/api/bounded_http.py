"""A request to another member hospital that cannot hold its caller longer, or make it
hold more bytes, than it allows.

Why: a hospital asks its peers for staff attestations and blob copies while serving its
own users. A peer that trickles its answer (one byte at a time, each read within the
socket timeout) or answers with gigabytes must cost the asking request a bounded time
and memory, never a worker thread or the process. httpx bounds each socket read, not the
whole exchange, so a watchdog closes the client at the deadline, and the body is read in
chunks up to a cap.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import httpx


class PeerAnswerRefused(Exception):
    """The peer did not answer within the deadline or the size cap (or at all)."""


def bounded_request(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    deadline_s: float,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
    content: bytes = b"",
) -> tuple[int, bytes]:
    """(status, body) of one request through ``client``, which is closed if the deadline
    passes first (give it a client of its own when that matters)."""
    timer = threading.Timer(deadline_s, client.close)
    timer.daemon = True
    timer.start()
    try:
        with client.stream(method, url, headers=headers, content=content) as response:
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise PeerAnswerRefused(f"{url} answered more than {max_bytes} bytes")
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)
    except (httpx.HTTPError, RuntimeError, OSError) as exc:
        # a closed client raises RuntimeError or a transport error, whichever it meets
        if not timer.is_alive():
            raise PeerAnswerRefused(f"{url} did not answer within {deadline_s} s") from None
        raise PeerAnswerRefused(f"{url} did not answer: {exc}") from None
    finally:
        timer.cancel()
        timer.join()  # a watchdog firing at this moment is done: the client's state is final
