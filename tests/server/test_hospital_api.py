"""The hospital's HTTP API driven in-process (FastAPI's test client) over a real records
service (SQLite, in-process ledger running the real ABCI rules, real keys): signed
requests, sealed releases opened on the reader's side, problem documents."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from medshare.api import signed_requests
from medshare.api.sealed_record import open_sealed
from medshare.crypto import abe
from medshare.ledger.types import TxKind
from medshare.server.app import create_app
from medshare.service.errors import AccessDenied, InvalidInput, NotFound
from medshare.service.roster import StaffMember
from medshare.wallet.client import HospitalClient
from service.conftest import Clock, one_hospital, write_bundle

ROSTER = (
    StaffMember("dr.wang@H001", "H001", "03", "physician"),
    StaffMember("dr.zhao@H001", "H001", "04", "physician"),
)
NOW = 1_800_000_000_000
BASE = "http://testserver"


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    root = tmp_path_factory.mktemp("hospital-api")
    clock = Clock(NOW)
    service = one_hospital(root, ROSTER, clock)
    report = service.ingest("H001", [write_bundle(root, 7, i, 20) for i in range(2)])
    assert not report.rejected
    app = create_app(service, clock_ms=clock)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as http:
        yield service, http
    service.close()


def _client(service, http, who: str) -> HospitalClient:
    return HospitalClient(BASE, who, service.wallets.identity(who), clock_ms=lambda: NOW, http=http)


def _record(service, dept_prefix: str) -> str:
    patient = service.patients()[0]["id"]
    return next(r["id"] for r in service.records_of(patient) if r["dept"].startswith(dept_prefix))


def test_health_needs_no_signature_and_me_needs_one(hospital):
    service, http = hospital
    assert http.get("/v1/health").json()["status"] == "ok"
    refused = http.get("/v1/me")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert "missing" in refused.json()["detail"] and "Traceback" not in refused.text
    assert _client(service, http, "dr.wang@H001").me()["identity"] == "dr.wang@H001"


def test_a_clinician_reads_through_the_api_and_decrypts_on_their_side(hospital):
    service, http = hospital
    rid = _record(service, "03")
    sealed = _client(service, http, "dr.wang@H001").sealed_record(rid, area="institution")
    # What the wallet does with its own keys (here read from the test's wallet folder).
    keys = [
        abe.AbeUserKey.from_bytes(p.read_bytes())
        for p in service.wallets.abe_key_files("dr.wang@H001", "H001")
    ]
    public = service.wallets.authority("H001").master.public
    data = open_sealed(sealed, abe_keys=keys, authority_public=public)
    assert json.loads(data)["id"] == rid.split("/")[-1]
    logged = service.ledger.find(sealed.txid).tx
    assert logged.kind == TxKind.ACCESS and logged.body["actor"] == "dr.wang@H001"
    assert logged.body["outcome"] == "success"


def test_refusals_are_problem_documents_and_are_logged(hospital):
    service, http = hospital
    rid = _record(service, "03")
    zhao = _client(service, http, "dr.zhao@H001")  # surgery (04), not 03
    before = sum(1 for _ in service.ledger.txs(TxKind.ACCESS))
    with pytest.raises(AccessDenied, match="do not satisfy the policy"):
        zhao.sealed_record(rid, area="institution")
    denied = list(service.ledger.txs(TxKind.ACCESS))[before:]
    assert [c.tx.body["outcome"] for c in denied] == ["denied"]
    with pytest.raises(NotFound):
        zhao.sealed_record("Observation/does-not-exist", area="institution")
    with pytest.raises(InvalidInput, match="unknown area"):
        zhao.sealed_record(rid, area="attic")


def _audience(http) -> str:
    return http.get("/v1/health").json()["audience"]


def test_a_replayed_or_altered_request_is_refused(hospital):
    service, http = hospital
    key = service.wallets.identity("dr.wang@H001")
    target = "/v1/me"
    aud = _audience(http)
    headers = signed_requests.sign(
        key, "dr.wang@H001", "GET", target, b"", audience=aud, now_ms=NOW
    )
    assert http.get(target, headers=headers).status_code == 200
    replay = http.get(target, headers=headers)
    assert replay.status_code == 401 and replay.json()["title"] == "request replayed"
    fresh = signed_requests.sign(key, "dr.wang@H001", "GET", target, b"", audience=aud, now_ms=NOW)
    moved = http.get("/v1/records/Observation/x?area=institution", headers=fresh)
    assert moved.status_code == 401 and "does not verify" in moved.json()["detail"]
    as_other = {**fresh, signed_requests.IDENTITY: "dr.zhao@H001"}
    assert http.get(target, headers=as_other).status_code == 401


def test_an_oversized_body_is_refused_before_it_is_read(hospital):
    service, http = hospital
    key = service.wallets.identity("dr.wang@H001")
    body = b"x" * (2 << 20)
    headers = signed_requests.sign(
        key, "dr.wang@H001", "GET", "/v1/me", body, audience=_audience(http), now_ms=NOW
    )
    response = http.request("GET", "/v1/me", content=body, headers=headers)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


# --- the authorisation matrix: every route as every kind of caller ---------------------------

CALLERS = ("patient", "other-patient", "clinician", "outsider", "unsigned", "replayed")


def _routes(service) -> tuple[dict[str, tuple[str, str]], str, str]:
    patients = [p["id"] for p in service.patients()]
    rid = _record(service, "03")
    owner = next(p for p in patients if any(r["id"] == rid for r in service.records_of(p)))
    return (
        {
            "health": ("GET", "/v1/health"),
            "authority": ("GET", "/v1/authorities/H001"),
            "kac-params": ("GET", "/v1/kac-params"),
            "me": ("GET", "/v1/me"),
            "record": ("GET", f"/v1/records/{rid}?area=institution"),
            "delete": ("POST", f"/v1/records/{rid}/delete"),  # nobody here is an officer
            "patient-records": ("GET", f"/v1/patients/{owner}/records"),
            "patient-log": ("GET", f"/v1/patients/{owner}/log"),
            "challenge": ("POST", "/v1/issuance/H001/challenge"),
            "offer": ("POST", "/v1/issuance/H001/offer"),  # empty body: not a registration
            "range": ("POST", "/v1/issuance/H001/range"),
            "issue": ("POST", "/v1/issuance/H001/issue"),
            "next-nonce": ("GET", "/v1/ledger/next-nonce"),
            "patient-directory": ("GET", f"/v1/patients/{owner}/directory"),
            "patient-export": ("GET", f"/v1/patients/{owner}/export"),
            "patient-blocks": ("POST", f"/v1/patients/{owner}/blocks"),  # empty body
            "patient-shares": ("POST", f"/v1/patients/{owner}/shares"),  # empty body
            "enrolment": ("POST", "/v1/enrolment"),  # empty body: no code
            "revoke": ("POST", "/v1/grants/some-grant/revoke"),  # empty body: no tx
            "ingest": ("POST", "/v1/ingest"),  # nobody in the matrix is a records officer
            "refer": ("POST", f"/v1/patients/{owner}/referrals"),  # empty body
            "consents": ("GET", f"/v1/patients/{owner}/consents"),
            "consent": ("POST", f"/v1/patients/{owner}/consents"),  # empty body: no tx
            "approve-study": ("POST", "/v1/studies"),  # nobody in the matrix is ethics staff
            "study": ("GET", "/v1/studies/S-unknown"),
            "trace": ("POST", "/v1/trace"),  # nobody in the matrix is an auditor
            "enrolments": ("POST", "/v1/enrolments"),  # nobody in the matrix is an officer
            "staff": ("GET", "/v1/staff/dr.wang@H001"),
            "consortium": ("GET", "/v1/consortium"),  # a single-directory server: none
            # nobody in the matrix is a member hospital's node (test_consortium_processes)
            "replica-put": ("PUT", f"/v1/replica/{'ab' * 32}"),
            "replica-get": ("GET", f"/v1/replica/{'ab' * 32}"),
            "replica-list": ("GET", "/v1/replica"),
        },
        owner,
        next(p for p in patients if p != owner),
    )


ENROLLED_ONLY = {"outsider": 401, "unsigned": 401, "replayed": 401}


def _enrolled(status: int) -> dict[str, int]:
    return {"patient": status, "other-patient": status, "clinician": status, **ENROLLED_ONLY}


# Expected HTTP status per (route, caller); server/authorization.py RULES says why.
MATRIX = {
    "health": dict.fromkeys(CALLERS, 200),
    "authority": dict.fromkeys(CALLERS, 200),
    "kac-params": dict.fromkeys(CALLERS, 200),
    "me": {"patient": 200, "other-patient": 200, "clinician": 200, "outsider": 401,
           "unsigned": 401, "replayed": 401},
    "record": {"patient": 403, "other-patient": 403, "clinician": 200, "outsider": 401,
               "unsigned": 401, "replayed": 401},
    "delete": _enrolled(403),
    "patient-records": {"patient": 200, "other-patient": 403, "clinician": 403,
                        "outsider": 401, "unsigned": 401, "replayed": 401},
    "patient-log": {"patient": 200, "other-patient": 403, "clinician": 403, "outsider": 401,
                    "unsigned": 401, "replayed": 401},
    "challenge": _enrolled(200),
    "offer": _enrolled(400),
    "range": _enrolled(400),
    "issue": _enrolled(400),
    "next-nonce": _enrolled(200),
    "patient-directory": {"patient": 200, "other-patient": 403, "clinician": 403,
                          "outsider": 401, "unsigned": 401, "replayed": 401},
    "patient-export": {"patient": 200, "other-patient": 403, "clinician": 403,
                       "outsider": 401, "unsigned": 401, "replayed": 401},
    "patient-blocks": {"patient": 400, "other-patient": 403, "clinician": 403,
                       "outsider": 401, "unsigned": 401, "replayed": 401},
    "patient-shares": {"patient": 400, "other-patient": 403, "clinician": 403,
                       "outsider": 401, "unsigned": 401, "replayed": 401},
    "enrolment": dict.fromkeys(CALLERS, 400),  # the code is the credential, not a signature
    "revoke": _enrolled(400),
    "ingest": _enrolled(403),
    "refer": {"patient": 403, "other-patient": 403, "clinician": 400, "outsider": 401,
              "unsigned": 401, "replayed": 401},
    "consents": {"patient": 200, "other-patient": 403, "clinician": 403, "outsider": 401,
                 "unsigned": 401, "replayed": 401},
    "consent": {"patient": 400, "other-patient": 403, "clinician": 403, "outsider": 401,
                "unsigned": 401, "replayed": 401},
    "approve-study": _enrolled(403),
    "study": _enrolled(404),
    "trace": _enrolled(403),
    "enrolments": _enrolled(403),
    "staff": _enrolled(403),  # only a member hospital's records service
    "consortium": dict.fromkeys(CALLERS, 400),
    "replica-put": _enrolled(403),
    "replica-get": _enrolled(403),
    "replica-list": _enrolled(403),
}  # fmt: skip


def test_the_authorisation_matrix(hospital):
    """Every route called as every kind of caller; refusals are problem documents."""
    from medshare.crypto.signing import SigningKey
    from medshare.server.authorization import RULES

    service, http = hospital
    routes, owner, other = _routes(service)
    assert len(RULES) == len(MATRIX)  # every route of the table is in the matrix
    from fastapi.routing import APIRoute

    served = {(m, r.path) for r in http.app.routes if isinstance(r, APIRoute) for m in r.methods}
    assert served == set(RULES)  # and every route the app serves is in the table
    identities = {
        "patient": (f"patient:{owner}", service.wallets.identity(f"patient:{owner}")),
        "other-patient": (f"patient:{other}", service.wallets.identity(f"patient:{other}")),
        "clinician": ("dr.wang@H001", service.wallets.identity("dr.wang@H001")),
        "outsider": ("dr.wang@H001", SigningKey.generate()),  # a name, not its key
    }
    seen = {}
    for route, (method, target) in routes.items():
        for caller in CALLERS:
            if caller == "unsigned":
                response = http.request(method, target)
            else:
                who, key = identities.get(caller, identities["clinician"])
                headers = signed_requests.sign(
                    key, who, method, target, b"", audience=_audience(http), now_ms=NOW
                )
                if caller == "replayed":
                    http.request(method, target, headers=headers)  # as the holder sent it
                response = http.request(method, target, headers=headers)
            seen[(route, caller)] = response.status_code
            if response.status_code >= 400:
                assert response.headers["content-type"] == "application/problem+json"
                assert "Traceback" not in response.text
    expected = {(r, c): status for r, row in MATRIX.items() for c, status in row.items()}
    assert seen == expected


# --- key issuance over HTTP: k and the key stay with the holder -------------------------------


def test_a_new_clinician_obtains_a_key_over_http_and_reads_with_it(hospital):
    from medshare.service.consortium import add_person
    from medshare.wallet.keys import obtain_key

    service, http = hospital
    add_person(service, "dr.new@H001", "clinician", "H001", ["physician"], "03")
    identity = service.wallets.identity("dr.new@H001")
    client = _client(service, http, "dr.new@H001")
    got = obtain_key(client, "dr.new@H001", identity, "H001")
    assert set(got.key.components) == {
        "hospital:H001",
        "dept:03",
        "role:physician",
        "epoch:0",
    }  # fmt: skip  (the authority decided, not the holder)
    tag_tx = service.ledger.find(got.tag_txid).tx
    assert tag_tx.kind == TxKind.REGISTER_KEY_TAG and tag_tx.sender == identity.public
    assert service.registered_tags()["H001"][got.key.tag()]["identity"] == "dr.new@H001"
    # The key never reached the hospital's wallet folder: only the holder has it ...
    assert service.wallets.abe_key_files("dr.new@H001", "H001") == []
    # ... and with it the holder reads through the API, decrypting on their side.
    rid = _record(service, "03")
    sealed = client.sealed_record(rid, area="institution")
    public = client.authority_public("H001")
    data = open_sealed(sealed, abe_keys=[got.key], authority_public=public)
    assert json.loads(data)["id"] == rid.split("/")[-1]


def test_issuance_over_http_refuses_what_the_authority_would_not_give(hospital):
    from medshare.crypto import issuance
    from medshare.wallet.keys import obtain_key

    service, http = hospital
    patient = service.patients()[0]["id"]
    who = f"patient:{patient}"
    client = _client(service, http, who)
    with pytest.raises(AccessDenied, match="not staff"):
        obtain_key(client, who, service.wallets.identity(who), "H001")
    # dr.zhao sends dr.wang's registration (made with dr.wang's key): refused.
    wang = service.wallets.identity("dr.wang@H001")
    public = client.authority_public("H001")
    user = issuance.IssuanceUser(public, "dr.wang@H001", wang)
    zhao = _client(service, http, "dr.zhao@H001")
    challenge = issuance.IssuanceChallenge.from_bytes(
        zhao.post_message("/v1/issuance/H001/challenge")
    )
    with pytest.raises(AccessDenied, match="its own identity"):
        zhao.post_message("/v1/issuance/H001/offer", user.registration(challenge).to_bytes())


def test_the_server_keeps_issuance_randomness_ready(hospital):
    """With ``precompute_offers`` the server fills each authority's Paillier randomness in
    the background, and refills it after an offer used some."""
    import time

    from medshare.service.consortium import add_person
    from medshare.wallet.keys import obtain_key

    service, _ = hospital
    app = create_app(service, clock_ms=lambda: NOW, precompute_offers=1)

    def ready() -> int:
        deadline = time.monotonic() + 120  # ~1.3 s of work; generous for a loaded machine
        while time.monotonic() < deadline:
            authority = app.state.issuers.get("H001")
            if authority is not None and authority.precomputed_offers >= 1:
                return authority.precomputed_offers
            time.sleep(0.05)
        return 0

    assert ready() == 1
    add_person(service, "dr.pool@H001", "clinician", "H001", ["physician"], "03")
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as http:
        client = _client(service, http, "dr.pool@H001")
        got = obtain_key(client, "dr.pool@H001", service.wallets.identity("dr.pool@H001"), "H001")
    assert "dept:03" in got.key.components
    assert ready() == 1  # used by the offer, made again
