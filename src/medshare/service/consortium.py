"""``medshare init``: an embedded consortium in one data directory.

It makes, in order: the configuration file; the consortium's public KAC parameters (the
setup ceremony: ``α`` is discarded inside :func:`medshare.crypto.kac.setup`); per hospital
an attribute authority, a KEK seed and the identities of its records service and
authority; the ledger's nodes and genesis; the schema (Alembic); and the starting roster,
each member's CP-ABE keys issued through the accountable protocol and their key tags
registered on the ledger under their own identity keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from medshare.crypto import issuance, kac
from medshare.fileio import write_file
from medshare.ledger.embedded import EmbeddedLedger
from medshare.service import areas, db
from medshare.service.api import (
    Clock,
    MedShare,
    authority_principal,
    service_principal,
    wall_clock_ms,
)
from medshare.service.config import ConfigError, ServiceConfig
from medshare.service.roster import RESEARCHER, StaffMember, default_roster

Progress = Callable[[str], None]


def node_names(config: ServiceConfig) -> list[str]:
    """Ledger nodes spread over the hospitals (``H001-a``…), the last one a regulator's
    when there are more nodes than hospitals."""
    names = []
    count = len(config.hospitals)
    for i in range(config.nodes):
        if i == config.nodes - 1 and config.nodes > count:
            names.append("regulator")
        else:
            names.append(f"{config.hospitals[i % count]}-{chr(ord('a') + i // count)}")
    return names


def init(
    config: ServiceConfig,
    *,
    roster: tuple[StaffMember, ...] | None = None,
    clock: Clock = wall_clock_ms,
    progress: Progress | None = None,
) -> MedShare:
    """Create the consortium in ``config.data_dir`` (which must be new or empty)."""
    say = progress or (lambda _msg: None)
    data_dir = config.data_dir
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ConfigError(f"{data_dir} is not empty; choose a new directory")
    config.save()
    say("KAC parameters")
    write_file(config.kac_params_file, kac.setup(config.kac_classes).to_bytes())
    say("ledger nodes and genesis")
    ledger = EmbeddedLedger.create(
        config.ledger_dir, node_names(config), committee_size=config.committee
    )
    service = MedShare(config, ledger, clock=clock)
    try:
        say("hospitals and their authorities")
        for code in config.hospitals:
            _add_hospital(service, code)
        members = roster if roster is not None else default_roster(config.hospitals)
        say(f"{len(members)} staff keys (accountable issuance)")
        for member in members:
            add_staff(service, member)
        add_person(service, RESEARCHER, "researcher", None, ["researcher"])
    except BaseException:
        service.close()
        raise
    return service


def _add_hospital(service: MedShare, code: str) -> None:
    wallets = service.wallets
    authority = issuance.AuthorityKeys.generate()
    wallets.save_authority(code, authority)
    wallets.save_kek_seed(code, os.urandom(32))
    with db.transaction(service.sessions) as session:
        session.add(
            db.Hospital(
                code=code,
                name=f"Hospital {code}",
                abe_public=authority.master.public.to_bytes(),
                epoch=0,
                created_ms=service.clock(),
            )
        )
    add_person(service, service_principal(code), "service", code, ["records-service"])
    add_person(service, authority_principal(code), "authority", code, ["authority"])


def add_person(
    service: MedShare, who: str, kind: str, hospital: str | None, roles: list[str], dept=None
) -> None:
    """A principal with a fresh identity key in their wallet."""
    identity = service.wallets.create_identity(who)
    with db.transaction(service.sessions) as session:
        session.add(
            db.Principal(
                id=who,
                kind=kind,
                hospital=hospital,
                roles=roles,
                dept=dept,
                identity_public=identity.public,
                created_ms=service.clock(),
            )
        )


def add_staff(service: MedShare, member: StaffMember) -> None:
    """A clinician: identity, then keys: the own authority's institution key (or, for
    emergency staff, an emergency key from every consortium authority)."""
    add_person(service, member.id, "clinician", member.hospital, [member.role], member.dept)
    if member.role == "emergency":
        for code in service.config.hospitals:
            service.issue_key(member.id, code, areas.emergency_attributes(_epoch(service, code)))
    else:
        attrs = areas.staff_attributes(
            member.hospital, member.dept, member.role, _epoch(service, member.hospital)
        )
        service.issue_key(member.id, member.hospital, attrs)


def _epoch(service: MedShare, hospital: str) -> int:
    with service.sessions() as session:
        return session.get(db.Hospital, hospital).epoch


def open_or_init(data_dir: Path, **overrides) -> MedShare:
    """Open an existing data directory, or create one with ``overrides`` on the defaults."""
    try:
        return MedShare.open(data_dir)
    except ConfigError:
        return init(ServiceConfig(data_dir=data_dir, **overrides))
