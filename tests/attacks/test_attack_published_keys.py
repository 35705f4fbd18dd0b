"""Public keys substituted in a hospital's database (issue 12, finding 6, second part).

Whoever can edit a hospital's SQL rows — an administrator, an attacker with the database
credentials, a restored backup of someone else's — could put in a public key whose secret
they know: an authority key with their own ``g1^α`` (``AbePublicKey.check`` cannot tell,
only the G1/G2 copies are checkable) or a patient block key ``g1^γ'``. Every DEK sealed
under it afterwards would be theirs. Both are refused now: each public key is published
by its owner on the ledger (``publish_key``) and checked against it before anything is
sealed; nothing is stored for the refused operation. Real SQLite, the in-process ledger
running the real ABCI rules, real keys.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from medshare.crypto import abe, group, kac
from medshare.ledger.app import published
from medshare.records import synthetic
from medshare.service import db
from medshare.service.errors import InvalidInput
from service.conftest import one_hospital


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack-published")
    service = one_hospital(root)
    yield service, root
    service.close()


def _bundle(root, name: str, doc: dict):
    path = root / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def _one_more_record(bundle: dict, new_id: str) -> dict:
    """The patient of ``bundle`` and one Observation of it under a new id."""
    entries = bundle["entry"]
    patient = next(e for e in entries if e["resource"]["resourceType"] == "Patient")
    obs = copy.deepcopy(next(e for e in entries if e["resource"]["resourceType"] == "Observation"))
    obs["resource"]["id"] = new_id
    obs["fullUrl"] = f"urn:uuid:{new_id}"
    obs["resource"].pop("encounter", None)
    return {**bundle, "entry": [patient, obs]}


def _record_count(service) -> int:
    with service.sessions() as session:
        return session.query(db.Record).count()


def _set_row(service, model, key, column: str, value) -> None:
    with db.transaction(service.sessions) as session:
        setattr(session.get(model, key), column, value)


def test_resisted_an_authority_row_with_a_substituted_alpha(consortium):
    """H001's row gets ``g1^α'`` for an ``α'`` the editor chose (the G2 copies untouched,
    so ``AbePublicKey.check`` alone passes it). The first ingest — which creates the
    institution area keys, sealing their KEKs under this public key — is refused and
    stores nothing; with the row restored it goes through."""
    service, root = consortium
    with service.sessions() as session:
        real_bytes = session.get(db.Hospital, "H001").abe_public
    real = abe.AbePublicKey.from_bytes(real_bytes)
    tampered = dataclasses.replace(real, alpha1=group.mul(group.g1(), group.random_scalar()))
    tampered.check()  # what the service relied on before: it cannot see the swap
    bundle = _bundle(root, "first", synthetic.generate_bundle(11, 0, 6))
    _set_row(service, db.Hospital, "H001", "abe_public", tampered.to_bytes())
    try:
        with pytest.raises(InvalidInput, match="authority/H001/abe does not match"):
            service.ingest("H001", [bundle])
        assert _record_count(service) == 0 and service.patients() == []
    finally:
        _set_row(service, db.Hospital, "H001", "abe_public", real_bytes)
    report = service.ingest("H001", [bundle])
    assert report.records > 0 and not report.rejected
    assert service.ledger.published(published.authority_key("H001", "abe")) == published.digest(
        real_bytes
    )


def test_resisted_a_patient_block_key_substituted_in_the_database(consortium):
    """Patient P's block-0 key is replaced by ``g1^γ'`` (γ' the editor's): a new record of
    P is refused before its DEK is sealed to that key, nothing is stored, and the patient's
    own published key is what the chain still holds."""
    service, root = consortium
    patient = service.patients()[0]["id"]
    with service.sessions() as session:
        row = session.get(db.Patient, patient)
        publics = dict(row.block_publics)
    real_hex = publics["0"]
    fake = kac.KacPatientPublic(group.mul(group.g1(), group.random_scalar()))
    before = _record_count(service)
    more = _one_more_record(synthetic.generate_bundle(11, 0, 6), "obs-after-edit-1")
    path = _bundle(root, "more", more)
    _set_row(service, db.Patient, patient, "block_publics", {**publics, "0": fake.to_bytes().hex()})
    try:
        with pytest.raises(InvalidInput, match=f"patient/{patient}/block/0 does not match"):
            service.ingest("H001", [path])
        assert _record_count(service) == before
    finally:
        _set_row(service, db.Patient, patient, "block_publics", {**publics, "0": real_hex})
    report = service.ingest("H001", [path])
    assert (report.records, report.rejected) == (1, [])
    name = published.block_key(patient, 0)
    assert service.ledger.published(name) == published.digest(bytes.fromhex(real_hex))


def test_resisted_publishing_for_someone_else_through_the_service_ledger(consortium):
    """The authority's own identity cannot publish a block key of a patient, nor replace
    its own published key with another (the chain keeps the first)."""
    from medshare.ledger.port import TxRejected
    from medshare.ledger.types import TxKind

    service, _ = consortium
    patient = service.patients()[0]["id"]
    authority = service.wallets.identity("authority@H001")
    with pytest.raises(TxRejected, match="only patient:"):
        service.ledger.sign_and_submit(
            authority,
            TxKind.PUBLISH_KEY,
            [{"key": published.block_key(patient, 7), "digest": "00" * 32}],
        )
    with pytest.raises(TxRejected, match="already published"):
        service.ledger.sign_and_submit(
            authority,
            TxKind.PUBLISH_KEY,
            [{"key": published.authority_key("H001", "abe"), "digest": "00" * 32}],
        )
