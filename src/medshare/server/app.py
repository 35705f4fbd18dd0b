"""The hospital's HTTP API: routes per noun, every caller authenticated by a signed request.

Why this shape: the server decides and logs, the holder's device decrypts. A route takes
the verified caller (:mod:`medshare.api.signed_requests`: the identity whose enrolled key
signed this exact request) and calls the records service with it as the acting party;
the service's gates decide. Nothing a route returns opens without the caller's own key
(:mod:`medshare.api.sealed_record`). Errors are RFC 9457 problem documents
(:mod:`medshare.server.problems`). Requests are capped in size before they are read.

The service is not built for concurrent use, so calls into it are serialised by one lock
per app; signature checks and JSON work run outside it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from medshare.api import share_grants, signed_requests
from medshare.api.signed_requests import Caller, RequestRefused
from medshare.crypto import issuance
from medshare.crypto.errors import CryptoError
from medshare.ledger.app import published
from medshare.ledger.app.rules import KEY_TAG_FIELDS
from medshare.ledger.types import LedgerFormatError, Tx, TxKind
from medshare.records.blobstore import DirectoryReplica, blob_id_of
from medshare.server import authorization, problems
from medshare.service import db, enrolment
from medshare.service.api import MedShare, node_owner
from medshare.service.areas import parse_area
from medshare.service.common import service_principal, wall_clock_ms
from medshare.service.errors import AccessDenied, InvalidInput, NotFound

# The server process's recursion limit (`hospital serve` pins it): a JSON body nested
# deeper than this raises RecursionError (a 400) long before it could overflow the C stack
# of a request thread, whatever a library imported elsewhere set the limit to.
SERVER_RECURSION_LIMIT = 1000
MAX_BODY_BYTES = 1 << 20  # a request body above this is refused (413) before it is read
MAX_INGEST_BYTES = 32 << 20  # FHIR a records officer sends in one ingest request
LARGE_BODIES = 2  # bodies above the common cap read at once (memory: 2 x 32 MiB)
REPLICA_PREFIX = "/v1/replica/"
PEER_FETCHES = 4  # attestation requests in flight to one peer at a time
UNVOUCHED_S = 60.0  # a name a peer did not vouch for is not asked about again for this long
UNVOUCHED_CACHE = 4096
MEMBERS_TTL_S = 10.0  # how long the chain's member nodes are trusted without asking again
MAX_REPLICA_PAGE = 1000  # blob ids in one replica listing
ENROLMENT_CACHE = 65_536  # identity keys whose enrolment this server remembers


class TooLarge(RequestRefused):
    status = 413
    title = "request too large"


def create_app(
    service: MedShare,
    *,
    clock_ms: Callable[[], int] = wall_clock_ms,
    max_body: int = MAX_BODY_BYTES,
    precompute_offers: int = 0,
) -> FastAPI:
    """The FastAPI app of one hospital's server over ``service``. With
    ``precompute_offers`` > 0 a background thread keeps that many issuance offers' Paillier
    randomness ready per authority (about 1.3 s of CPU each), so a key request finds its
    heavy part done."""
    app = FastAPI(
        title="medshare hospital",
        summary="Accountable, patient-controlled sharing of medical records",
        version="1",
    )
    problems.install(app)
    lock = ReadWriteLock()
    gate_lock = threading.Lock()

    def _serialised(call: Callable[[], Any]) -> Any:
        with lock.exclusive():
            return call()

    enrolled: dict[bytes, str] = {}  # enrolments are written once: a hit never goes stale
    # Member hospitals' records services, by the key of their ledger nodes as the chain
    # counts them (admitted, not ejected; each named after the hospital that runs it):
    # they call the replica and staff routes. Re-read every MEMBERS_TTL_S.
    members: dict[str, Any] = {"nodes": {}, "until": 0.0}

    def member_nodes() -> dict[bytes, str]:
        now = time.monotonic()
        if now >= members["until"]:
            members["nodes"] = _serialised(lambda: _member_nodes(service))
            members["until"] = now + MEMBERS_TTL_S
        return members["nodes"]

    def enrolled_as(key: bytes) -> str | None:
        if key in member_nodes():
            return member_nodes()[key]
        if key in enrolled:
            return enrolled[key]

        def lookup() -> str | None:
            identity = service.ledger.registered(key)
            # on the ledger, but not a person this hospital enrolled by this key: nobody
            return identity if identity and service.knows_key(identity, key) else None

        identity = _serialised(lookup)
        if identity is None:
            named = _serialised(lambda: service.ledger.registered(key))
            if named is not None and learn_peer_staff(named):
                identity = _serialised(lookup)
        if identity is not None:
            if len(enrolled) >= ENROLMENT_CACHE:
                enrolled.clear()
            enrolled[key] = identity
        return identity

    unvouched: dict[str, float] = {}  # names a peer did not vouch for -> until when
    asking = {code: threading.BoundedSemaphore(PEER_FETCHES) for code in service.config.peers}

    def learn_peer_staff(who: str) -> bool:
        """Whether ``who`` is known here, learning a member hospital's staff member from
        their hospital's attestation on first sight: asked outside the lock, within a
        deadline, at most a few at a time per peer, and a name the peer did not vouch for
        is not asked about again for a while (a slow or hostile peer costs only the
        requests that need it, never the server)."""
        if _serialised(lambda: service.knows(who)):
            return True
        now = time.monotonic()
        if unvouched.get(who, 0.0) > now:
            return False
        gate = asking.get(who.rpartition("@")[2])
        if gate is None or not gate.acquire(blocking=False):
            return False
        try:
            facts = service.peer_staff_facts(who)
        finally:
            gate.release()
        if facts is None:
            if len(unvouched) >= UNVOUCHED_CACHE:
                unvouched.clear()
            unvouched[who] = now + UNVOUCHED_S
            return False
        _serialised(lambda: service.add_peer_staff(facts))
        return True

    app.state.audience = audience_of(service)
    app.state.verifier = signed_requests.RequestVerifier(app.state.audience, enrolled_as, clock_ms)
    app.state.max_body = max_body
    app.state.large_bodies = asyncio.Semaphore(LARGE_BODIES)

    def may_send_large(path: str, headers: Any) -> bool:
        """Whether a request may carry a body beyond the common cap: an ingest naming an
        enrolled records officer's key, a replica write naming a member hospital's node
        key. Such a request is then verified before its body is read, from the body
        digest its signature covers (``_verified_then_large_body``)."""
        try:
            key = bytes.fromhex(headers.get(signed_requests.KEY) or "")
        except ValueError:
            return False
        if path.startswith(REPLICA_PREFIX):
            return key in member_nodes()
        if path != "/v1/ingest":
            return False
        identity = enrolled_as(key) if len(key) == 32 else None
        if identity is None or identity != headers.get(signed_requests.IDENTITY):
            return False
        try:
            staff_here(identity, "records", "a records officer")
        except AccessDenied:
            return False
        return True

    app.state.may_send_large = may_send_large

    def staff_here(identity: str, role: str, what: str) -> str:
        """The hospital ``identity`` works at in ``role``, if this server speaks for it."""
        hospital = _serialised(lambda: service.staff_hospital(identity, role, what))
        if hospital not in service.config.served:
            raise AccessDenied(f"{identity} is {what} of {hospital}, not of this server")
        return hospital

    @app.get("/v1/health", summary="Liveness and the ledger height (no signature needed)")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "hospitals": list(service.config.served),
            "audience": app.state.audience,
            "chain_id": service.ledger.chain_id,
        }

    @app.post(
        "/v1/enrolment",
        summary="Redeem a one-time enrolment code with an identity key made on the "
        "person's device (a patient's wallet adds its first block keys); unsigned: the "
        "code is the credential",
    )
    async def enrolment(request: Request) -> dict[str, Any]:
        body = await _capped_body(request, request.app.state.max_body)
        doc = _json_object(body)
        code, key = doc.get("code"), _hex_field(doc, "identity_key")
        publications, publics = _block_request(doc, optional=True)
        return await run_in_threadpool(
            _serialised,
            lambda: service.redeem(code, key, publications=publications, block_publics=publics),
        )

    @app.get(
        "/v1/patients/{patient_id}/export",
        summary="All the patient's live records sealed to their own H-KAC slots (their "
        "seed opens them on their device), logged as one access; records waiting for a "
        "block key are listed in `pending`",
    )
    def patient_export(
        who: Signed, patient_id: Annotated[str, Path(max_length=128)]
    ) -> dict[str, Any]:
        authorization.the_patient(who, patient_id)
        sealed, pending = _serialised(lambda: service.seal_export(who.identity, patient_id))
        return {"records": [s.to_json() for s in sealed], "pending": pending}

    @app.get("/v1/patients/{patient_id}/directory", summary="The patient's H-KAC directory")
    def patient_directory(
        who: Signed, patient_id: Annotated[str, Path(max_length=128)]
    ) -> dict[str, Any]:
        authorization.the_patient(who, patient_id)
        return _serialised(lambda: service.directory_of(patient_id))

    @app.post(
        "/v1/patients/{patient_id}/blocks",
        summary="More H-KAC block keys from the patient's device, with their publish_key "
        "transactions; records waiting for them are sealed",
    )
    def patient_blocks(
        who: Signed, patient_id: Annotated[str, Path(max_length=128)], request: Request
    ) -> dict[str, Any]:
        authorization.the_patient(who, patient_id)
        publications, publics = _block_request(_json_object(request.state.body))
        return _serialised(lambda: service.publish_blocks(patient_id, publications, publics))

    @app.post(
        "/v1/patients/{patient_id}/shares",
        summary="A share made on the patient's device: its grant transaction (signed by the "
        "patient) and class map; the share's key goes to the grantee, never here",
    )
    def patient_share(
        who: Signed, patient_id: Annotated[str, Path(max_length=128)], request: Request
    ) -> dict[str, Any]:
        authorization.the_patient(who, patient_id)
        doc = _json_object(request.state.body)
        tx = _tx_field(doc, "tx")
        try:
            classes = share_grants.parse_classes(doc.get("classes"))
        except share_grants.ShareGrantError as exc:
            raise InvalidInput(str(exc)) from None
        grantee = tx.body.get("grantee") if isinstance(tx.body, dict) else None
        if isinstance(grantee, str) and len(grantee) <= 256:
            learn_peer_staff(grantee)  # another hospital's staff member: the gate decides
        return _serialised(lambda: service.accept_share(patient_id, tx, classes))

    @app.post(
        "/v1/grants/{grant_id:path}/revoke",
        summary="A patient revokes their share or consent: the REVOKE tx their wallet "
        "signed; the share's records move to fresh slots before it is committed",
    )
    def revoke_grant(
        who: Signed, grant_id: Annotated[str, Path(max_length=255)], request: Request
    ) -> dict[str, Any]:
        tx = _tx_field(_json_object(request.state.body), "tx")
        if tx.sender != who.key:
            raise AccessDenied("a revocation is signed by the caller's own key")
        return _serialised(lambda: service.revoke(grant_id, signed=tx))

    @app.post(
        "/v1/ingest",
        summary="FHIR R4 in (a Bundle, NDJSON or one resource), from a records officer of a "
        "hospital this server speaks for: validated, classified, encrypted, replicated and "
        "anchored as that hospital's records",
    )
    def ingest(who: Signed, request: Request) -> dict[str, Any]:
        hospital = staff_here(who.identity, "records", "a records officer")
        body = request.state.body
        return _serialised(lambda: service.ingest(hospital, [body]).as_dict())

    def own_replica(who: Caller) -> DirectoryReplica:
        """This hospital's blob replica, for a member hospital's records service."""
        authorization.a_member_service(who, service.config.hospitals)
        if service.own_replica is None:
            raise NotFound("this server keeps no replica for other hospitals")
        return service.own_replica

    @app.put(
        REPLICA_PREFIX + "{blob_id}",
        status_code=204,
        summary="A member hospital's records service stores a copy of an encrypted blob "
        "here (content-addressed: the bytes must hash to the id)",
    )
    def replica_put(who: Signed, blob_id: BlobId, request: Request) -> Response:
        replica = own_replica(who)
        body = request.state.body
        if blob_id_of(body) != blob_id:
            raise InvalidInput("the blob's bytes do not hash to its id")
        replica.put(blob_id, body)
        return Response(status_code=204)

    @app.get(
        REPLICA_PREFIX + "{blob_id}",
        summary="A member hospital's records service reads this hospital's copy of a blob",
        response_class=Response,
    )
    def replica_get(who: Signed, blob_id: BlobId) -> Response:
        data = own_replica(who).get(blob_id)
        if data is None:
            raise NotFound(f"no copy of blob {blob_id} here")
        return Response(content=data, media_type="application/octet-stream")

    @app.get(
        "/v1/replica",
        summary="The blob ids this hospital's replica holds, in order, a page at a time "
        "(a member hospital's records service scrubs its placements with it)",
    )
    def replica_ids(
        who: Signed,
        after: Annotated[str, Query(pattern="^([0-9a-f]{64})?$")] = "",
        limit: Annotated[int, Query(ge=1, le=MAX_REPLICA_PAGE)] = MAX_REPLICA_PAGE,
    ) -> dict[str, list[str]]:
        replica = own_replica(who)
        page = []
        for blob_id in replica.ids():  # sorted by the replica's fan-out layout
            if blob_id > after:
                page.append(blob_id)
                if len(page) == limit:
                    break
        return {"ids": page}

    @app.post(
        "/v1/patients/{patient_id}/referrals",
        summary="A physician of a hospital this server speaks for refers the patient to a "
        "partner physician: the partner's wallet then obtains the referral key (`wallet "
        "issue`) and reads the patient's records at the referring hospital",
    )
    def refer(
        who: Signed, patient_id: Annotated[str, Path(max_length=128)], request: Request
    ) -> dict[str, Any]:
        hospital = staff_here(who.identity, "physician", "a physician")
        doc = _json_object(request.state.body)
        to, dept, until = doc.get("to"), doc.get("dept"), doc.get("until_ms")
        if not isinstance(to, str) or not (dept is None or isinstance(dept, str)):
            raise InvalidInput('a referral is {"to": name, "dept"?: code, "until_ms"?: ms}')
        if until is not None and (not isinstance(until, int) or isinstance(until, bool)):
            raise InvalidInput("until_ms is a time in ms")
        if len(to) <= 256:
            learn_peer_staff(to)  # a partner of another hospital: their hospital vouches

        def make() -> dict[str, Any]:
            if not service.records_of_at(patient_id, hospital):
                raise NotFound(f"patient {patient_id} has no records at {hospital}")
            referral = service.refer(patient_id, hospital, to, dept=dept, until_ms=until)
            return {"referral": referral, "hospital": hospital, "to": to}

        return _serialised(make)

    @app.post(
        "/v1/studies",
        summary="An ethics officer of a hospital this server speaks for approves a study "
        "for a researcher: the researcher's wallet then obtains the study key (`wallet "
        "issue`), and patients may consent to it",
    )
    def approve_study(who: Signed, request: Request) -> dict[str, Any]:
        hospital = staff_here(who.identity, "ethics", "an ethics officer")
        doc = _json_object(request.state.body)
        study, researcher = doc.get("study"), doc.get("researcher")
        if not isinstance(study, str) or not isinstance(researcher, str):
            raise InvalidInput('a study approval is {"study": name, "researcher": name}')
        if len(researcher) <= 256:
            learn_peer_staff(researcher)  # a researcher of another member hospital
        return _serialised(
            lambda: service.approve_study(study, hospital, researcher, approver=who.identity)
        )

    @app.get(
        "/v1/studies/{study}",
        summary="A live study's public facts (the hospital that runs it), for a patient "
        "about to consent",
    )
    def study(who: Signed, study: Annotated[str, Path(max_length=128)]) -> dict[str, Any]:
        return _serialised(lambda: service.study(study))

    @app.post(
        "/v1/patients/{patient_id}/consents",
        summary="A research consent made on the patient's device (its grant transaction, "
        "signed by the patient): de-identified copies of the patient's records here are "
        "made for the study, then the consent is put on the ledger",
    )
    def patient_consent(
        who: Signed, patient_id: Annotated[str, Path(max_length=128)], request: Request
    ) -> dict[str, Any]:
        authorization.the_patient(who, patient_id)
        tx = _tx_field(_json_object(request.state.body), "tx")
        return _serialised(lambda: service.accept_consent(patient_id, tx))

    @app.get(
        "/v1/patients/{patient_id}/consents",
        summary="The patient's grants as FHIR R4 Consent resources",
    )
    def patient_consents(
        who: Signed, patient_id: Annotated[str, Path(max_length=128)]
    ) -> list[dict[str, Any]]:
        authorization.the_patient(who, patient_id)
        return _serialised(lambda: service.consents(patient_id))

    @app.post(
        "/v1/trace",
        summary="An auditor submits a leaked CP-ABE key file: traced to its holder (or shown "
        "to be the authority's forgery or malformed), the verdict put on the ledger, a "
        "guilty key revoked",
    )
    def trace(who: Signed, request: Request) -> dict[str, Any]:
        _serialised(lambda: service.staff_hospital(who.identity, "auditor", "an auditor"))
        body = request.state.body
        return _serialised(lambda: service.trace(body))

    @app.post(
        "/v1/enrolments",
        summary="A records officer enrols a patient or a staff member of their hospital: a "
        "one-time code for the person's `wallet new` (the server stays up meanwhile)",
    )
    def enrolments(who: Signed, request: Request) -> dict[str, Any]:
        hospital = staff_here(who.identity, "records", "a records officer")
        doc = _json_object(request.state.body)
        days = doc.get("days", 7)
        if not isinstance(days, int) or isinstance(days, bool):  # its range: service.enrol
            raise InvalidInput("days is a whole number from 1 to 90")
        texts = {k: doc.get(k) for k in ("patient", "name", "staff", "role", "dept")}
        if not all(v is None or isinstance(v, str) for v in texts.values()):
            raise InvalidInput("patient, name, staff, role and dept are text")
        if (texts["patient"] is None) == (texts["staff"] is None):
            raise InvalidInput('enrol either {"patient": id} or {"staff": name@CODE, ...}')
        if texts["role"] == "emergency":
            # every authority of the consortium issues emergency staff a key: that is the
            # hospital administrator's decision (`hospital enrol`), not a records officer's
            raise AccessDenied("a records officer does not enrol emergency staff")
        ttl = days * 86_400_000

        def enrol() -> dict[str, Any]:
            if texts["patient"] is not None:
                got = service.enrol(hospital, f"patient:{texts['patient']}", kind="patient",
                                    name=texts["name"], ttl_ms=ttl)  # fmt: skip
            else:
                got = service.enrol(hospital, texts["staff"], kind="clinician",
                                    role=texts["role"], dept=texts["dept"], ttl_ms=ttl)  # fmt: skip
            return {**got.as_dict(), "hospital": hospital}

        return _serialised(enrol)

    @app.get(
        "/v1/staff/{identity}",
        summary="This hospital vouches for one of its staff to a member hospital's records "
        "service: identity key, role and department, signed by its ledger node",
    )
    def staff(who: Signed, identity: Annotated[str, Path(max_length=256)]) -> dict[str, Any]:
        authorization.a_member_service(who, service.config.hospitals)
        return _serialised(lambda: service.staff_attestation(identity))

    @app.get(
        "/v1/consortium",
        summary="The consortium's public facts for a hospital that joins: chain, genesis, "
        "nodes' keys and addresses, members' API URLs, KAC parameters (no signature needed)",
    )
    def consortium_facts() -> dict[str, Any]:
        from medshare.server import join

        return _serialised(lambda: join.consortium_facts(service))

    @app.get("/v1/me", summary="Who the signed request authenticates as")
    def me(who: Signed) -> dict[str, str]:
        return {"identity": who.identity, "key": who.key.hex()}

    @app.get(
        "/v1/authorities/{code}",
        summary="An authority's CP-ABE public key, as its authority published it on the ledger",
    )
    def authority(code: Annotated[str, Path(max_length=16)]) -> dict[str, Any]:
        def load() -> tuple[bytes, int]:
            with service.sessions() as session:
                hosp = session.get(db.Hospital, code)
                if hosp is None:
                    raise NotFound(f"no authority {code!r} in this consortium")
                service.authority_public(code, hosp.abe_public)  # checked against the ledger
                return hosp.abe_public, hosp.epoch

        data, epoch = _serialised(load)
        name = published.authority_key(code, published.PAILLIER_KEY)
        return {
            "authority": code,
            "abe_public": base64.b64encode(data).decode("ascii"),
            "paillier_digest": _serialised(lambda: service.ledger.published(name)),
            # the key epoch its policies name now: a key of an older epoch was superseded
            # by a revocation, and its holder asks again (wallet read does it)
            "epoch": epoch,
        }

    @app.get("/v1/patients/{patient_id}/records", summary="The patient's own records")
    def patient_records(
        who: Signed, patient_id: Annotated[str, Path(max_length=128)]
    ) -> list[dict[str, Any]]:
        authorization.the_patient(who, patient_id)
        return _serialised(lambda: service.records_of(patient_id))

    @app.get(
        "/v1/patients/{patient_id}/log",
        summary="The patient's access log: a FHIR R4 Bundle of AuditEvents, from the ledger",
    )
    def patient_log(who: Signed, patient_id: Annotated[str, Path(max_length=128)]) -> Any:
        authorization.the_patient(who, patient_id)
        return _serialised(lambda: service.log(patient_id))

    issuers: dict[str, issuance.IssuanceAuthority] = {}

    def issuer(code: str) -> issuance.IssuanceAuthority:
        """The authority's side of issuance, one per authority for the server's life (its
        sessions and precomputed randomness live there); it holds the authority's keys,
        which are this hospital's own."""
        if code not in issuers:
            if code not in service.config.served:
                raise NotFound(f"no authority {code!r} at this server")
            issuers[code] = issuance.IssuanceAuthority(
                service.wallets.authority(code),
                suspended=service.issuance_suspended,
                enrolled=service._enrolled_on_ledger,
                per_identity=issuance.MAX_OPEN_PER_IDENTITY,
            )
        return issuers[code]

    app.state.issuers = issuers
    refill = threading.Event()

    def keep_ready() -> None:
        """Fill each authority's randomness pool to ``precompute_offers`` offers; woken
        after every offer. A daemon thread: it ends with the server."""
        for code in service.config.served:
            _serialised(lambda code=code: issuer(code))
        while True:
            low = [a for a in list(issuers.values()) if a.precomputed_offers < precompute_offers]
            if low:
                low[0].precompute(1)  # outside the lock: the pool takes and adds atomically
                continue
            refill.wait()
            refill.clear()

    if precompute_offers > 0:
        threading.Thread(target=keep_ready, name="issuance-precompute", daemon=True).start()

    @app.post(
        "/v1/issuance/{code}/challenge",
        summary="Issuance, step 1: a fresh session bound to the authority's keys",
    )
    def issuance_challenge(who: Signed, code: Annotated[str, Path(max_length=16)]) -> Response:
        challenge = _serialised(lambda: issuer(code).challenge())
        return _message(challenge)

    @app.post(
        "/v1/issuance/{code}/offer",
        summary="Issuance, step 2: the caller's registration of R; the authority offers the "
        "attributes it decides for the caller, Enc(a + c) and its range commitment",
    )
    async def issuance_offer(
        who: Signed, code: Annotated[str, Path(max_length=16)], request: Request
    ) -> Response:
        registration = _parsed(issuance.RegistrationRequest, request.state.body)
        if registration.identity != who.identity or registration.identity_key != who.key:
            raise AccessDenied("a registration is made by its own identity, with its own key")

        def offer() -> issuance.IssuanceOffer:
            attributes = service.entitled_attributes(who.identity, code)
            return issuer(code).offer(registration, attributes)

        made = await run_in_threadpool(_serialised, offer)
        refill.set()  # the pool gave one offer's randomness: make more while idle
        return _message(made)

    @app.post("/v1/issuance/{code}/range", summary="Issuance, step 3: the range proof's answer")
    async def issuance_range(
        who: Signed, code: Annotated[str, Path(max_length=16)], request: Request
    ) -> Response:
        asked = _parsed(issuance.RangeChallenge, request.state.body)
        return _message(
            await run_in_threadpool(
                _serialised, lambda: issuer(code).open_range(asked, identity=who.identity)
            )
        )

    @app.post(
        "/v1/issuance/{code}/issue",
        summary="Issuance, step 4: the blinded response in, the blinded key out (recorded)",
    )
    async def issuance_issue(
        who: Signed, code: Annotated[str, Path(max_length=16)], request: Request
    ) -> Response:
        response, tag_tx = _issue_request(request.state.body)

        def issue() -> issuance.IssuedKey:
            issued, registration = issuer(code).issue(response, identity=who.identity)
            body = tag_tx.body
            if (
                tag_tx.kind != TxKind.REGISTER_KEY_TAG
                or tag_tx.sender != who.key
                or body.get("identity") != who.identity
                or body.get("authority") != code
                or body.get("tag") != registration.tag().hex()
                or body.get("attributes") != sorted(registration.attributes)
                or set(body) != KEY_TAG_FIELDS
                or tag_tx.chain != service.ledger.chain_id
                or not issuance.verify_key_tag(
                    body.get("tag"),
                    body.get("proof"),
                    issuance.key_tag_context(tag_tx.chain, who.identity, who.key),
                )
            ):
                # checked here, before the relay: the chain would refuse it only in its
                # block, after other callers' transactions were batched with it
                raise AccessDenied("the tag registration is not this key's, by its holder")
            service.relay([tag_tx])  # on the ledger before the key leaves
            service.record_issued_key(registration, code)
            return issued

        return _message(await run_in_threadpool(_serialised, issue))

    @app.get("/v1/ledger/next-nonce", summary="The caller's next ledger nonce and the chain id")
    def next_nonce(who: Signed) -> dict[str, Any]:
        nonce = _serialised(lambda: service.ledger.next_nonce(who.key))
        return {"chain_id": service.ledger.chain_id, "next_nonce": nonce}

    kac_encoded: list[str] = []  # encoded once: ~100 KB, the same for every caller

    @app.get("/v1/kac-params", summary="The consortium's public KAC parameters")
    def kac_params() -> dict[str, str]:
        if not kac_encoded:
            data = _serialised(lambda: service.params.to_bytes())
            kac_encoded.append(base64.b64encode(data).decode("ascii"))
        return {"kac_params": kac_encoded[0]}

    @app.post(
        "/v1/records/{record_id:path}/delete",
        summary="A records officer of the record's hospital crypto-shreds it: every wrap of "
        "its key is destroyed (the copies of its ciphertext become unreadable), its ledger "
        "digest stays, and the deletion is logged for the patient",
    )
    def delete_record(who: Signed, record_id: str, request: Request) -> dict[str, Any]:
        hospital = staff_here(who.identity, "records", "a records officer")
        reason = _json_object(request.state.body).get("reason")
        # exclusive (as every change): no read is between its gate and its release
        txid = _serialised(lambda: service.shred(record_id, reason=reason, by=hospital))
        return {"record": record_id, "deleted": True, "txid": txid}

    @app.get(
        "/v1/records/{record_id:path}",
        summary="A record sealed for the caller's own key, after its access tx is committed",
    )
    def sealed_record(
        who: Signed,
        record_id: str,
        area: Annotated[str, Query(max_length=32)] = "institution",
        share: Annotated[str | None, Query(max_length=128)] = None,
        reason: Annotated[str | None, Query(max_length=1024)] = None,
    ) -> dict[str, Any]:
        try:
            chosen = parse_area(area)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        # A read holds the shared side from its gate to its release: reads run their
        # commits together (their access txs share a block), while a revocation, a
        # deletion or any other change waits until no read it could affect is between its
        # gate and its release, and new reads wait for it.
        with lock.shared():
            with gate_lock:
                gate = service.read_gate(
                    who.identity, record_id, area=chosen, share_id=share, reason=reason
                )
            return service.release(gate).to_json()

    return app


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers (so a steady
    stream of reads cannot starve a revocation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


async def _caller(request: Request) -> Caller:
    """The verified signer of this request (401 otherwise): the target is the path and
    query exactly as sent, the body is read up to the app's size cap. Verification (and
    its ledger lookup) runs on a worker thread, never on the event loop."""
    limit = request.app.state.max_body
    path = request.scope.get("path", "")
    if path == "/v1/ingest" or path.startswith(REPLICA_PREFIX):
        may_send_large = request.app.state.may_send_large
        allowed = await run_in_threadpool(may_send_large, path, request.headers)
        if allowed:  # a records officer's FHIR, a member's blob copy: beyond the common cap
            return await _verified_then_large_body(request)
    body = await _capped_body(request, limit)
    return await _verified(request, body)


async def _verified_then_large_body(request: Request) -> Caller:
    """A request that may carry a large body is verified first, from the body digest its
    signature covers, and its body read only then (a few at a time), and checked against
    that digest: naming a key that may send a large body is not enough to have one read."""
    verifier = request.app.state.verifier
    target = _target(request)
    headers = dict(request.headers)
    caller, digest = await run_in_threadpool(
        verifier.verify_before_body, request.method, target, headers
    )
    async with request.app.state.large_bodies:
        body = await _capped_body(request, max(request.app.state.max_body, MAX_INGEST_BYTES))
    if signed_requests.body_digest(body) != digest:
        raise RequestRefused("the body is not the one the request's signature covers")
    request.state.body = body
    return caller


def _target(request: Request) -> str:
    """The path and query exactly as sent (what the signature covers)."""
    target = request.scope.get("raw_path", b"").decode("latin-1")
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{target}?{query}" if query else target


async def _verified(request: Request, body: bytes) -> Caller:
    """The verified signer of a request whose body (within the common cap) is read."""
    request.state.body = body  # what was verified is what the route reads
    verify = request.app.state.verifier.verify
    return await run_in_threadpool(
        verify, request.method, _target(request), body, dict(request.headers)
    )


def _parsed(kind: Any, body: bytes) -> Any:
    """An issuance message from a request body; InvalidInput if it is not one."""
    try:
        return kind.from_bytes(body)
    except (CryptoError, ValueError) as exc:
        raise InvalidInput(f"not a {kind.__name__}: {exc}") from None


def _issue_request(body: bytes) -> tuple[Any, Tx]:
    """Step 4's body: the IssuanceResponse and the holder's signed key-tag transaction."""
    try:
        doc = json.loads(body)
        response = issuance.IssuanceResponse.from_bytes(doc["response"])
        tx = Tx.decode(bytes.fromhex(doc["tag_tx"]))
    except (CryptoError, LedgerFormatError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"not an issuance response with its tag transaction: {exc}") from None
    return response, tx


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidInput("the request body is not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidInput("the request body is a JSON object")
    return doc


def _hex_field(doc: dict[str, Any], name: str) -> bytes:
    value = doc.get(name)
    try:
        return bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raise InvalidInput(f"{name} is hex") from None


def _tx_field(value: Any, name: str) -> Tx:
    raw = _hex_field(value, name) if isinstance(value, dict) else b""
    try:
        return Tx.decode(raw)
    except (LedgerFormatError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"{name} is not a signed transaction: {exc}") from None


def _block_request(doc: dict[str, Any], *, optional: bool = False) -> tuple[list[Tx], dict]:
    """``block_publics`` ({block: hex key}) and ``publications`` ([hex tx]) of a request."""
    publics, txs = doc.get("block_publics"), doc.get("publications")
    if optional and publics is None and txs is None:
        return [], {}
    limit = enrolment.MAX_BLOCKS_PER_CALL
    if not isinstance(publics, dict) or not isinstance(txs, list) or len(txs) > limit:
        raise InvalidInput(f"block_publics is a map, publications a list (≤ {limit})")
    blocks: dict[int, bytes] = {}
    for block in publics:
        if not re.fullmatch(r"[0-9]{1,7}", block):
            raise InvalidInput("a block is a decimal number")
        blocks[int(block)] = _hex_field(publics, block)
    return [_tx_field({"tx": t}, "tx") for t in txs], blocks


def _message(message: Any) -> Response:
    """An issuance message as the response body (its own versioned JSON encoding)."""
    return Response(content=message.to_bytes(), media_type="application/json")


def _member_nodes(service: MedShare) -> dict[bytes, str]:
    """{node public key: ``records@<code>``} for every node the chain counts as a member
    hospital's now (nodes are labelled ``<code>-a``, ``<code>-b``, …; the regulator's is
    no hospital's), for the hospitals this server knows as members."""
    return {
        key: service_principal(node_owner(name))
        for key, name in service.ledger.chain_nodes().items()
        if node_owner(name) in service.config.hospitals
    }


def audience_of(service: MedShare) -> str:
    """What requests to this server must be signed for: the consortium's chain and the
    hospitals this server speaks for, so a request made for one server is refused by
    every other."""
    return f"{service.ledger.chain_id}/{'+'.join(service.config.served)}"


Signed = Annotated[Caller, Depends(_caller)]
BlobId = Annotated[str, Path(pattern="^[0-9a-f]{64}$")]


async def _capped_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (
        not re.fullmatch(r"[0-9]{1,19}", declared) or int(declared) > limit
    ):
        raise TooLarge(f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
