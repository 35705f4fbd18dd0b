"""``medshare wallet …``: the holder's side, on the holder's own machine.

Every request to a hospital is signed with the holder's identity key, and every record
is decrypted here with the holder's own key; the hospital sends only ciphertext.
``wallet new --code`` makes a wallet of its own (keys made here, never sent): its folder
remembers the holder and their hospital, so ``--as`` and ``--hospital`` are not needed.
A folder of several holders' keys (``<data-dir>/wallets`` of ``medshare init``) is used
with ``--as`` and ``--hospital``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from medshare.cli.errors import fail
from medshare.cli.records import parse_until, service_errors
from medshare.crypto import abe, hkac
from medshare.crypto.errors import CryptoError
from medshare.service.errors import AccessDenied

app = typer.Typer(
    help="The holder's wallet: keys made here, signed requests, decryption here.",
    no_args_is_help=True,
)

WalletDir = Annotated[Path, typer.Option("--dir", help="The wallet folder.")]
Holder = Annotated[
    str | None,
    typer.Option("--as", help="Whose keys (only for a folder of several holders' keys)."),
]
Hospital = Annotated[
    str | None,
    typer.Option("--hospital", help="The hospital server's URL (default: the wallet's own)."),
]


@dataclass
class _Holder:
    """The holder a command acts as: their key folder, name, and a signed client."""

    keys: Any  # medshare.service.wallets.Wallets
    identity: str
    client: Any  # medshare.wallet.client.HospitalClient
    wallet: Any  # medshare.wallet.device.PersonalWallet | None

    @property
    def patient_id(self) -> str:
        prefix = "patient:"
        if not self.identity.startswith(prefix) or len(self.identity) == len(prefix):
            raise fail(f"this needs a patient's identity (patient:<id>), not {self.identity!r}")
        return self.identity[len(prefix) :]


@contextlib.contextmanager
def _holder(directory: Path, who: str | None, hospital: str | None) -> Iterator[_Holder]:
    from medshare.service.wallets import Wallets
    from medshare.wallet.client import HospitalClient
    from medshare.wallet.device import PersonalWallet

    with service_errors():
        wallet = PersonalWallet(directory)
        if wallet.exists():
            info = wallet.info()
            if who is not None and who != info.identity:
                raise fail(f"this is {info.identity}'s wallet, not {who}'s")
            client = wallet.client(hospital)
            holder = _Holder(wallet.keys, info.identity, client, wallet)
        else:
            if who is None or hospital is None:
                raise fail(
                    f"{directory} has no wallet.json: make one with `medshare wallet new`, "
                    "or name the holder (--as) and the server (--hospital)"
                )
            keys = Wallets(directory)
            client = HospitalClient(hospital, who, keys.identity(who))
            holder = _Holder(keys, who, client, None)
        with client:
            yield holder


def _print(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))


def _personal_wallet(holder: _Holder) -> Any:
    if holder.wallet is None:
        raise fail("this needs a wallet made with `medshare wallet new` (it holds the seed)")
    return holder.wallet


@app.command()
def new(
    directory: WalletDir,
    hospital: Annotated[str, typer.Option("--hospital", help="The hospital server's URL.")],
    code: Annotated[str, typer.Option(help="The one-time code from `hospital enrol`.")],
) -> None:
    """Make your wallet here: identity key (and a patient's seed) made on this machine;
    the hospital gets public keys only. Staff get their CP-ABE keys right away."""
    from medshare.wallet.device import enrol

    with service_errors():
        answer = enrol(directory, hospital, code)
    _print({**answer, "wallet": str(directory)})


@app.command()
def read(
    directory: WalletDir,
    record: Annotated[str, typer.Option(help="The record id.")],
    who: Holder = None,
    hospital: Hospital = None,
    area: Annotated[
        str | None,
        typer.Option(help="Access area (default: personal for a patient, else institution)."),
    ] = None,
    key: Annotated[Path | None, typer.Option(help="A share key file (personal area).")] = None,
    reason: Annotated[str | None, typer.Option(help="Break-glass reason (emergency).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the record here.")] = None,
) -> None:
    """Fetch a record sealed for this wallet's key and decrypt it here; exits 1 if the
    hospital refuses (the refusal is logged on the ledger). A patient reads their own
    records with the key their seed gives."""
    from medshare.api.sealed_record import open_sealed
    from medshare.wallet.device import read_own

    share = None
    if key is not None:
        try:
            share = hkac.Share.from_bytes(key.read_bytes())
        except (OSError, CryptoError, ValueError) as exc:
            raise fail(f"{key} is not a share key file: {exc}") from None
    with _holder(directory, who, hospital) as holder:
        own = holder.identity.startswith("patient:") and share is None
        chosen = area or ("personal" if own or share is not None else "institution")
        if own and chosen == "personal":
            data = read_own(_personal_wallet(holder), holder.client, record)
            txid = None
        else:

            def fetch() -> Any:
                return holder.client.sealed_record(
                    record,
                    area=chosen,
                    share_id=share.share_id if share is not None else None,
                    reason=reason,
                )

            try:
                sealed = fetch()
            except AccessDenied:
                # a revocation at an authority supersedes every key of it held on devices:
                # ask for the new epoch's key (the issuance protocol, here) and read again
                if share is not None or not _refresh_keys(holder):
                    raise
                sealed = fetch()
            txid = sealed.txid
            if sealed.seal is None:
                data = open_sealed(sealed, params=holder.client.kac_params(), share=share)
            else:
                authority = sealed.seal.authority
                keys = [
                    abe.AbeUserKey.from_bytes(path.read_bytes())
                    for path in holder.keys.abe_key_files(holder.identity, authority)
                ]
                public = holder.client.authority_public(authority)
                data = open_sealed(sealed, abe_keys=keys, authority_public=public)
    if out is not None:
        out.write_bytes(data)
        typer.echo(json.dumps({"record": record, "out": str(out), "txid": txid}), err=True)
        return
    sys.stdout.write(json.dumps(json.loads(data), indent=2, ensure_ascii=False) + "\n")


def _refresh_keys(holder: _Holder) -> list[dict[str, Any]]:
    from medshare.wallet.device import refresh_superseded_keys

    key = holder.keys.identity(holder.identity)
    got = refresh_superseded_keys(holder.keys, holder.identity, key, holder.client)
    for item in got:
        typer.echo(
            f"a newer {item['authority']} key was issued to this wallet (the old one was "
            "superseded by a revocation at that authority)",
            err=True,
        )
    return got


@app.command()
def records(directory: WalletDir, who: Holder = None, hospital: Hospital = None) -> None:
    """The patient's own records at this hospital (JSON list)."""
    _as_patient(directory, who, hospital, lambda h: h.client.patient_records(h.patient_id))


@app.command()
def log(directory: WalletDir, who: Holder = None, hospital: Hospital = None) -> None:
    """The patient's access log: a FHIR R4 Bundle of AuditEvents, from the ledger."""
    _as_patient(directory, who, hospital, lambda h: h.client.patient_log(h.patient_id))


@app.command()
def consents(directory: WalletDir, who: Holder = None, hospital: Hospital = None) -> None:
    """The patient's grants (shares, referrals, consents) as FHIR R4 Consent resources."""
    _as_patient(
        directory, who, hospital, lambda h: h.client.get(f"/v1/patients/{h.patient_id}/consents")
    )


@app.command()
def refer(
    directory: WalletDir,
    patient: Annotated[str, typer.Option(help="The patient's id.")],
    to: Annotated[str, typer.Option(help="The partner physician (name@HOSPITAL).")],
    dept: Annotated[str | None, typer.Option(help="Only this department's records.")] = None,
    until: Annotated[str | None, typer.Option(help="Last valid day (ISO date/time).")] = None,
    who: Holder = None,
    hospital: Hospital = None,
) -> None:
    """A physician refers a patient to a partner physician, who then asks the authority
    for the referral key (`wallet issue --authority <this hospital>`)."""
    from urllib.parse import quote

    body: dict[str, Any] = {"to": to, "dept": dept, "until_ms": parse_until(until)}
    with _holder(directory, who, hospital) as holder:
        path = f"/v1/patients/{quote(patient, safe='')}/referrals"
        answer = holder.client.post_json(path, json.dumps(body).encode())
    _print(answer)


@app.command()
def delete(
    directory: WalletDir,
    record: Annotated[str, typer.Option(help="The record to delete (crypto-shred).")],
    reason: Annotated[str, typer.Option(help="Why (kept on the ledger, in the patient's log).")],
    hospital: Hospital = None,
) -> None:
    """A records officer crypto-shreds a record of their hospital: every wrap of its key
    is destroyed, so no copy of its ciphertext opens again; its ledger digest stays."""
    from urllib.parse import quote

    body = json.dumps({"reason": reason}).encode()
    with _holder(directory, None, hospital) as holder:
        answer = holder.client.post_json(f"/v1/records/{quote(record, safe='/')}/delete", body)
    _print(answer)


@app.command()
def study(
    directory: WalletDir,
    name: Annotated[str, typer.Option("--study", help="The study's name (e.g. S-2026-01).")],
    researcher: Annotated[str, typer.Option(help="The researcher it is approved for.")],
    who: Holder = None,
    hospital: Hospital = None,
) -> None:
    """An ethics officer approves a study at their hospital for a researcher, who then
    asks the authority for the study key (`wallet issue --authority <this hospital>`);
    patients consent to it with `wallet consent`."""
    body = {"study": name, "researcher": researcher}
    with _holder(directory, who, hospital) as holder:
        answer = holder.client.post_json("/v1/studies", json.dumps(body).encode())
    _print(answer)


@app.command()
def consent(
    directory: WalletDir,
    name: Annotated[str, typer.Option("--study", help="The study to consent to.")],
    hospital: Annotated[
        str | None,
        typer.Option(help="The server of the hospital that runs the study (default: yours)."),
    ] = None,
) -> None:
    """Consent to a study: signed here; the study's hospital makes de-identified copies
    of your records there for it. Withdraw with `wallet revoke <consent id>`."""
    from medshare.wallet import device

    with _holder(directory, None, hospital) as holder:
        answer = device.consent(_personal_wallet(holder), holder.client, name)
    _print(answer)


@app.command()
def enrol(
    directory: WalletDir,
    patient: Annotated[str | None, typer.Option(help="Enrol this patient id.")] = None,
    name: Annotated[str | None, typer.Option(help="The patient's display name.")] = None,
    staff: Annotated[str | None, typer.Option(help="Enrol this staff member (name@CODE).")] = None,
    role: Annotated[
        str | None,
        typer.Option(
            "--role",
            "--roles",
            help="physician, nurse, emergency, records, auditor, ethics or researcher.",
        ),
    ] = None,
    dept: Annotated[str | None, typer.Option(help="The staff member's department code.")] = None,
    days: Annotated[int, typer.Option(help="Days the code stays valid.")] = 7,
    hospital: Hospital = None,
) -> None:
    """A records officer asks their hospital's server for a one-time enrolment code."""
    body = {"patient": patient, "name": name, "staff": staff, "role": role, "dept": dept,
            "days": days}  # fmt: skip
    with _holder(directory, None, hospital) as holder:
        answer = holder.client.post_json("/v1/enrolments", json.dumps(body).encode())
    _print(answer)


@app.command()
def ingest(
    directory: WalletDir,
    files: Annotated[list[Path], typer.Argument(help="FHIR Bundles, NDJSON or resources.")],
    hospital: Hospital = None,
) -> None:
    """A records officer sends FHIR R4 to their hospital's server (one request per file):
    validated, classified, encrypted, replicated and anchored there as its records. JSON
    {"patients", "records", "rejected": [{"item", "reason"}]} summed over the files."""
    bodies = []
    for path in files:
        try:
            bodies.append((path, path.read_bytes()))
        except OSError as exc:
            raise fail(f"cannot read {path}: {exc.strerror}") from None
    total: dict[str, Any] = {"patients": 0, "records": 0, "unchanged": 0, "rejected": []}
    with _holder(directory, None, hospital) as holder:
        for path, body in bodies:
            answer = holder.client.post_json("/v1/ingest", body)
            total["patients"] += answer.get("patients", 0)
            total["records"] += answer.get("records", 0)
            total["unchanged"] += answer.get("unchanged", 0)
            total["rejected"] += [
                {**r, "item": f"{path.name}: {r.get('item')}"} for r in answer.get("rejected", [])
            ]
    _print(total)


@app.command()
def trace(
    directory: WalletDir,
    keyfile: Annotated[Path, typer.Argument(help="The leaked CP-ABE key file.")],
    who: Holder = None,
    hospital: Hospital = None,
) -> None:
    """An auditor submits a leaked key: who it was issued to (or the authority's forgery,
    or malformed), with the verdict recorded on the ledger."""
    try:
        data = keyfile.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {keyfile}: {exc.strerror}") from None
    with _holder(directory, who, hospital) as holder:
        answer = holder.client.post_json("/v1/trace", data)
    _print(answer)


def _as_patient(
    directory: Path, who: str | None, hospital: str | None, ask: Callable[[_Holder], Any]
) -> None:
    """Ask the hospital, as the patient, for something about themself; print it."""
    with _holder(directory, who, hospital) as holder:
        answer = ask(holder)
    _print(answer)


@app.command()
def share(
    directory: WalletDir,
    to: Annotated[str, typer.Option(help="Who receives the share (an enrolled identity).")],
    out: Annotated[Path, typer.Option(help="Write the share key file here, for the grantee.")],
    record: Annotated[list[str] | None, typer.Option(help="A record id (repeatable).")] = None,
    dept: Annotated[str | None, typer.Option(help="A department code (with its sub-tree).")] = None,
    all_records: Annotated[bool, typer.Option("--all", help="Everything.")] = False,
    until: Annotated[str | None, typer.Option(help="Last valid day (ISO date/time).")] = None,
    hospital: Hospital = None,
) -> None:
    """Share records, a department or everything: the key is made here from your seed
    and written to --out for the grantee; the hospital gets only the signed grant."""
    from medshare.wallet import device

    until_ms = parse_until(until)
    with _holder(directory, None, hospital) as holder:
        made, answer = device.share(
            _personal_wallet(holder),
            holder.client,
            to,
            records=record or (),
            dept=dept,
            everything=all_records,
            until_ms=until_ms,
            now_ms=int(time.time() * 1000),
        )
    from medshare.fileio import write_file

    write_file(out, made.to_bytes(), secret=True)
    _print({**answer, "keys": len(made.keys), "bytes": made.size_bytes, "out": str(out)})


@app.command()
def revoke(
    directory: WalletDir,
    grant: Annotated[str, typer.Argument(help="The grant (share) id to revoke.")],
    reason: Annotated[str, typer.Option(help="Why (kept in your log).")] = "revoked by the patient",
    hospital: Hospital = None,
) -> None:
    """Revoke a share you gave: signed here; the hospital moves the records it covered to
    fresh slots, so the revoked key opens nothing stored or added later."""
    from medshare.wallet import device

    with _holder(directory, None, hospital) as holder:
        answer = device.revoke(_personal_wallet(holder), holder.client, grant, reason)
    _print(answer)


@app.command()
def export(
    directory: WalletDir,
    out: Annotated[Path, typer.Option(help="NDJSON file to write.")],
    hospital: Hospital = None,
) -> None:
    """All your records at this hospital, decrypted here with your seed, as NDJSON (in the
    order the hospital received them); exits 3 if some still wait for a block key."""
    from medshare.fileio import write_file
    from medshare.wallet import device

    with _holder(directory, None, hospital) as holder:
        opened, pending = device.export(_personal_wallet(holder), holder.client)
    from medshare.records.canonical import on_one_line

    write_file(out, b"".join(on_one_line(data) + b"\n" for data in opened), secret=True)
    _print({"out": str(out), "records": len(opened), "pending": pending})
    if pending:
        raise typer.Exit(3)


@app.command()
def sync(directory: WalletDir, hospital: Hospital = None) -> None:
    """Publish the block keys your hospital waits for (and spare ones): records ingested
    since are sealed to your seed's keys."""
    from medshare.wallet import device

    with _holder(directory, None, hospital) as holder:
        answer = device.sync_blocks(_personal_wallet(holder), holder.client)
    _print(answer)


@app.command()
def backup(
    directory: WalletDir,
    threshold: Annotated[int, typer.Option(help="Shares needed to restore.")] = 2,
    shares: Annotated[int, typer.Option(help="Shares to make (one per trusted contact).")] = 3,
) -> None:
    """SLIP-39 recovery shares of your seed (JSON): any --threshold of them restore your
    whole wallet on a new device. Give each to a different person; keep none together."""
    from medshare.wallet import device

    with _holder(directory, None, None) as holder:
        words = device.backup(_personal_wallet(holder), threshold, shares)
    _print({"identity": holder.identity, "threshold": threshold, "shares": words})


@app.command()
def restore(
    directory: WalletDir,
    hospital: Annotated[str, typer.Option("--hospital", help="Your hospital's server URL.")],
    patient: Annotated[str, typer.Option(help="Your patient id.")],
    shares: Annotated[Path, typer.Option(help="A file with one SLIP-39 share per line.")],
) -> None:
    """Rebuild your wallet on this device from recovery shares; refused (nothing written)
    unless the key they rebuild is the one your hospital knows as you."""
    from medshare.wallet import device

    try:
        lines = [line.strip() for line in shares.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {shares}: {exc}") from None
    with service_errors():
        answer = device.restore(directory, hospital, patient, lines)
    _print(answer)


@app.command()
def issue(
    directory: WalletDir,
    authority: Annotated[str, typer.Option(help="The authority (hospital code) to ask.")],
    who: Holder = None,
    hospital: Hospital = None,
) -> None:
    """Obtain a CP-ABE key from an authority: the two-party protocol runs here (your
    secret never leaves this machine), the key is kept in this wallet, and its tag is
    registered on the ledger with your identity key."""
    from medshare.wallet.keys import obtain_key

    with _holder(directory, who, hospital) as holder:
        key = holder.keys.identity(holder.identity)
        got = obtain_key(holder.client, holder.identity, key, authority)
        holder.keys.save_abe_key(holder.identity, authority, got.key)
    _print(
        {
            "holder": holder.identity,
            "authority": authority,
            "attributes": sorted(got.key.components),
            "tag": got.key.tag().hex(),
            "tag_txid": got.tag_txid,
        }
    )
