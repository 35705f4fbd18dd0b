"""Requests signed by the holder's identity key, and their verification by a server.

Why: a hospital server serves a person only what their grants allow and logs every read
on the ledger in their name, so it must know who is asking without holding anything of
theirs that could be stolen and replayed: no passwords, no bearer tokens. Every request
carries an Ed25519 signature by the caller's identity key — the key a hospital node
enrolled on the ledger under the caller's name — over the server it is meant for (its
*audience*: the consortium's chain id and the hospital), the method, the target (path and
query as sent), the SHA-256 of the body, a timestamp and a random nonce. The server
checks the audience is its own, the signature, that the timestamp is within
:data:`MAX_SKEW_MS` of its clock and not before the server started, that the ledger
enrolled the key under the claimed identity, and only then that it has not seen the
(key, nonce) in that window. A captured request cannot be replayed (nonce; after a
restart, the start time), taken to another server (audience), delayed past the window
(timestamp), moved to another route or body (both signed), or claimed by someone else
(the identity is signed and checked against the ledger). Nonces are remembered per key
and only for enrolled keys, each key with its own cap, so no caller — least of all one
with a made-up key — can fill the table for the others.

The core here is pure (clock and enrolment lookup are injected); HTTP frameworks only
hand it the method, target, body and headers.
"""

from __future__ import annotations

import hashlib
import heapq
import re
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from medshare.crypto import signing

DOMAIN = b"medshare/http-request/v2"
IDENTITY = "x-medshare-identity"
KEY = "x-medshare-key"
TIMESTAMP = "x-medshare-timestamp"
NONCE = "x-medshare-nonce"
SIGNATURE = "x-medshare-signature"
# The SHA-256 of the body the signature covers, sent so a server can verify a request
# before it reads a large body (optional for others: the server hashes what it reads).
BODY_DIGEST = "x-medshare-body-sha256"
HEADERS = (IDENTITY, KEY, TIMESTAMP, NONCE, SIGNATURE)
MAX_SKEW_MS = 60_000  # a request older or newer than this (by the server's clock) is refused
NONCE_BYTES = 16
MAX_REMEMBERED = 200_000  # nonces kept at once; beyond that new requests wait
MAX_PER_KEY = 2_000  # nonces of one key in the window (~33 requests/s for 60 s)
MAX_IDENTITY = 256
_HEX = {
    KEY: re.compile(r"[0-9a-f]{64}"),
    NONCE: re.compile(r"[0-9a-f]{32}"),
    SIGNATURE: re.compile(r"[0-9a-f]{128}"),
}
_TIMESTAMP = re.compile(r"(0|[1-9][0-9]{0,15})")
_DIGEST = re.compile(r"[0-9a-f]{64}")

EnrolledAs = Callable[[bytes], str | None]  # identity key -> the identity enrolled with it


class RequestRefused(Exception):
    """A request this server does not act on; ``status`` is the HTTP status to answer."""

    status = 401
    title = "request not authenticated"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Replayed(RequestRefused):
    title = "request replayed"


class Busy(RequestRefused):
    status = 429
    title = "too many requests"


@dataclass(frozen=True)
class Caller:
    """Who signed a verified request."""

    identity: str
    key: bytes


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def message(
    audience: str,
    method: str,
    target: str,
    digest: str,
    identity: str,
    timestamp_ms: int,
    nonce: str,
) -> bytes:
    """The bytes a request's signature covers (fields separated by newlines, which none
    of them may contain); ``digest`` is the body's :func:`body_digest`."""
    fields = (
        audience,
        method.upper(),
        target,
        digest,
        identity,
        str(timestamp_ms),
        nonce,
    )
    if any("\n" in f for f in fields):
        raise ValueError("request fields may not contain newlines")
    return "\n".join(fields).encode()


def sign(
    key: signing.SigningKey,
    identity: str,
    method: str,
    target: str,
    body: bytes,
    *,
    audience: str,
    now_ms: int,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that authenticate one request as ``identity`` to the server whose
    audience string is ``audience`` (the wallet's side)."""
    nonce = nonce if nonce is not None else secrets.token_hex(NONCE_BYTES)
    digest = body_digest(body)
    signed = message(audience, method, target, digest, identity, now_ms, nonce)
    return {
        IDENTITY: identity,
        KEY: key.public.hex(),
        TIMESTAMP: str(now_ms),
        NONCE: nonce,
        SIGNATURE: key.sign(DOMAIN, signed).hex(),
        BODY_DIGEST: digest,
    }


class RequestVerifier:
    """The server's side: verifies signatures and remembers nonces (one per server).
    Thread-safe: a server may verify on several worker threads."""

    def __init__(
        self,
        audience: str,
        enrolled_as: EnrolledAs,
        clock_ms: Callable[[], int],
        *,
        max_skew_ms: int = MAX_SKEW_MS,
        max_remembered: int = MAX_REMEMBERED,
        max_per_key: int = MAX_PER_KEY,
    ) -> None:
        self.audience = audience
        self._enrolled_as = enrolled_as
        self._clock_ms = clock_ms
        self._not_before = clock_ms() - 1  # nonces seen before a restart are forgotten
        self._max_skew_ms = max_skew_ms
        self._max_remembered = max_remembered
        self._max_per_key = max_per_key
        self._lock = threading.Lock()
        self._seen: set[tuple[bytes, str]] = set()
        self._expiry: list[tuple[int, bytes, str]] = []  # heap: (forget after, key, nonce)
        self._per_key: Counter[bytes] = Counter()

    def verify(self, method: str, target: str, body: bytes, headers: Mapping[str, str]) -> Caller:
        """The caller of a request, or :class:`RequestRefused` saying why not. Checks run
        cheapest first; the ledger is asked only about correctly signed fresh requests,
        and a nonce is remembered only once the key is known to be enrolled."""
        return self.verify_digest(method, target, body_digest(body), headers)

    def verify_before_body(
        self, method: str, target: str, headers: Mapping[str, str]
    ) -> tuple[Caller, str]:
        """The caller of a request whose body is not read yet, from the body digest its
        signature covers (the :data:`BODY_DIGEST` header), and that digest: the server
        reads a large body only for a verified caller, then checks it against the digest
        (:func:`body_digest`)."""
        digest = headers.get(BODY_DIGEST) or ""
        if not _DIGEST.fullmatch(digest):
            raise RequestRefused(f"a large request names its body's SHA-256 in {BODY_DIGEST}")
        return self.verify_digest(method, target, digest, headers), digest

    def verify_digest(
        self, method: str, target: str, digest: str, headers: Mapping[str, str]
    ) -> Caller:
        """:meth:`verify` for a body known by its digest."""
        values = {name: headers.get(name) for name in HEADERS}
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise RequestRefused(f"unsigned request: missing {', '.join(missing)}")
        identity = values[IDENTITY]
        assert identity is not None
        if not 0 < len(identity) <= MAX_IDENTITY or not identity.isprintable():
            raise RequestRefused("malformed identity header")
        for name, pattern in _HEX.items():
            if not pattern.fullmatch(values[name] or ""):
                raise RequestRefused(f"malformed {name} header")
        if not _TIMESTAMP.fullmatch(values[TIMESTAMP] or ""):
            raise RequestRefused(f"malformed {TIMESTAMP} header")
        timestamp = int(values[TIMESTAMP] or 0)
        now = self._clock_ms()
        if abs(now - timestamp) > self._max_skew_ms:
            raise RequestRefused(
                f"request timestamp is {abs(now - timestamp) // 1000} s off the server's clock "
                f"(at most {self._max_skew_ms // 1000} s)"
            )
        if timestamp < self._not_before:
            raise RequestRefused("request signed before this server started; sign it again")
        key = bytes.fromhex(values[KEY] or "")
        nonce = values[NONCE] or ""
        try:
            signed = message(self.audience, method, target, digest, identity, timestamp, nonce)
        except ValueError:
            raise RequestRefused("malformed request target") from None
        if not signing.is_valid(key, bytes.fromhex(values[SIGNATURE] or ""), DOMAIN, signed):
            raise RequestRefused("request signature does not verify (for this server)")
        if self._enrolled_as(key) != identity:
            raise RequestRefused(f"the signing key is not the one enrolled as {identity!r}")
        self._remember(key, nonce, timestamp, now)
        return Caller(identity, key)

    def _remember(self, key: bytes, nonce: str, timestamp: int, now: int) -> None:
        """Refuse a (key, nonce) seen in the window; keep it until its request would be
        stale. Each key has its own cap, and the table a global one (429 when full)."""
        with self._lock:
            while self._expiry and self._expiry[0][0] < now:
                _, old_key, old_nonce = heapq.heappop(self._expiry)
                self._seen.discard((old_key, old_nonce))
                self._per_key[old_key] -= 1
                if self._per_key[old_key] <= 0:
                    del self._per_key[old_key]
            if (key, nonce) in self._seen:
                raise Replayed("this request was already received (replayed nonce)")
            if self._per_key[key] >= self._max_per_key:
                raise Busy("too many requests from this key in the replay window")
            if len(self._seen) >= self._max_remembered:
                raise Busy("too many requests in the replay window; try again shortly")
            self._seen.add((key, nonce))
            self._per_key[key] += 1
            heapq.heappush(self._expiry, (timestamp + self._max_skew_ms, key, nonce))
