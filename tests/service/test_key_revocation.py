"""Revoking a CP-ABE key is all-or-nothing for the other holders' re-issued keys."""

from __future__ import annotations

import pytest

from medshare.ledger.types import TxKind
from medshare.service import areas
from medshare.service.areas import Area
from medshare.service.consortium import add_person
from medshare.service.errors import AccessDenied
from medshare.service.wallets import WalletError


def _record_in(service, prefix: str) -> str:
    return next(
        r["id"]
        for p in service.patients()
        for r in service.records_of(p["id"])
        if r["dept"].startswith(prefix)
    )


def _key_revocations(service) -> int:
    return sum(
        1 for c in service.ledger.txs(TxKind.REVOKE) if c.tx.body["grant"].startswith("key/")
    )


def test_a_revocation_that_cannot_finish_changes_nothing_and_can_be_retried(consortium):
    service, _, _ = consortium
    record = _record_in(service, "03")
    old_files = {
        who: set(service.wallets.abe_key_files(who, "H001"))
        for who in ("dr.wang@H001", "dr.zhao@H001", "er.sun@H001")
    }
    revocations = _key_revocations(service)
    # One holder's identity key is unreadable (a disk or permissions problem): that holder's
    # new key cannot be registered, so the whole revocation must not take effect.
    identity = service.wallets.root / "er.sun@H001" / "identity.key"
    away = identity.with_name("identity.away")
    identity.rename(away)
    try:
        with pytest.raises(WalletError, match=r"identity for er\.sun@H001"):
            service.revoke_key("nurse.li@H001", "H001")
    finally:
        away.rename(identity)
    assert _key_revocations(service) == revocations  # not on the ledger either
    assert service.read("nurse.li@H001", record, area=Area.INSTITUTION).resource  # not revoked
    assert service.read("dr.wang@H001", record, area=Area.INSTITUTION).resource
    for who, files in old_files.items():
        # nothing lost, and the keys this attempt had written are gone again
        assert files == set(service.wallets.abe_key_files(who, "H001")), who

    result = service.revoke_key("nurse.li@H001", "H001")
    assert result["keys_reissued"] >= len(old_files)
    assert _key_revocations(service) == revocations + 1
    with pytest.raises(AccessDenied):
        service.read("nurse.li@H001", record, area=Area.INSTITUTION)
    assert service.read("dr.wang@H001", record, area=Area.INSTITUTION).resource
    for who, files in old_files.items():
        assert not files & set(service.wallets.abe_key_files(who, "H001")), who  # replaced


def test_only_live_keys_open_records_at_the_gate(consortium):
    """A key file in a wallet that the service did not issue to that person (here a
    colleague's live key, copied over) opens nothing, whatever its attributes."""
    service, _, _ = consortium
    record = _record_in(service, "03")
    colleague = service.wallets.abe_key_files("dr.wang@H001", "H001")[-1]
    service.read("dr.wang@H001", record, area=Area.INSTITUTION)
    thief = service.wallets.root / "dr.zhao@H001"
    for own in service.wallets.abe_key_files("dr.zhao@H001", "H001"):
        own.unlink()  # only the copied key left in dr.zhao's wallet
    (thief / colleague.name).write_bytes(colleague.read_bytes())
    # The hospital decides from the keys it issued to dr.zhao (surgery), never from a key
    # file presented; dr.wang's copied key gets nothing released to dr.zhao.
    with pytest.raises(AccessDenied, match=r"dr\.zhao@H001's attributes do not satisfy"):
        service.read("dr.zhao@H001", record, area=Area.INSTITUTION)


def _nurse_attributes(service) -> tuple[str, ...]:
    from medshare.service import db

    with service.sessions() as session:
        epoch = session.get(db.Hospital, "H001").epoch
    return areas.staff_attributes("H001", "03", "nurse", epoch, service.taxonomy)


def _live_area_key_id(service, scope: str) -> str:
    from sqlalchemy import select

    from medshare.service import db

    with service.sessions() as session:
        return session.execute(
            select(db.AreaKey.id).where(db.AreaKey.scope == scope, db.AreaKey.retired_ms.is_(None))
        ).scalar_one()


def _wraps_under(service, area_key_id: str) -> int:
    from sqlalchemy import func, select

    from medshare.service import db

    with service.sessions() as session:
        return session.execute(
            select(func.count()).select_from(db.Wrap).where(db.Wrap.area_key == area_key_id)
        ).scalar_one()


def test_a_leaked_superseded_key_rotates_what_it_opened_at_its_epoch(consortium):
    """Regression (issue 12, finding 3): revoking one key re-published the scopes it could
    not open under the new epoch with the same KEK, so a superseded key of another holder
    (kept from before the re-issue) plus the scope's old ciphertext kept opening records
    added later; tracing such a key rotated nothing."""
    service, _, _ = consortium
    scope = "emergency/H001"
    kept = service.wallets.abe_key_files("er.sun@H001", "H001")[-1].read_bytes()
    before = _live_area_key_id(service, scope)
    add_person(service, "nurse.tmp@H001", "clinician", "H001", ["nurse"], "03")
    service.issue_key("nurse.tmp@H001", "H001", _nurse_attributes(service))
    service.revoke_key("nurse.tmp@H001", "H001")  # a nurse's key: emergency is re-published
    assert _live_area_key_id(service, scope) == before  # same KEK: the precondition
    verdict = service.trace(kept)  # er.sun's superseded (older-epoch) key leaks
    assert verdict["verdict"] == "user" and verdict["identity"] == "er.sun@H001"
    assert verdict["revocation"]["records_rewrapped"] > 0
    after = _live_area_key_id(service, scope)
    assert after != before
    assert _wraps_under(service, before) == 0  # every wrap moved to the fresh KEK
    assert _wraps_under(service, after) > 0
    record = _record_in(service, "03")
    assert service.read("dr.wang@H001", record, area=Area.INSTITUTION).resource
