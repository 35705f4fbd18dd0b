"""Regression tests from the review of the records service: each was a working attack or
a broken user flow before its fix."""

from __future__ import annotations

import dataclasses
import json

import pytest
from sqlalchemy import select

from medshare.crypto.signing import SigningKey
from medshare.ledger.app.rules import Code
from medshare.ledger.port import TxRejected
from medshare.ledger.types import TxKind
from medshare.service.areas import Area
from medshare.service.consortium import add_person
from medshare.service.errors import AccessDenied

DAY = 86_400_000


def _patient_at(service, hospital: str = "H001", index: int = 0) -> str:
    at = [
        p["id"]
        for p in service.patients()
        if any(r["hospital"] == hospital for r in service.records_of(p["id"]))
    ]
    return at[index]


def _records(service, pid: str) -> list[str]:
    return [r["id"] for r in service.records_of(pid) if not r["shredded"]]


def test_an_expired_share_cannot_ride_on_a_live_shares_id(consortium):
    service, clock, _ = consortium
    pid = _patient_at(service)
    rids = _records(service, pid)
    broad = service.share(pid, "family:bob", everything=True, until_ms=clock() + DAY)
    narrow = service.share(pid, "family:carol", records=[rids[0]])
    clock.now_ms += 2 * DAY
    with pytest.raises(AccessDenied, match="expired"):
        service.read("family:bob", rids[1], area=Area.PERSONAL, share=broad)
    swapped = dataclasses.replace(broad, share_id=narrow.share_id)
    with pytest.raises(AccessDenied):
        service.read("family:bob", rids[1], area=Area.PERSONAL, share=swapped)
    relabelled = dataclasses.replace(broad, share_id=narrow.share_id, grantee="family:carol")
    # The hospital releases only what the named share's grant covers (narrow: rids[0]),
    # whatever keys the reader holds: it never sees them.
    with pytest.raises(AccessDenied, match="does not cover this record"):
        service.read("family:carol", rids[1], area=Area.PERSONAL, share=relabelled)


def test_revoking_one_share_leaves_the_others_working(consortium):
    service, _, _ = consortium
    pid = _patient_at(service)
    rid = _records(service, pid)[2]
    dept = next(r["dept"] for r in service.records_of(pid) if r["id"] == rid)
    bob = service.share(pid, "family:bob2", records=[rid])
    carol = service.share(pid, "family:carol2", records=[rid])
    dave = service.share(pid, "family:dave2", dept=dept)
    out = service.revoke(bob.share_id)
    assert out["records_resealed"] >= 1
    with pytest.raises(AccessDenied, match="revoked"):
        service.read("family:bob2", rid, area=Area.PERSONAL, share=bob)
    # The others keep reading with the share files they were given (their new keys wait in
    # their inboxes), and the revocation is on the ledger once.
    assert service.read("family:carol2", rid, area=Area.PERSONAL, share=carol).resource
    assert service.read("family:dave2", rid, area=Area.PERSONAL, share=dave).resource
    revokes = [c for c in service.ledger.txs(TxKind.REVOKE) if c.tx.body["grant"] == bob.share_id]
    assert len(revokes) == 1


def test_revoking_a_share_that_covers_a_deleted_record(consortium, tmp_path):
    service, _, _ = consortium
    pid = _patient_at(service)
    rids = _records(service, pid)
    share = service.share(pid, "family:erin", records=rids[3:5])
    service.shred(rids[3])
    out = service.revoke(share.share_id)
    assert out["records_resealed"] == 1
    with pytest.raises(AccessDenied, match="revoked"):
        service.read("family:erin", rids[4], area=Area.PERSONAL, share=share)
    revokes = [c for c in service.ledger.txs(TxKind.REVOKE) if c.tx.body["grant"] == share.share_id]
    assert len(revokes) == 1


def test_a_claim_to_a_colleagues_identity_is_refused_by_the_chain(consortium):
    """Regression (issue 12, finding 1): a tag registered in a colleague's name by one's
    own enrolled key used to commit, and the first such claim was what tracing trusted."""
    service, _, _ = consortium
    impostor = service.wallets.identity("nurse.li@H001")
    body = {"identity": "dr.zhao@H001", "tag": "00" * 48, "R": "00" * 48}
    with pytest.raises(TxRejected) as refused:
        service.ledger.sign_and_submit(impostor, TxKind.REGISTER_KEY_TAG, [body])
    assert refused.value.code == Code.NOT_PERMITTED
    leaked = service.wallets.abe_key_files("dr.zhao@H001", "H001")[-1].read_bytes()
    verdict = service.trace(leaked)
    assert verdict["verdict"] == "user" and verdict["identity"] == "dr.zhao@H001"


def test_a_throwaway_tag_in_ones_own_name_does_not_shift_the_blame(consortium):
    """Regression (finding 1): a person who registers a tag under their own name before
    their real key is issued still gets the real key's leak traced to them."""
    service, _, _ = consortium
    add_person(service, "dr.new@H001", "clinician", "H001", ["physician"], "03")
    from medshare.crypto import group, issuance

    own = service.wallets.identity("dr.new@H001")
    throwaway = group.random_scalar()  # a K' of no issued key: a tag nobody's key has
    context = issuance.key_tag_context(service.ledger.chain_id, "dr.new@H001", own.public)
    decoy = {
        "identity": "dr.new@H001",
        "tag": group.encode_g1(group.mul(group.g1(), throwaway)).hex(),
        "R": "22" * 48,
        "authority": "H001",
        "proof": issuance.prove_key_tag(throwaway, context),
    }
    service.ledger.sign_and_submit(own, TxKind.REGISTER_KEY_TAG, [decoy])
    service.issue_key("dr.new@H001", "H001", ("hospital:H001", "dept:03", "role:physician"))
    leaked = service.wallets.abe_key_files("dr.new@H001", "H001")[-1].read_bytes()
    verdict = service.trace(leaked)
    assert verdict["verdict"] == "user" and verdict["identity"] == "dr.new@H001"


def test_trace_reads_the_ledger_not_the_sql_registry(consortium):
    """Regression (finding 2): with the key's SQL registry row gone (a crash after the
    wallet write, a restore from backup), the key used to be blamed on the authority."""
    from medshare.service import db

    service, _, _ = consortium
    add_person(service, "dr.row@H001", "clinician", "H001", ["physician"], "03")
    service.issue_key("dr.row@H001", "H001", ("hospital:H001", "dept:03", "role:physician"))
    with db.transaction(service.sessions) as session:
        for row in session.execute(
            select(db.AbeKey).where(db.AbeKey.principal == "dr.row@H001")
        ).scalars():
            session.delete(row)
    leaked = service.wallets.abe_key_files("dr.row@H001", "H001")[-1].read_bytes()
    verdict = service.trace(leaked)
    assert verdict["verdict"] == "user" and verdict["identity"] == "dr.row@H001"
    # Revoked from what the ledger says the key was, not reported "already revoked".
    assert verdict["revocation"]["revoked"] == "dr.row@H001"
    assert service.trace(leaked)["revocation"] == {"already_revoked": True}


def test_the_log_ignores_txs_from_strangers_and_survives_malformed_ones(consortium):
    service, _, _ = consortium
    pid = _patient_at(service)
    stranger = SigningKey.generate()
    fake = {
        "record": _records(service, pid)[0],
        "patient": pid,
        "actor": "dr.wang@H001",
        "area": "nowhere",
        "outcome": "success",
    }
    # The ledger refuses a key no node registered; once a node vouches for it (someone
    # this service has no principal for), its tx commits but is still not in the log.
    with pytest.raises(TxRejected) as refused:
        service.ledger.sign_and_submit(stranger, TxKind.ACCESS, [fake])
    assert refused.value.code == Code.NOT_PERMITTED and refused.value.committed == []
    body = {"identity": "stranger@elsewhere", "key": stranger.public.hex()}
    service.ledger.sign_and_submit(service.node_key("H002"), TxKind.REGISTER_IDENTITY, [body])
    txid = service.ledger.sign_and_submit(stranger, TxKind.ACCESS, [fake])[0].tx.txid
    insider = service.wallets.identity("dr.wang@H001")
    bad = {**fake, "area": "nowhere"}
    bad_txid = service.ledger.sign_and_submit(insider, TxKind.ACCESS, [bad])[0].tx.txid
    text = json.dumps(service.log(pid))
    assert txid not in text and bad_txid not in text


def test_referrals_go_to_physicians_and_the_covering_one_is_used(consortium):
    service, clock, _ = consortium
    from medshare.service.consortium import add_staff
    from medshare.service.errors import InvalidInput
    from medshare.service.roster import StaffMember

    add_staff(service, StaffMember("nurse.ma@H002", "H002", "03", "nurse"))
    pid = _patient_at(service)
    with pytest.raises(InvalidInput, match="not a physician"):
        service.refer(pid, "H001", "nurse.ma@H002")
    add_staff(service, StaffMember("dr.gao@H002", "H002", "03", "physician"))
    rid = next(r["id"] for r in service.records_of(pid) if r["hospital"] == "H001")
    service.refer(pid, "H001", "dr.gao@H002", until_ms=clock() + 5 * DAY)
    used = {r["dept"][:2] for r in service.records_of(pid)}
    other = next(
        d["code"] for d in service.departments() if d["parent"] is None and d["code"] not in used
    )
    service.refer(pid, "H001", "dr.gao@H002", dept=other, until_ms=clock() + 5 * DAY)
    # The newer referral (a department with none of this patient's records) does not hide
    # the older one that covers the record.
    assert service.read("dr.gao@H002", rid, area=Area.COLLABORATION).resource


def test_verify_reports_instead_of_crashing(consortium):
    service, _, _ = consortium
    from medshare.service import db
    from medshare.service.errors import InvalidInput

    pid = _patient_at(service)
    rids = _records(service, pid)
    service.shred(rids[-1])
    with pytest.raises(InvalidInput, match="deleted"):
        service.verify(rids[-1])
    victim = rids[-2]
    with db.transaction(service.sessions) as session:
        for wrap in session.execute(select(db.Wrap).where(db.Wrap.record == victim)).scalars():
            session.delete(wrap)
    report = service.verify(victim)
    assert not report["ok"] and "wrap is missing" in report["problems"][0]["problem"]


def test_public_parameters_are_verified_before_use(consortium):
    """Regression (issue 12, finding 6): ``KacParams.verify`` and ``AbePublicKey.check``
    existed but nothing called them, so a parameters file with an inconsistent power (or
    an authority row with mismatched G1/G2 copies) was used to seal records."""
    import dataclasses as dc

    from medshare.crypto import kac
    from medshare.service import db
    from medshare.service.errors import InvalidInput

    service, _, _ = consortium
    path = service.config.kac_params_file
    original = path.read_bytes()
    params = kac.KacParams.from_bytes(original)
    swapped = (params.g2_powers[1], params.g2_powers[0], *params.g2_powers[2:])
    try:
        path.write_bytes(dc.replace(params, g2_powers=swapped).to_bytes())
        service._params = None
        with pytest.raises(InvalidInput, match="not well formed"):
            _ = service.params
    finally:
        path.write_bytes(original)
        service._params = None
    assert service.params.n == params.n

    with service.sessions() as session:
        good = session.get(db.Hospital, "H001").abe_public
    public = service.authority_public("H001", good)
    broken = dc.replace(public, w2=public.v2)  # G2 copy no longer matches w1
    with pytest.raises(InvalidInput, match="does not match the key its owner published"):
        service.authority_public("H001", broken.to_bytes())
    with pytest.raises(InvalidInput, match="not published on the ledger"):
        service.authority_public("H404", good)


# --- reading split into the hospital's release and the reader's device (issue 13) -------------


def test_a_release_is_ciphertext_the_reader_opens_on_their_device(consortium):
    """``seal_for`` (the hospital) releases the record sealed for the reader's own key;
    the JSON a server would send round-trips; only the reader's device opens it, and a
    tampered blob, wrap or KEK ciphertext is caught there."""
    from medshare.api.sealed_record import SealedRecord, open_sealed
    from medshare.service.errors import IntegrityError, InvalidInput

    service, _, _ = consortium
    pid = _patient_at(service)
    rid = next(r["id"] for r in service.records_of(pid) if r["dept"].startswith("03"))
    released = service.seal_for("dr.wang@H001", rid, area=Area.INSTITUTION)
    wire = json.loads(json.dumps(released.to_json()))
    assert set(wire) == {"record", "area", "txid", "blob", "salt", "digest", "check_digest", "seal"}
    sealed = SealedRecord.from_json(wire)
    assert sealed == released
    assert service.ledger.find(sealed.txid).tx.body["actor"] == "dr.wang@H001"
    opened = service.open_on_device("dr.wang@H001", sealed)
    assert json.loads(opened)["id"] == rid.split("/")[-1]
    # Another person's keys (surgery, not 03) do not open it, even handed the release.
    with pytest.raises(AccessDenied):
        service.open_on_device("dr.zhao@H001", sealed)
    flipped = bytes([sealed.blob[0] ^ 1]) + sealed.blob[1:]
    with pytest.raises(IntegrityError):
        service.open_on_device("dr.wang@H001", dataclasses.replace(sealed, blob=flipped))
    seal = sealed.seal
    bad_wrap = dataclasses.replace(seal, wrapped_dek=seal.wrapped_dek[:-1] + b"\x00")
    with pytest.raises(AccessDenied):
        service.open_on_device("dr.wang@H001", dataclasses.replace(sealed, seal=bad_wrap))
    with pytest.raises(InvalidInput):
        open_sealed(dataclasses.replace(sealed, seal=None))
    for broken in ({**wire, "blob": "not base64!"}, {**wire, "area": "attic"}, [], {"x": 1}):
        with pytest.raises(InvalidInput, match="malformed sealed record"):
            SealedRecord.from_json(broken)


def test_a_personal_release_needs_a_live_share_that_covers_the_record(consortium):
    service, _, _ = consortium
    pid = _patient_at(service, index=1)
    rids = _records(service, pid)
    share = service.share(pid, "family:erin", records=[rids[0]])
    released = service.seal_for("family:erin", rids[0], area=Area.PERSONAL, share_id=share.share_id)
    assert released.kac_header is not None and released.seal is None
    assert service.open_on_device("family:erin", released, share)
    with pytest.raises(AccessDenied, match="does not cover this record"):
        service.seal_for("family:erin", rids[1], area=Area.PERSONAL, share_id=share.share_id)
    with pytest.raises(AccessDenied, match=r"not given to dr\.wang@H001"):
        service.seal_for("dr.wang@H001", rids[0], area=Area.PERSONAL, share_id=share.share_id)
