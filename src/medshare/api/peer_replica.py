"""Another member hospital's blob replica, reached over its HTTP API.

Why: a hospital keeps its own replica on its own disk, and the consortium's copies of
each encrypted blob (:class:`medshare.records.blobstore.ReplicatedBlobStore`, rendezvous
placement over every member's replica) are written to and read from the other hospitals
through their servers. Every call is a signed request
(:mod:`medshare.api.signed_requests`) by the calling hospital's records service — the
identity ``records@<code>`` with the key of its ledger node, which the receiving server
finds in genesis — for the receiving hospital's audience, so a copy cannot be written by
anyone but a member's node, and a captured request cannot be replayed or taken to another
member.

The replica need not be trusted: the blob store checks every copy against its content
address and the ledger digest, whatever a peer returns. Any failure (refused, down, slow)
raises, which the store counts as *unavailable* for that operation, never as fatal.

There is no delete over HTTP: a peer must not be able to remove another hospital's copies.
A record is deleted by crypto-shredding its key wraps at its holder (every copy becomes
unreadable); the peers' copies of its ciphertext stay.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
from collections.abc import Callable, Iterator

import httpx

from medshare.api import signed_requests
from medshare.api.bounded_http import PeerAnswerRefused, bounded_request
from medshare.crypto.signing import SigningKey
from medshare.records.blobstore import BlobUnavailable, check_blob_id

REPLICA_PATH = "/v1/replica"
IDS_PAGE = 1000  # blob ids per listing request
TIMEOUT_S = 10.0  # per socket read
DEADLINE_S = 60.0  # for a whole exchange (a 32 MiB copy on a slow link)
MAX_ANSWER = 32 << 20  # a blob copy: the largest a member may store
MAX_PROBLEM = 16 << 10  # an answer that is not a blob
MAX_IDLE = 8  # kept-alive connections to one peer (ReplicatedBlobStore.put_many's workers)


class PeerReplica:
    """The replica of member ``name`` at ``url``, as this hospital's records service."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        signer: SigningKey,
        identity: str,
        audience: str,
        clock_ms: Callable[[], int],
        timeout: float = TIMEOUT_S,
        deadline: float = DEADLINE_S,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self._signer = signer
        self._identity = identity
        self._audience = audience
        self._clock_ms = clock_ms
        self._timeout = timeout
        self._deadline = deadline
        # Idle clients, each with its kept-alive connection to the peer. A request takes
        # one (or makes one) and gives it back only if it ended in time: the deadline
        # closes the client of a request that did not, which then is never reused. One
        # TLS context for all of them (a client made without one loads the CA store
        # afresh: ~35 ms a request, once most of an ingest's time).
        self._tls = ssl.create_default_context()
        self._idle: list[httpx.Client] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PeerReplica({self.name!r}, {self.url!r})"

    def close(self) -> None:
        """Close the idle connections (one in use is closed when its request ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for client in idle:
            client.close()

    @contextlib.contextmanager
    def _client(self) -> Iterator[httpx.Client]:
        with self._lock:
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = httpx.Client(base_url=self.url, timeout=self._timeout, verify=self._tls)
        reusable = False
        try:
            yield client
            reusable = not client.is_closed
            client.cookies.clear()  # a peer's cookies never ride into the next exchange
        finally:
            with self._lock:
                if reusable and len(self._idle) < MAX_IDLE:
                    self._idle.append(client)
                    client = None
            if client is not None:
                client.close()

    def _call(
        self, method: str, target: str, body: bytes = b"", *, max_bytes: int = MAX_ANSWER
    ) -> tuple[int, bytes]:
        """(status, body) of a signed request; the answer is bounded in size and time
        (:mod:`medshare.api.bounded_http`): a hostile or stalled peer costs this request,
        nothing more. A request's client is its own while it runs; the deadline closes
        it, and only a client whose request ended in time is used again."""
        headers = signed_requests.sign(
            self._signer,
            self._identity,
            method,
            target,
            body,
            audience=self._audience,
            now_ms=self._clock_ms(),
        )
        if body:
            headers["content-type"] = "application/octet-stream"
        try:
            with self._client() as client:
                return bounded_request(
                    client, method, target, headers=headers, content=body,
                    deadline_s=self._deadline, max_bytes=max_bytes,
                )  # fmt: skip
        except PeerAnswerRefused as exc:
            raise BlobUnavailable(f"{self.name}: {exc}") from None

    def _refused(self, status: int, body: bytes) -> BlobUnavailable:
        try:
            detail = json.loads(body).get("detail", "")
        except (ValueError, AttributeError, RecursionError):
            detail = ""
        return BlobUnavailable(f"{self.name} refused ({status}): {str(detail)[:200]}")

    def put(self, blob_id: str, data: bytes) -> None:
        target = f"{REPLICA_PATH}/{check_blob_id(blob_id)}"
        status, body = self._call("PUT", target, bytes(data), max_bytes=MAX_PROBLEM)
        if status != 204:
            raise self._refused(status, body)

    def get(self, blob_id: str) -> bytes | None:
        status, body = self._call("GET", f"{REPLICA_PATH}/{check_blob_id(blob_id)}")
        if status == 404:
            return None
        if status != 200:
            raise self._refused(status, body)
        return body

    def delete(self, blob_id: str) -> None:
        raise BlobUnavailable(
            f"{self.name} keeps its copy of {blob_id}: peers' copies are not deleted over "
            "the network (the record's key wraps are shredded at its holder)"
        )

    def ids(self) -> Iterator[str]:
        after = ""
        while True:
            target = f"{REPLICA_PATH}?limit={IDS_PAGE}" + (f"&after={after}" if after else "")
            status, body = self._call("GET", target, max_bytes=MAX_PROBLEM + 70 * IDS_PAGE)
            if status != 200:
                raise self._refused(status, body)
            try:
                page = json.loads(body)
                ids = [check_blob_id(i) for i in page["ids"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise BlobUnavailable(f"{self.name} sent a malformed listing: {exc}") from None
            yield from ids
            if len(ids) < IDS_PAGE or not ids or ids[-1] <= after:
                return
            after = ids[-1]
