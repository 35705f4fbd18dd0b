"""The crypto layer's exceptions: one opaque failure per operation.

Callers branch on the exception type, never on a returned ``False``. Every way a
ciphertext can be bad (encoding, MAC, wrong key) ends in :class:`DecryptionFailed`,
so an attacker cannot probe which check failed. A policy the key does not satisfy
raises :class:`PolicyNotSatisfied` *before* any pairing, since the policy is public.
"""


class CryptoError(Exception):
    """Base class of every error raised by ``medshare.crypto``."""


class InvalidEncoding(CryptoError, ValueError):
    """Bytes or a file that is not a well-formed object of the expected type and version."""


class InvalidPolicy(CryptoError, ValueError):
    """A policy string that does not parse; the message names the position and the problem."""

    def __init__(self, message: str, position: int | None = None) -> None:
        self.position = position
        super().__init__(message if position is None else f"at position {position}: {message}")


class PolicyNotSatisfied(CryptoError):
    """The key's attributes do not satisfy the ciphertext's policy (checked before any pairing)."""


class DecryptionFailed(CryptoError):
    """The ciphertext could not be opened with this key: wrong key, wrong class, or tampering."""


class InvalidKey(CryptoError, ValueError):
    """A key that fails its public sanity check (wrong subgroup, inconsistent components)."""


class ProtocolError(CryptoError):
    """A two-party protocol message that is out of order or fails its proof."""
