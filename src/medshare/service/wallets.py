"""What each party keeps on its own device, kept in one data directory on one machine.

In a deployment a clinician's identity and CP-ABE keys live on their workstation, a
patient's 32-byte seed on their phone (with Shamir recovery shares at trusted contacts),
an authority's master key in its HSM. The consortium of ``medshare init`` keeps them side
by side under ``<data-dir>/wallets/`` so the whole story runs on one machine (the ledger
nodes' keys stay in the nodes' own folders under ``<data-dir>/ledger``);
each file is written atomically and 0600 in folders that are 0700 (a folder's name says
who holds keys, so others may not even list them), and the service only reads a party's
file when acting *as* that party. Nothing in the database is secret.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from medshare.crypto import abe, hkac, issuance
from medshare.crypto.hkac import PatientSeed
from medshare.crypto.signing import SigningKey
from medshare.fileio import write_file
from medshare.ledger.app import published

_PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+\-]{0,127}")


class WalletError(LookupError):
    """A party whose key material is not in this data directory."""


def check_principal(who: str) -> str:
    """A principal id: letters, digits and ``. _ @ : + -``, at most 128 characters."""
    if not isinstance(who, str) or not _PRINCIPAL.fullmatch(who):
        raise ValueError(
            f"{who!r} is not a valid name: use letters, digits and . _ @ : + - "
            "(at most 128 characters, starting with a letter or digit)"
        )
    return who


@dataclass(frozen=True)
class Wallets:
    """Key files under ``root``: one folder per principal, one per authority."""

    root: Path

    def __post_init__(self) -> None:
        _tighten(self.root)

    def _folder(self, who: str) -> Path:
        return self.root / quote(check_principal(who), safe="@.+-_")

    def _authority_folder(self, hospital: str) -> Path:
        return self.root / "authorities" / quote(hospital, safe="")

    @staticmethod
    def _read(path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise WalletError(f"no {what} in this data directory") from None

    # -- identities ------------------------------------------------------------------------

    def create_identity(self, who: str) -> SigningKey:
        path = self._folder(who) / "identity.key"
        if path.exists():
            raise WalletError(f"{who} already has an identity")
        key = SigningKey.generate()
        write_file(path, key.seed, secret=True)
        return key

    def save_identity(self, who: str, key: SigningKey) -> None:
        """Keep an identity key made elsewhere (a patient's, derived from their seed)."""
        path = self._folder(who) / "identity.key"
        if path.exists():
            raise WalletError(f"{who} already has an identity")
        write_file(path, key.seed, secret=True)

    def identity(self, who: str) -> SigningKey:
        return SigningKey(self._read(self._folder(who) / "identity.key", f"identity for {who}"))

    def has_identity(self, who: str) -> bool:
        return (self._folder(who) / "identity.key").is_file()

    # -- CP-ABE user keys ------------------------------------------------------------------

    def save_abe_key(self, who: str, authority: str, key: abe.AbeUserKey) -> Path:
        """Keep one more key of ``authority`` (a person may hold several: an institution
        key and a referral key, or two referrals); the file is named by the key's tag."""
        path = self._folder(who) / f"abe-{authority}-{_tag_id(key.tag())}.key"
        write_file(path, key.to_bytes(), secret=True)
        return path

    def abe_key_files(self, who: str, authority: str) -> list[Path]:
        """``who``'s key files of ``authority``, oldest first."""
        files = self._folder(who).glob(f"abe-{quote(authority, safe='')}-*.key")
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def abe_authorities(self, who: str) -> list[str]:
        """The authorities ``who`` holds keys of here (from the key files' names)."""
        names = (p.name for p in self._folder(who).glob("abe-*-*.key"))
        return sorted(
            {n.removeprefix("abe-").removesuffix(".key").rsplit("-", 1)[0] for n in names}
        )

    def abe_key(self, who: str, authority: str) -> abe.AbeUserKey:
        """The newest key of ``authority`` that ``who`` holds."""
        files = self.abe_key_files(who, authority)
        if not files:
            raise WalletError(f"no {authority} key held by {who} in this data directory")
        return abe.AbeUserKey.from_bytes(files[-1].read_bytes())

    def holds_abe_key(self, who: str, authority: str, tag: bytes) -> bool:
        return (self._folder(who) / f"abe-{authority}-{_tag_id(tag)}.key").is_file()

    def drop_abe_key(self, who: str, authority: str, tag: bytes) -> None:
        (self._folder(who) / f"abe-{authority}-{_tag_id(tag)}.key").unlink(missing_ok=True)

    # -- patients --------------------------------------------------------------------------

    def save_seed(self, patient: str, seed: PatientSeed) -> None:
        write_file(
            self._folder(patient_principal(patient)) / "seed", seed.secret_bytes(), secret=True
        )

    def has_seed(self, patient: str) -> bool:
        return (self._folder(patient_principal(patient)) / "seed").is_file()

    def seed(self, patient: str) -> PatientSeed:
        data = self._read(
            self._folder(patient_principal(patient)) / "seed", f"seed for patient {patient}"
        )
        return PatientSeed(data)

    # -- share inbox -----------------------------------------------------------------------

    def deliver_share(self, grantee: str, share: hkac.Share) -> None:
        """Put an extended share where its grantee picks it up (their device, in a real
        deployment): the same share id with the keys for slabs reserved since issue."""
        path = self._folder(grantee) / "inbox" / f"{share.share_id}.json"
        write_file(path, share.to_bytes(), secret=True)

    def delivered_share(self, grantee: str, share_id: str) -> hkac.Share | None:
        path = self._folder(grantee) / "inbox" / f"{quote(share_id, safe='')}.json"
        if not path.is_file():
            return None
        return hkac.Share.from_bytes(path.read_bytes())

    # -- authorities -----------------------------------------------------------------------

    def save_authority(self, hospital: str, keys: issuance.AuthorityKeys) -> None:
        write_file(self._authority_folder(hospital) / "authority.key", keys.to_bytes(), secret=True)

    def authority(self, hospital: str) -> issuance.AuthorityKeys:
        data = self._read(
            self._authority_folder(hospital) / "authority.key", f"authority key of {hospital}"
        )
        return issuance.AuthorityKeys.from_bytes(data)

    def save_kek_seed(self, hospital: str, seed: bytes) -> None:
        write_file(self._authority_folder(hospital) / "kek.seed", seed, secret=True)

    def kek_seed(self, hospital: str) -> bytes:
        return self._read(self._authority_folder(hospital) / "kek.seed", f"KEK seed of {hospital}")

    def save_study_secret(self, study: str, secret: bytes) -> None:
        write_file(self.root / "studies" / quote(study, safe="") / "secret", secret, secret=True)

    def study_secret(self, study: str) -> bytes:
        return self._read(
            self.root / "studies" / quote(study, safe="") / "secret", f"study {study}"
        )


def _tighten(root: Path) -> None:
    """Make a wallet tree that older versions created 0755 private: every folder 0700.

    Cheap on every open: only the root is looked at unless it is open to others, and the
    root is closed last, so an interrupted pass is finished by the next open. Best effort:
    a folder this user may not change (or that vanished) is left as it was, which is no
    worse than before; links inside the tree are not followed (the root may be one).
    """
    try:
        if stat.S_IMODE(root.stat().st_mode) & 0o077 == 0:
            return
    except OSError:
        return  # not there yet: it will be made 0700 with the first key
    for folder, _, _ in os.walk(root, followlinks=False):
        if folder != str(root):
            _close(folder, os.O_NOFOLLOW)
    _close(str(root), 0)


def _close(folder: str, nofollow: int) -> None:
    """Drop the group and other bits of one folder we own, through a descriptor (so a
    folder swapped for a link meanwhile is not what gets changed)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | nofollow)
    except OSError:
        return
    try:
        info = os.fstat(fd)
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & 0o700)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tag_id(tag: bytes) -> str:
    """A key's file id: the first 8 bytes of its public tag ``g^{K'}``, hex."""
    return tag[:8].hex()


def patient_principal(patient_id: str) -> str:
    """The principal id a patient acts as: ``patient:<id>`` (the chain's rules know it)."""
    return published.patient_identity(patient_id)
