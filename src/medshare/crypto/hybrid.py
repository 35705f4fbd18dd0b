"""KEM/DEM composition: a pairing-derived secret becomes an AES-256-GCM key.

Both schemes (CP-ABE and KAC) are key-encapsulation mechanisms: they hide a random
GT element. Its canonical bytes go through HKDF-SHA256 with a scheme-specific
``info`` label, and the record is sealed with AES-256-GCM. The associated data binds
what the KEM header does not authenticate (the policy, the class index, the patient),
so a ciphertext moved to another context, or opened with a wrong key, fails the tag
check instead of yielding garbage.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medshare.crypto.errors import DecryptionFailed

NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32


def derive_key(kem_secret: bytes, *, info: bytes) -> bytes:
    """HKDF-SHA256 from the KEM secret to a 32-byte AEAD key, labelled by ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(
        kem_secret
    )


def seal(key: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
    """AES-256-GCM: ``nonce ‖ ciphertext ‖ tag``; the nonce is random per message."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, *, aad: bytes) -> bytes:
    """Inverse of :func:`seal`; any tampering or wrong key raises :class:`DecryptionFailed`."""
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionFailed("ciphertext is too short")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag:
        raise DecryptionFailed("ciphertext could not be opened with this key") from None
