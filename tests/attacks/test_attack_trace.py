"""Attacks on tracing (service.area_keys.trace, registered_tags, _revoked_on_ledger) and on
who the ledger says holds a key (register_identity / register_key_tag), on a small real
consortium (SQLite, in-process ledger running the real ABCI rules, real keys).

* A guilty key holder pre-empts her own revocation with a REVOKE naming
  ``key/<authority>/<tag>``: refused now by the chain (only the authority revokes its
  keys), and tracing believes only the authority's revocations anyway.
* A node enrols a name of another hospital, so that its hospital's authority can make a
  key, register its tag in the squatted name and have trace name an innocent person:
  refused now, the chain takes ``…@H001`` names only from H001's nodes.
* A copy of someone's tag registered under one's own name shifts no blame when it comes
  second (first wins: resisted), but the chain never asks for a proof of knowledge of the
  tag's discrete log, so a copy taken from the mempool and ordered first names the copier
  (a throwaway identity) and its made-up attributes, and revocation rotates nothing.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from medshare.crypto import abe
from medshare.ledger.port import TxRejected
from medshare.ledger.types import TxKind
from medshare.records import synthetic
from medshare.service import db, keyring
from medshare.service.areas import Area
from medshare.service.config import ServiceConfig
from medshare.service.consortium import add_person, add_staff, init
from medshare.service.errors import AccessDenied
from medshare.service.roster import StaffMember
from service.conftest import Clock

ROSTER = (
    StaffMember("dr.wang@H001", "H001", "03", "physician"),
    StaffMember("dr.chen@H002", "H002", "03", "physician"),
)


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack-trace")
    config = ServiceConfig(data_dir=root / "data", hospitals=("H001", "H002"), nodes=4, committee=4)
    service = init(config, roster=ROSTER, clock=Clock(1_800_000_000_000))
    bundle = root / "bundle.json"
    bundle.write_text(json.dumps(synthetic.generate_bundle(7, 0, 12)))
    report = service.ingest("H001", [bundle])
    assert not report.rejected, report.rejected
    # Mallory, a nurse of the department of an ingested record.
    record = next(r for p in service.patients() for r in service.records_of(p["id"]))
    top = service.taxonomy.path(record["dept"])[0].code
    add_staff(service, StaffMember("mallory@H001", "H001", top, "nurse"))
    yield service, record["id"], top
    service.close()


def _epoch(service, code: str) -> int:
    with service.sessions() as session:
        return session.get(db.Hospital, code).epoch


def _h001_public(service) -> bytes:
    with service.sessions() as session:
        return session.get(db.Hospital, "H001").abe_public


def _live_institution_key(service, scope: str) -> db.AreaKey:
    with service.sessions() as session:
        row = session.execute(
            select(db.AreaKey).where(db.AreaKey.scope == scope, db.AreaKey.retired_ms.is_(None))
        ).scalar_one()
        session.expunge(row)
        return row


def test_resisted_a_guilty_holder_pre_revoking_her_own_tag(consortium):
    """Fixed after review: the chain refuses a REVOKE of ``key/<authority>/<tag>`` that
    the traced holder signed herself (and tracing would not believe one anyway): the
    authority revokes, rotates and the leaked key opens nothing live."""
    service, record_id, top = consortium
    leaked = service.wallets.abe_key_files("mallory@H001", "H001")[-1].read_bytes()
    key = abe.AbeUserKey.from_bytes(leaked)
    epoch_before = _epoch(service, "H001")
    scope = f"institution/H001/{top}"
    kek_before = _live_institution_key(service, scope).id
    fake = {"grant": f"key/H001/{key.tag().hex()}", "reason": "housekeeping"}
    with pytest.raises(TxRejected, match="only authority@H001 may revoke"):
        service.ledger.sign_and_submit(
            service.wallets.identity("mallory@H001"), TxKind.REVOKE, [fake]
        )

    verdict = service.trace(leaked)
    assert verdict["verdict"] == "user" and verdict["identity"] == "mallory@H001"
    assert verdict["revocation"] != {"already_revoked": True}
    assert _epoch(service, "H001") == epoch_before + 1
    assert _live_institution_key(service, scope).id != kek_before
    area_key = _live_institution_key(service, scope)
    ct = abe.AbeCiphertext.from_bytes(area_key.abe_ciphertext)
    public = service.authority_public("H001", _h001_public(service))
    with pytest.raises(abe.PolicyNotSatisfied):
        abe.decrypt(public, key, ct, context=area_key.id.encode())
    with pytest.raises(AccessDenied):
        service.read("mallory@H001", record_id, area=Area.INSTITUTION)


def test_resisted_registering_someone_elses_tag_under_ones_own_name(consortium):
    """Mallory copies dr.wang's tag (public on the ledger) under her own name and under
    another authority string: the chain refuses both (no proof of knowledge of K'), and
    trace still names dr.wang."""
    service, _, _ = consortium
    wang = abe.AbeUserKey.from_bytes(
        service.wallets.abe_key_files("dr.wang@H001", "H001")[-1].read_bytes()
    )
    mallory = service.wallets.identity("mallory@H001")
    for authority in ("H001", "H002"):
        body = {
            "identity": "mallory@H001",
            "tag": wang.tag().hex(),
            "R": "00" * 48,
            "authority": authority,
            "attributes": ["hospital:H001"],
        }
        with pytest.raises(TxRejected, match="no proof"):
            service.ledger.sign_and_submit(mallory, TxKind.REGISTER_KEY_TAG, [body])
    with service.sessions() as session:
        publics = {
            h.code: service.authority_public(h.code, h.abe_public)
            for h in session.execute(select(db.Hospital)).scalars()
        }
    registered = service.registered_tags()
    holders = {
        c: {t: str(b["identity"]) for t, b in bodies.items()} for c, bodies in registered.items()
    }
    result = keyring.trace(wang, publics, holders)  # exactly what service.trace decides on
    assert (result.verdict, result.identity) == (abe.Verdict.USER, "dr.wang@H001")


def test_resisted_a_copied_tag_ordered_first(consortium, monkeypatch):
    """Fixed after review: Mallory copies dr.bob's ``register_key_tag`` from the mempool
    into her own name, ordered first. The copy carries dr.bob's proof of knowledge of K',
    bound to dr.bob's identity and key, so the chain refuses it; tracing dr.bob's leaked
    key names dr.bob and rotates what it opened."""
    service, _, top = consortium
    mallory = service.wallets.identity("mallory@H001")
    submit = service._submit_batches
    refused = []

    def mempool_front_run(batches):
        for _key, kind, bodies in batches:
            for body in bodies:
                if kind == TxKind.REGISTER_KEY_TAG and body["identity"] == "dr.bob@H001":
                    copy = {**body, "identity": "mallory@H001", "attributes": ["nothing:here"]}
                    try:
                        service.ledger.sign_and_submit(mallory, TxKind.REGISTER_KEY_TAG, [copy])
                    except TxRejected as exc:
                        refused.append(str(exc))
        return submit(batches)

    monkeypatch.setattr(service, "_submit_batches", mempool_front_run)
    add_staff(service, StaffMember("dr.bob@H001", "H001", top, "physician"))
    monkeypatch.undo()
    assert refused and "no proof" in refused[0]
    leaked = service.wallets.abe_key_files("dr.bob@H001", "H001")[-1].read_bytes()
    scope = f"institution/H001/{top}"
    kept = _live_institution_key(service, scope)
    verdict = service.trace(leaked)
    assert (verdict["verdict"], verdict["identity"]) == ("user", "dr.bob@H001")
    assert verdict["revocation"]["records_rewrapped"] > 0
    assert _live_institution_key(service, scope).id != kept.id


def test_resisted_a_node_squatting_a_name_of_another_hospital(consortium):
    """Fixed after review: H002's node tries to enrol its own key as "dr.new@H001" (H001's
    new hire, not enrolled yet), to have H002's authority make a key in that name and
    trace blame dr.new@H001 for it. The chain takes ``…@H001`` names only from H001's
    nodes (genesis names them ``H001-…``), so the squat is refused and H001 enrols its
    own person."""
    from medshare.crypto.signing import SigningKey

    service, _, _ = consortium
    squat = SigningKey.generate()
    body = {"identity": "dr.new@H001", "key": squat.public.hex()}
    with pytest.raises(TxRejected, match="only H001's nodes may enrol"):
        service.ledger.sign_and_submit(service.node_key("H002"), TxKind.REGISTER_IDENTITY, [body])
    add_person(service, "dr.new@H001", "clinician", "H001", ["physician"], "03")
    public = service.wallets.identity("dr.new@H001").public
    assert service.ledger.registered(public) == "dr.new@H001"
    assert service.ledger.registered(squat.public) is None
