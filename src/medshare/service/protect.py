"""How one record is protected: a data key, an encrypted blob, and wraps of the data key.

Every record gets a fresh 256-bit data key (DEK). The canonical FHIR bytes are sealed with
AES-256-GCM under the DEK, with the record id as associated data (so storage cannot swap
two blobs), and the ciphertext goes to the replicated blob store under its SHA-256. The
DEK is then *wrapped* for each way in:

* the personal area seals it to the record's H-KAC slot (:func:`medshare.crypto.hkac.seal_record`);
* each CP-ABE area wraps it under the key-encryption key (KEK) of the area scope the record
  belongs to (e.g. institution H001 / department 03), with AES-256-GCM and the record id and
  area-key id as associated data. The KEK itself is published once per scope as a CP-ABE
  ciphertext under the area's policy.

A hospital derives its scopes' KEKs from one 32-byte KEK seed with HKDF (info = area-key
id), so it can wrap new records without storing a key per scope; the seed sits with the
authority key, which can already issue any attribute set and so adds no new trust.
Crypto-shredding a record deletes its wraps and its H-KAC header: the blob stays, unreadable.
"""

from __future__ import annotations

import os

from medshare.crypto import hybrid

DEK_BYTES = 32
_BLOB_AAD = b"medshare/record-blob/v1\x00"
_WRAP_AAD = b"medshare/dek-wrap/v1\x00"
_KEK_INFO = b"medshare/area-kek/v1\x00"


def new_dek() -> bytes:
    return os.urandom(DEK_BYTES)


def seal_blob(dek: bytes, plaintext: bytes, record_id: str) -> bytes:
    return hybrid.seal(dek, plaintext, aad=_BLOB_AAD + record_id.encode("utf-8"))


def open_blob(dek: bytes, blob: bytes, record_id: str) -> bytes:
    """Raises :class:`~medshare.crypto.errors.DecryptionFailed` on any tampering."""
    return hybrid.open_sealed(dek, blob, aad=_BLOB_AAD + record_id.encode("utf-8"))


def _wrap_aad(record_id: str, area_key_id: str) -> bytes:
    return _WRAP_AAD + record_id.encode("utf-8") + b"\x00" + area_key_id.encode("utf-8")


def wrap_dek(kek: bytes, dek: bytes, record_id: str, area_key_id: str) -> bytes:
    return hybrid.seal(kek, dek, aad=_wrap_aad(record_id, area_key_id))


def unwrap_dek(kek: bytes, wrapped: bytes, record_id: str, area_key_id: str) -> bytes:
    return hybrid.open_sealed(kek, wrapped, aad=_wrap_aad(record_id, area_key_id))


def derive_kek(kek_seed: bytes, area_key_id: str) -> bytes:
    """The KEK of one area key: HKDF-SHA256(kek_seed, info = tag ‖ area-key id)."""
    return hybrid.derive_key(kek_seed, info=_KEK_INFO + area_key_id.encode("utf-8"))
