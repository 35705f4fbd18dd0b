"""Service configuration: one JSON file per data directory, read once, passed explicitly.

Nothing here is secret (key material lives in :mod:`medshare.service.wallets`), except a
database URL with a password, for which the file is written 0600. The database is
SQLite inside the data directory unless ``database_url`` names another SQLAlchemy URL
(``postgresql+psycopg://…``), which is how a hospital points the service at PostgreSQL.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medshare.fileio import write_file

CONFIG_FILE = "medshare.json"
CONFIG_VERSION = 1
LEDGER_KINDS = ("cometbft", "inprocess")


class ConfigError(ValueError):
    """A data directory without a usable configuration."""


PATIENT_KEYS = ("custodial", "device")


@dataclass(frozen=True)
class ServiceConfig:
    """What a consortium is made of and how the service stores things.

    ``hospitals`` are the codes of the member hospitals (each runs an attribute authority,
    holds blob replicas and runs at least one ledger node); ``nodes`` is the number of
    ledger nodes spread over them (the last one a regulator's when there are more nodes
    than hospitals); ``committee`` is the elected committee size m = 3f+1; ``ledger`` is
    the kind of ledger (:mod:`medshare.service.ledgers`: ``cometbft`` node processes or the
    ``inprocess`` harness); ``replication`` is how many hospitals keep a copy of
    every encrypted blob; ``kac_classes`` is the KAC parameter size n (classes per block);
    ``slab_size`` is the classes a department reserves at a time; ``policy_templates``
    overrides the CP-ABE areas' policy templates (:class:`~medshare.service.areas.AreaTemplates`,
    e.g. ``{"institution": "hospital:{hospital} and dept:{dept} and role:physician and
    epoch:{epoch}"}``); ``patient_keys`` says where a patient first seen at ingest gets
    their seed: ``device`` (nowhere here: their records wait, sealed to no block, until
    the patient's own wallet enrols and publishes its block keys) or ``custodial`` (made
    and kept in this directory's ``wallets/``, the single-directory harness).

    ``local`` is the hospital this directory *is* when each hospital has its own
    (``medshare consortium up`` / ``hospital init``): its own database, blob replica,
    authority and ledger node, the other members reached at their ``peers`` URLs (code →
    API base URL) for blob replication. ``None`` is the single-directory consortium (every
    hospital's state in one place: the test harness and ``medshare init``). ``api_url`` is
    where this hospital's own server is reached (what it tells a hospital that joins).
    """

    data_dir: Path
    hospitals: tuple[str, ...] = ("H001", "H002", "H003")
    nodes: int = 7
    committee: int = 4
    replication: int = 2
    kac_classes: int = 256
    slab_size: int = 32
    database_url: str | None = None
    referral_days: int = 30
    break_glass_minutes: int = 60
    policy_templates: dict[str, str] = field(default_factory=dict)
    ledger: str = "inprocess"
    patient_keys: str = "custodial"
    local: str | None = None
    peers: dict[str, str] = field(default_factory=dict)
    api_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.hospitals:
            raise ConfigError("a consortium needs at least one hospital")
        if len(set(self.hospitals)) != len(self.hospitals):
            raise ConfigError(f"hospital codes must be unique: {list(self.hospitals)}")
        for code in self.hospitals:
            if not code.isascii() or not code.isalnum() or len(code) > 16:
                raise ConfigError(f"hospital code {code!r} must be 1-16 letters or digits")
            if code.casefold() == "regulator":
                # the regulator's node is labelled so; the chain would count the two
                # as one organisation (who may enrol whose names)
                raise ConfigError("hospital code 'regulator' is reserved for the regulator's node")
        if self.ledger not in LEDGER_KINDS:
            raise ConfigError(
                f"ledger must be one of {', '.join(LEDGER_KINDS)}, not {self.ledger!r}"
            )
        if self.nodes < len(self.hospitals):
            raise ConfigError(
                f"every hospital runs a ledger node: need nodes >= {len(self.hospitals)} "
                f"(the hospitals), got {self.nodes}"
            )
        if self.committee < 1 or self.nodes < self.committee:
            raise ConfigError(
                f"need 1 <= committee <= nodes, got committee {self.committee}, nodes {self.nodes}"
            )
        if not 1 <= self.replication <= len(self.hospitals):
            raise ConfigError(
                f"replication {self.replication} needs that many hospitals "
                f"(have {len(self.hospitals)})"
            )
        if self.patient_keys not in PATIENT_KEYS:
            raise ConfigError(f"patient_keys is one of {', '.join(PATIENT_KEYS)}")
        if self.local is not None:
            if self.local not in self.hospitals:
                raise ConfigError(f"local hospital {self.local!r} is not a member")
            if self.patient_keys != "device":
                raise ConfigError("a hospital's own directory never holds patients' seeds")
        unknown_peers = set(self.peers) - set(self.hospitals) | {self.local} & set(self.peers)
        if unknown_peers:
            raise ConfigError(f"peers must be other member hospitals: {sorted(unknown_peers)}")
        for url in self.peers.values():
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ConfigError(f"a peer's address is an http(s) URL, not {url!r}")
        if self.kac_classes % self.slab_size:
            raise ConfigError("slab_size must divide kac_classes")

    # -- derived paths -------------------------------------------------------------------

    @property
    def served(self) -> tuple[str, ...]:
        """The hospitals whose state this directory holds and whose server it serves."""
        return (self.local,) if self.local is not None else self.hospitals

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'medshare.db'}"

    @property
    def ledger_dir(self) -> Path:
        return self.data_dir / "ledger"

    def hospital_node(self, hospital: str) -> int:
        """The ledger node whose key a hospital's records service signs with (its first)."""
        if hospital not in self.hospitals:
            raise ConfigError(f"unknown hospital {hospital!r}; the consortium has {self.hospitals}")
        return self.hospitals.index(hospital)

    @property
    def wallet_dir(self) -> Path:
        return self.data_dir / "wallets"

    def replica_dir(self, hospital: str) -> Path:
        return self.data_dir / "blobs" / hospital

    @property
    def kac_params_file(self) -> Path:
        return self.data_dir / "kac-params.bin"

    # -- persistence ---------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("data_dir")
        doc["hospitals"] = list(self.hospitals)
        return {"version": CONFIG_VERSION, **doc}

    def save(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"
        # A database URL may carry a password: then the file is the operator's secret.
        secret = self.database_url is not None
        write_file(self.data_dir / CONFIG_FILE, text.encode("utf-8"), secret=secret)

    @classmethod
    def load(cls, data_dir: Path) -> ServiceConfig:
        path = data_dir / CONFIG_FILE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"{data_dir} is not a medshare data directory (no {CONFIG_FILE}); "
                f"run `medshare init --data-dir {data_dir}` first"
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        if not isinstance(doc, dict) or doc.get("version") != CONFIG_VERSION:
            raise ConfigError(f"{path}: unsupported configuration version")
        known = {f.name for f in fields(cls)} - {"data_dir"}
        unknown = set(doc) - known - {"version"}
        if unknown:
            raise ConfigError(f"{path}: unknown settings {sorted(unknown)}")
        values = {k: v for k, v in doc.items() if k in known}
        if "hospitals" in values:
            values["hospitals"] = tuple(values["hospitals"])
        try:
            return cls(data_dir=data_dir, **values)
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
