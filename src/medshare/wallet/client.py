"""A wallet's HTTP client for one hospital server: every request signed, every answer
checked, problems turned back into the service's own errors.

Why here and not in the server: the signature is made with the holder's identity key,
which never leaves the holder's device; the server only ever sees the signature.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from medshare.api import signed_requests
from medshare.api.sealed_record import SealedRecord
from medshare.crypto import abe, kac
from medshare.crypto.errors import CryptoError
from medshare.crypto.signing import SigningKey
from medshare.service.common import wall_clock_ms
from medshare.service.errors import (
    AccessDenied,
    IntegrityError,
    InvalidInput,
    NotFound,
    ServiceError,
)


class ServerUnavailable(ServiceError):
    """The hospital server cannot be reached or answered something that is not JSON."""


# HTTP status of a problem document -> the error it stands for on the wallet's side
_ERRORS: dict[int, type[ServiceError]] = {
    400: InvalidInput,
    401: AccessDenied,
    409: InvalidInput,
    403: AccessDenied,
    404: NotFound,
    413: InvalidInput,
    422: InvalidInput,
    429: InvalidInput,
    502: IntegrityError,
}


class HospitalClient:
    """Signed requests to one hospital server as ``identity`` (key ``key``)."""

    def __init__(
        self,
        base_url: str,
        identity: str,
        key: SigningKey,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        http: httpx.Client | None = None,
        audience: str | None = None,
    ) -> None:
        """``audience``: the server's audience string (chain id and hospitals), if the
        wallet knows it already; otherwise it is read from the server's ``/v1/health``
        on first use (a wallet that pins it at enrolment keeps a server from having it
        sign requests meant for another — to come with ``wallet new``)."""
        self._audience = audience
        self._base = base_url.rstrip("/")
        self._identity = identity
        self._key = key
        self._clock_ms = clock_ms
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=30.0)

    def close(self) -> None:
        """Close the connection pool this client made (one passed in is the caller's)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> HospitalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sealed_record(
        self,
        record_id: str,
        *,
        area: str,
        share_id: str | None = None,
        reason: str | None = None,
    ) -> SealedRecord:
        """A record sealed for this wallet's key (the server commits the access tx first)."""
        params = {"area": area}
        if share_id is not None:
            params["share"] = share_id
        if reason is not None:
            params["reason"] = reason
        doc = self.get(f"/v1/records/{quote(record_id, safe='/')}", params)
        sealed = SealedRecord.from_json(doc)
        if sealed.record_id != record_id or sealed.area.value != area:
            # the AEAD binds the blob to its record id, so this is the server's own doing
            raise IntegrityError(
                f"the server released {sealed.record_id} ({sealed.area.value}), "
                f"not {record_id} ({area})"
            )
        return sealed

    def authority_epoch(self, code: str) -> int:
        """The key epoch authority ``code``'s policies name now."""
        doc = self.get(f"/v1/authorities/{quote(code, safe='')}")
        epoch = doc.get("epoch") if isinstance(doc, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise IntegrityError(f"the server sent no key epoch of authority {code}")
        return epoch

    def authority_public(self, code: str) -> abe.AbePublicKey:
        """Authority ``code``'s CP-ABE public key, well formed (``check``) or refused. The
        server checked it against the digest published on the ledger; a wallet that runs
        beside its own ledger node can check that digest itself (not done yet)."""
        doc = self.get(f"/v1/authorities/{quote(code, safe='')}")
        public = _decoded(doc, "abe_public", abe.AbePublicKey, f"authority {code}'s public key")
        _checked(public.check, f"authority {code}'s public key")
        return public

    def kac_params(self) -> kac.KacParams:
        """The consortium's KAC parameters, verified here (``KacParams.verify``) before a
        share is used with them."""
        params = _decoded(self.get("/v1/kac-params"), "kac_params", kac.KacParams, "KAC parameters")
        _checked(params.verify, "KAC parameters")
        return params

    def patient_records(self, patient_id: str) -> list[dict[str, Any]]:
        """The patient's own records (only the patient may ask)."""
        return self.get(f"/v1/patients/{quote(patient_id, safe='')}/records")

    def patient_log(self, patient_id: str) -> dict[str, Any]:
        """The patient's access log, a FHIR R4 Bundle of AuditEvents (the patient only)."""
        return self.get(f"/v1/patients/{quote(patient_id, safe='')}/log")

    def post_message(self, path: str, body: bytes = b"") -> bytes:
        """POST a protocol message; the answer's bytes (another message), or the error."""
        headers = self._headers("POST", path, body)
        response = self._request("POST", path, body, headers)
        if response.is_success:
            return response.content
        self._answer(response)  # raises the problem as an error
        raise ServerUnavailable(f"hospital server {self._base} answered {response.status_code}")

    def post_json(self, path: str, body: bytes) -> Any:
        return self._answer(self._request("POST", path, body, self._headers("POST", path, body)))

    def health(self) -> dict[str, Any]:
        """The server's unsigned self-description (audience, chain id, hospitals)."""
        doc = self._answer(self._request("GET", "/v1/health", b"", {}))
        if not isinstance(doc, dict) or not all(
            isinstance(doc.get(k), str) and doc[k] for k in ("audience", "chain_id")
        ):
            raise ServerUnavailable(f"hospital server {self._base} does not describe itself")
        return doc

    def post_unsigned(self, path: str, body: bytes) -> Any:
        """POST without a signature: only enrolment, whose one-time code is the credential."""
        headers = {"content-type": "application/json"}
        return self._answer(self._request("POST", path, body, headers))

    def me(self) -> dict[str, Any]:
        return self.get("/v1/me")

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        target = path + (f"?{urlencode(params)}" if params else "")
        return self._send("GET", target, b"")

    def audience(self) -> str:
        """What this wallet signs its requests to this server for."""
        if self._audience is None:
            self._audience = self.health()["audience"]
        return self._audience

    def _send(self, method: str, target: str, body: bytes) -> Any:
        return self._answer(
            self._request(method, target, body, self._headers(method, target, body))
        )

    def _headers(self, method: str, target: str, body: bytes) -> dict[str, str]:
        return signed_requests.sign(
            self._key,
            self._identity,
            method,
            target,
            body,
            audience=self.audience(),
            now_ms=self._clock_ms(),
        )

    def _request(
        self, method: str, target: str, body: bytes, headers: Mapping[str, str]
    ) -> httpx.Response:
        try:
            return self._http.request(
                method, self._base + target, content=body or None, headers=headers
            )
        except httpx.HTTPError as exc:
            raise ServerUnavailable(f"hospital server {self._base}: {exc}") from None

    def _answer(self, response: httpx.Response) -> Any:
        try:
            doc = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ServerUnavailable(
                f"hospital server {self._base} answered {response.status_code} without JSON"
            ) from None
        if response.is_success:
            return doc
        detail = doc.get("detail", "") if isinstance(doc, dict) else ""
        error = _ERRORS.get(response.status_code, ServerUnavailable)
        raise error(f"{detail or response.reason_phrase} (HTTP {response.status_code})")


def _decoded(doc: Any, field: str, kind: Any, what: str) -> Any:
    """``kind`` decoded from the base64 text ``doc[field]``; IntegrityError otherwise."""
    try:
        return kind.from_bytes(base64.b64decode(doc[field], validate=True))
    except (KeyError, TypeError, ValueError, CryptoError) as exc:
        raise IntegrityError(f"the {what} sent by the server do not decode: {exc}") from None


def _checked(check: Callable[[], None], what: str) -> None:
    """Run a public parameter's own check before the wallet uses it."""
    try:
        check()
    except CryptoError as exc:
        raise IntegrityError(f"the {what} sent by the server are not well formed: {exc}") from None
