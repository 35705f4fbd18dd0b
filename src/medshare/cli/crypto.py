"""``medshare crypto …``: the CP-ABE and KAC schemes on files, for users and for checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medshare.cli.errors import EXIT_BAD_INPUT, fail, user_errors
from medshare.cli.files import read_file, write_file
from medshare.crypto import abe, encoding, issuance, kac, signing
from medshare.crypto.errors import CryptoError, InvalidEncoding

app = typer.Typer(
    help="Traceable CP-ABE and key-aggregate encryption on files.", no_args_is_help=True
)

PUBLIC = "public.json"
MASTER = "master.json"
REGISTRY = "registry.json"

InFile = Annotated[Path, typer.Option("--in", help="Input file.")]
OutFile = Annotated[Path, typer.Option("--out", help="Output file.")]


def _checked_public(public: abe.AbePublicKey, path: Path) -> abe.AbePublicKey:
    """``public`` itself if ``AbePublicKey.check`` passes (G1 and G2 copies agree), else exit 2."""
    try:
        public.check()
    except CryptoError as exc:
        raise fail(
            f"{path}: not a well-formed ABE public key ({exc}); refusing to use it"
        ) from None
    return public


def _load_public(path: Path) -> abe.AbePublicKey:
    """An authority's ABE public key from PATH, decoded and checked before any use."""
    return _checked_public(abe.AbePublicKey.from_bytes(read_file(path)), path)


def _load_params(path: Path) -> kac.KacParams:
    """KAC parameters from PATH, decoded and verified (``KacParams.verify``) before any use:
    a file carrying g_{n+1} or swapped powers would let anyone open every class."""
    params = kac.KacParams.from_bytes(read_file(path))
    try:
        params.verify()
    except CryptoError as exc:
        raise fail(
            f"{path}: not well-formed KAC parameters ({exc}); refusing to use them"
        ) from None
    return params


def _load_authority(directory: Path) -> tuple[issuance.AuthorityKeys, list[abe.Registration]]:
    keys = issuance.AuthorityKeys.from_bytes(read_file(directory / MASTER))
    _checked_public(keys.master.public, directory / MASTER)
    registry = abe.registry_from_bytes(read_file(directory / REGISTRY))
    return keys, registry


@app.command("abe-setup")
def abe_setup(
    out: Annotated[Path, typer.Option("--out", help="Authority directory to create.")],
    force: Annotated[bool, typer.Option(help="Overwrite an existing authority.")] = False,
) -> None:
    """Create an attribute authority: public key, master key (0600) and an empty key registry."""
    with user_errors():
        if (out / MASTER).exists() and not force:
            raise FileExistsError(0, "exists", str(out / MASTER))
        keys = issuance.AuthorityKeys.generate()
        write_file(out / MASTER, keys.to_bytes(), secret=True)
        write_file(out / PUBLIC, keys.master.public.to_bytes())
        write_file(out / REGISTRY, abe.registry_to_bytes([]))
    typer.echo(f"authority created in {out} (master key {out / MASTER} is secret, mode 0600)")


@app.command("abe-keygen")
def abe_keygen(
    authority: Annotated[Path, typer.Option(help="Authority directory (from abe-setup).")],
    id: Annotated[str, typer.Option("--id", help="Identity of the key holder.")],
    attrs: Annotated[str, typer.Option(help='Comma-separated attributes, e.g. "a,b,c".')],
    out: OutFile,
    identity_key: Annotated[
        Path | None,
        typer.Option(help="The holder's Ed25519 identity key (default: new, saved beside OUT)."),
    ] = None,
) -> None:
    """Issue a key by running both sides of the accountable two-party issuance."""
    with user_errors():
        attributes = [a.strip() for a in attrs.split(",") if a.strip()]
        if not attributes:
            raise ValueError("--attrs names no attribute")
        keys, registry = _load_authority(authority)
        if identity_key is None:
            holder = signing.SigningKey.generate()
            identity_key = out.with_name(out.name.removesuffix(".json") + ".identity.json")
            write_file(identity_key, _identity_doc(holder), secret=True)
        else:
            holder = _load_identity(identity_key)
        issuer = issuance.IssuanceAuthority(keys)
        key, registration = issuance.issue_key(
            issuer, keys.master.public, id, attributes, identity_key=holder
        )
        write_file(out, key.to_bytes(), secret=True)
        write_file(authority / REGISTRY, abe.registry_to_bytes([*registry, registration]))
    typer.echo(f"key for {id} with {len(attributes)} attribute(s) written to {out}")


def _identity_doc(key: signing.SigningKey) -> bytes:
    return encoding.dumps("identity-key", 1, {"seed": key.seed.hex(), "public": key.public.hex()})


def _load_identity(path: Path) -> signing.SigningKey:
    doc = encoding.loads(read_file(path), "identity-key")
    return signing.SigningKey(encoding.field(doc, "seed", bytes.fromhex))


def _load_identities(path: Path) -> dict[str, bytes]:
    try:
        doc = json.loads(read_file(path))
        return {str(name): bytes.fromhex(str(public)) for name, public in doc.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, ValueError, RecursionError):
        # RecursionError: arrays nested past the parser's limit (issue 12, fuzzing)
        raise fail(f'{path} must be a JSON object {{"identity": "hex Ed25519 key"}}') from None


@app.command("abe-encrypt")
def abe_encrypt(
    public: Annotated[Path, typer.Option(help="The authority's public.json.")],
    policy: Annotated[str, typer.Option(help='Policy, e.g. "dept:0304 and 2 of (a, b, c)".')],
    in_: InFile,
    out: OutFile,
) -> None:
    """Encrypt a file so that only keys whose attributes satisfy the policy can open it."""
    with user_errors():
        pk = _load_public(public)
        ct = abe.encrypt(pk, policy, read_file(in_))
        write_file(out, ct.to_bytes())
    typer.echo(f"encrypted {in_} under {ct.policy} to {out}")


@app.command("abe-decrypt")
def abe_decrypt(
    public: Annotated[Path, typer.Option(help="The authority's public.json.")],
    key: Annotated[Path, typer.Option(help="Your key file.")],
    in_: InFile,
    out: OutFile,
) -> None:
    """Decrypt a file; exits 1 with a clear message if the key is not allowed to."""
    with user_errors():
        pk = _load_public(public)
        user_key = abe.AbeUserKey.from_bytes(read_file(key))
        ct = abe.AbeCiphertext.from_bytes(read_file(in_))
        write_file(out, abe.decrypt(pk, user_key, ct))
    typer.echo(f"decrypted {in_} to {out}")


@app.command("abe-trace")
def abe_trace(
    authority: Annotated[Path, typer.Option(help="Authority directory (public key and registry).")],
    key: Annotated[Path, typer.Option(help="The leaked key file.")],
    identities: Annotated[
        Path | None,
        typer.Option(
            help='JSON {"identity": "hex Ed25519 key"} from a source the authority '
            "does not control (e.g. the ledger); rows signed by other keys blame it."
        ),
    ] = None,
) -> None:
    """Trace a leaked key; prints {"verdict": user|authority|malformed, "identity", "reason"}."""
    with user_errors():
        pk = _load_public(authority / PUBLIC)
        registry = abe.registry_from_bytes(read_file(authority / REGISTRY))
        trusted = None if identities is None else _load_identities(identities)
        data = read_file(key)
    try:
        leaked = abe.AbeUserKey.from_bytes(data)
    except InvalidEncoding as exc:
        result = abe.AuditResult(abe.Verdict.MALFORMED, None, f"not a well-formed key: {exc}")
    else:
        result = abe.audit(pk, leaked, registry, trusted)
    typer.echo(json.dumps(result.as_dict()))


def _classes(text: str) -> list[int]:
    try:
        classes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise fail(f'--classes must be comma-separated class numbers, got "{text}"') from None
    if not classes:
        raise fail("--classes names no class", EXIT_BAD_INPUT)
    return classes


@app.command("kac-setup")
def kac_setup(
    classes: Annotated[int, typer.Option("--classes", help="Number of classes n.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for params.json.")],
) -> None:
    """Generate public KAC parameters for n classes (α is used once and discarded)."""
    with user_errors():
        params = kac.setup(classes)
        write_file(out / "params.json", params.to_bytes())
    typer.echo(f"parameters for {classes} classes written to {out / 'params.json'}")


@app.command("kac-keygen")
def kac_keygen(
    params: Annotated[Path, typer.Option(help="params.json")],
    out: Annotated[Path, typer.Option("--out", help="Patient secret key file (0600).")],
) -> None:
    """Create a patient key pair: OUT (secret) and OUT with .pub.json (public)."""
    with user_errors():
        kp = _load_params(params)
        secret = kac.keygen(kp)
        pub_path = out.with_name(out.name.removesuffix(".json") + ".pub.json")
        write_file(out, secret.to_bytes(), secret=True)
        write_file(pub_path, secret.public.to_bytes())
    typer.echo(f"patient key written to {out}, public key to {pub_path}")


@app.command("kac-encrypt")
def kac_encrypt(
    params: Annotated[Path, typer.Option(help="params.json")],
    patient: Annotated[Path, typer.Option(help="The patient's public key (.pub.json).")],
    class_: Annotated[int, typer.Option("--class", help="Class index 1..n.")],
    in_: InFile,
    out: OutFile,
) -> None:
    """Encrypt a file to one class of a patient."""
    with user_errors():
        kp = _load_params(params)
        public = kac.KacPatientPublic.from_bytes(read_file(patient))
        write_file(out, kac.encrypt(kp, public, class_, read_file(in_)).to_bytes())
    typer.echo(f"encrypted {in_} to class {class_} in {out}")


@app.command("kac-extract")
def kac_extract(
    params: Annotated[Path, typer.Option(help="params.json")],
    patient: Annotated[Path, typer.Option(help="The patient's secret key file.")],
    classes: Annotated[str, typer.Option(help='Comma-separated classes, e.g. "1,5,9".')],
    out: OutFile,
) -> None:
    """Extract one constant-size aggregate key that opens every class in the set."""
    with user_errors():
        kp = _load_params(params)
        secret = kac.KacPatientSecret.from_bytes(read_file(patient))
        key = kac.extract(kp, secret, _classes(classes))
        write_file(out, key.to_bytes(), secret=True)
    typer.echo(f"aggregate key for {len(key.classes)} class(es) written to {out}")


@app.command("kac-decrypt")
def kac_decrypt(
    params: Annotated[Path, typer.Option(help="params.json")],
    key: Annotated[Path, typer.Option(help="Aggregate key file.")],
    in_: InFile,
    out: OutFile,
) -> None:
    """Decrypt a file; exits 1 if its class is not in the key."""
    with user_errors():
        kp = _load_params(params)
        agg = kac.AggregateKey.from_bytes(read_file(key))
        ct = kac.KacCiphertext.from_bytes(read_file(in_))
        write_file(out, kac.decrypt(kp, agg, ct))
    typer.echo(f"decrypted {in_} to {out}")
