"""A person's own wallet folder: keys made here, a code redeemed, secrets used only here.

Why: the hospital vouches for a person (a one-time enrolment code) but must never hold
their keys. ``wallet new`` makes the identity key — and a patient's 32-byte H-KAC seed —
in this folder, computes the patient's first block keys ``v_b`` and signs their
``publish_key`` transactions, and sends the hospital only public values
(:mod:`medshare.service.enrolment`). The folder remembers the hospital it was enrolled
at and the audience the hospital's requests are signed for (pinned at enrolment: a
different server cannot make this wallet sign for itself).

Layout: ``wallet.json`` (holder, hospital URL, audience, chain id) next to the same key
files :class:`~medshare.service.wallets.Wallets` writes (0600 files in 0700 folders).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from medshare.api import consent_grants, share_grants
from medshare.api.sealed_record import SealedRecord, open_sealed
from medshare.crypto import abe, hkac, kac, recovery
from medshare.crypto.signing import SigningKey
from medshare.fileio import write_file
from medshare.ledger.app import published
from medshare.ledger.types import Tx, TxKind
from medshare.records import fhir_audit
from medshare.records.departments import Taxonomy
from medshare.service.areas import key_epochs
from medshare.service.common import wall_clock_ms
from medshare.service.enrolment import MAX_BLOCKS_PER_CALL, code_identity
from medshare.service.errors import AccessDenied, IntegrityError, InvalidInput
from medshare.service.wallets import WalletError, Wallets
from medshare.wallet.client import HospitalClient
from medshare.wallet.keys import obtain_key

WALLET_FILE = "wallet.json"
# Blocks a new patient wallet publishes: 8 blocks of 8 slabs cover 64 departments' slabs.
INITIAL_BLOCKS = 8
# A wallet publishes the next blocks when fewer than this many stay unused.
SPARE_BLOCKS = 2


@dataclass(frozen=True)
class WalletInfo:
    identity: str
    hospital: str
    audience: str
    chain_id: str
    enrolled: bool

    @property
    def patient_id(self) -> str | None:
        prefix = published.patient_identity("")
        return self.identity[len(prefix) :] if self.identity.startswith(prefix) else None


class PersonalWallet:
    """One holder's wallet folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys = Wallets(directory)

    @property
    def _info_path(self) -> Path:
        return self.directory / WALLET_FILE

    def exists(self) -> bool:
        return self._info_path.is_file()

    def info(self) -> WalletInfo:
        try:
            doc = json.loads(self._info_path.read_text(encoding="utf-8"))
            return WalletInfo(**doc)
        except FileNotFoundError:
            raise WalletError(
                f"{self.directory} is not a wallet (make one with `medshare wallet new`)"
            ) from None
        except (ValueError, TypeError) as exc:
            raise WalletError(f"{self._info_path} is damaged: {exc}") from None

    def save_info(self, info: WalletInfo) -> None:
        write_file(self._info_path, json.dumps(asdict(info), indent=2).encode(), secret=True)

    def identity_key(self) -> SigningKey:
        return self.keys.identity(self.info().identity)

    def seed(self) -> hkac.PatientSeed:
        patient = self.info().patient_id
        if patient is None:
            raise InvalidInput("only a patient's wallet holds a seed")
        return self.keys.seed(patient)

    def client(
        self,
        hospital: str | None = None,
        *,
        http: httpx.Client | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> HospitalClient:
        """A signed client to the wallet's hospital (or another server of the consortium
        given by URL), signing for the audience pinned at enrolment for its own hospital."""
        info = self.info()
        url = hospital or info.hospital
        home = url.rstrip("/") == info.hospital.rstrip("/")
        client = HospitalClient(
            url, info.identity, self.identity_key(), audience=info.audience if home else None,
            http=http, clock_ms=clock_ms,
        )  # fmt: skip
        if not home and client.audience() == info.audience:
            # Another address answering in the home hospital's name: what this wallet
            # signed for it would be good at the home hospital, so it signs nothing.
            client.close()
            raise IntegrityError(
                f"{url} claims to be {info.hospital} (its audience); use {info.hospital}"
            )
        return client

    def nonce(self, client: HospitalClient) -> int:
        """The holder's next ledger nonce, from a server of this wallet's own chain."""
        doc = client.get("/v1/ledger/next-nonce")
        if not isinstance(doc, dict) or doc.get("chain_id") != self.info().chain_id:
            raise IntegrityError("the server's ledger is not this wallet's chain")
        nonce = doc.get("next_nonce")
        if not isinstance(nonce, int) or isinstance(nonce, bool) or nonce < 0:
            raise IntegrityError("the server sent no nonce")
        return nonce


def block_publications(
    seed: hkac.PatientSeed, patient_id: str, key: SigningKey, chain_id: str, blocks: Sequence[int],
    first_nonce: int,
) -> dict[str, Any]:  # fmt: skip
    """The block keys ``v_b`` of ``blocks`` and their ``publish_key`` txs, signed here with
    consecutive nonces from ``first_nonce``: the body of an enrolment or block request."""
    publics, txs = {}, []
    for i, block in enumerate(blocks):
        raw = hkac.block_public(seed, block).to_bytes()
        body = {"key": published.block_key(patient_id, block), "digest": published.digest(raw)}
        txs.append(Tx.create(TxKind.PUBLISH_KEY, body, first_nonce + i, key, chain=chain_id))
        publics[str(block)] = raw.hex()
    return {"block_publics": publics, "publications": [tx.encode().hex() for tx in txs]}


def enrol(
    directory: Path,
    hospital: str,
    code: str,
    *,
    http: httpx.Client | None = None,
    clock_ms: Callable[[], int] = wall_clock_ms,
) -> dict[str, Any]:
    """``wallet new``: make this holder's keys here and redeem ``code`` at ``hospital``.

    Safe to run again after a failure: the keys already made are reused (a registration
    that committed is then found under this same key)."""
    identity, _ = code_identity(code)
    wallet = PersonalWallet(directory)
    if wallet.exists():
        info = wallet.info()
        if info.enrolled:
            raise InvalidInput(f"{directory} is the wallet of {info.identity} already")
        if info.identity != identity:
            raise InvalidInput(f"{directory} holds a wallet begun for {info.identity}")
    keys = wallet.keys
    patient = WalletInfo(identity, hospital, "", "", False).patient_id
    if patient is not None and not keys.has_seed(patient):
        keys.save_seed(patient, hkac.PatientSeed.generate())
    if not keys.has_identity(identity):
        if patient is not None:  # derived from the seed: the seed alone restores it
            keys.save_identity(identity, SigningKey(hkac.identity_seed(keys.seed(patient))))
        else:
            keys.create_identity(identity)
    key = keys.identity(identity)
    with HospitalClient(hospital, identity, key, http=http, clock_ms=clock_ms) as client:
        health = client.health()
        info = WalletInfo(identity, hospital, health["audience"], health["chain_id"], False)
        wallet.save_info(info)
        body: dict[str, Any] = {"code": code, "identity_key": key.public.hex()}
        if patient is not None:
            body.update(
                block_publications(
                    keys.seed(patient), patient, key, info.chain_id, range(INITIAL_BLOCKS), 0
                )
            )
        answer = client.post_unsigned("/v1/enrolment", json.dumps(body).encode())
        wallet.save_info(WalletInfo(**{**asdict(info), "enrolled": True}))
        if patient is None:
            answer["keys"] = _obtain_staff_keys(wallet, client, health["hospitals"])
    return answer


def refresh_superseded_keys(
    keys: Wallets, identity: str, key: SigningKey, client: HospitalClient
) -> list[dict[str, Any]]:
    """Ask again each authority ``client``'s server speaks for whose keys in this wallet
    are all of an older epoch than its policies name now (a revocation at that authority
    superseded them): the new key is made by the issuance protocol, as the first was. An
    authority that refuses (this holder's own key was revoked for cause, say) is skipped.
    What was obtained."""
    served = set(client.health().get("hospitals", []))
    out = []
    for authority in (a for a in keys.abe_authorities(identity) if a in served):
        held = [
            abe.AbeUserKey.from_bytes(p.read_bytes())
            for p in keys.abe_key_files(identity, authority)
        ]
        newest = max((e for k in held for e in key_epochs(k.components)), default=-1)
        if newest < client.authority_epoch(authority):
            out += _obtain_and_keep(keys, identity, key, client, authority)
    return out


def _obtain_and_keep(
    keys: Wallets, identity: str, key: SigningKey, client: HospitalClient, authority: str
) -> list[dict[str, Any]]:
    """The key ``authority`` issues to this holder, kept in the wallet; nothing when the
    authority refuses (it offers this holder nothing)."""
    try:
        got = obtain_key(client, identity, key, authority)
    except AccessDenied:
        return []
    keys.save_abe_key(identity, authority, got.key)
    return [{"authority": authority, "attributes": sorted(got.key.components)}]


def _obtain_staff_keys(
    wallet: PersonalWallet, client: HospitalClient, authorities: Sequence[str]
) -> list[dict[str, Any]]:
    """The CP-ABE keys the consortium's authorities offer this staff member (each decides;
    a refusal means "not entitled" and is skipped)."""
    info, key = wallet.info(), wallet.identity_key()
    out = []
    for authority in authorities:
        out += _obtain_and_keep(wallet.keys, info.identity, key, client, authority)
    return out


def own_key(wallet: PersonalWallet, client: HospitalClient) -> tuple[hkac.Share, kac.KacParams]:
    """The patient's key to all their own records, from the seed and the directory."""
    info = wallet.info()
    directory, _ = directory_of(client, _patient(info))
    params = client.kac_params()
    share = hkac.share_all(wallet.seed(), params, directory, grantee=info.identity)
    return share, params


def _patient(info: WalletInfo) -> str:
    if info.patient_id is None:
        raise InvalidInput(f"{info.identity}'s wallet is not a patient's")
    return info.patient_id


def directory_of(client: HospitalClient, patient_id: str) -> tuple[hkac.Directory, dict]:
    doc = client.get(f"/v1/patients/{quote(patient_id, safe='')}/directory")
    return _directory(doc), doc


def _directory(doc: Any) -> hkac.Directory:
    try:
        return hkac.Directory.from_bytes(base64.b64decode(doc["directory"], validate=True))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"the server sent no directory: {exc}") from None


def sync_blocks(wallet: PersonalWallet, client: HospitalClient) -> dict[str, Any]:
    """Publish the blocks the hospital waits for, and more when the spare ones run low."""
    patient = _patient(wallet.info())
    directory, doc = directory_of(client, patient)
    published_blocks = _blocks(doc.get("published"))
    used = set(directory.blocks)
    wanted = _blocks(doc.get("pending"))
    spare = [b for b in published_blocks if b not in used]
    if len(spare) < SPARE_BLOCKS:
        top = max(published_blocks | used, default=-1)
        wanted |= set(range(top + 1, min(top + 1 + INITIAL_BLOCKS, published.MAX_BLOCK + 1)))
    if not wanted:
        return {"published": sorted(published_blocks), "added": [], "sealed": 0}
    top = max(published_blocks | used, default=-1)
    wanted = {b for b in wanted if b <= min(top + INITIAL_BLOCKS, published.MAX_BLOCK)}
    wanted = set(sorted(wanted)[:MAX_BLOCKS_PER_CALL])
    body = block_publications(
        wallet.seed(), patient, wallet.identity_key(), wallet.info().chain_id, sorted(wanted),
        wallet.nonce(client),
    )  # fmt: skip
    path = f"/v1/patients/{quote(patient, safe='')}/blocks"
    answer = client.post_json(path, json.dumps(body).encode())
    return {"published": answer["blocks"], "added": sorted(wanted), "sealed": answer["sealed"]}


def _blocks(value: object) -> set[int]:
    """Block numbers a server listed: integers in range, or IntegrityError."""
    if not isinstance(value, list) or not all(
        isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= published.MAX_BLOCK
        for b in value
    ):
        raise IntegrityError("the server's block list is not a list of block numbers")
    return set(value)


def share(
    wallet: PersonalWallet,
    client: HospitalClient,
    to: str,
    *,
    records: Sequence[str] = (),
    dept: str | None = None,
    everything: bool = False,
    until_ms: int | None = None,
    now_ms: int,
) -> tuple[hkac.Share, dict[str, Any]]:
    """``wallet share``: the share's keys made here from the seed, its grant signed here;
    the hospital gets the grant and the class map (for its gate), the caller hands the
    returned share to the grantee."""
    if sum([bool(records), dept is not None, everything]) != 1:
        raise InvalidInput("choose exactly one of --record, --dept or --all")
    patient = _patient(wallet.info())
    directory, _ = directory_of(client, patient)
    params = client.kac_params()
    seed = wallet.seed()
    times = {
        "now": datetime.fromtimestamp(now_ms / 1000, tz=UTC),
        "until": None if until_ms is None else datetime.fromtimestamp(until_ms / 1000, tz=UTC),
    }
    try:
        if records:
            made = hkac.share_records(seed, params, directory, records, grantee=to, **times)
        elif dept is not None:
            subtree = Taxonomy.default().subtree if dept in Taxonomy.default() else None
            made = hkac.share_department(
                seed, params, directory, dept, subtree, grantee=to, **times
            )
        else:
            made = hkac.share_all(seed, params, directory, grantee=to, **times)
    except (ValueError, hkac.UnknownRecord) as exc:
        raise InvalidInput(f"cannot make this share: {exc}") from None
    body = share_grants.grant_body(made, patient, until_ms)
    tx = Tx.create(
        TxKind.GRANT, body, wallet.nonce(client), wallet.identity_key(),
        chain=wallet.info().chain_id,
    )  # fmt: skip
    request = {"tx": tx.encode().hex(), "classes": share_grants.wire_classes(made)}
    path = f"/v1/patients/{quote(patient, safe='')}/shares"
    return made, client.post_json(path, json.dumps(request).encode())


def read_own(wallet: PersonalWallet, client: HospitalClient, record_id: str) -> bytes:
    """One of the patient's own records, opened here with a key from the seed."""
    sealed = client.sealed_record(record_id, area="personal")
    own, params = own_key(wallet, client)
    return open_sealed(sealed, params=params, share=own)


def export(wallet: PersonalWallet, client: HospitalClient) -> tuple[list[bytes], list[str]]:
    """All the patient's records, opened here (ingest order), and the ids still waiting
    for a block key (after the wallet published what the hospital waits for)."""
    patient = _patient(wallet.info())
    sync_blocks(wallet, client)
    doc = client.get(f"/v1/patients/{quote(patient, safe='')}/export")
    own, params = own_key(wallet, client)
    try:
        sealed = [SealedRecord.from_json(item) for item in doc["records"]]
        pending = [str(p) for p in doc["pending"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"the server's export does not decode: {exc}") from None
    return [open_sealed(s, params=params, share=own) for s in sealed], pending


def consent(wallet: PersonalWallet, client: HospitalClient, study: str) -> dict[str, Any]:
    """``wallet consent``: the patient's research consent to ``study``, its GRANT tx signed
    here and sent to the server of the hospital that runs the study (``client``), which
    makes the de-identified copies of the patient's records there and commits it. The
    study's hospital and the consent's id come from that server and the patient's own
    Consents; the server takes the consent only if it is exactly the one it would write."""
    patient = _patient(wallet.info())
    facts = client.get(f"/v1/studies/{quote(study, safe='')}")
    hospital = facts.get("hospital") if isinstance(facts, dict) else None
    if not isinstance(hospital, str) or facts.get("study") != study:
        raise IntegrityError(f"the server's facts of study {study} do not fit it")
    taken = [
        identifier.get("value")
        for resource in client.get(f"/v1/patients/{quote(patient, safe='')}/consents")
        for identifier in resource.get("identifier", [])
        if identifier.get("system") == fhir_audit.GRANT_SYSTEM
    ]
    grant_id = consent_grants.next_consent_id(study, patient, taken)
    body = consent_grants.consent_body(grant_id, patient, study, hospital)
    tx = Tx.create(
        TxKind.GRANT, body, wallet.nonce(client), wallet.identity_key(),
        chain=wallet.info().chain_id,
    )  # fmt: skip
    path = f"/v1/patients/{quote(patient, safe='')}/consents"
    return client.post_json(path, json.dumps({"tx": tx.encode().hex()}).encode())


def revoke(
    wallet: PersonalWallet, client: HospitalClient, grant_id: str, reason: str
) -> dict[str, Any]:
    """``wallet revoke``: the REVOKE tx signed here, sent to the hospital, which moves the
    share's records to fresh slots before committing it."""
    body = {"grant": grant_id, "reason": reason}
    tx = Tx.create(
        TxKind.REVOKE, body, wallet.nonce(client), wallet.identity_key(),
        chain=wallet.info().chain_id,
    )  # fmt: skip
    path = f"/v1/grants/{quote(grant_id, safe='')}/revoke"
    return client.post_json(path, json.dumps({"tx": tx.encode().hex()}).encode())


def backup(wallet: PersonalWallet, threshold: int, shares: int) -> list[str]:
    """SLIP-39 shares of the patient's seed: any ``threshold`` of them rebuild the whole
    wallet (the identity key is derived from the seed), on any device."""
    try:
        return recovery.split_seed(wallet.seed(), threshold, shares)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(str(exc)) from None


def restore(
    directory: Path,
    hospital: str,
    patient_id: str,
    mnemonics: Sequence[str],
    *,
    http: httpx.Client | None = None,
    clock_ms: Callable[[], int] = wall_clock_ms,
) -> dict[str, Any]:
    """A patient's wallet rebuilt on a new device from SLIP-39 shares. The rebuilt seed
    is checked before anything is kept: the identity key it derives must be the one the
    hospital (and its ledger) know as the patient, so a wrong or mixed set of shares is
    refused instead of giving the patient a useless wallet."""
    wallet = PersonalWallet(directory)
    if wallet.exists():
        raise InvalidInput(f"{directory} holds a wallet already; restore into a new folder")
    try:
        seed = recovery.recover_seed(mnemonics)
    except recovery.RecoveryError as exc:
        raise InvalidInput(f"cannot rebuild the seed: {exc}") from None
    identity = published.patient_identity(patient_id)
    key = SigningKey(hkac.identity_seed(seed))
    with HospitalClient(hospital, identity, key, http=http, clock_ms=clock_ms) as client:
        health = client.health()
        try:
            me = client.me()
        except AccessDenied:
            raise InvalidInput(
                f"these shares rebuild a seed whose key is not patient {patient_id}'s at "
                f"{hospital}; nothing was written"
            ) from None
        if me.get("identity") != identity:
            raise IntegrityError(f"the server says this key is {me.get('identity')!r}")
        wallet.keys.save_seed(patient_id, seed)
        wallet.keys.save_identity(identity, key)
        wallet.save_info(
            WalletInfo(identity, hospital, health["audience"], health["chain_id"], True)
        )
    return {"identity": identity, "restored": True, "wallet": str(directory)}
