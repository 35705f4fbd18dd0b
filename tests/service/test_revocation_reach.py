"""Revocation must end what the revoked key can open, not only what the service gate lets
through (issue 12, findings 4 and 5). Each test was a working attack before its fix: the
revoked key, used directly with the stored ciphertexts, still yielded data keys."""

from __future__ import annotations

import dataclasses
import json

import pytest
from sqlalchemy import select

from medshare.crypto import abe, hkac, kac
from medshare.crypto.errors import DecryptionFailed, PolicyNotSatisfied
from medshare.ledger.types import TxKind
from medshare.service import db, protect
from medshare.service.areas import Area
from medshare.service.consortium import add_person
from medshare.service.errors import AccessDenied, InvalidInput, NotFound


def _patients_at(service, hospital: str = "H001") -> list[str]:
    return [
        p["id"]
        for p in service.patients()
        if any(r["hospital"] == hospital for r in service.records_of(p["id"]))
    ]


def _header(service, record_id: str) -> kac.KacCiphertext:
    with service.sessions() as session:
        return kac.KacCiphertext.from_bytes(session.get(db.Record, record_id).kac_header)


def _small_department(service, pid: str) -> tuple[str, str]:
    """(an Encounter of ``pid``, its department) where the department's records all sit in
    its one, current slab."""
    records = service.records_of(pid)
    for encounter in (r for r in records if r["type"] == "Encounter"):
        count = sum(1 for r in records if r["dept"] == encounter["dept"])
        if count < service.config.slab_size:
            return encounter["id"], encounter["dept"]
    raise AssertionError("no department of this patient fits in one slab")


def test_revoking_a_department_share_whose_slab_holds_only_deleted_records(consortium):
    """Finding 4: the department's current slab held only shredded records, so revocation
    moved nothing, the slab stayed current, and the next record of the department landed
    in a class the revoked aggregate key opens."""
    service, _, root = consortium
    pid = _patients_at(service)[0]
    encounter, dept = _small_department(service, pid)
    top = service.taxonomy.path(dept)[0].code  # the share covers dept's whole sub-tree
    revoked = service.share(pid, "family:ex", dept=top)
    kept = service.share(pid, "family:sibling", dept=top)
    for record in service.records_of(pid):
        if record["dept"] == dept:
            service.shred(record["id"])  # the slab now holds deleted records only
    out = service.revoke(revoked.share_id)
    assert out["records_resealed"] == 0  # nothing left to move

    later = {
        "resourceType": "Observation",
        "id": "after-revocation-1",
        "status": "final",
        "code": {"text": "added after the revocation"},
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": encounter},
    }
    (root / "after-revocation.json").write_text(json.dumps(later))
    assert service.ingest("H001", [root / "after-revocation.json"]).records == 1
    rid = "Observation/after-revocation-1"
    assert next(r for r in service.records_of(pid) if r["id"] == rid)["dept"] == dept

    # The gate refuses the revoked share, and the key itself no longer opens the record.
    with pytest.raises(AccessDenied, match="revoked"):
        service.read("family:ex", rid, area=Area.PERSONAL, share=revoked)
    ct = _header(service, rid)
    held = service.wallets.delivered_share("family:ex", revoked.share_id) or revoked
    with pytest.raises(PolicyNotSatisfied):
        hkac.open_record(service.params, held, ct, rid)
    context = hkac._record_context(rid)
    for block_key in held.keys:
        with pytest.raises((PolicyNotSatisfied, DecryptionFailed)):
            kac.decrypt(service.params, block_key.key, ct, context=context)
        # Not a metadata check: a key relabelled to claim the new class computes the
        # wrong secret, since the class lies in a slab it was never extracted for.
        claimed = dataclasses.replace(
            block_key.key, classes=block_key.key.classes | {ct.class_index}
        )
        with pytest.raises(DecryptionFailed):
            kac.decrypt(service.params, claimed, ct, context=context)

    # The patient, a share live through the revocation, and a fresh share still read it.
    assert b"added after the revocation" in service.export(pid)
    got = service.read("family:sibling", rid, area=Area.PERSONAL, share=kept)
    assert b"added after the revocation" in got.resource
    fresh = service.share(pid, "family:new", dept=top)
    got = service.read("family:new", rid, area=Area.PERSONAL, share=fresh)
    assert b"added after the revocation" in got.resource
    assert out["slabs_retired"] >= 1


def _study_key(service, who: str, study: str) -> tuple[bytes, abe.AbeUserKey]:
    for path in service.wallets.abe_key_files(who, "H001"):
        key = abe.AbeUserKey.from_bytes(path.read_bytes())
        if f"ethics:{study}" in key.attributes:
            return path.read_bytes(), key
    raise AssertionError(f"{who} holds no key of study {study}")


def _area_keys(service, scope: str) -> list[db.AreaKey]:
    with service.sessions() as session:
        rows = session.execute(select(db.AreaKey).where(db.AreaKey.scope == scope)).scalars()
        return list(rows)


def _wraps_of(service, pid: str) -> list[db.Wrap]:
    with service.sessions() as session:
        query = select(db.Wrap).join(db.Record, db.Record.id == db.Wrap.record)
        return list(session.execute(query.where(db.Record.patient == pid)).scalars())


def test_revoking_a_study_approval_retires_its_scope_wraps_and_key(consortium):
    """Finding 5: revoking a study approval was enforced only by the service gate; the
    researcher's ``ethics:<study>`` key and the research scope's wraps stayed live, so the
    saved key with the scope's published ciphertext still yielded every consented record's
    data key."""
    service, _, _ = consortium
    first, second = _patients_at(service)[:2]
    who = "researcher.r@uni"
    add_person(service, who, "researcher", None, ["researcher"])
    service.approve_study("S-ended", "H001", who)
    service.approve_study("S-going", "H001", who)
    assert service.consent_research(first, "S-ended") > 0
    assert service.consent_research(second, "S-going") > 0
    assert service.read(who, f"Patient/{first}", area=Area.RESEARCH).resource
    saved_bytes, saved = _study_key(service, who, "S-ended")
    scope = "research/S-ended/H001"
    (published,) = _area_keys(service, scope)
    with service.sessions() as session:
        hosp_public = abe.AbePublicKey.from_bytes(session.get(db.Hospital, "H001").abe_public)

    # Before: the saved key and the scope's ciphertext yield the KEK of the first patient's
    # de-identified copies (what an approved researcher may do).
    old_ct = abe.AbeCiphertext.from_bytes(published.abe_ciphertext)
    old_kek = abe.decrypt(hosp_public, saved, old_ct, context=published.id.encode())
    wraps = [w for w in _wraps_of(service, first) if w.area_key == published.id]
    assert wraps
    protect.unwrap_dek(old_kek, wraps[0].wrapped, wraps[0].record, published.id)

    out = service.revoke("study/S-ended")

    # The scope is retired and its wraps are gone, so the KEK the old ciphertext still
    # gives opens none of the first patient's record keys.
    assert all(k.retired_ms is not None for k in _area_keys(service, scope))
    keys = {k.id for k in _area_keys(service, scope)}
    remaining = _wraps_of(service, first)
    assert not [w for w in remaining if w.area_key in keys]
    for wrap in remaining:
        with pytest.raises(DecryptionFailed):
            protect.unwrap_dek(old_kek, wrap.wrapped, wrap.record, wrap.area_key)
    # The study key is revoked: its registry row, its wallet file, and every live area key
    # (now at the new epoch) refuses it.
    with service.sessions() as session:
        rows = session.execute(select(db.AbeKey).where(db.AbeKey.principal == who)).scalars()
        ended = [r for r in rows if "ethics:S-ended" in r.attributes]
    assert ended and all(r.revoked_ms is not None for r in ended)
    assert all(p.read_bytes() != saved_bytes for p in service.wallets.abe_key_files(who, "H001"))
    with service.sessions() as session:
        live = session.execute(
            select(db.AreaKey).where(
                db.AreaKey.authority == "H001", db.AreaKey.retired_ms.is_(None)
            )
        ).scalars()
        for area_key in list(live):
            ct = abe.AbeCiphertext.from_bytes(area_key.abe_ciphertext)
            with pytest.raises((PolicyNotSatisfied, DecryptionFailed)):
                abe.decrypt(hosp_public, saved, ct, context=area_key.id.encode())
    revokes = {c.tx.body["grant"]: c.tx.body for c in service.ledger.txs(TxKind.REVOKE)}
    assert "study/S-ended" in revokes
    assert any(g.startswith("key/H001/") and who in b["reason"] for g, b in revokes.items())

    assert out["wraps_destroyed"] >= len(wraps) and out["keys_revoked"] == 1
    with pytest.raises(AccessDenied):
        service.read(who, f"Patient/{first}", area=Area.RESEARCH)
    # The other study is unaffected: its key was re-issued at the new epoch.
    got = json.loads(service.read(who, f"Patient/{second}", area=Area.RESEARCH).resource)
    assert got["id"] != second
    # Bad input is a clear error.
    with pytest.raises(InvalidInput, match="already revoked"):
        service.revoke("study/S-ended")
    with pytest.raises(NotFound, match="unknown study"):
        service.consent_research(second, "S-ended")
    with pytest.raises(NotFound, match="unknown grant"):
        service.revoke("study/never-approved")
