"""Names of the public keys owners publish on the ledger, and who owns each name.

Why on the ledger: hospitals keep public keys in their SQL databases, and whoever can edit
a row could substitute a key whose secret they know (an authority key with their own
``g1^α``, a patient block key of their own), and every record sealed under it afterwards
would be theirs to open. So the owner of a public key publishes its SHA-256 on the
ledger (``publish_key``) with their own enrolled identity key, once; encryptors check the
key they are about to use against it. A name is written once and never replaced: a
second publication under a taken name is refused, so nobody — a node, a database
administrator, the owner's own later self — can swap a key others already rely on.

Names and their owners (the identity whose enrolled key must sign the publication):

* ``authority/<hospital>/abe`` — the authority's CP-ABE public key; owner
  ``authority@<hospital>``.
* ``authority/<hospital>/paillier`` — the authority's Paillier modulus with its
  Paillier–Blum proof (:func:`medshare.crypto.issuance.modulus_digest`), checked by every
  user at issuance; owner ``authority@<hospital>``.
* ``patient/<patient>/block/<b>`` — H-KAC block key ``v_b``; owner ``patient:<patient>``.
"""

from __future__ import annotations

import hashlib
import re

ABE_KEY = "abe"
PAILLIER_KEY = "paillier"
AUTHORITY_KEYS = (ABE_KEY, PAILLIER_KEY)
MAX_BLOCK = (1 << 20) - 1  # medshare.crypto.hkac.MAX_BLOCKS - 1
_PART = r"[A-Za-z0-9._:+@-]{1,128}"  # a hospital code or patient id: no '/', bounded
_AUTHORITY = re.compile(rf"authority/({_PART})/({ABE_KEY}|{PAILLIER_KEY})")
_BLOCK = re.compile(rf"patient/({_PART})/block/(0|[1-9][0-9]{{0,6}})")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def authority_identity(hospital: str) -> str:
    """The identity a hospital's attribute authority acts as on the ledger."""
    return f"authority@{hospital}"


def patient_identity(patient: str) -> str:
    """The identity a patient acts as on the ledger."""
    return f"patient:{patient}"


def authority_key(hospital: str, which: str) -> str:
    """The published name of authority ``hospital``'s ``abe`` or ``paillier`` key."""
    if which not in AUTHORITY_KEYS:
        raise ValueError(f"an authority publishes {AUTHORITY_KEYS}, not {which!r}")
    return f"authority/{hospital}/{which}"


def authority_key_name(hospital: str) -> str | None:
    """The name of ``hospital``'s CP-ABE key, or None if ``hospital`` is no valid code."""
    name = f"authority/{hospital}/{ABE_KEY}"
    return name if _AUTHORITY.fullmatch(name) else None


def block_key(patient: str, block: int) -> str:
    """The published name of a patient's H-KAC block key ``v_b``."""
    return f"patient/{patient}/block/{block}"


def owner(name: object) -> str | None:
    """The identity that may publish under ``name``, or None for a name outside the
    grammar above (the chain refuses those)."""
    if not isinstance(name, str):
        return None
    if match := _AUTHORITY.fullmatch(name):
        return authority_identity(match.group(1))
    if (match := _BLOCK.fullmatch(name)) and int(match.group(2)) <= MAX_BLOCK:
        return patient_identity(match.group(1))
    return None


def is_digest(value: object) -> bool:
    """A SHA-256 digest as 64 lower-case hex digits."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def digest(data: bytes) -> str:
    """What a publication records for ``data``: its SHA-256, lower-case hex."""
    return hashlib.sha256(data).hexdigest()
