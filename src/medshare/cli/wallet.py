"""``medshare wallet …``: the holder's side, on the holder's own machine.

Every request to a hospital is signed with the holder's identity key, and every record
is decrypted here with the holder's own key; the hospital sends only ciphertext. Today a
wallet is a folder of ``Wallets`` (``--dir``, e.g. ``<data-dir>/wallets``) and ``--as``
names the holder in it; a wallet of its own per holder (``wallet new``) is to come
(issue 13).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from medshare.cli.errors import fail
from medshare.cli.records import service_errors
from medshare.crypto import abe, hkac
from medshare.crypto.errors import CryptoError

app = typer.Typer(
    help="The holder's wallet: signed requests, decryption here.", no_args_is_help=True
)

WalletDir = Annotated[Path, typer.Option("--dir", help="The wallet folder.")]
Holder = Annotated[str, typer.Option("--as", help="Whose wallet: the holder's identity.")]
Hospital = Annotated[str, typer.Option("--hospital", help="The hospital server's URL.")]


@app.command()
def read(
    directory: WalletDir,
    who: Holder,
    hospital: Hospital,
    record: Annotated[str, typer.Option(help="The record id.")],
    area: Annotated[str, typer.Option(help="Access area.")] = "institution",
    key: Annotated[Path | None, typer.Option(help="A share key file (personal area).")] = None,
    reason: Annotated[str | None, typer.Option(help="Break-glass reason (emergency).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the record here.")] = None,
) -> None:
    """Fetch a record sealed for this wallet's key and decrypt it here; exits 1 if the
    hospital refuses (the refusal is logged on the ledger)."""
    from medshare.api.sealed_record import open_sealed
    from medshare.service.wallets import Wallets
    from medshare.wallet.client import HospitalClient

    share = None
    if key is not None:
        try:
            share = hkac.Share.from_bytes(key.read_bytes())
        except (OSError, CryptoError, ValueError) as exc:
            raise fail(f"{key} is not a share key file: {exc}") from None
    with service_errors():
        wallets = Wallets(directory)
        identity = wallets.identity(who)
        with HospitalClient(hospital, who, identity) as client:
            sealed = client.sealed_record(
                record,
                area=area,
                share_id=share.share_id if share is not None else None,
                reason=reason,
            )
            if sealed.seal is None:
                data = open_sealed(sealed, params=client.kac_params(), share=share)
            else:
                authority = sealed.seal.authority
                keys = [
                    abe.AbeUserKey.from_bytes(path.read_bytes())
                    for path in wallets.abe_key_files(who, authority)
                ]
                public = client.authority_public(authority)
                data = open_sealed(sealed, abe_keys=keys, authority_public=public)
    if out is not None:
        out.write_bytes(data)
        typer.echo(json.dumps({"record": record, "out": str(out), "txid": sealed.txid}), err=True)
        return
    sys.stdout.write(json.dumps(json.loads(data), indent=2, ensure_ascii=False) + "\n")


def _patient_of(who: str) -> str:
    prefix = "patient:"
    if not who.startswith(prefix) or len(who) == len(prefix):
        raise fail(f"--as must be a patient's identity (patient:<id>), not {who!r}")
    return who[len(prefix) :]


@app.command()
def records(directory: WalletDir, who: Holder, hospital: Hospital) -> None:
    """The patient's own records at this hospital (JSON list)."""
    _as_patient(directory, who, hospital, lambda client, patient: client.patient_records(patient))


@app.command()
def log(directory: WalletDir, who: Holder, hospital: Hospital) -> None:
    """The patient's access log: a FHIR R4 Bundle of AuditEvents, from the ledger."""
    _as_patient(directory, who, hospital, lambda client, patient: client.patient_log(patient))


def _as_patient(directory: Path, who: str, hospital: str, ask: Callable[..., Any]) -> None:
    """Ask the hospital, as patient ``who``, for something about themself; print it."""
    from medshare.service.wallets import Wallets
    from medshare.wallet.client import HospitalClient

    patient = _patient_of(who)
    with service_errors():
        identity = Wallets(directory).identity(who)
        with HospitalClient(hospital, who, identity) as client:
            answer = ask(client, patient)
    typer.echo(json.dumps(answer, indent=2, ensure_ascii=False))


@app.command()
def issue(
    directory: WalletDir,
    who: Holder,
    hospital: Hospital,
    authority: Annotated[str, typer.Option(help="The authority (hospital code) to ask.")],
) -> None:
    """Obtain a CP-ABE key from an authority: the two-party protocol runs here (your
    secret never leaves this machine), the key is kept in this wallet, and its tag is
    registered on the ledger with your identity key."""
    from medshare.service.wallets import Wallets
    from medshare.wallet.client import HospitalClient
    from medshare.wallet.keys import obtain_key

    with service_errors():
        wallets = Wallets(directory)
        identity = wallets.identity(who)
        with HospitalClient(hospital, who, identity) as client:
            got = obtain_key(client, who, identity, authority)
        wallets.save_abe_key(who, authority, got.key)
    summary = {
        "holder": who,
        "authority": authority,
        "attributes": sorted(got.key.components),
        "tag": got.key.tag().hex(),
        "tag_txid": got.tag_txid,
    }
    typer.echo(json.dumps(summary, indent=2))
