"""The records commands: ``init ingest patients export share read log verify trace`` (and
``refer study consent revoke consents``), thin wrappers over :mod:`medshare.service.api`.

Output that a script reads (JSON, FHIR, NDJSON) goes to stdout; messages go to stderr.
Exit codes: 0 ok, 1 not allowed (access denied, not found for the caller), 2 bad input,
3 integrity failure (``verify`` found a problem, a record did not match the ledger).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from sqlalchemy.exc import SQLAlchemyError

from medshare.cli.errors import EXIT_BAD_INPUT, EXIT_DENIED, fail, user_errors
from medshare.crypto import hkac
from medshare.crypto.errors import CryptoError
from medshare.fileio import write_file
from medshare.ledger.port import LedgerUnavailable, TxRejected
from medshare.service.areas import Area, parse_area
from medshare.service.config import ConfigError, ServiceConfig
from medshare.service.errors import AccessDenied, IntegrityError, NotFound, ServiceError
from medshare.service.wallets import WalletError

if TYPE_CHECKING:
    from medshare.service.api import MedShare

EXIT_INTEGRITY = 3

DataDir = Annotated[Path, typer.Option("--data-dir", help="The consortium's data directory.")]
Patient = Annotated[str, typer.Option("--patient", help="Patient id (see `medshare patients`).")]


@contextlib.contextmanager
def service_errors() -> Iterator[None]:
    """Service failures as one clear line and an exit code; nothing half-done is kept."""
    try:
        with user_errors():
            yield
    except AccessDenied as exc:
        raise fail(f"not allowed: {exc}", EXIT_DENIED) from None
    except NotFound as exc:
        raise fail(str(exc), EXIT_DENIED) from None
    except IntegrityError as exc:
        raise fail(f"integrity check failed: {exc}", EXIT_INTEGRITY) from None
    except (ServiceError, ConfigError, WalletError, LedgerUnavailable, TxRejected) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    except SQLAlchemyError as exc:  # e.g. PostgreSQL down, or a value it refuses
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise fail(f"database error (nothing was changed): {first}", EXIT_BAD_INPUT) from None


@contextlib.contextmanager
def opened(data_dir: Path) -> Iterator[MedShare]:
    from medshare.service.api import MedShare  # imported when a records command runs

    with service_errors(), MedShare.open(data_dir, notice=_notice) as service:
        yield service


def _notice(message: str) -> None:
    typer.echo(f"· {message}", err=True)


def _print_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))


def parse_until(value: str | None) -> int | None:
    """``--until``: an ISO date (valid through that day, UTC) or an ISO date-time."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value) + timedelta(days=1)
            moment = datetime.combine(day, time(0), tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except ValueError:
        raise fail(f"--until {value!r} is not an ISO date (2026-12-31) or date-time") from None
    return int(moment.timestamp() * 1000)


def register(app: typer.Typer) -> None:
    """Add the records commands to the top-level app."""
    for command in (init, ingest, patients, export, share, read, log, verify, trace):
        app.command(command.__name__)(command)
    for command in (refer, study, consent, revoke, consents, alerts, departments, delete):
        app.command(command.__name__)(command)
    recovery = typer.Typer(help="Back up and restore a patient's seed with Shamir shares.")
    recovery.command("split")(recovery_split)
    recovery.command("restore")(recovery_restore)
    app.add_typer(recovery, name="recovery")


def init(
    data_dir: DataDir,
    hospitals: Annotated[int, typer.Option(help="Member hospitals (H001, H002, …).")] = 3,
    nodes: Annotated[int, typer.Option(help="Ledger nodes.")] = 7,
    committee: Annotated[int, typer.Option(help="Elected committee size m = 3f+1.")] = 4,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in the data dir).")
    ] = None,
    ledger: Annotated[
        str,
        typer.Option(
            help="cometbft: node processes on 127.0.0.1 that keep running (stop them with "
            "`medshare net down --dir DATA_DIR/ledger`); inprocess: the ledger application "
            "in each command's process, no consensus (tests, offline use)."
        ),
    ] = "cometbft",
    patient_keys: Annotated[
        str,
        typer.Option(
            help="custodial: a patient first seen at ingest gets a seed kept in this "
            "directory (the single-machine harness); device: nobody here holds it — the "
            "patient's records wait until their own wallet enrols (`hospital enrol`, "
            "`wallet new`)."
        ),
    ] = "custodial",
) -> None:
    """Create a consortium: authorities, staff keys, ledger nodes, storage."""
    from medshare.service.consortium import init as make

    if not 1 <= hospitals <= 99:
        raise fail("--hospitals must be between 1 and 99")
    codes = tuple(f"H{i + 1:03d}" for i in range(hospitals))
    with service_errors():
        config = ServiceConfig(
            data_dir=data_dir,
            hospitals=codes,
            nodes=nodes,
            committee=committee,
            replication=min(2, hospitals),
            database_url=database_url,
            ledger=ledger,
            patient_keys=patient_keys,
        )
        with make(config, progress=_notice) as service:
            doc: dict[str, Any] = {
                "data_dir": str(data_dir),
                "hospitals": list(codes),
                "ledger": {"kind": config.ledger, "dir": str(config.ledger_dir)},
                "nodes": list(service.ledger.node_names),  # H001-a, …, regulator
                "committee": list(service.ledger.committee()),
                "people": service.people(),
            }
            if config.ledger == "cometbft":
                rpc = [n.rpc for n in service.ledger.network.nodes]  # type: ignore[attr-defined]
                doc["ledger"]["rpc"] = rpc
            _print_json(doc)


def ingest(
    data_dir: DataDir,
    hospital: Annotated[str, typer.Option(help="The hospital the records come from.")],
    files: Annotated[list[Path], typer.Argument(help="FHIR Bundles, NDJSON or resources.")],
) -> None:
    """Ingest FHIR R4: validate, classify, encrypt, replicate and anchor every record."""
    with opened(data_dir) as service:
        report = service.ingest(hospital, files)
    _print_json(report.as_dict())


def patients(data_dir: DataDir) -> None:
    """List patients with their record counts."""
    with opened(data_dir) as service:
        _print_json(service.patients())


def export(
    data_dir: DataDir,
    patient: Patient,
    out: Annotated[Path, typer.Option(help="Where to write the NDJSON.")],
) -> None:
    """Export a patient's records as NDJSON, decrypted with the patient's own keys."""
    with opened(data_dir) as service:
        data = service.export(patient)
        write_file(out, data, secret=True)
    count = len(data.splitlines())
    typer.echo(f"wrote {count} records to {out}", err=True)


def share(
    data_dir: DataDir,
    patient: Patient,
    to: Annotated[str, typer.Option("--to", help="Who receives the share.")],
    out: Annotated[Path, typer.Option(help="Where to write the share key file.")],
    record: Annotated[list[str] | None, typer.Option(help="A record id (repeatable).")] = None,
    dept: Annotated[str | None, typer.Option(help="A department code, with sub-tree.")] = None,
    all_records: Annotated[bool, typer.Option("--all", help="Every record.")] = False,
    until: Annotated[str | None, typer.Option(help="Last valid day (ISO date/time).")] = None,
) -> None:
    """As the patient, share records, a department or everything with one small key."""
    until_ms = parse_until(until)
    with opened(data_dir) as service:
        result = service.share(
            patient, to, records=record or (), dept=dept, everything=all_records, until_ms=until_ms
        )
        write_file(out, result.to_bytes(), secret=True)
    summary = {
        "share": result.share_id,
        "to": to,
        "scope": result.scope_kind,
        "keys": len(result.keys),
        "key_bytes": result.size_bytes,
        "out": str(out),
    }
    typer.echo(json.dumps(summary), err=True)


def read(
    data_dir: DataDir,
    who: Annotated[str, typer.Option("--as", help="Who is reading.")],
    record: Annotated[str, typer.Option(help="The record id.")],
    key: Annotated[Path | None, typer.Option(help="A share key file (personal area).")] = None,
    area: Annotated[str | None, typer.Option(help="Access area (default: personal).")] = None,
    reason: Annotated[str | None, typer.Option(help="Break-glass reason (emergency).")] = None,
) -> None:
    """Read one record through an access area; prints the FHIR resource, or exits 1."""
    share_obj = None
    with service_errors():
        chosen = parse_area(area) if area else Area.PERSONAL
    if key is not None:
        with service_errors():
            try:
                share_obj = hkac.Share.from_bytes(key.read_bytes())
            except (CryptoError, ValueError) as exc:
                raise fail(f"{key} is not a share key file: {exc}") from None
    with opened(data_dir) as service:
        result = service.read(who, record, area=chosen, share=share_obj, reason=reason)
    sys.stdout.write(json.dumps(json.loads(result.resource), indent=2, ensure_ascii=False))
    sys.stdout.write("\n")


def log(data_dir: DataDir, patient: Patient) -> None:
    """The patient's access log: a FHIR R4 Bundle of AuditEvents, from the ledger."""
    with opened(data_dir) as service:
        _print_json(service.log(patient))


def consents(data_dir: DataDir, patient: Patient) -> None:
    """The patient's grants as FHIR R4 Consent resources."""
    with opened(data_dir) as service:
        _print_json(service.consents(patient))


def alerts(data_dir: DataDir, patient: Patient) -> None:
    """The patient's break-glass alerts (who read in an emergency, when and why)."""
    with opened(data_dir) as service:
        _print_json(service.alerts(patient))


def verify(
    data_dir: DataDir,
    record: Annotated[str | None, typer.Option(help="Check only this record.")] = None,
) -> None:
    """Re-verify the ledger from genesis on every running node and every record against it;
    exit 3 on a problem."""
    with opened(data_dir) as service:
        report = service.verify(record)
    _print_json(report)
    if not report["ok"]:
        raise typer.Exit(EXIT_INTEGRITY)


def trace(
    data_dir: DataDir,
    keyfile: Annotated[Path, typer.Argument(help="A leaked CP-ABE key file.")],
) -> None:
    """Trace a leaked key: verdict JSON, recorded on the ledger; a guilty key is revoked."""
    with service_errors():
        data = keyfile.read_bytes()
    with opened(data_dir) as service:
        _print_json(service.trace(data))


def refer(
    data_dir: DataDir,
    patient: Patient,
    hospital: Annotated[str, typer.Option(help="The referring hospital.")],
    to: Annotated[str, typer.Option("--to", help="A partner hospital's physician.")],
    dept: Annotated[str | None, typer.Option(help="Limit to a department sub-tree.")] = None,
    until: Annotated[str | None, typer.Option(help="Last valid day (ISO date/time).")] = None,
) -> None:
    """Refer a patient to a partner physician (collaboration area, with expiry)."""
    until_ms = parse_until(until)
    with opened(data_dir) as service:
        referral = service.refer(patient, hospital, to, dept=dept, until_ms=until_ms)
    _print_json({"referral": referral})


def study(
    data_dir: DataDir,
    study_id: Annotated[str, typer.Option("--id", help="Study id (the ethics approval).")],
    hospital: Annotated[str, typer.Option(help="The approving hospital.")],
    researcher: Annotated[str, typer.Option(help="The approved researcher.")],
) -> None:
    """Record an ethics approval: the researcher gets the study's attribute."""
    with opened(data_dir) as service:
        service.approve_study(study_id, hospital, researcher)
    _print_json({"study": study_id, "researcher": researcher})


def consent(
    data_dir: DataDir,
    patient: Patient,
    study_id: Annotated[str, typer.Option("--study", help="The study consented to.")],
) -> None:
    """As the patient, consent to a study: de-identified copies are made for it."""
    with opened(data_dir) as service:
        made = service.consent_research(patient, study_id)
    _print_json({"study": study_id, "patient": patient, "derivatives": made})


def revoke(
    data_dir: DataDir,
    grant: Annotated[
        str, typer.Option(help="The grant (share id, referral, consent, study/<id>).")
    ],
) -> None:
    """Revoke a grant; a share's records move to fresh slots so its key opens nothing."""
    with opened(data_dir) as service:
        _print_json(service.revoke(grant))


def delete(
    data_dir: DataDir,
    record: Annotated[str, typer.Option(help="The record to delete.")],
    reason: Annotated[str, typer.Option(help="Why (kept on the ledger).")] = "deletion requested",
) -> None:
    """Crypto-shred a record: its key wraps are destroyed, its ledger digest stays."""
    with opened(data_dir) as service:
        txid = service.shred(record, reason=reason)
    _print_json({"record": record, "deleted": True, "txid": txid})


def departments(
    data_dir: DataDir,
    add: Annotated[str | None, typer.Option(help="Add a sub-department with this code.")] = None,
    parent: Annotated[str | None, typer.Option(help="Its parent department code.")] = None,
    name_en: Annotated[str | None, typer.Option(help="English name.")] = None,
    name_zh: Annotated[str | None, typer.Option(help="Chinese name.")] = None,
) -> None:
    """List the department catalogue, or add a hospital's sub-department to it."""
    with opened(data_dir) as service:
        if add is not None:
            if not (parent and name_en):
                raise fail("--add needs --parent and --name-en (and ideally --name-zh)")
            service.add_department(add, parent, name_zh or name_en, name_en)
        _print_json(service.departments())


def recovery_split(
    data_dir: DataDir,
    patient: Patient,
    threshold: Annotated[int, typer.Option(help="Shares needed to restore.")] = 2,
    shares: Annotated[int, typer.Option(help="Shares to make (one per trusted contact).")] = 3,
) -> None:
    """Print SLIP-39 mnemonics of the patient's seed, one per line (give one to each contact)."""
    with opened(data_dir) as service:
        words = service.recovery_split(patient, threshold, shares)
    typer.echo("\n".join(words))


def recovery_restore(
    data_dir: DataDir,
    patient: Patient,
    share_file: Annotated[
        Path, typer.Option("--shares", help="A file with one mnemonic per line.")
    ],
) -> None:
    """Rebuild the patient's seed from enough shares; checked against their published keys."""
    with service_errors():
        lines = [ln.strip() for ln in share_file.read_text().splitlines() if ln.strip()]
    with opened(data_dir) as service:
        _print_json(service.recovery_restore(patient, lines))


__all__ = ["EXIT_BAD_INPUT", "register"]
