"""medshare's cryptography: traceable accountable CP-ABE and the key-aggregate cryptosystem.

Modules: ``group`` (the only import of the pairing library), ``policy`` (policies →
LSSS), ``abe`` (Ning et al. 2014), ``issuance`` (accountable two-party issuance),
``kac`` (Chu et al. 2014), ``hkac`` (KAC along the department hierarchy, one 32-byte
seed per patient), ``recovery`` (SLIP-39 / BIP-39 backups of that seed), ``hybrid``
(KEM → HKDF → AES-GCM), ``signing`` (Ed25519 for the ledger), ``encoding`` and
``fields`` (versioned file formats), ``errors``.
"""
