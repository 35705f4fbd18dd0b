"""medshare's cryptography: traceable accountable CP-ABE and the key-aggregate cryptosystem.

Modules: ``group`` (the only import of the pairing library), ``policy`` (policies →
LSSS), ``abe`` (Ning et al. 2014), ``issuance`` (accountable two-party issuance),
``kac`` (Chu et al. 2014), ``hybrid`` (KEM → HKDF → AES-GCM), ``encoding`` (versioned
file formats), ``errors``.
"""
