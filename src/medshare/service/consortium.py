"""``medshare init``: a consortium in one data directory.

It makes, in order: the configuration file; the consortium's public KAC parameters (the
setup ceremony: ``α`` is discarded inside :func:`medshare.crypto.kac.setup`); the ledger
(its nodes' keys and genesis; CometBFT nodes are started, see :mod:`.ledgers`); the
schema (Alembic); per hospital an attribute authority, a KEK seed, its records service
(which signs with the hospital's node key) and the authority's identity; the starting
roster and a researcher with their identity keys, registered on the ledger by their
hospital's node in one block; then each member's CP-ABE keys, issued through the
accountable protocol, their key tags registered on the ledger under their own identity
keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from medshare.crypto import issuance, kac
from medshare.fileio import write_file
from medshare.ledger.app import published
from medshare.service import areas, db, ledgers
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
    ledgers.check(config)
    config.save()
    say("KAC parameters")
    write_file(config.kac_params_file, kac.setup(config.kac_classes).to_bytes())
    kind = "CometBFT nodes" if config.ledger == "cometbft" else "in-process ledger"
    say(f"ledger: {kind}, {config.nodes} nodes, committee {config.committee}")
    try:
        ledger = ledgers.create(config, say)
        try:
            service = MedShare(config, ledger, clock=clock)
        except BaseException:
            ledger.close()
            raise
    except BaseException:
        ledgers.stop(config)  # a half-made consortium leaves no node running
        raise
    try:
        say("hospitals and their authorities")
        for code in config.hospitals:
            _add_hospital(service, code)
        members = roster if roster is not None else default_roster(config.hospitals)
        for member in members:
            _add_member(service, member)
        add_person(service, RESEARCHER, "researcher", None, ["researcher"], register=False)
        people = [(authority_principal(code), code) for code in config.hospitals]
        people += [(m.id, m.hospital) for m in members] + [(RESEARCHER, None)]
        say(f"{len(people)} identities registered on the ledger by their hospitals' nodes")
        service.register(people)
        say("authorities publish their public keys on the ledger")
        service.publish_authority_keys(config.hospitals)
        requests = [r for member in members for r in _staff_key_requests(service, member)]
        say(f"{len(requests)} staff keys (accountable issuance; tags on the ledger)")
        service.issue_keys(requests)
    except BaseException:
        service.close()
        ledgers.stop(config)
        raise
    return service


def init_hospital(
    config: ServiceConfig,
    params: bytes,
    *,
    clock: Clock = wall_clock_ms,
    progress: Progress | None = None,
    activate: bool = True,
) -> MedShare:
    """Create one hospital's own directory (``config.local``), next to its ledger node
    (``config.ledger_dir``, already laid out and running, see
    :func:`medshare.server.consortium.up`): its configuration, the consortium's public KAC
    parameters ``params``, its database, its attribute authority and KEK seed, its records
    service's identity (its node's key) and its authority's identity, registered by its own
    node, and the authority's public keys published on the ledger. Nobody else's key is
    made here: staff and patients enrol with one-time codes and make theirs on their own
    devices. A hospital joining a running consortium is created with ``activate`` False:
    its node is not a member yet, so nothing goes on the ledger until the members admitted
    it (:func:`activate_hospital`)."""
    say = progress or (lambda _msg: None)
    code = config.local
    if code is None:
        raise ConfigError("init_hospital makes a hospital's own directory: set local")
    data_dir = config.data_dir
    if data_dir.exists() and any(p.name != "ledger" for p in data_dir.iterdir()):
        raise ConfigError(f"{data_dir} holds more than its ledger node; choose a new directory")
    kac.KacParams.from_bytes(params).verify()
    config.save()
    write_file(config.kac_params_file, params)
    service = MedShare.open(data_dir, clock=clock, notice=say)
    try:
        say(f"{code}: authority, records service" + (", identities on the ledger" * activate))
        _add_hospital(service, code)
        if activate:
            activate_hospital(service)
    except BaseException:
        service.close()
        raise
    return service


def activate_hospital(service: MedShare) -> bool:
    """Register the hospital's authority identity with its own node and publish the
    authority's public keys, unless that was done; True if it did it now. Needs the
    hospital's node to be a member of the chain."""
    code = service.config.local
    if code is None:
        raise ConfigError("only a hospital's own directory is activated")
    if service.ledger.published(published.authority_key(code, published.ABE_KEY)) is not None:
        return False
    service.register([(authority_principal(code), code)])
    service.publish_authority_keys((code,))
    return True


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
    # The records service's identity is the hospital's node key (no wallet file: the key
    # stays with the node); a node needs no registration.
    _add_principal(
        service,
        service_principal(code),
        "service",
        code,
        ["records-service"],
        None,
        service.node_key(code).public,
    )
    add_person(service, authority_principal(code), "authority", code, ["authority"], register=False)


def _add_principal(
    service: MedShare,
    who: str,
    kind: str,
    hospital: str | None,
    roles: list[str],
    dept: str | None,
    public: bytes,
) -> None:
    with db.transaction(service.sessions) as session:
        session.add(
            db.Principal(
                id=who,
                kind=kind,
                hospital=hospital,
                roles=roles,
                dept=dept,
                identity_public=public,
                created_ms=service.clock(),
            )
        )


def add_person(
    service: MedShare,
    who: str,
    kind: str,
    hospital: str | None,
    roles: list[str],
    dept=None,
    *,
    register: bool = True,
) -> None:
    """A principal with a fresh identity key in their wallet, registered on the ledger by
    their hospital's node (unless ``register`` is False: the caller registers a batch)."""
    identity = service.wallets.create_identity(who)
    _add_principal(service, who, kind, hospital, roles, dept, identity.public)
    if register:
        service.register([(who, hospital)])


def _add_member(service: MedShare, member: StaffMember, *, register: bool = False) -> None:
    add_person(
        service,
        member.id,
        "clinician",
        member.hospital,
        [member.role],
        member.dept,
        register=register,
    )


def add_staff(service: MedShare, member: StaffMember) -> None:
    """A clinician: identity (registered by their hospital's node), then keys: the own
    authority's institution key (or, for emergency staff, an emergency key from every
    consortium authority)."""
    _add_member(service, member, register=True)
    service.issue_keys(_staff_key_requests(service, member))


def _staff_key_requests(
    service: MedShare, member: StaffMember
) -> list[tuple[str, str, tuple[str, ...]]]:
    """The keys a clinician gets: the own authority's institution key, or for emergency
    staff an emergency key from every consortium authority."""
    requests = []
    for code in service.config.hospitals:
        attrs = areas.staff_entitlement(
            member.role, member.hospital, member.dept, code, _epoch(service, code), service.taxonomy
        )
        if attrs is not None:
            requests.append((member.id, code, attrs))
    return requests


def _epoch(service: MedShare, hospital: str) -> int:
    with service.sessions() as session:
        return session.get(db.Hospital, hospital).epoch


def open_or_init(data_dir: Path, **overrides) -> MedShare:
    """Open an existing data directory, or create one with ``overrides`` on the defaults."""
    try:
        return MedShare.open(data_dir)
    except ConfigError:
        return init(ServiceConfig(data_dir=data_dir, **overrides))
