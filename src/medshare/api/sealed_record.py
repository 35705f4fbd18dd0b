"""A sealed record: what a hospital releases to a reader it allowed, opened on the reader's
device.

Why this split: a hospital decides *whether* someone may read (grants, areas, break-glass)
and logs the read on the ledger, but it must never decrypt on a reader's behalf — that
would need the reader's CP-ABE key or H-KAC share on the hospital's side, where a stolen
disk or a curious administrator could take it. So the hospital hands over only
ciphertext: the record's encrypted blob and, for the area the reader came through,
either the record's H-KAC header (personal area: the reader's share opens it) or the
area key's CP-ABE ciphertext of its KEK with the record's DEK wrap (other areas: the
reader's attribute key opens the KEK). :func:`open_sealed` runs where the key is: it
opens the DEK, the blob, and checks the record against the salted digest anchored on the
ledger. The hospital's side is :meth:`medshare.service.reading.ReadingMixin.seal_for`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medshare.crypto import abe, hkac, kac
from medshare.crypto.errors import CryptoError, DecryptionFailed, PolicyNotSatisfied
from medshare.records import canonical
from medshare.service import areas, protect
from medshare.service.areas import Area
from medshare.service.errors import AccessDenied, IntegrityError, InvalidInput


@dataclass(frozen=True)
class AreaSeal:
    """How a record's DEK is sealed for one CP-ABE area: the area key's ciphertext of its
    KEK (under ``policy``, by ``authority``) and the DEK wrapped under that KEK."""

    authority: str
    area_key_id: str
    policy: str
    kek_ciphertext: bytes
    wrapped_dek: bytes


@dataclass(frozen=True)
class SealedRecord:
    """One record as released to one reader through one area; nothing here opens without
    the reader's key. ``check_digest`` is False for a research copy (de-identified, so its
    bytes are not the anchored original's)."""

    record_id: str
    area: Area
    txid: str  # the committed access tx of this release
    blob: bytes
    salt: bytes
    digest: str
    check_digest: bool
    kac_header: bytes | None = None  # personal area
    seal: AreaSeal | None = None  # every other area

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "record": self.record_id,
            "area": self.area.value,
            "txid": self.txid,
            "blob": _b64(self.blob),
            "salt": _b64(self.salt),
            "digest": self.digest,
            "check_digest": self.check_digest,
        }
        if self.kac_header is not None:
            doc["kac_header"] = _b64(self.kac_header)
        if self.seal is not None:
            doc["seal"] = {
                "authority": self.seal.authority,
                "area_key": self.seal.area_key_id,
                "policy": self.seal.policy,
                "kek_ciphertext": _b64(self.seal.kek_ciphertext),
                "wrapped_dek": _b64(self.seal.wrapped_dek),
            }
        return doc

    @classmethod
    def from_json(cls, doc: object) -> SealedRecord:
        """Decode what a hospital sent; anything malformed is :class:`InvalidInput`."""
        try:
            if not isinstance(doc, dict):
                raise TypeError("a sealed record is a JSON object")
            seal = doc.get("seal")
            check = _flag(doc["check_digest"])
            return cls(
                record_id=_text(doc["record"]),
                area=areas.parse_area(_text(doc["area"])),
                txid=_text(doc["txid"]),
                blob=_unb64(doc["blob"]),
                salt=_unb64(doc["salt"]),
                # a research copy comes without the original's digest (nothing to check)
                digest=_text(doc["digest"]) if check or doc["digest"] else "",
                check_digest=check,
                kac_header=_unb64(doc["kac_header"]) if "kac_header" in doc else None,
                seal=None
                if seal is None
                else AreaSeal(
                    authority=_text(seal["authority"]),
                    area_key_id=_text(seal["area_key"]),
                    policy=_text(seal["policy"]),
                    kek_ciphertext=_unb64(seal["kek_ciphertext"]),
                    wrapped_dek=_unb64(seal["wrapped_dek"]),
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed sealed record: {exc}") from None


def open_sealed(
    sealed: SealedRecord,
    *,
    params: kac.KacParams | None = None,
    share: hkac.Share | None = None,
    abe_keys: Sequence[abe.AbeUserKey] = (),
    authority_public: abe.AbePublicKey | None = None,
) -> bytes:
    """The record's FHIR bytes, opened on the reader's device with the reader's own key:
    ``share`` (and the KAC ``params``) for the personal area, otherwise one of
    ``abe_keys`` satisfying the seal's policy, with the authority's public key. Raises
    :class:`AccessDenied` when the key does not open it and :class:`IntegrityError` when
    the blob or its digest do not check out."""
    return _open_blob(sealed, _dek(sealed, params, share, abe_keys, authority_public))


def _dek(sealed, params, share, abe_keys, authority_public) -> bytes:
    if sealed.area is Area.PERSONAL:
        if sealed.kac_header is None or share is None or params is None:
            raise InvalidInput("the personal area opens with an H-KAC share and the parameters")
        try:
            ct = kac.KacCiphertext.from_bytes(sealed.kac_header)
            return hkac.open_record(params, share, ct, sealed.record_id)
        except PolicyNotSatisfied as exc:
            raise AccessDenied(f"the share does not cover this record ({exc})") from None
        except (DecryptionFailed, CryptoError, ValueError):
            raise AccessDenied("the share's key does not open this record") from None
    seal = sealed.seal
    if seal is None or authority_public is None:
        raise InvalidInput(f"the {sealed.area.value} area opens with an attribute key")
    fitting = [k for k in abe_keys if areas.satisfied_by(seal.policy, tuple(k.attributes))]
    if not fitting:
        raise AccessDenied(f"no key here satisfies the policy {seal.policy}")
    try:
        ct = abe.AbeCiphertext.from_bytes(seal.kek_ciphertext)
        kek = abe.decrypt(authority_public, fitting[-1], ct, context=seal.area_key_id.encode())
        return protect.unwrap_dek(kek, seal.wrapped_dek, sealed.record_id, seal.area_key_id)
    except PolicyNotSatisfied:
        raise AccessDenied(f"no key here satisfies the policy {seal.policy}") from None
    except (DecryptionFailed, CryptoError, ValueError):
        raise AccessDenied(f"the key does not open the {sealed.area.value} key") from None


def _open_blob(sealed: SealedRecord, dek: bytes) -> bytes:
    if not sealed.check_digest and sealed.area is not Area.RESEARCH:
        raise IntegrityError(
            f"record {sealed.record_id}: only a research copy goes without its digest check"
        )
    try:
        data = protect.open_blob(dek, sealed.blob, sealed.record_id)
    except (DecryptionFailed, ValueError):
        raise IntegrityError(f"record {sealed.record_id}: blob fails authentication") from None
    if sealed.check_digest and not canonical.verify_record(data, sealed.salt, sealed.digest):
        raise IntegrityError(f"record {sealed.record_id} does not match its ledger digest")
    return data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object) -> bytes:
    if not isinstance(value, str):
        raise TypeError("expected base64 text")
    return base64.b64decode(value, validate=True)


def _text(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise TypeError("expected a non-empty string")
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value
