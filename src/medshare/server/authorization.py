"""Who may call which route, in one place.

Why one module: a route's code says what it does; this says who it does it for. Every
route of :mod:`medshare.server.app` names one of these rules, and the authorisation-matrix
test calls every route as every kind of caller against the table here. The rules decide
from the verified caller (:class:`medshare.api.signed_requests.Caller`) and public facts
only; the records service's own gates (grants, areas, break-glass) still decide reads.
"""

from __future__ import annotations

from medshare.api.signed_requests import Caller
from medshare.ledger.app import published
from medshare.service.errors import AccessDenied


def the_patient(caller: Caller, patient_id: str) -> None:
    """Only the patient themself: their own records list and access log."""
    if caller.identity != published.patient_identity(patient_id):
        raise AccessDenied(f"only patient {patient_id} may see this")


def a_member_service(caller: Caller, members: tuple[str, ...]) -> None:
    """Only a member hospital's records service (``records@<code>``, signed with the key
    of a ledger node genesis names after that hospital: the server maps node keys to these
    identities and nothing else to them)."""
    name, _, code = caller.identity.partition("@")
    if name != "records" or code not in members:
        raise AccessDenied("only a member hospital's records service may use the replica")


# Route (method, path template) -> the rule it applies, for the matrix test and the docs.
RULES: dict[tuple[str, str], str] = {
    ("GET", "/v1/health"): "anyone (unsigned)",
    ("GET", "/v1/authorities/{code}"): "anyone (unsigned): public keys",
    ("GET", "/v1/kac-params"): "anyone (unsigned): public parameters",
    ("GET", "/v1/staff/{identity}"): "a member hospital's records service (its node key): "
    "this hospital's attestation of its own staff member",
    ("GET", "/v1/consortium"): "anyone (unsigned): the public facts a joining hospital needs",
    ("GET", "/v1/me"): "any enrolled identity",
    ("GET", "/v1/records/{record_id:path}"): "any enrolled identity; the area's gate decides",
    ("POST", "/v1/records/{record_id:path}/delete"): "a records officer of the record's "
    "hospital (one this server speaks for)",
    ("GET", "/v1/patients/{patient_id}/records"): "the patient",
    ("GET", "/v1/patients/{patient_id}/log"): "the patient",
    ("GET", "/v1/patients/{patient_id}/directory"): "the patient",
    ("GET", "/v1/patients/{patient_id}/export"): "the patient",
    ("POST", "/v1/patients/{patient_id}/blocks"): "the patient (their own publish_key txs)",
    ("POST", "/v1/patients/{patient_id}/shares"): "the patient (a grant they signed)",
    ("POST", "/v1/grants/{grant_id:path}/revoke"): "the patient who gave the grant (their "
    "signed REVOKE tx, from the caller's own key)",
    ("POST", "/v1/ingest"): "a records officer of a hospital this server speaks for "
    "(role records); the records become that hospital's",
    ("POST", "/v1/patients/{patient_id}/referrals"): "a physician of a hospital this "
    "server speaks for, where the patient has records",
    ("GET", "/v1/patients/{patient_id}/consents"): "the patient",
    ("POST", "/v1/patients/{patient_id}/consents"): "the patient (a consent they signed)",
    ("POST", "/v1/studies"): "an ethics officer of a hospital this server speaks for",
    ("GET", "/v1/studies/{study}"): "any enrolled identity",
    ("POST", "/v1/trace"): "an auditor (role auditor) of a member hospital",
    ("POST", "/v1/enrolments"): "a records officer of a hospital this server speaks for: "
    "one-time codes for that hospital's patients and staff",
    ("POST", "/v1/enrolment"): "anyone holding a valid one-time enrolment code (unsigned)",
    ("POST", "/v1/issuance/{code}/challenge"): "any enrolled identity",
    ("POST", "/v1/issuance/{code}/offer"): "the registration's own identity; the authority "
    "decides the attributes (its staff, or emergency staff), others refused",
    ("POST", "/v1/issuance/{code}/range"): "the session's own identity",
    ("POST", "/v1/issuance/{code}/issue"): "the session's own identity, with the key's tag "
    "registration signed by its own key (on the ledger before the key is released)",
    ("GET", "/v1/ledger/next-nonce"): "any enrolled identity (its own nonce)",
    ("PUT", "/v1/replica/{blob_id}"): "a member hospital's records service (its node key)",
    ("GET", "/v1/replica/{blob_id}"): "a member hospital's records service (its node key)",
    ("GET", "/v1/replica"): "a member hospital's records service (its node key)",
}
