"""Issuing CP-ABE keys through the accountable two-party protocol, and tracing leaks.

The authority and the user run :mod:`medshare.crypto.issuance` as two separate objects
exchanging its typed messages, exactly as they would over a network: the user's secret
``k`` never reaches the authority, so a key whose ``K'`` matches a user's registered
commitment can only have come from that user. The user then registers the key's public
tag on the ledger with *their own* identity key; tracing trusts that ledger mapping, not
the authority's registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from medshare.crypto import abe, issuance
from medshare.crypto.signing import SigningKey


@dataclass(frozen=True)
class Published:
    """An authority's keys as the user takes them from the ledger: the CP-ABE public key
    whose digest the authority published, and its published Paillier modulus digest."""

    public: abe.AbePublicKey
    modulus: bytes


@dataclass(frozen=True)
class IssuedKey:
    key: abe.AbeUserKey
    registration: abe.Registration


def issue(
    authority: issuance.AuthorityKeys,
    trusted: Published,
    holder: str,
    identity: SigningKey,
    attributes: Iterable[str],
    *,
    verified_moduli: set[tuple[bytes, int]] | None = None,
    suspended: set[str] | None = None,
    enrolled: issuance.Enrolled | None = None,
) -> IssuedKey:
    """Run the issuance protocol for ``holder`` with ``attributes``; both sides check
    (the holder's side: against the authority's keys as published on the ledger,
    ``trusted``; the Paillier modulus's proof once per modulus, kept in
    ``verified_moduli``; the range proof of every offer); ``suspended``: identities whose
    issuance failed at the authority's check, refused from then on; ``enrolled``: the
    authority's check that the requester's identity key is the enrolled one."""
    key, registration = issuance.issue_key(
        issuance.IssuanceAuthority(authority, suspended=suspended, enrolled=enrolled),
        trusted.public,
        holder,
        attributes,
        identity,
        verified_moduli=verified_moduli,
        published_modulus=trusted.modulus,
    )
    return IssuedKey(key, registration)


@dataclass(frozen=True)
class TraceResult:
    verdict: abe.Verdict
    authority: str | None
    identity: str | None
    reason: str

    def as_dict(self) -> dict[str, str | None]:
        return {
            "verdict": self.verdict.value,
            "authority": self.authority,
            "identity": self.identity,
            "reason": self.reason,
        }


def trace(
    key: abe.AbeUserKey,
    publics: Mapping[str, abe.AbePublicKey],
    tags: Mapping[str, Mapping[bytes, str]],
) -> TraceResult:
    """Audit a leaked key against every authority; the first that recognises it answers.
    ``tags``: per authority, every key tag registered on the ledger → its holder's
    identity (the ledger is the source of truth; the SQL registry is a cache of it).

    A key passes the public sanity check under at most one authority's public key (the
    check pairs it against that authority's ``g^α``); if none does, it is ``malformed``.
    """
    last = None
    for code, public in publics.items():
        result = abe.audit_tags(public, key, tags.get(code, {}))
        if result.verdict != abe.Verdict.MALFORMED:
            return TraceResult(result.verdict, code, result.identity, result.reason)
        last = result
    reason = last.reason if last else "no authority to audit against"
    return TraceResult(abe.Verdict.MALFORMED, None, None, reason)


def registration_tag(registration: bytes) -> bytes:
    """The public tag of an issued key, from the registry row the service keeps for it."""
    return abe.registry_from_bytes(registration)[0].tag()
