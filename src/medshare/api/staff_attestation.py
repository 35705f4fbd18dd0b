"""A hospital vouches for one of its staff: identity, key, role and department, signed by
the key of its ledger node.

Why: each hospital keeps its own people; another member meets them only when they sign a
request (a patient shared with a physician of another hospital, a partner physician on a
referral). The ledger tells the other member *who* holds the key — only the hospital's
own nodes may enrol names ``…@<code>`` — but not their role. The role comes from the
staff member's hospital, in this attestation: signed by a node that genesis names after
that hospital (``<code>-a``…), bound to the chain, and accepted only for the key the
ledger enrolled under that name. Only member hospitals may ask (a signed request by their
records service): the staff directory is not public. A forged or altered attestation
fails the signature; an attestation of another chain, hospital or key is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
import rfc8785

from medshare.api import signed_requests
from medshare.api.bounded_http import PeerAnswerRefused, bounded_request
from medshare.crypto import signing
from medshare.crypto.signing import SigningKey

DOMAIN = b"medshare/staff-attestation/v1"
FIELDS = frozenset({"chain_id", "identity", "key", "hospital", "roles", "dept", "issued_ms"})
MAX_ROLES = 8
TIMEOUT_S = 5.0  # per socket read
DEADLINE_S = 5.0  # for the whole exchange
MAX_ANSWER_BYTES = 16 << 10
_ROLE = re.compile(r"[a-z]{1,32}")


class AttestationRefused(ValueError):
    """An attestation that does not vouch for what it claims."""


@dataclass(frozen=True)
class StaffFacts:
    chain_id: str
    identity: str
    key: bytes
    hospital: str
    roles: tuple[str, ...]
    dept: str | None
    issued_ms: int

    def to_json(self) -> dict:
        return {
            "chain_id": self.chain_id,
            "identity": self.identity,
            "key": self.key.hex(),
            "hospital": self.hospital,
            "roles": list(self.roles),
            "dept": self.dept,
            "issued_ms": self.issued_ms,
        }


def attest(node_key: SigningKey, facts: StaffFacts) -> dict:
    """The attestation document: the facts and the node's signature over their RFC 8785
    form."""
    doc = facts.to_json()
    return {**doc, "signature": node_key.sign(DOMAIN, rfc8785.dumps(doc)).hex()}


def check(doc: object, *, chain_id: str, identity: str, node_keys: Iterable[bytes]) -> StaffFacts:
    """The facts of ``doc`` if it is an attestation of ``identity`` on ``chain_id`` signed
    by one of ``node_keys`` (the nodes of the hospital the name belongs to)."""
    if not isinstance(doc, dict) or set(doc) != FIELDS | {"signature"}:
        raise AttestationRefused("not a staff attestation")
    body = {k: v for k, v in doc.items() if k != "signature"}
    try:
        signature = bytes.fromhex(doc["signature"])
        facts = StaffFacts(
            chain_id=_text(body["chain_id"]),
            identity=_text(body["identity"]),
            key=bytes.fromhex(_text(body["key"])),
            hospital=_text(body["hospital"]),
            roles=tuple(_role(r) for r in _list(body["roles"])),
            dept=None if body["dept"] is None else _text(body["dept"]),
            issued_ms=_int(body["issued_ms"]),
        )
        message = rfc8785.dumps(body)
    except (TypeError, ValueError) as exc:
        raise AttestationRefused(f"malformed staff attestation: {exc}") from None
    if facts.chain_id != chain_id or facts.identity != identity or len(facts.key) != 32:
        raise AttestationRefused("the attestation is about another chain or person")
    if identity.rpartition("@")[2] != facts.hospital:
        raise AttestationRefused("the attestation's hospital is not the one in the name")
    if not any(signing.is_valid(k, signature, DOMAIN, message) for k in node_keys):
        raise AttestationRefused(f"not signed by a node of {facts.hospital}")
    return facts


def fetch(
    url: str,
    identity: str,
    *,
    chain_id: str,
    node_keys: Iterable[bytes],
    signer: SigningKey,
    asker: str,
    audience: str,
    now_ms: int,
) -> StaffFacts | None:
    """Ask the hospital at ``url`` about ``identity`` (a request signed by the asking
    hospital's records service ``asker``); None if it does not vouch for them (unknown,
    refused, unreachable, too slow or too large, or an answer that does not check)."""
    target = f"/v1/staff/{identity}"
    headers = signed_requests.sign(signer, asker, "GET", target, b"", audience=audience,
                                   now_ms=now_ms)  # fmt: skip
    try:
        with httpx.Client(base_url=url.rstrip("/"), timeout=TIMEOUT_S) as client:
            status, body = bounded_request(
                client, "GET", target, headers=headers, deadline_s=DEADLINE_S,
                max_bytes=MAX_ANSWER_BYTES,
            )  # fmt: skip
        if status != 200:
            return None
        return check(json.loads(body), chain_id=chain_id, identity=identity, node_keys=node_keys)
    except (PeerAnswerRefused, ValueError, RecursionError):
        return None


def _text(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise ValueError("a field is a short string")
    return value


def _list(value: object) -> list:
    if not isinstance(value, list) or len(value) > MAX_ROLES:
        raise ValueError(f"roles is a list of at most {MAX_ROLES}")
    return value


def _role(value: object) -> str:
    if not isinstance(value, str) or not _ROLE.fullmatch(value):
        raise ValueError("a role is a short lower-case word")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("issued_ms is a time in ms")
    return value
