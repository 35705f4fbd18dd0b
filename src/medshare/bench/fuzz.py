"""Fuzz campaign over every decoder and entry point that reads untrusted bytes (issue 12).

Each :class:`Target` names an entry point (a ``from_bytes``, the policy parser, ``CheckTx``,
the ABCI frame parser, FHIR ingest, a CLI command), the error types its module documents
for bad input, and a Hypothesis strategy that makes malformed input from valid encodings
(:mod:`medshare.bench.fuzz_mutate`). The contract checked for every example: the entry
point returns, or raises one of its documented errors; never anything else (a
``KeyError``, ``TypeError``, ``RecursionError``… is a crash a hostile file or peer can
cause), and stateful targets store nothing for input they reject.

The targets and :func:`run_target` are shared by the CI-sized tests (``tests/fuzz``, a few
dozen examples per target) and ``medshare bench fuzz`` (10,000 per target by default). A
run does not stop at the first failure: every example is judged, failures are grouped by
exception type and the line that raised it, and the smallest input of each group is kept
(in hex) so it can become a regression example (:data:`REGRESSIONS`).

Hypothesis, not atheris (unavailable here): its strategies mutate structure as well as
bytes, and it is already a test dependency, which ``medshare bench fuzz`` therefore needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from medshare.bench.fuzz_mutate import fuzz_bytes, fuzz_doc, fuzz_json, fuzz_text

__all__ = [
    "DEFAULT_EXAMPLES",
    "REGRESSIONS",
    "TARGETS",
    "ContractViolation",
    "Fixtures",
    "NotADocument",
    "Target",
    "regression_inputs",
    "run",
    "run_inputs",
    "run_target",
]

DEFAULT_EXAMPLES = 10_000
_MAX_HEX_BYTES = 64 * 1024  # inputs longer than this are reported truncated


class ContractViolation(AssertionError):
    """The entry point did not raise, but broke its contract (stored something for rejected
    input, answered a CLI error with a traceback, accepted what it should refuse)."""


class NotADocument(ValueError):
    """The harness could not parse the bytes into the object the entry point takes (a
    decoder whose input is a parsed JSON document): counted, never a failure."""


# --- fixtures: real keys, ciphertexts, an initialised ledger app, a records service ---------


class Fixtures:
    """Valid objects every target mutates, built lazily (a target pays only for what it uses)
    in one temporary directory; :meth:`close` releases the service, the app and the files."""

    def __init__(self, root: Path | None = None) -> None:
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="msfuzz-")
        self.root = Path(root if root is not None else self._tmp.name)  # type: ignore[union-attr]
        self._closers: list[Callable[[], None]] = []

    def close(self) -> None:
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                closer()
        self._closers.clear()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Fixtures:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- CP-ABE and issuance --

    @cached_property
    def authority(self) -> Any:
        from medshare.crypto import issuance

        return issuance.AuthorityKeys.generate()

    @cached_property
    def abe_public(self) -> Any:
        return self.authority.master.public

    @cached_property
    def issuance_run(self) -> dict[str, Any]:
        """One accountable issuance through :func:`issuance.issue_key`, with every message as
        it crossed the wire (class name → bytes), captured from the ``from_bytes`` calls of
        the run: message types the protocol adds are fuzzed without a change here, and no
        party's private state is touched."""
        from medshare.crypto import issuance, signing

        authority = issuance.IssuanceAuthority(self.authority)
        holder = signing.SigningKey(b"\x07" * 32)
        verified_moduli: set[tuple[bytes, int]] = set()  # the wallet's checked moduli
        messages: dict[str, bytes] = {}
        classes = [
            obj
            for obj in vars(issuance).values()
            if isinstance(obj, type)
            and obj.__module__ == issuance.__name__
            and "from_bytes" in vars(obj)
            and obj is not issuance.AuthorityKeys
        ]
        originals = {cls: vars(cls)["from_bytes"] for cls in classes}

        def capture(cls: type) -> classmethod:
            decode = originals[cls].__func__

            def from_bytes(klass: type, data: bytes | str) -> Any:
                messages[klass.__name__] = data if isinstance(data, bytes) else data.encode()
                return decode(klass, data)

            return classmethod(from_bytes)

        try:
            for cls in classes:
                cls.from_bytes = capture(cls)  # type: ignore[attr-defined]
            key, registration = issuance.issue_key(
                authority,
                self.abe_public,
                "alice@H001",
                ["hospital:H001", "dept:0304", "role:physician"],
                identity_key=holder,
                verified_moduli=verified_moduli,
            )
        finally:
            for cls, original in originals.items():
                cls.from_bytes = original  # type: ignore[attr-defined]
        return {
            "authority": authority,
            "holder": holder,
            "verified_moduli": verified_moduli,
            "messages": messages,
            "registration": registration,
            "key": key,
        }

    @cached_property
    def abe_user_key(self) -> Any:
        return self.issuance_run["key"]

    @cached_property
    def abe_other_keys(self) -> list[Any]:
        """Plain keys (made by the authority alone) of other shapes: one and six attributes."""
        from medshare.crypto import abe

        master = self.authority.master
        return [
            abe.keygen(master, 12345, ["hospital:H001"]),
            abe.keygen(master, 777, [f"attr:{i}" for i in range(6)]),
        ]

    @cached_property
    def registry(self) -> list[Any]:
        return [self.issuance_run["registration"]]

    @cached_property
    def abe_ciphertexts(self) -> list[Any]:
        from medshare.crypto import abe

        policies = (
            "hospital:H001 and dept:0304 and role:physician",
            "hospital:H001 or role:nurse",
            "2 of (hospital:H001, dept:0304, role:physician)",
            '"odd \\"name\\"" or (a and b)',
        )
        return [abe.encrypt(self.abe_public, p, b"record %d" % i) for i, p in enumerate(policies)]

    # -- KAC and H-KAC --

    @cached_property
    def kac_params(self) -> Any:
        from medshare.crypto import kac

        return kac.setup(8)

    @cached_property
    def kac_patient(self) -> Any:
        from medshare.crypto import kac

        return kac.keygen(self.kac_params)

    @cached_property
    def kac_key(self) -> Any:
        from medshare.crypto import kac

        return kac.extract(self.kac_params, self.kac_patient, [1, 2, 3, 5])

    @cached_property
    def kac_ciphertexts(self) -> list[Any]:
        from medshare.crypto import kac

        public = self.kac_patient.public
        return [kac.encrypt(self.kac_params, public, i, b"dek %d" % i) for i in (1, 5, 8)]

    @cached_property
    def hkac(self) -> dict[str, Any]:
        from medshare.crypto import hkac

        seed = hkac.PatientSeed(b"\x05" * 32)
        params = self.kac_params
        directory = hkac.Directory(params.n, 4)
        for i, dept in enumerate(("03", "03", "04", "03", "03", "03", "04")):
            directory, _ = hkac.assign(directory, dept, f"Observation/o{i}")
        now = datetime(2030, 1, 1, tzinfo=UTC)
        shares = [
            hkac.share_records(
                seed, params, directory, ["Observation/o0", "Observation/o2"], grantee="dr.wang"
            ),
            hkac.share_department(
                seed, params, directory, "03", grantee="dr.li", until=now + timedelta(days=3)
            ),
            hkac.share_all(seed, params, directory, grantee="patient", now=now),
        ]
        publics = hkac.block_publics(seed, directory)
        sealed = {
            rid: hkac.seal_record(params, publics, slot, b"dek of " + rid.encode(), rid)
            for rid, slot in list(directory.records.items())[:3]
        }
        return {"seed": seed, "directory": directory, "shares": shares, "sealed": sealed}

    # -- recovery --

    @cached_property
    def recovery(self) -> dict[str, Any]:
        from medshare.crypto import hkac, recovery

        seed = hkac.PatientSeed(b"\x09" * 32)
        return {
            "seed": seed,
            "shares": recovery.split_seed(seed, 2, 3),
            "other": recovery.split_seed(hkac.PatientSeed(b"\x0a" * 32), 3, 5),
            "words": recovery.seed_to_words(seed),
        }

    # -- the ledger application --

    @cached_property
    def node_keys(self) -> tuple[Any, ...]:
        from medshare.crypto.signing import SigningKey

        return tuple(SigningKey(bytes([i + 1]) * 32) for i in range(6))

    @cached_property
    def identity_key(self) -> Any:
        from medshare.crypto.signing import SigningKey

        return SigningKey(b"\x42" * 32)

    @cached_property
    def keys_by_public(self) -> dict[str, Any]:
        keys = [*self.node_keys, self.identity_key]
        return {k.public.hex(): k for k in keys}

    @cached_property
    def app(self) -> Any:
        """An initialised :class:`LedgerApplication` (genesis as ``tests/ledger/appkit``) with
        block 1 committed: node 0 registered ``alice``'s identity key, so every sender class
        (node, registered identity, stranger) exists."""
        from medshare.ledger import election
        from medshare.ledger.app.abci import LedgerApplication
        from medshare.ledger.app.genesis import Genesis
        from medshare.ledger.app.store import StateStore
        from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci
        from medshare.ledger.types import Tx, TxKind

        genesis = Genesis(
            "test",
            tuple(
                election.Validator(k.public, f"node-{i}", 1000)
                for i, k in enumerate(self.node_keys)
            ),
            epoch_length=5,
            committee_size=4,
        )
        store = StateStore(self.root / "app.db")
        self._closers.append(store.close)
        app = LedgerApplication(store)
        app.init_chain(
            abci.RequestInitChain(
                chain_id="c", app_state_bytes=json.dumps(genesis.to_json()).encode()
            )
        )
        enrol = Tx.create(
            TxKind.REGISTER_IDENTITY,
            {"identity": "alice", "key": self.identity_key.public.hex()},
            0,
            self.node_keys[0],
            chain=genesis.chain_id,
        )
        self._finalize(app, [enrol.encode()])
        app.commit(abci.RequestCommit())
        return app

    def _finalize(self, app: Any, txs: list[bytes]) -> Any:
        from medshare.ledger.app import rules
        from medshare.ledger.app.genesis import MEMBER_POWER
        from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci
        from medshare.ledger.cometbft.proto.tendermint.types import validator_pb2

        state = app._committed()
        height = state.height + 1
        votes = [
            abci.VoteInfo(
                validator=abci.Validator(address=rules.address(m), power=MEMBER_POWER),
                block_id_flag=validator_pb2.BLOCK_ID_FLAG_COMMIT,
            )
            for m in state.committee
        ]
        return app.finalize_block(
            abci.RequestFinalizeBlock(
                txs=txs,
                decided_last_commit=abci.CommitInfo(votes=votes),
                hash=hashlib.sha256(b"%d" % height).digest(),
                height=height,
                proposer_address=rules.address(state.committee[0]),
            )
        )

    @cached_property
    def chain_id(self) -> str:
        return self.app._committed().genesis.chain_id

    @cached_property
    def txs(self) -> list[Any]:
        """Signed transactions of every kind, each valid for ``CheckTx`` on its own."""
        from medshare.crypto.signing import SigningKey
        from medshare.ledger.types import Tx, TxKind

        nodes, alice, chain = self.node_keys, self.identity_key, self.chain_id
        newcomer = SigningKey(b"\x33" * 32).public.hex()
        stranger = SigningKey(b"\x34" * 32).public.hex()
        specs = [
            (TxKind.REGISTER_NODE, {"node": newcomer, "name": "node-new"}, 1, nodes[0]),
            (TxKind.REGISTER_IDENTITY, {"identity": "bob", "key": stranger}, 0, nodes[1]),
            (TxKind.REGISTER_KEY_TAG, {"identity": "alice", "tag": "ab" * 48}, 0, alice),
            (
                TxKind.ANCHOR_RECORD,
                {"record": "Observation/o1", "patient": "p1", "dept": "03", "digest": "cd" * 32},
                0,
                nodes[2],
            ),
            (TxKind.GRANT, {"grant": "g1", "patient": "p1", "grantee": "dr.wang"}, 0, alice),
            (TxKind.REVOKE, {"grant": "g1"}, 0, alice),
            (TxKind.ACCESS, {"record": "r", "actor": "a", "area": "personal"}, 0, alice),
            (
                TxKind.BREAK_GLASS,
                {"record": "r", "actor": "er", "reason": "arrest", "until": 5},
                0,
                alice,
            ),
            (TxKind.TRACE_VERDICT, {"verdict": "user", "evidence": {"k": [1, 2]}}, 0, nodes[3]),
            (TxKind.EVIDENCE, {"offender": newcomer, "kind": "x", "proof": []}, 0, nodes[3]),
            (TxKind.COMMITTEE_CHANGE, {"epoch": 1, "committee": []}, 0, nodes[3]),
        ]
        return [Tx.create(kind, body, nonce, key, chain=chain) for kind, body, nonce, key in specs]

    @cached_property
    def blocks(self) -> dict[str, Any]:
        """A certified block with a last commit, and an inclusion proof of one of its txs."""
        from medshare.ledger import audit, merkle
        from medshare.ledger.types import (
            Block,
            BlockHeader,
            CommitCertificate,
            Vote,
            VoteKind,
            certificate_hash,
            merkle_root_hex,
        )

        chain, committee = self.chain_id, self.node_keys[:4]

        def certify(height: int, block_hash: str) -> CommitCertificate:
            votes = [
                Vote.create(VoteKind.PRECOMMIT, height, 0, block_hash, k, chain=chain)
                for k in committee
            ]
            return CommitCertificate.from_votes(votes)

        last = certify(1, "11" * 32)
        txs = tuple(self.txs[:3])
        header = BlockHeader(
            height=2,
            prev_hash="11" * 32,
            merkle_root=merkle_root_hex(txs),
            state_root="22" * 32,
            last_commit_hash=certificate_hash(last),
            epoch=0,
            proposer=committee[0].public,
            timestamp_ms=1_800_000_000_000,
        )
        cert = certify(2, header.hash)
        block = Block(header, txs, last, cert)
        path = merkle.prove([tx.encode() for tx in txs], 1)
        proof = {
            "type": "medshare-inclusion-proof",
            "version": audit.PROOF_VERSION,
            "txid": txs[1].txid,
            "tx": txs[1].to_json(),
            "height": 2,
            "block_hash": header.hash,
            "header": header.to_json(),
            "merkle": {
                "index": path.index,
                "size": path.size,
                "path": [p.hex() for p in path.path],
            },
            "certificate": cert.to_json(),
            "committee": [k.public.hex() for k in committee],
            "chain_id": chain,
        }
        return {"block": block, "certificate": cert, "proof": proof}

    @cached_property
    def evidence(self) -> list[dict[str, Any]]:
        """One valid EVIDENCE body of each kind the chain checks."""
        from dataclasses import replace

        from medshare.ledger.types import (
            Equivocation,
            Vote,
            VoteKind,
            invalid_block_body,
            proposal_domain,
            proposal_signing_bytes,
        )

        chain, key = self.chain_id, self.node_keys[0]
        votes = [
            Vote.create(VoteKind.PREVOTE, 7, 1, h * 32, key, chain=chain) for h in ("aa", "bb")
        ]

        def proposal(height: int, block_hash: str) -> dict[str, Any]:
            message = proposal_signing_bytes(height, 0, block_hash, -1, key.public)
            signature = key.sign(proposal_domain(chain), message)
            return {
                "height": height,
                "round": 0,
                "block": block_hash,
                "pol_round": -1,
                "proposer": key.public.hex(),
                "signature": signature.hex(),
            }

        block = self.blocks["block"]
        bad = replace(block.txs[0], signature=b"\x01" * 64)
        from medshare.ledger.types import Block, BlockHeader, merkle_root_hex

        h = block.header
        header = BlockHeader(
            h.height,
            h.prev_hash,
            merkle_root_hex((bad,)),
            h.state_root,
            h.last_commit_hash,
            h.epoch,
            h.proposer,
            h.timestamp_ms,
        )
        bad_block = Block(header, (bad,))
        return [
            Equivocation(*votes).to_body(),
            {
                "offender": key.public.hex(),
                "kind": "conflicting_proposals",
                "proof": [proposal(9, "cc" * 32), proposal(9, "dd" * 32)],
            },
            invalid_block_body(proposal(2, bad_block.hash), bad_block, 0),
        ]

    # -- FHIR and the records service --

    @cached_property
    def fhir_seeds(self) -> list[bytes]:
        from medshare.records import synthetic

        bundle = synthetic.generate_bundle(901, 0, 4)
        resources = [e["resource"] for e in bundle["entry"]]
        patient = next(r for r in resources if r["resourceType"] == "Patient")
        other = next(r for r in resources if r["resourceType"] != "Patient")
        ndjson = synthetic.generate_bundle(902, 1, 3)
        lines = [json.dumps(e["resource"]) for e in ndjson["entry"]]
        return [
            json.dumps(bundle).encode(),
            json.dumps(patient).encode(),
            json.dumps(other, indent=1).encode(),
            ("\n".join(lines) + "\n").encode(),
        ]

    @cached_property
    def service(self) -> Any:
        """A one-hospital consortium (in-process ledger), as in ``tests/service/conftest``."""
        from medshare.service.config import ServiceConfig
        from medshare.service.consortium import init
        from medshare.service.roster import StaffMember

        config = ServiceConfig(
            data_dir=self.root / "service",
            hospitals=("H001",),
            nodes=1,
            committee=1,
            replication=1,
            kac_classes=64,
            slab_size=8,
        )
        clock = iter(range(1_800_000_000_000, 1_900_000_000_000, 1000))
        service = init(
            config,
            roster=(StaffMember("dr.wang@H001", "H001", "03", "physician"),),
            clock=lambda: next(clock),
        )
        self._closers.append(service.close)
        return service

    # -- files for the CLI --

    @cached_property
    def cli_files(self) -> Path:
        """An authority, a user key, ciphertexts and KAC files, as the CLI writes them."""
        from medshare.crypto import abe, encoding, kac

        root = self.root / "cli"
        for sub in ("auth", "kac"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        run = self.issuance_run
        holder = run["holder"]
        files = {
            "auth/public.json": self.abe_public.to_bytes(),
            "auth/master.json": self.authority.to_bytes(),
            "auth/registry.json": abe.registry_to_bytes(self.registry),
            "alice.json": self.abe_user_key.to_bytes(),
            "alice.identity.json": encoding.dumps(
                "identity-key", 1, {"seed": holder.seed.hex(), "public": holder.public.hex()}
            ),
            "identities.json": json.dumps({"alice@H001": holder.public.hex()}).encode(),
            "record.txt": b'{"resourceType": "Observation", "id": "o1"}',
            "record.ct": self.abe_ciphertexts[0].to_bytes(),
            "kac/params.json": self.kac_params.to_bytes(),
            "kac/patient.json": self.kac_patient.to_bytes(),
            "kac/patient.pub.json": self.kac_patient.public.to_bytes(),
            "kac/agg.json": self.kac_key.to_bytes(),
            "kac/record.ct": self.kac_ciphertexts[0].to_bytes(),
        }
        for name, data in files.items():
            (root / name).write_bytes(data)
        assert kac.KacParams.from_bytes(files["kac/params.json"]) == self.kac_params
        return root


# --- targets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One entry point: how to make inputs for it, how to call it, what it may raise."""

    name: str
    area: str
    summary: str
    allowed: tuple[str, ...]  # dotted names of the documented errors, imported on use
    strategy: Callable[[Fixtures], st.SearchStrategy[Any]]
    call: Callable[[Fixtures, Any], object]
    seeds: Callable[[Fixtures], list[Any]] = field(default=lambda fx: [])

    def allowed_errors(self) -> tuple[type[BaseException], ...]:
        return _errors(*self.allowed)


TARGETS: dict[str, Target] = {}


def _errors(*names: str) -> tuple[type[BaseException], ...]:
    """Error classes by dotted name, imported on use (the CLI stays fast to start)."""
    import importlib

    out = []
    for name in names:
        module, _, attr = name.rpartition(".")
        out.append(getattr(importlib.import_module(module), attr))
    return tuple(out)


def target(
    name: str,
    area: str,
    allowed: Sequence[str],
    *,
    seeds: Callable[[Fixtures], list[Any]],
    strategy: Callable[[list[Any]], st.SearchStrategy[Any]] = fuzz_json,
) -> Callable[[Callable[[Fixtures, Any], object]], Callable[[Fixtures, Any], object]]:
    """Register a target whose inputs are mutations of ``seeds(fx)`` by ``strategy``."""

    def register(call: Callable[[Fixtures, Any], object]) -> Callable[[Fixtures, Any], object]:
        TARGETS[name] = Target(
            name=name,
            area=area,
            summary=(call.__doc__ or "").strip().split("\n")[0],
            allowed=tuple(allowed),
            strategy=lambda fx: strategy(seeds(fx)),
            call=call,
            seeds=seeds,
        )
        return call

    return register


_CRYPTO = "medshare.crypto.errors."
_BAD_ENCODING = (_CRYPTO + "InvalidEncoding",)
_HARNESS = ("medshare.bench.fuzz.NotADocument",)


# -- keys --


@target(
    "abe-public-key",
    "keys",
    (*_BAD_ENCODING, _CRYPTO + "InvalidKey"),
    seeds=lambda fx: [fx.abe_public.to_bytes()],
)
def _abe_public_key(fx: Fixtures, data: bytes) -> None:
    """AbePublicKey.from_bytes, then its public consistency check."""
    from medshare.crypto import abe

    abe.AbePublicKey.from_bytes(data).check()


@target("abe-master-key", "keys", _BAD_ENCODING, seeds=lambda fx: [fx.authority.master.to_bytes()])
def _abe_master_key(fx: Fixtures, data: bytes) -> None:
    """AbeMasterKey.from_bytes (the public key is a document inside the document)."""
    from medshare.crypto import abe

    abe.AbeMasterKey.from_bytes(data)


@target(
    "abe-user-key",
    "keys",
    _BAD_ENCODING,
    seeds=lambda fx: [k.to_bytes() for k in (fx.abe_user_key, *fx.abe_other_keys)],
)
def _abe_user_key(fx: Fixtures, data: bytes) -> None:
    """AbeUserKey.from_bytes, then the public audit of a leaked key (``abe-trace``)."""
    from medshare.crypto import abe

    key = abe.AbeUserKey.from_bytes(data)
    result = abe.audit(fx.abe_public, key, fx.registry)
    if not isinstance(result, abe.AuditResult):
        raise ContractViolation(f"audit returned {result!r}")


def _registry_bytes(fx: Fixtures) -> bytes:
    from medshare.crypto import abe

    return abe.registry_to_bytes(fx.registry)


@target(
    "abe-registry",
    "keys",
    _BAD_ENCODING,
    seeds=lambda fx: [_registry_bytes(fx)],
)
def _abe_registry(fx: Fixtures, data: bytes) -> None:
    """registry_from_bytes: the authority's registry of issued keys."""
    from medshare.crypto import abe

    abe.registry_from_bytes(data)


@target("authority-keys", "keys", _BAD_ENCODING, seeds=lambda fx: [fx.authority.to_bytes()])
def _authority_keys(fx: Fixtures, data: bytes) -> None:
    """AuthorityKeys.from_bytes: master key plus Paillier factors."""
    from medshare.crypto import issuance

    issuance.AuthorityKeys.from_bytes(data)


def _issuance_seeds(fx: Fixtures) -> list[tuple[str, bytes]]:
    return sorted(fx.issuance_run["messages"].items())


def _cased(seeds: list[tuple[str, bytes]]) -> st.SearchStrategy[tuple[str, bytes]]:
    """A case (here: a message class) and a mutation of its own seeds."""
    cases = sorted({case for case, _ in seeds})
    return st.sampled_from(cases).flatmap(
        lambda case: st.tuples(st.just(case), fuzz_json([d for c, d in seeds if c == case]))
    )


@target("issuance-messages", "keys", _BAD_ENCODING, seeds=_issuance_seeds, strategy=_cased)
def _issuance_messages(fx: Fixtures, example: tuple[str, bytes]) -> None:
    """Every accountable-issuance message's from_bytes (challenge, registration, offer,
    range proof messages, response, issued key), each fed mutations of its own encoding."""
    from medshare.crypto import issuance

    name, data = example
    getattr(issuance, name).from_bytes(data)


_USER_STEPS = ("IssuanceChallenge", "IssuanceOffer", "RangeAnswer")


@target(
    "issuance-user",
    "keys",
    (*_BAD_ENCODING, _CRYPTO + "ProtocolError"),
    seeds=lambda fx: [c for c in _issuance_seeds(fx) if c[0] in _USER_STEPS],
    strategy=_cased,
)
def _issuance_user(fx: Fixtures, example: tuple[str, bytes]) -> None:
    """The user's side of issuance given a malformed message at each step it receives one
    (challenge, offer, range answer), its session brought there through the public API.

    A malformed challenge meets a fresh user, so its modulus proof is checked; later steps
    share the checked modulus, as a wallet does."""
    from medshare.crypto import issuance

    name, data = example
    run = fx.issuance_run
    messages = run["messages"]
    if name == "IssuanceChallenge":
        user = issuance.IssuanceUser(fx.abe_public, "alice@H001", run["holder"])
        user.registration(issuance.IssuanceChallenge.from_bytes(data))
        return
    user = issuance.IssuanceUser(
        fx.abe_public, "alice@H001", run["holder"], verified_moduli=run["verified_moduli"]
    )
    user.registration(issuance.IssuanceChallenge.from_bytes(messages["IssuanceChallenge"]))
    if name == "IssuanceOffer":
        user.range_challenge(issuance.IssuanceOffer.from_bytes(data))
        return
    user.range_challenge(issuance.IssuanceOffer.from_bytes(messages["IssuanceOffer"]))
    user.respond(issuance.RangeAnswer.from_bytes(data))


@target(
    "kac-params",
    "keys",
    (*_BAD_ENCODING, _CRYPTO + "InvalidKey"),
    seeds=lambda fx: [fx.kac_params.to_bytes()],
)
def _kac_params(fx: Fixtures, data: bytes) -> None:
    """KacParams.from_bytes, then verify() (what a receiver of parameters runs)."""
    from medshare.crypto import kac

    kac.KacParams.from_bytes(data).verify()


@target(
    "kac-patient-public", "keys", _BAD_ENCODING, seeds=lambda fx: [fx.kac_patient.public.to_bytes()]
)
def _kac_patient_public(fx: Fixtures, data: bytes) -> None:
    """KacPatientPublic.from_bytes."""
    from medshare.crypto import kac

    kac.KacPatientPublic.from_bytes(data)


@target("kac-patient-secret", "keys", _BAD_ENCODING, seeds=lambda fx: [fx.kac_patient.to_bytes()])
def _kac_patient_secret(fx: Fixtures, data: bytes) -> None:
    """KacPatientSecret.from_bytes."""
    from medshare.crypto import kac

    kac.KacPatientSecret.from_bytes(data)


@target(
    "kac-aggregate-key",
    "keys",
    (
        *_BAD_ENCODING,
        _CRYPTO + "InvalidKey",
        _CRYPTO + "PolicyNotSatisfied",
        _CRYPTO + "DecryptionFailed",
    ),
    seeds=lambda fx: [fx.kac_key.to_bytes()],
)
def _kac_aggregate_key(fx: Fixtures, data: bytes) -> None:
    """AggregateKey.from_bytes, then decrypting a class-1 ciphertext with it."""
    from medshare.crypto import kac

    key = kac.AggregateKey.from_bytes(data)
    kac.decrypt(fx.kac_params, key, fx.kac_ciphertexts[0])


@target(
    "hkac-share",
    "keys",
    (
        *_BAD_ENCODING,
        _CRYPTO + "InvalidKey",
        _CRYPTO + "PolicyNotSatisfied",
        _CRYPTO + "DecryptionFailed",
    ),
    seeds=lambda fx: [s.to_bytes() for s in fx.hkac["shares"]],
)
def _hkac_share(fx: Fixtures, data: bytes) -> None:
    """H-KAC Share.from_bytes, its revocation plan, and opening a sealed record with it."""
    from medshare.crypto import hkac

    share = hkac.Share.from_bytes(data)
    hkac.rewrap_plan(fx.hkac["directory"], share)
    share.is_valid_at(datetime(2031, 1, 1, tzinfo=UTC))
    rid, ct = next(iter(fx.hkac["sealed"].items()))
    hkac.open_record(fx.kac_params, share, ct, rid)


@target("hkac-directory", "keys", _BAD_ENCODING, seeds=lambda fx: [fx.hkac["directory"].to_bytes()])
def _hkac_directory(fx: Fixtures, data: bytes) -> None:
    """H-KAC Directory.from_bytes (a patient's public slot allocation), then its queries."""
    from medshare.crypto import hkac

    directory = hkac.Directory.from_bytes(data)
    directory.records_in({b: range(1, directory.n + 1) for b in directory.blocks})
    for dept in directory.departments:
        directory.slabs_of(dept)
    for rid in directory:
        directory.department_of(rid)


# -- ciphertexts and envelopes --


@target(
    "abe-ciphertext",
    "ciphertexts",
    (*_BAD_ENCODING, _CRYPTO + "PolicyNotSatisfied", _CRYPTO + "DecryptionFailed"),
    seeds=lambda fx: [ct.to_bytes() for ct in fx.abe_ciphertexts],
)
def _abe_ciphertext(fx: Fixtures, data: bytes) -> None:
    """AbeCiphertext.from_bytes (policy and header), then decryption with a real key."""
    from medshare.crypto import abe

    ct = abe.AbeCiphertext.from_bytes(data)
    ct.size()
    abe.decrypt(fx.abe_public, fx.abe_user_key, ct)


@target(
    "kac-ciphertext",
    "ciphertexts",
    (
        *_BAD_ENCODING,
        _CRYPTO + "InvalidKey",
        _CRYPTO + "PolicyNotSatisfied",
        _CRYPTO + "DecryptionFailed",
    ),
    seeds=lambda fx: [ct.to_bytes() for ct in fx.kac_ciphertexts],
)
def _kac_ciphertext(fx: Fixtures, data: bytes) -> None:
    """KacCiphertext.from_bytes, then decryption with an aggregate key."""
    from medshare.crypto import kac

    ct = kac.KacCiphertext.from_bytes(data)
    kac.decrypt(fx.kac_params, fx.kac_key, ct)


@target(
    "hkac-record",
    "ciphertexts",
    (
        *_BAD_ENCODING,
        _CRYPTO + "InvalidKey",
        _CRYPTO + "PolicyNotSatisfied",
        _CRYPTO + "DecryptionFailed",
    ),
    seeds=lambda fx: [ct.to_bytes() for ct in fx.hkac["sealed"].values()],
)
def _hkac_record(fx: Fixtures, data: bytes) -> None:
    """A sealed record's H-KAC header (the service's ``kac_header``), opened with an
    ``all`` share under each record id."""
    from medshare.crypto import hkac, kac

    ct = kac.KacCiphertext.from_bytes(data)
    for rid in fx.hkac["sealed"]:
        with contextlib.suppress(_errors(_CRYPTO + "DecryptionFailed")):
            hkac.open_record(fx.kac_params, fx.hkac["shares"][2], ct, rid)


def _envelopes(fx: Fixtures) -> list[bytes]:
    from medshare.crypto import hybrid
    from medshare.service import protect

    dek, kek = b"\x01" * 32, b"\x02" * 32
    return [
        hybrid.seal(dek, b"", aad=b""),
        protect.seal_blob(dek, b'{"resourceType": "Patient"}', "Patient/p1"),
        protect.wrap_dek(kek, dek, "Patient/p1", "area-1"),
    ]


@target(
    "hybrid-envelope",
    "ciphertexts",
    (_CRYPTO + "DecryptionFailed",),
    seeds=_envelopes,
    strategy=lambda seeds: fuzz_bytes(seeds, structured=False),
)
def _hybrid_envelope(fx: Fixtures, data: bytes) -> None:
    """AES-GCM envelopes: hybrid.open_sealed, a record blob, a wrapped DEK."""
    from medshare.crypto import hybrid
    from medshare.service import protect

    dek, kek = b"\x01" * 32, b"\x02" * 32
    failed: list[BaseException] = []
    for attempt in (
        lambda: hybrid.open_sealed(dek, data, aad=b""),
        lambda: protect.open_blob(dek, data, "Patient/p1"),
        lambda: protect.unwrap_dek(kek, data, "Patient/p1", "area-1"),
    ):
        try:
            attempt()
        except _errors(_CRYPTO + "DecryptionFailed") as exc:
            failed.append(exc)
    if len(failed) == 3:
        raise failed[0]


# -- recovery shares --


def _text_seeds(seeds: list[bytes]) -> list[str]:
    return [line for seed in seeds for line in seed.decode().split("\n")]


def _fuzz_text_bytes(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """Text mutations of ``seeds`` (UTF-8), back as bytes (lone surrogates kept)."""
    return fuzz_text(_text_seeds(seeds)).map(lambda t: t.encode("utf-8", "surrogatepass"))


def _slip39_strategy(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A list of one to four share texts (mutated), joined by newlines."""
    share = fuzz_text(_text_seeds(seeds))
    return st.lists(share, min_size=1, max_size=4).map(
        lambda shares: "\n".join(s.replace("\n", " ") for s in shares).encode(
            "utf-8", "surrogatepass"
        )
    )


@target(
    "recovery-slip39",
    "recovery",
    ("medshare.crypto.recovery.RecoveryError",),
    seeds=lambda fx: [
        "\n".join(fx.recovery["shares"][:2]).encode(),
        "\n".join(fx.recovery["shares"]).encode(),
        "\n".join(fx.recovery["other"][:3]).encode(),
    ],
    strategy=_slip39_strategy,
)
def _recovery_slip39(fx: Fixtures, data: bytes) -> None:
    """recover_seed over SLIP-39 share texts (one per line)."""
    from medshare.crypto import recovery

    text = data.decode("utf-8", "surrogatepass")
    recovery.recover_seed(text.split("\n"))


@target(
    "recovery-bip39",
    "recovery",
    ("medshare.crypto.recovery.RecoveryError",),
    seeds=lambda fx: [fx.recovery["words"].encode()],
    strategy=_fuzz_text_bytes,
)
def _recovery_bip39(fx: Fixtures, data: bytes) -> None:
    """words_to_seed over a 24-word BIP-39 backup."""
    from medshare.crypto import recovery

    recovery.words_to_seed(data.decode("utf-8", "surrogatepass"))


# -- policies --

_POLICY_SEEDS = [
    "hospital:H001 and dept:0304 and role:physician",
    "hospital:H001 and (role:physician or 2 of (consent:research, dept:0304, epoch:3))",
    '"quoted \\"attr\\"" or a',
    "3 of (a, b, c, d) and (e or f)",
    "((a))",
]


@target(
    "policy-text",
    "policies",
    (_CRYPTO + "InvalidPolicy",),
    seeds=lambda fx: [p.encode() for p in _POLICY_SEEDS],
    strategy=_fuzz_text_bytes,
)
def _policy_text(fx: Fixtures, data: bytes) -> None:
    """policy.parse; a policy that parses must render, re-parse equal and compile."""
    from medshare.crypto import group, policy

    node = policy.parse(data.decode("utf-8", "surrogatepass"))
    text = policy.canonical(node)
    if policy.parse(text) != node:
        raise ContractViolation(f"canonical form {text!r} re-parses to another tree")
    labels = policy.row_labels(node)
    lsss = policy.compile_lsss(node, modulus=group.ORDER)
    if tuple(lsss.labels) != labels:
        raise ContractViolation("row_labels and compile_lsss disagree")
    policy.reconstruct(node, frozenset(labels[:1]), modulus=group.ORDER)


# -- ledger transactions --


def _tx_seeds(fx: Fixtures) -> list[bytes]:
    return [tx.encode() for tx in fx.txs]


_LEDGER = "medshare.ledger.types."


@target("ledger-tx", "ledger", (_LEDGER + "LedgerFormatError",), seeds=_tx_seeds)
def _ledger_tx(fx: Fixtures, data: bytes) -> None:
    """Tx.decode, then its id, signing bytes and signature check."""
    from medshare.crypto import signing
    from medshare.ledger.types import Tx

    tx = Tx.decode(data)
    _ = tx.txid
    with contextlib.suppress(signing.InvalidSignature):
        tx.verify()


@target("ledger-rules-decode", "ledger", ("medshare.ledger.app.rules.TxRejected",), seeds=_tx_seeds)
def _rules_decode(fx: Fixtures, data: bytes) -> None:
    """rules.decode: the ledger app's canonical-bytes decoder."""
    from medshare.ledger.app import rules

    rules.decode(data)


@contextlib.contextmanager
def _app_unchanged(fx: Fixtures, *, allow_change: Callable[[], bool]) -> Iterator[None]:
    """Snapshot the app's committed state and mempool view; after the call they must be
    unchanged unless ``allow_change()`` (the input was accepted). Restored either way,
    so examples stay independent."""
    app = fx.app
    state = app._committed()
    before = (state.app_hash, dict(state.nonces), dict(state.identities), state.height)
    mempool, verified = dict(app._mempool_nonces), app._verified.copy()
    weight = app._verified_weight
    try:
        yield
        after_state = app._committed()
        after = (
            after_state.app_hash,
            dict(after_state.nonces),
            dict(after_state.identities),
            after_state.height,
        )
        if after != before:
            raise ContractViolation("the committed state changed")
        if not allow_change() and (
            app._mempool_nonces != mempool or app._verified.keys() != verified.keys()
        ):
            raise ContractViolation("a rejected transaction changed the mempool view")
    finally:
        app._mempool_nonces, app._verified, app._verified_weight = mempool, verified, weight
        app._pending = None


@target("abci-check-tx", "abci", (), seeds=_tx_seeds)
def _abci_check_tx(fx: Fixtures, data: bytes) -> str:
    """LedgerApplication.check_tx on an initialised app: a response, never an exception;
    a rejected transaction leaves the mempool view as it was."""
    from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci

    response: list[Any] = []
    with _app_unchanged(fx, allow_change=lambda: bool(response) and response[0].code == 0):
        response.append(fx.app.check_tx(abci.RequestCheckTx(tx=data, type=abci.CheckTxType.NEW)))
    return _code_name(response[0].code)


def _code_name(code: int) -> str:
    from medshare.ledger.app import rules

    try:
        return f"code {code} {rules.Code(code).name}"
    except ValueError:
        return f"code {code}"


def _signed(fx: Fixtures, data: bytes) -> bytes:
    """Re-sign a mutated unsigned transaction with its sender's key when the harness holds
    it, so the mutation reaches the rules behind the signature check."""
    import rfc8785

    from medshare.ledger.types import TX_DOMAIN

    try:
        doc = json.loads(data)
        key = fx.keys_by_public.get(doc.get("sender")) if isinstance(doc, dict) else None
        if key is None:
            return data
        unsigned = {k: v for k, v in doc.items() if k != "signature"}
        signature = key.sign(TX_DOMAIN, rfc8785.dumps(unsigned))
        return rfc8785.dumps({**unsigned, "signature": signature.hex()})
    except (ValueError, TypeError, RecursionError, rfc8785.CanonicalizationError):
        return data


def _unsigned_seeds(fx: Fixtures) -> list[bytes]:
    return [json.dumps(tx.unsigned_json()).encode() for tx in fx.txs]


@target("abci-finalize-signed", "abci", (), seeds=_unsigned_seeds)
def _abci_finalize_signed(fx: Fixtures, data: bytes) -> str:
    """A mutated, re-signed transaction through CheckTx, PrepareProposal and FinalizeBlock
    (not committed): every rule behind the signature answers with a code, and the next
    block's decision never raises (an exception halts the node)."""
    from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci

    raw = _signed(fx, data)
    app = fx.app
    with _app_unchanged(fx, allow_change=lambda: True):
        app.check_tx(abci.RequestCheckTx(tx=raw, type=abci.CheckTxType.NEW))
        app.prepare_proposal(abci.RequestPrepareProposal(txs=[raw], max_tx_bytes=1 << 20))
        result = fx._finalize(app, [raw])
        if len(result.tx_results) != 1:
            raise ContractViolation("FinalizeBlock answered no result for the transaction")
    return _code_name(result.tx_results[0].code)


@target(
    "abci-process-proposal",
    "abci",
    (),
    seeds=lambda fx: [tx.hex().encode() for tx in _tx_seeds(fx)],
    strategy=lambda seeds: st.lists(
        fuzz_json([bytes.fromhex(s.decode()) for s in seeds]), min_size=1, max_size=3
    ).map(lambda txs: b"\n".join(t.hex().encode() for t in txs)),
)
def _abci_process_proposal(fx: Fixtures, data: bytes) -> str:
    """ProcessProposal over up to three malformed transactions (hex, one per line): ACCEPT
    or REJECT, never an exception; ACCEPT only if every transaction decodes."""
    from medshare.ledger.app import rules
    from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci

    txs = [bytes.fromhex(line.decode()) for line in data.split(b"\n")]
    with _app_unchanged(fx, allow_change=lambda: True):
        response = fx.app.process_proposal(abci.RequestProcessProposal(txs=txs))
    if response.status == abci.ResponseProcessProposal.ACCEPT:
        for raw in txs:
            try:
                rules.decode(raw)
            except rules.TxRejected as exc:
                raise ContractViolation(f"accepted a proposal with a malformed tx: {exc}") from None
    return abci.ResponseProcessProposal.ProposalStatus.Name(response.status)


def _frame_seeds(fx: Fixtures) -> list[bytes]:
    from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci
    from medshare.ledger.cometbft.server import encode_frame

    tx = fx.txs[0].encode()
    requests = [
        abci.Request(echo=abci.RequestEcho(message="hello")),
        abci.Request(flush=abci.RequestFlush()),
        abci.Request(info=abci.RequestInfo(version="0.38")),
        abci.Request(query=abci.RequestQuery(path="/nonce", data=fx.node_keys[0].public)),
        abci.Request(check_tx=abci.RequestCheckTx(tx=tx)),
        abci.Request(process_proposal=abci.RequestProcessProposal(txs=[tx, tx])),
        abci.Request(prepare_proposal=abci.RequestPrepareProposal(txs=[tx], max_tx_bytes=9999)),
    ]
    frames = [encode_frame(r.SerializeToString()) for r in requests]
    return [*frames, b"".join(frames)]


_SAFE_REQUESTS = frozenset(
    {
        "echo",
        "flush",
        "info",
        "query",
        "check_tx",
        "process_proposal",
        "prepare_proposal",
        "list_snapshots",
        "offer_snapshot",
        "load_snapshot_chunk",
        "apply_snapshot_chunk",
        "extend_vote",
        "verify_vote_extension",
    }
)


@target(
    "abci-frames",
    "abci",
    ("medshare.ledger.cometbft.server.WireError", "google.protobuf.message.DecodeError"),
    seeds=_frame_seeds,
    strategy=lambda seeds: st.tuples(
        fuzz_bytes(seeds, structured=False), st.lists(st.integers(1, 64), max_size=4)
    ).map(lambda t: bytes([len(t[1])]) + bytes(t[1]) + t[0]),
)
def _abci_frames(fx: Fixtures, data: bytes) -> None:
    """The socket server's path: FrameBuffer.feed in chunks (first byte: number of chunk
    sizes, then the sizes), Request.FromString, and the dispatch of requests that come
    from peers (CheckTx, proposals, queries): never an ``exception`` response."""
    from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci
    from medshare.ledger.cometbft.server import FrameBuffer, handle
    from medshare.ledger.cometbft.varint import uvarint

    count = data[0] if data else 0
    sizes, stream = list(data[1 : 1 + count]), data[1 + count :]
    chunks, start = [], 0
    for size in sizes:
        chunks.append(stream[start : start + size])
        start += size
    chunks.append(stream[start:])
    buffer, consumed = FrameBuffer(), 0
    with _app_unchanged(fx, allow_change=lambda: True):
        for chunk in chunks:
            for payload in buffer.feed(chunk):
                consumed += len(uvarint(len(payload))) + len(payload)
                request = abci.Request.FromString(payload)
                kind = request.WhichOneof("value")
                if kind in _SAFE_REQUESTS:
                    response = handle(fx.app, request)
                    if response.WhichOneof("value") == "exception":
                        raise ContractViolation(f"{kind}: {response.exception.error}")
    if consumed + len(buffer) > len(stream):
        raise ContractViolation("the frame buffer holds more than it was fed")


# -- blocks, votes, evidence, proofs --


def _json_doc(data: bytes) -> Any:
    """Parse as the node's block store does (json.loads, its errors counted as the harness's)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise NotADocument(type(exc).__name__) from None


_LEDGER_ERRORS = (_LEDGER + "LedgerFormatError", *_HARNESS)


@target(
    "ledger-block",
    "blocks",
    _LEDGER_ERRORS,
    seeds=lambda fx: [fx.blocks["block"].encode()],
    strategy=fuzz_doc,
)
def _ledger_block(fx: Fixtures, data: bytes) -> None:
    """Block.from_json (header, transactions, both certificates), then its hash and bytes."""
    from medshare.ledger.types import Block

    block = Block.from_json(_json_doc(data))
    _ = block.hash
    block.encode()
    block.tx_merkle_root()


@target(
    "ledger-certificate",
    "blocks",
    _LEDGER_ERRORS,
    seeds=lambda fx: [json.dumps(fx.blocks["certificate"].to_json()).encode()],
    strategy=fuzz_doc,
)
def _ledger_certificate(fx: Fixtures, data: bytes) -> None:
    """CommitCertificate.from_json, then counting its valid signers."""
    from medshare.ledger.types import CommitCertificate, certificate_signers

    cert = CommitCertificate.from_json(_json_doc(data))
    committee = [k.public for k in fx.node_keys[:4]]
    certificate_signers(cert, committee, cert.block_hash, cert.height, fx.chain_id)


@target(
    "ledger-vote",
    "blocks",
    _LEDGER_ERRORS,
    seeds=lambda fx: [json.dumps(v).encode() for v in fx.evidence[0]["proof"]],
    strategy=fuzz_doc,
)
def _ledger_vote(fx: Fixtures, data: bytes) -> None:
    """Vote.from_json, then its signing bytes and signature check."""
    from medshare.ledger.types import Vote

    vote = Vote.from_json(_json_doc(data))
    vote.is_valid(fx.chain_id)


@target(
    "ledger-evidence",
    "blocks",
    (*_LEDGER_ERRORS, "medshare.crypto.signing.InvalidSignature"),
    seeds=lambda fx: [json.dumps(body).encode() for body in fx.evidence],
    strategy=fuzz_doc,
)
def _ledger_evidence(fx: Fixtures, data: bytes) -> None:
    """EVIDENCE bodies (equivocation, conflicting proposals, invalid block) through the
    checks the chain runs on them; the body is canonical JSON first, as in a Tx."""
    from medshare.ledger.types import (
        Equivocation,
        canonical,
        conflicting_proposals_offender,
        invalid_block_offender,
    )

    body = _json_doc(data)
    if not isinstance(body, dict):
        raise NotADocument("a Tx body is an object")
    canonical(body)
    kind = body.get("kind")
    if kind == "equivocation":
        Equivocation.from_body(body).check(fx.chain_id)
    elif kind == "conflicting_proposals":
        conflicting_proposals_offender(body, fx.chain_id)
    else:
        invalid_block_offender(body, fx.chain_id)


@target(
    "ledger-inclusion-proof",
    "blocks",
    ("medshare.ledger.audit.ProofError", *_HARNESS),
    seeds=lambda fx: [json.dumps(fx.blocks["proof"]).encode()],
    strategy=fuzz_doc,
)
def _ledger_inclusion_proof(fx: Fixtures, data: bytes) -> None:
    """audit.check_proof on a transaction's inclusion proof (``ledger check-proof``)."""
    from medshare.ledger import audit

    committee = [k.public.hex() for k in fx.node_keys[:4]]
    audit.check_proof(_json_doc(data), committee, fx.chain_id)


@target(
    "ledger-genesis",
    "blocks",
    _LEDGER_ERRORS,
    seeds=lambda fx: [json.dumps(fx.app._committed().genesis.to_json()).encode()],
    strategy=fuzz_doc,
)
def _ledger_genesis(fx: Fixtures, data: bytes) -> None:
    """Genesis.from_json: the app_state of InitChain."""
    from medshare.ledger.app.genesis import Genesis

    genesis = Genesis.from_json(_json_doc(data))
    _ = genesis.chain_id


# -- the HTTP API between parties --


def _sealed_seeds(fx: Fixtures) -> list[bytes]:
    """A personal-area and an institution-area release (shapes of real ones, random bytes
    inside: the wallet's decoder is the target)."""
    from medshare.api.sealed_record import AreaSeal, SealedRecord
    from medshare.service.areas import Area

    personal = SealedRecord(
        "Observation/o1", Area.PERSONAL, "ab" * 32, os.urandom(80), os.urandom(16), "cd" * 32,
        True, kac_header=os.urandom(200),
    )  # fmt: skip
    seal = AreaSeal("H001", "area-1", "hospital:H001 and dept:03", os.urandom(300), os.urandom(60))
    institution = SealedRecord(
        "Observation/o1", Area.INSTITUTION, "ab" * 32, os.urandom(80), os.urandom(16),
        "cd" * 32, False, seal=seal,
    )  # fmt: skip
    return [json.dumps(r.to_json()).encode() for r in (personal, institution)]


@target(
    "sealed-record",
    "api",
    ("medshare.service.errors.InvalidInput", *_HARNESS),
    seeds=_sealed_seeds,
    strategy=fuzz_doc,
)
def _sealed_record(fx: Fixtures, data: bytes) -> None:
    """SealedRecord.from_json of a hospital's release; what it accepts re-encodes to itself."""
    from medshare.api.sealed_record import SealedRecord

    sealed = SealedRecord.from_json(_json_doc(data))
    if SealedRecord.from_json(sealed.to_json()) != sealed:
        raise AssertionError("a decoded release does not re-encode to itself")


def _request_seeds(fx: Fixtures) -> list[bytes]:
    from medshare.api import signed_requests
    from medshare.crypto.signing import SigningKey

    key = SigningKey(b"\x07" * 32)
    headers = signed_requests.sign(
        key, "dr.a@H001", "GET", "/v1/me", b"", audience=FUZZ_AUDIENCE, now_ms=FUZZ_NOW_MS
    )
    return [json.dumps({"method": "GET", "target": "/v1/me", "body": "", **headers}).encode()]


FUZZ_NOW_MS = 1_800_000_000_000
FUZZ_AUDIENCE = "00112233/H001"


@target(
    "signed-request",
    "api",
    ("medshare.api.signed_requests.RequestRefused", *_HARNESS),
    seeds=_request_seeds,
    strategy=fuzz_doc,
)
def _signed_request(fx: Fixtures, data: bytes) -> None:
    """RequestVerifier.verify of a request (method, target, body, headers) as a server
    sees it; a fresh verifier each time, the signing key enrolled."""
    from medshare.api import signed_requests
    from medshare.crypto.signing import SigningKey

    doc = _json_doc(data)
    if not isinstance(doc, dict):
        raise NotADocument("not an object")
    enrolled = {SigningKey(b"\x07" * 32).public: "dr.a@H001"}
    verifier = signed_requests.RequestVerifier(FUZZ_AUDIENCE, enrolled.get, lambda: FUZZ_NOW_MS)
    headers = {k: v for k, v in doc.items() if isinstance(k, str) and isinstance(v, str)}
    method, target, body = doc.get("method"), doc.get("target"), doc.get("body")
    if not all(isinstance(v, str) for v in (method, target, body)):
        raise NotADocument("method, target and body are strings")
    verifier.verify(method, target, body.encode("utf-8", "surrogatepass"), headers)


# -- FHIR --


@target("fhir-load", "fhir", ("medshare.records.fhir.FhirError",), seeds=lambda fx: fx.fhir_seeds)
def _fhir_load(fx: Fixtures, data: bytes) -> None:
    """fhir.load_any: Bundle, single resource or NDJSON bytes."""
    from medshare.records import fhir

    fhir.load_any(data)


def _service_counts(fx: Fixtures) -> dict[str, int]:
    from sqlalchemy import func, select

    from medshare.service import db

    service = fx.service
    counts = {}
    with service.sessions() as session:
        for name, table in (
            ("patients", db.Patient),
            ("records", db.Record),
            ("wraps", db.Wrap),
            ("principals", db.Principal),
        ):
            counts[name] = session.execute(select(func.count()).select_from(table)).scalar_one()
    counts["blobs"] = sum(len(list(r.ids())) for r in service.blobs.replicas)
    counts["ledger"] = service.ledger.height()
    return counts


@target(
    "fhir-ingest", "fhir", ("medshare.service.errors.ServiceError",), seeds=lambda fx: fx.fhir_seeds
)
def _fhir_ingest(fx: Fixtures, data: bytes) -> str:
    """MedShare.ingest of the bytes at H001: a report or a ServiceError; the rows, blobs and
    ledger entries added match the report, and a rejected input adds nothing."""
    before = _service_counts(fx)
    try:
        report = fx.service.ingest("H001", [data])
    except Exception:
        added = _added(before, _service_counts(fx))
        if any(added.values()):
            raise ContractViolation(f"an ingest that raised stored {added}") from None
        raise
    added = _added(before, _service_counts(fx))
    if added["records"] != report.records or added["patients"] != report.patients:
        raise ContractViolation(f"report {report.as_dict()} but stored {added}")
    if report.records == 0 and report.patients == 0 and any(added.values()):
        raise ContractViolation(f"nothing was ingested but {added} was stored")
    if report.records or report.patients:
        return "stored"
    return "unchanged" if report.unchanged else "rejected"


def _added(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in before}


# -- the CLI --

_CLI_CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    # command: (its arguments, the files (or {text} options) that may be fuzzed)
    "abe-decrypt": (
        "--public auth/public.json --key alice.json --in record.ct --out out.bin",
        ("auth/public.json", "alice.json", "record.ct"),
    ),
    "abe-encrypt": (
        "--public auth/public.json --policy={policy} --in record.txt --out out.ct",
        ("auth/public.json", "{policy}"),
    ),
    "abe-trace": (
        "--authority auth --key alice.json --identities identities.json",
        ("auth/public.json", "auth/registry.json", "alice.json", "identities.json"),
    ),
    "abe-keygen": (
        "--authority auth --id bob@H001 --attrs role:nurse --out bob.json"
        " --identity-key alice.identity.json",
        ("auth/master.json", "auth/registry.json", "alice.identity.json"),
    ),
    "kac-keygen": ("--params kac/params.json --out kac/new.json", ("kac/params.json",)),
    "kac-encrypt": (
        "--params kac/params.json --patient kac/patient.pub.json --class 2 --in record.txt"
        " --out out.ct",
        ("kac/params.json", "kac/patient.pub.json"),
    ),
    "kac-extract": (
        "--params kac/params.json --patient kac/patient.json --classes={classes} --out agg.json",
        ("kac/params.json", "kac/patient.json", "{classes}"),
    ),
    "kac-decrypt": (
        "--params kac/params.json --key kac/agg.json --in kac/record.ct --out out.bin",
        ("kac/params.json", "kac/agg.json", "kac/record.ct"),
    ),
}
_CLI_TEXT = {"{policy}": "hospital:H001 and role:physician", "{classes}": "1,2,5"}


def _cli_seed(fx: Fixtures, slot: str) -> bytes:
    if slot in _CLI_TEXT:
        return _CLI_TEXT[slot].encode()
    return (fx.cli_files / slot).read_bytes()


def _cli_strategy(fx: Fixtures) -> st.SearchStrategy[tuple[str, bytes]]:
    cases = [(cmd, slot) for cmd, (_, slots) in _CLI_CASES.items() for slot in slots]

    def inputs(case: tuple[str, str]) -> st.SearchStrategy[tuple[str, bytes]]:
        command, slot = case
        seed = _cli_seed(fx, slot)
        if slot in _CLI_TEXT:
            data = fuzz_text([seed.decode()]).map(lambda t: t.encode("utf-8", "surrogatepass"))
        else:
            data = fuzz_json([seed])
        return st.tuples(st.just(f"{command} {slot}"), data)

    return st.sampled_from(cases).flatmap(inputs)


def _cli(fx: Fixtures, example: tuple[str, bytes]) -> str:
    """``medshare crypto COMMAND`` with one malformed input file (or text option) through
    Typer's CliRunner: exit 0, or 1/2 with one ``error:`` line on stderr; no traceback."""
    from typer.testing import CliRunner

    from medshare.cli.crypto import app  # the ``crypto`` group alone: Typer rebuilds it per call

    case, data = example
    command, slot = case.split(" ", 1)
    arguments, _ = _CLI_CASES[command]
    work = fx.root / "cli-run"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(fx.cli_files, work)
    text = dict(_CLI_TEXT)
    if slot in text:
        # an argv string cannot hold NUL; other bytes arrive as surrogate escapes
        text[slot] = data.decode("utf-8", "surrogateescape").replace("\x00", "")
    else:
        (work / slot).write_bytes(data)
    args = [command]
    for arg in arguments.split():
        for name, value in text.items():
            arg = arg.replace(name, value)
        is_path = "/" in arg or arg.endswith((".json", ".ct", ".bin", ".txt")) or arg == "auth"
        args.append(str(work / arg) if is_path and not arg.startswith("--") else arg)
    return _cli_verdict(CliRunner().invoke(app, args))


def _cli_verdict(result: Any) -> str:
    """The CLI contract: exit 0, or 1/2 with one ``error:`` line on stderr; an exception
    escaping the command is re-raised (with its traceback) for the runner to classify."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception.with_traceback(result.exc_info[2] if result.exc_info else None)
    if "Traceback" in result.output:
        raise ContractViolation("a traceback was printed")
    if result.exit_code not in (0, 1, 2):
        raise ContractViolation(f"exit code {result.exit_code}")
    if result.exit_code:
        lines = result.stderr.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith("error:"):
            raise ContractViolation(f"error output is not one 'error:' line: {result.stderr!r}")
    return f"exit {result.exit_code}"


TARGETS["cli-crypto"] = Target(
    name="cli-crypto",
    area="cli",
    summary=(_cli.__doc__ or "").strip().split("\n")[0],
    allowed=(),
    strategy=_cli_strategy,
    call=_cli,
    seeds=lambda fx: [
        (f"{cmd} {slot}", _cli_seed(fx, slot))
        for cmd, (_, slots) in _CLI_CASES.items()
        for slot in slots
    ],
)


@target(
    "cli-ledger-check-proof",
    "cli",
    (),
    seeds=lambda fx: [json.dumps(fx.blocks["proof"]).encode()],
)
def _cli_check_proof(fx: Fixtures, data: bytes) -> str:
    """``medshare ledger check-proof FILE`` on a malformed inclusion proof (same contract
    as the crypto commands)."""
    from typer.testing import CliRunner

    from medshare.cli.ledger import app

    path = fx.root / "proof.json"
    path.write_bytes(data)
    return _cli_verdict(CliRunner().invoke(app, ["check-proof", str(path)]))


# --- regression examples (inputs that once failed; fixed since) -------------------------------


def _doc_bytes(kind: str, **fields: Any) -> bytes:
    return json.dumps({"format": "medshare", "type": kind, "version": 1, **fields}).encode()


def _proof_with(fx: Fixtures, **changes: Any) -> bytes:
    """The fixture's inclusion proof with fields of its parts changed (``merkle={...}``)."""
    proof = json.loads(json.dumps(fx.blocks["proof"]))
    for part, fields in changes.items():
        proof[part].update(fields)
    return json.dumps(proof).encode()  # json.dumps writes float("inf") as Infinity


# Inputs that once broke a contract, by target; each is judged before the generated ones in
# every run (CI and ``medshare bench fuzz``). An entry is the input itself or a function of
# the fixtures that makes it (for inputs that need a valid signed part).
REGRESSIONS: dict[str, list[Any]] = {
    # encoding.loads: an integer past int()'s 4300-digit limit was a bare ValueError, nesting
    # past the recursion limit a RecursionError, an unhashable version a TypeError
    "abe-public-key": [b'{"format": "medshare", "version": ' + b"1" * 5000 + b"}"],
    "kac-patient-secret": [b"[" * 50_000 + b"]" * 50_000],
    "kac-ciphertext": [
        _doc_bytes("kac-ciphertext", version=[1]),
        _doc_bytes("kac-ciphertext", version={"v": 1}),
    ],
    "issuance-messages": [("IssuedKey", _doc_bytes("abe-issued-key", version=[]))],
    # encoding.field: a time that leaves the datetime range in UTC was an OverflowError
    "hkac-share": [
        _doc_bytes(
            "hkac-share",
            share_id="00" * 16,
            grantee="g",
            scope_kind="all",
            scope=[],
            created="0001-01-01T00:00:00+01:00",
        )
    ],
    # recover_seed: an empty or blank share was an IndexError while naming it
    "recovery-slip39": [b"", b"   ", b" \na b c"],
    # audit.check_proof: Infinity as the Merkle index was an OverflowError
    "ledger-inclusion-proof": [
        lambda fx: _proof_with(fx, merkle={"index": float("inf")}),
        lambda fx: _proof_with(fx, merkle={"size": float("-inf")}),
        # ledger.types._int: a header height past 2^53 decoded, then failed to hash (a
        # LedgerFormatError out of check_proof, not a ProofError); a vote round likewise
        lambda fx: _proof_with(fx, header={"height": 2**53 + 1}),
        lambda fx: _proof_with(fx, certificate={"round": 10**80}),
    ],
    # fhir: a Bundle type that is a list was a TypeError (set lookup); a resource nested
    # 600 deep parsed, then was a RecursionError in copy.deepcopy
    "fhir-load": [
        b'{"resourceType": "Bundle", "type": []}',
        b'{"resourceType": "Patient", "extension": ' + b"[" * 600 + b"]" * 600 + b"}",
    ],
    "fhir-ingest": [
        b'{"resourceType": "Bundle", "type": {}}',
        b'{"resourceType": "Patient", "id": "p9", "x": ' + b"[" * 600 + b"]" * 600 + b"}",
    ],
    # cli.ledger check-proof: nesting past the parser's limit was a RecursionError; and
    # cli.errors.fail read a message quoting the input ("[/]") as Rich markup: MarkupError
    "cli-ledger-check-proof": [
        b"[" * 5000 + b"]" * 5000,
        b'{"type": "medshare-inclusion-proof", "version": "[/]"}',
    ],
    "cli-crypto": [
        # crypto._load_identities: the same nesting was a RecursionError
        lambda fx: ("abe-trace identities.json", b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        # cli.errors.fail: the MarkupError, and a line break in quoted input split the
        # error over two lines
        ("kac-extract {classes}", b"[/x]"),
        ("kac-extract {classes}", b"1\n2x"),
    ],
}


def regression_inputs(name: str, fx: Fixtures) -> list[Any]:
    """The regression examples of a target, made concrete for these fixtures."""
    return [e(fx) if callable(e) else e for e in REGRESSIONS.get(name, [])]


# --- the runner --------------------------------------------------------------------------------


def _as_bytes(example: Any) -> tuple[str | None, bytes]:
    if isinstance(example, tuple):
        return str(example[0]), example[1]
    if isinstance(example, str):
        return None, example.encode("utf-8", "surrogatepass")
    return None, bytes(example)


def _trace_line(exc: BaseException) -> str:
    """Where it was raised, one line: the innermost medshare frames and the raising frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/medshare/" in f.filename and "/bench/fuzz" not in f.filename]
    chosen = ours[-3:]
    if frames and (not chosen or frames[-1] is not chosen[-1]):
        chosen.append(frames[-1])
    parts = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in chosen]
    return " > ".join(parts) or type(exc).__name__


@dataclass
class _Stats:
    """One target's tally: examples judged, answers, errors by type, failures by where."""

    examples: int = 0
    accepted: int = 0
    errors: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    failures: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    harness_error: str | None = None

    def judge(
        self, t: Target, fx: Fixtures, allowed: tuple[type[BaseException], ...], example: Any
    ) -> None:
        self.examples += 1
        try:
            outcome = t.call(fx, example)
        except ContractViolation as exc:
            self._fail(example, exc)
        except allowed as exc:
            self.errors[type(exc).__name__] += 1
        except Exception as exc:  # the point of fuzzing: anything else is a finding
            self._fail(example, exc)
        else:
            self.accepted += 1
            if isinstance(outcome, str):  # how a target that never raises answered
                self.outcomes[outcome] += 1

    def _fail(self, example: Any, exc: BaseException) -> None:
        where = _trace_line(exc)
        signature = (type(exc).__name__, where)
        case, data = _as_bytes(example)
        entry = self.failures.get(signature)
        if entry is not None:
            entry["count"] += 1
            if len(data) >= entry["input_bytes"]:
                return
        message = str(exc).splitlines()[0][:300] if str(exc) else ""
        shown = data[:_MAX_HEX_BYTES]
        self.failures[signature] = {
            "exception": f"{type(exc).__name__}: {message}",
            "traceback": where,
            **({"case": case} if case is not None else {}),
            "input_hex": shown.hex(),
            "input_bytes": len(data),
            "input_truncated": len(shown) < len(data),
            "count": entry["count"] if entry else 1,
        }


def run_inputs(t: Target, fx: Fixtures, inputs: Sequence[Any]) -> dict[str, Any]:
    """Judge the given inputs (seeds, regression examples) under ``t``'s contract."""
    stats = _Stats()
    allowed = t.allowed_errors()
    for example in inputs:
        stats.judge(t, fx, allowed, example)
    return _summary(t, stats, 0.0)


def run_target(
    t: Target, fx: Fixtures, examples: int, *, seed: int | None = None
) -> dict[str, Any]:
    """Run ``examples`` Hypothesis-generated inputs (after the regressions) through ``t``.

    Shrinking is off: a run judges every example and keeps the smallest input of each
    distinct failure instead, so one crash does not end the campaign for its target.
    Without ``seed`` the inputs are derandomized (the same on every run, as CI needs).
    """
    stats = _Stats()
    started = time.perf_counter()
    allowed = t.allowed_errors()
    try:  # the fixtures first: one that cannot be built is one harness error, not N failures
        strategy = t.strategy(fx)
    except Exception as exc:
        stats.harness_error = f"fixtures: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        return _summary(t, stats, time.perf_counter() - started)
    for example in regression_inputs(t.name, fx):
        stats.judge(t, fx, allowed, example)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=seed is None,
        report_multiple_bugs=False,
    )
    @given(strategy)
    def body(example: Any) -> None:
        stats.judge(t, fx, allowed, example)

    if seed is not None:
        body = hypothesis_seed(seed)(body)
    try:
        body()
    except Exception as exc:  # Hypothesis itself gave up: the target ran incompletely
        stats.harness_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return _summary(t, stats, time.perf_counter() - started)


def _summary(t: Target, stats: _Stats, seconds: float) -> dict[str, Any]:
    failures = sorted(stats.failures.values(), key=lambda f: -f["count"])
    return {
        "target": t.name,
        "area": t.area,
        "summary": t.summary,
        "allowed": [name.rpartition(".")[2] for name in t.allowed],
        "examples": stats.examples,
        "accepted": stats.accepted,
        "errors": dict(stats.errors.most_common()),
        "outcomes": dict(stats.outcomes.most_common()),
        "failures": failures,
        "failed_examples": sum(f["count"] for f in failures),
        "harness_error": stats.harness_error,
        "seconds": round(seconds, 2),
    }


def run(
    examples: int = DEFAULT_EXAMPLES,
    *,
    targets: Sequence[str] | None = None,
    seed: int | None = None,
    progress: Callable[[str], None] | None = None,
    root: Path | None = None,
) -> dict[str, Any]:
    """The campaign: every target (or those named) with ``examples`` inputs each."""
    names = list(targets) if targets else list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise ValueError(f"unknown fuzz target(s): {', '.join(unknown)}")
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    rows = []
    with Fixtures(root) as fx:
        for i, name in enumerate(names, start=1):
            say(f"fuzzing {name} ({i}/{len(names)}, {examples} examples)")
            rows.append(run_target(TARGETS[name], fx, examples, seed=seed))
    return {
        "examples_per_target": examples,
        "seed": seed,
        "derandomized": seed is None,
        "targets": rows,
        "failures": sum(len(r["failures"]) for r in rows),
        "harness_errors": sum(1 for r in rows if r["harness_error"]),
        "runtime_s": round(time.perf_counter() - started, 1),
    }
