"""Three hospitals as separate parties, all real processes: ``medshare consortium up``
gives each its own directory, database, blob replica, authority and CometBFT node and
starts its server; wallets enrol with the printed codes and talk to the servers over
HTTP. Checked: each hospital's directory holds only its own state, blobs are replicated
to the peers over signed HTTP and read back when a hospital is down, another hospital's
physician reads a shared record and a referred one, the replica and attestation routes
refuse what is not theirs, no holder's secret is in any hospital's files, and the
consortium comes back after ``down`` / ``up``."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from medshare.api import signed_requests, staff_attestation
from medshare.crypto.signing import SigningKey
from medshare.ledger.cometbft import home as node_home
from medshare.ledger.cometbft import network
from medshare.records import synthetic
from medshare.server import consortium
from medshare.service.common import wall_clock_ms
from medshare.wallet.device import PersonalWallet
from server.commands import ok as _ok
from server.commands import run as _run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    directory = root / "c"
    try:  # a failed `up` stops what it started; a later failure is cleaned up here
        summary = _ok("consortium", "up", "--dir", directory, "--hospitals", 3, "--precompute", 0)
        yield {"root": root, "dir": directory, "summary": summary}
    finally:
        if (directory / consortium.CONSORTIUM_FILE).exists():
            _run("consortium", "down", "--dir", directory)
            status = consortium.status(directory)
            assert not any(h["server_running"] or h["node_running"] for h in status["hospitals"])


@pytest.fixture(scope="module")
def story(federation):
    """The officer of H001 enrols a patient and ingests their bundle; the patient's wallet
    is made from the code; H002's officer enrols a physician."""
    root = federation["root"]
    hospitals = {h["code"]: h for h in federation["summary"]["hospitals"]}
    h1, h2 = hospitals["H001"], hospitals["H002"]
    _ok("wallet", "new", "--dir", root / "off1", "--hospital", h1["api"], "--code",
        h1["officer_code"])  # fmt: skip
    _ok("wallet", "new", "--dir", root / "off2", "--hospital", h2["api"], "--code",
        h2["officer_code"])  # fmt: skip
    bundle = synthetic.generate_bundle(77, 0, 12)
    patient = synthetic.patient_id(bundle)
    (root / "bundle.json").write_text(json.dumps(bundle))
    code = _ok("wallet", "enrol", "--dir", root / "off1", "--patient", patient)["code"]
    report = _ok("wallet", "ingest", "--dir", root / "off1", root / "bundle.json")
    assert report["records"] > 5 and not report["rejected"]
    made = _ok("wallet", "new", "--dir", root / "patient", "--hospital", h1["api"], "--code", code)
    assert made["sealed"] == report["records"]
    li = _ok("wallet", "enrol", "--dir", root / "off2", "--staff", "dr.li@H002", "--role",
             "physician", "--dept", "03")["code"]  # fmt: skip
    _ok("wallet", "new", "--dir", root / "drli", "--hospital", h2["api"], "--code", li)
    records = _ok("wallet", "records", "--dir", root / "patient")
    clinical = next(r["id"] for r in records if r["type"] != "Patient")
    return {**federation, "h1": h1, "h2": h2, "hospitals": hospitals, "patient": patient,
            "records": report["records"], "clinical": clinical}  # fmt: skip


def test_each_hospital_holds_only_its_own_state(story):
    directory = story["dir"]
    for code in ("H001", "H002", "H003"):
        data = directory / code
        config = json.loads((data / "medshare.json").read_text())
        assert config["local"] == code and code not in config["peers"]
        assert sorted(p.name for p in (data / "blobs").iterdir()) == [code]
        authorities = sorted(p.name for p in (data / "wallets" / "authorities").iterdir())
        assert all(code in name for name in authorities), authorities
        with sqlite3.connect(data / "medshare.db") as db:
            assert db.execute("select code from hospitals").fetchall() == [(code,)]
        net = network.Network.load(data / "ledger")
        own = net.local_nodes()
        assert [net.nodes[i].name for i in own] == [f"{code}-a"]
        others = [i for i in range(len(net.nodes)) if i not in own]
        assert not any((data / "ledger" / f"node-{i}").exists() for i in others)
        with pytest.raises(network.NetworkError, match="run by another party"):
            net.node_dir(others[0])
    with sqlite3.connect(directory / "H002" / "medshare.db") as db:
        assert db.execute("select count(*) from records").fetchone() == (0,)


def test_blobs_are_replicated_to_peers_and_read_when_one_is_down(story):
    directory = story["dir"]
    copies: dict[str, int] = {}
    for code in ("H001", "H002", "H003"):
        for path in (directory / code / "blobs" / code).rglob("*"):
            if path.is_file():
                copies[path.name] = copies.get(path.name, 0) + 1
    assert len(copies) == story["records"] and set(copies.values()) == {2}
    # H002's server stops: every record is still read (from the other copy)
    assert consortium.stop_server(directory, "H002")
    try:
        out = story["root"] / "export.ndjson"
        exported = _ok("wallet", "export", "--dir", story["root"] / "patient", "--out", out)
        assert exported["records"] == story["records"] and not exported["pending"]
    finally:
        consortium.start_server(directory, "H002")


def test_another_hospitals_physician_reads_a_share_and_a_referral(story):
    root, h1 = story["root"], story["h1"]
    rid = story["clinical"]
    refused = _run("wallet", "read", "--dir", root / "drli", "--hospital", h1["api"],
                   "--record", rid, "--area", "institution")  # fmt: skip
    assert refused.returncode == 1 and "holds no key of H001" in refused.stderr
    _ok("wallet", "share", "--dir", root / "patient", "--to", "dr.li@H002", "--record", rid,
        "--out", root / "share.json")  # fmt: skip
    shared = _run("wallet", "read", "--dir", root / "drli", "--hospital", h1["api"],
                  "--record", rid, "--key", root / "share.json")  # fmt: skip
    assert shared.returncode == 0, shared.stderr
    assert json.loads(shared.stdout)["id"] == rid.split("/")[1]
    code = _ok("wallet", "enrol", "--dir", root / "off1", "--staff", "dr.wang@H001", "--role",
               "physician", "--dept", "02")["code"]  # fmt: skip
    _ok("wallet", "new", "--dir", root / "wang", "--hospital", h1["api"], "--code", code)
    _ok("wallet", "refer", "--dir", root / "wang", "--patient", story["patient"],
        "--to", "dr.li@H002")  # fmt: skip
    issued = _ok("wallet", "issue", "--dir", root / "drli", "--authority", "H001",
                 "--hospital", h1["api"])  # fmt: skip
    assert "hospital:H002" in issued["attributes"]
    referred = _run("wallet", "read", "--dir", root / "drli", "--hospital", h1["api"],
                    "--record", rid, "--area", "collaboration")  # fmt: skip
    assert referred.returncode == 0, referred.stderr
    assert referred.stdout == shared.stdout


def _node_key(directory: Path, code: str) -> SigningKey:
    """The key of ``code``'s ledger node (the test acting as that hospital)."""
    net = network.Network.load(directory / code / "ledger")
    return SigningKey(node_home.validator_seed(net.node_dir(net.local_nodes()[0])))


def _signed(key: SigningKey, identity: str, method: str, url: str, audience: str, body=b""):
    target = "/" + url.split("/", 3)[3]
    headers = signed_requests.sign(
        key, identity, method, target, body, audience=audience, now_ms=wall_clock_ms()
    )
    return httpx.request(method, url, content=body, headers=headers, timeout=10)


def test_replica_routes_take_only_member_nodes_and_true_content(story):
    directory, h1 = story["dir"], story["h1"]
    chain = story["summary"]["chain_id"]
    audience = f"{chain}/H001"
    blob = b"ciphertext bytes"
    blob_id = hashlib.sha256(blob).hexdigest()
    url = f"{h1['api']}/v1/replica/{blob_id}"
    h2_node = _node_key(directory, "H002")
    # H002's node writes a true copy; it reads it back; the listing names it
    assert _signed(h2_node, "records@H002", "PUT", url, audience, blob).status_code == 204
    got = _signed(h2_node, "records@H002", "GET", url, audience)
    assert got.status_code == 200 and got.content == blob
    listing = _signed(h2_node, "records@H002", "GET", f"{h1['api']}/v1/replica", audience)
    assert blob_id in listing.json()["ids"]
    # bytes that do not hash to the id; another hospital's name on the node's key; a
    # patient's key; no signature; the request made for H002's server
    wrong = f"{h1['api']}/v1/replica/{'0' * 64}"
    assert _signed(h2_node, "records@H002", "PUT", wrong, audience, blob).status_code == 400
    assert _signed(h2_node, "records@H003", "PUT", url, audience, blob).status_code == 401
    patient = PersonalWallet(story["root"] / "patient")
    patient_key = patient.identity_key()
    refused = _signed(patient_key, f"patient:{story['patient']}", "GET", url, audience)
    assert refused.status_code == 403
    assert httpx.get(url, timeout=10).status_code == 401
    assert _signed(h2_node, "records@H002", "GET", url, f"{chain}/H002").status_code == 401


def test_staff_attestations_are_signed_by_the_hospitals_node(story):
    directory, h2 = story["dir"], story["h2"]
    chain = story["summary"]["chain_id"]
    url = f"{h2['api']}/v1/staff/dr.li@H002"
    audience = f"{chain}/H002"
    assert httpx.get(url, timeout=10).status_code == 401  # not a public directory
    patient = PersonalWallet(story["root"] / "patient")
    as_patient = _signed(patient.identity_key(), f"patient:{story['patient']}", "GET", url,
                         f"{chain}/H002")  # fmt: skip
    assert as_patient.status_code == 401  # H002 does not know H001's patient
    h1_node = _node_key(directory, "H001")
    doc = _signed(h1_node, "records@H001", "GET", url, audience).json()
    net = network.Network.load(directory / "H002" / "ledger")
    h2_nodes = [bytes.fromhex(n.public) for n in net.nodes if n.name.startswith("H002-")]
    h3_nodes = [bytes.fromhex(n.public) for n in net.nodes if n.name.startswith("H003-")]
    facts = staff_attestation.check(doc, chain_id=chain, identity="dr.li@H002", node_keys=h2_nodes)
    assert facts.roles == ("physician",) and facts.hospital == "H002"
    with pytest.raises(staff_attestation.AttestationRefused):
        staff_attestation.check(doc, chain_id=chain, identity="dr.li@H002", node_keys=h3_nodes)
    forged = {**doc, "roles": ["physician", "records"]}
    with pytest.raises(staff_attestation.AttestationRefused):
        staff_attestation.check(forged, chain_id=chain, identity="dr.li@H002", node_keys=h2_nodes)
    # a patient is nobody's staff; H002 does not vouch for H001's people
    for name in (f"patient:{story['patient']}", "officer@H001"):
        asked = _signed(h1_node, "records@H001", "GET", f"{h2['api']}/v1/staff/{name}", audience)
        assert asked.status_code == 404


def test_no_holders_secret_in_any_hospitals_files(story):
    root = story["root"]
    patient = PersonalWallet(root / "patient")
    secrets = [patient.seed().secret_bytes(), patient.identity_key().seed]
    for holder in ("drli", "off1", "off2"):
        secrets.append(PersonalWallet(root / holder).identity_key().seed)
    hits = [
        path
        for path in story["dir"].rglob("*")
        if path.is_file() and not path.is_symlink()
        and any(s in path.read_bytes() for s in secrets)
    ]  # fmt: skip
    assert hits == []


def test_down_and_up_again_keeps_everything(story):
    directory = story["dir"]
    _ok("consortium", "down", "--dir", directory)
    status = _ok("consortium", "status", "--dir", directory)
    assert not any(h["server_running"] or h["node_running"] for h in status["hospitals"])
    again = _ok("consortium", "up", "--dir", directory, "--precompute", 0)
    assert all(h["server_running"] and h["node_running"] for h in again["hospitals"])
    assert not any("officer_code" in h for h in again["hospitals"])
    out = story["root"] / "again.ndjson"
    exported = _ok("wallet", "export", "--dir", story["root"] / "patient", "--out", out)
    assert exported["records"] == story["records"]
