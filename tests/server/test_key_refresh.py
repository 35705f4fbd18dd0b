"""A revocation at an authority supersedes every key of it held on a device (the epoch in
its policies moves on): a holder not revoked asks again and reads on; the one revoked for
cause is refused a new key. The hospital's app runs in-process (FastAPI's test client)
over a real records service (SQLite, in-process ledger running the real ABCI rules)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from medshare.server.app import create_app
from medshare.service.errors import AccessDenied
from medshare.wallet import device
from server.devices import device_wallet
from service.conftest import Clock, one_hospital, patient_of, write_bundle

NOW = 1_800_000_000_000


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("key-refresh")
    clock = Clock(NOW)
    service = one_hospital(root, (), clock)
    bundle = write_bundle(root, 7, 0, 20)  # has department-03 records
    assert not service.ingest("H001", [bundle]).rejected
    app = create_app(service, clock_ms=clock)
    with TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as http:

        def physician(who: str) -> device.PersonalWallet:
            code = service.enrol("H001", who, kind="clinician", role="physician", dept="03")
            return device_wallet(root, http, clock, who, code.code)

        yield {"service": service, "http": http, "clock": clock, "patient": patient_of(bundle),
               "kept": physician("dr.kept@H001"), "leaker": physician("dr.leak@H001")}  # fmt: skip
    service.close()


def _refresh(world, wallet: device.PersonalWallet) -> list[dict]:
    client = wallet.client(http=world["http"], clock_ms=world["clock"])
    identity = wallet.info().identity
    return device.refresh_superseded_keys(wallet.keys, identity, wallet.identity_key(), client)


def _read(world, wallet: device.PersonalWallet, record: str) -> str:
    client = wallet.client(http=world["http"], clock_ms=world["clock"])
    return client.sealed_record(record, area="institution").record_id


def test_a_superseded_key_is_asked_for_again_and_a_revoked_holder_is_refused(world):
    service, kept, leaker = world["service"], world["kept"], world["leaker"]
    record = next(
        r["id"] for r in service.records_of(world["patient"])
        if r["type"] != "Patient" and r["dept"].startswith("03")
    )  # fmt: skip
    assert _read(world, kept, record) == record
    assert _refresh(world, kept) == []  # nothing superseded: nothing asked for
    service.revoke_key("dr.leak@H001", "H001")  # for cause (as tracing does): epoch 0 -> 1
    with pytest.raises(AccessDenied, match="holds no key"):
        _read(world, kept, record)  # dr.kept's key of epoch 0 is superseded too
    got = _refresh(world, kept)
    assert [g["authority"] for g in got] == ["H001"] and "epoch:1" in got[0]["attributes"]
    assert _read(world, kept, record) == record
    assert _refresh(world, leaker) == []  # the authority refuses the revoked holder
    with pytest.raises(AccessDenied):
        _read(world, leaker, record)
