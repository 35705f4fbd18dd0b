"""Real consensus cores on the simulated network: the committee-vs-all-node experiment.

:func:`run` builds ``N`` nodes, each running a real :class:`~medshare.ledger.consensus.Consensus`
core (the real chain rules of ``chain.py``, real Ed25519 votes and proposals) inside a
real :class:`~medshare.ledger.node.NodeRuntime` (which performs the core's actions and the
Byzantine rewriting), plugged into a :class:`~medshare.ledger.sim.Simulator` through a
simulator-backed ``Transport`` and ``Clock`` that charge sizes and CPU.
``committee == nodes`` is the all-node BFT baseline; ``committee < nodes`` elects a
committee of ``m`` per epoch. Everything else is the same code and the same rules in
both modes, so the baseline is fair (DESIGN §4, §7).

Dissemination (same in both modes, no relay, no gossip)
-------------------------------------------------------
* A proposal goes directly from its proposer to all other ``N − 1`` nodes — the members of
  that height's committee first, then the other nodes in index order (the nodes that
  vote are served first; in all-node mode every node is a member). Non-members need the
  block to replicate the chain.
* A vote goes directly from a committee member to the other committee members only.
* A node that does not see the votes learns that height ``h`` committed from a certificate:
  f+1 members of ``h``'s committee (at least one of them honest and alive; which f+1
  rotates with ``h`` like the proposer, so no member carries the notices of a whole
  epoch on its uplink), on committing ``h``, each send a small *commit notice* (the
  2f+1-precommit certificate) to
  every node outside the committee, and every next proposal carries the certificate of
  the block before it as ``last_commit``. The node checks it against the block it holds
  from the proposal (a notice that overtakes its proposal waits for it). In all-node mode
  there is nobody outside the committee, so the notice costs nothing there; in committee
  mode it costs (f+1)(N − m) small messages per block, counted like every other message.
  A node that holds another block for that slot asks one peer (the sender of the
  certificate) for certified blocks at once; a node that is otherwise behind
  (``RequestBlocks``: e.g. the proposal of h+1, carrying h's certificate, overtook the
  proposal of h from a slower uplink) waits one propose timeout for the block in flight,
  then asks a peer (committee members first).
* Retransmission: direct sends are never repeated, so after a partition heals the votes
  sent during it are lost. Every node regossips on a slow tick (twice the propose timeout,
  at least 6 s): if it committed nothing since the previous tick it re-sends its own
  votes (and proposal) of the current height; a lost sync request is retried elsewhere.
  Healthy runs decide a height well within one tick, so the tick never sends.

Transactions
------------
Pre-generated, validly signed by a few client keys (generated once per process, outside
any measurement) and assumed already gossiped to every mempool before the run: a
proposer takes the next ``block_txs`` of one shared, nonce-ordered pool. Tx gossip is
thus not counted (it is the same ``O(N)`` per tx in both modes).

What each node is charged (simulated CPU, :class:`~medshare.ledger.sim.CostModel`)
---------------------------------------------------------------------------------
* ``per_message_us`` for every message it receives (the simulator's fixed cost).
* ``verify_us`` for every Ed25519 verification its core (or its chain rules) actually
  performs — vote and proposal signatures, commit-certificate signatures, proof-of-lock
  votes — counted once per node per distinct signed message (a node remembers what it
  verified, as a real node would cache it; a restarted node forgets). Stale votes the
  core drops unread cost only ``per_message_us``.
* ``verify_us`` once per transaction, the first time its chain rules apply a block
  containing it (received in a proposal or a sync reply, or built by itself as proposer):
  the same per-tx cost in both modes.
* SHA-256 of the block bytes (``hash_us_per_kb``) for every proposal or synced block it
  receives, and for the block it builds.
* ``sign_us`` for every signature it makes (own votes and proposals, Byzantine twins).
* Uplink bandwidth for every byte it sends (by the simulator). Message sizes are the real
  canonical JSON sizes: a vote ≈ 330 B; a proposal = the canonical block (header,
  transactions, ``last_commit`` certificate) plus the proposal's signature fields.

Python-side shortcuts (what is real and what is charged)
--------------------------------------------------------
Signatures are real but, to keep 64 cores in one process fast, verification is memoised
per run: while :func:`run` executes, ``medshare.crypto.signing.verify`` is replaced by a
wrapper that really verifies each distinct (key, signature, domain, message) once, reuses
the result (a pure function of its inputs) and counts, per node, the verifications to
charge. Transaction signatures of the pre-generated pool are skipped through the core's
``verified=`` callback (they were valid when signed) but charged as above; any other
transaction (e.g. a Byzantine forgery) is really verified. The simulator charges
everything, so the shortcuts change the wall time, not the simulated time.

Latency is measured from the first proposal of a height to the time the 2f+1-th honest
member of that height's committee commits it (the decision point; non-members learn the
block at the latest one notice later). Safety: no two honest nodes commit different
blocks at one height. Evidence: what the cores report (double votes seen directly,
proof-of-lock votes), plus two driver checks that replace relay: every certificate a node
receives is compared with the votes it received itself (a vote sent in two versions to
two halves meets its twin there), and a node that receives a vote for a block other than
the proposal it holds for that round fetches that proposal from the voter (two signed
proposals for one slot are evidence; an honest run never fetches). Evidence is reported,
not turned into EVIDENCE transactions (no ejection during a run).

Determinism: one seed drives the network (the simulator's RNG), the node keys and hence
the committees; a run is reproducible from ``(Scenario, CostModel)`` and
:attr:`SimReport.trace_digest` summarises it. A failing test prints the seed.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from medshare.crypto import signing
from medshare.ledger import chain, election
from medshare.ledger.consensus import ConflictingProposals, ConsensusConfig, Proposal, signer
from medshare.ledger.node import (
    Behaviour,
    CommitNotice,
    Mempool,
    Message,
    NodeRuntime,
    SyncReply,
    SyncRequest,
    TimerEvent,
    TxGossip,
)
from medshare.ledger.sim.costs import CostModel
from medshare.ledger.sim.network import LinkModel, Simulator
from medshare.ledger.store import MemoryStore
from medshare.ledger.types import (
    Block,
    CommitCertificate,
    Equivocation,
    Tx,
    TxKind,
    Vote,
    VoteKind,
    canonical,
    quorum,
)

__all__ = [
    "INSTITUTION_LINKS",
    "SIM_CONSENSUS",
    "Behaviour",
    "Crash",
    "PartitionEvent",
    "Scenario",
    "SimReport",
    "initial_committee",
    "node_keys",
    "run",
    "sim_consensus",
    "tx_pool",
]

#: Institution links: 5–80 ms one way, 0–2 ms jitter, uplinks 100 Mbit/s – 1 Gbit/s.
INSTITUTION_LINKS = LinkModel(
    latency_ms_min=5.0,
    latency_ms_max=80.0,
    jitter_ms=2.0,
    bandwidth_mbps=100.0,
    bandwidth_mbps_max=1000.0,
)

#: Timeouts for the simulated WAN when a scenario does not derive them (see
#: :func:`sim_consensus`).
SIM_CONSENSUS = ConsensusConfig(
    propose_timeout_ms=3000,
    propose_delta_ms=1000,
    prevote_timeout_ms=1000,
    prevote_delta_ms=500,
    precommit_timeout_ms=1000,
    precommit_delta_ms=500,
)
#: Rough canonical size of one pool transaction and of a block's fixed part, for timeouts.
_TX_BYTES_ESTIMATE, _BLOCK_BYTES_ESTIMATE = 400, 4000


def sim_consensus(nodes: int, block_txs: int, links: LinkModel) -> ConsensusConfig:
    """Timeouts for a scenario, the same formula in both modes (they depend on N and the
    block size, never on the committee size): the propose timeout is at least 3 s and at
    least twice the time the slowest uplink needs to send a block to all N − 1 nodes (a
    1,000-tx block to 255 nodes takes ~8 s at 100 Mbit/s)."""
    block_bytes = _BLOCK_BYTES_ESTIMATE + _TX_BYTES_ESTIMATE * block_txs
    fan_out_ms = (nodes - 1) * block_bytes * 8 / (links.bandwidth_mbps * 1000.0)
    propose = max(3000, math.ceil(2 * fan_out_ms))
    return replace(
        SIM_CONSENSUS,
        propose_timeout_ms=propose,
        propose_delta_ms=propose // 3,
        max_block_txs=block_txs,
    )


CLIENTS = 8
_SMALL_MESSAGE_BYTES = 64  # a sync request or a proposal request


@dataclass(frozen=True)
class Crash:
    """Node ``node`` dies at ``at_ms`` (simulated) and, if ``recover_ms`` is set, restarts
    then from its simulated disk (committed blocks and consensus WAL)."""

    node: int
    at_ms: float
    recover_ms: float | None = None


@dataclass(frozen=True)
class PartitionEvent:
    """From ``at_ms`` only nodes of the same group talk (unlisted nodes are isolated);
    healed at ``heal_ms`` if given."""

    groups: tuple[frozenset[int], ...]
    at_ms: float
    heal_ms: float | None = None


@dataclass(frozen=True)
class Scenario:
    """One simulated run. ``committee == nodes`` is all-node BFT.

    The run stops when ``blocks`` heights are decided (2f+1 honest committee members
    committed them), or at ``duration_ms`` if ``blocks`` is None, and in any case at
    ``max_sim_ms`` (a liveness failure then shows as fewer committed blocks)."""

    seed: int = 0
    nodes: int = 4
    committee: int = 4
    epoch_length: int = 10
    block_txs: int = 10
    blocks: int | None = 10
    duration_ms: float | None = None
    max_sim_ms: float = 600_000.0
    links: LinkModel = INSTITUTION_LINKS
    costs: CostModel = field(default_factory=CostModel.fixed)
    byzantine: Mapping[int, Behaviour] = field(default_factory=dict)
    crashes: tuple[Crash, ...] = ()
    partitions: tuple[PartitionEvent, ...] = ()
    consensus: ConsensusConfig | None = None  # None: sim_consensus(nodes, block_txs, links)
    # Heights in flight (chain.ChainConfig.certificate_lag; 1: one at a time) and heights
    # one leader proposes back to back (proposer_run).
    certificate_lag: int = 1
    proposer_run: int = 1
    # None: the proposer (and each commit-notice sender) sends to every node directly.
    # F: nodes outside the height's committee get proposals and notices through a relay
    # tree of fan-out F among themselves (the voters still get proposals directly).
    relay_fanout: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "seed",
            "nodes",
            "committee",
            "epoch_length",
            "block_txs",
            "certificate_lag",
            "proposer_run",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int")
        if self.nodes < 1 or not 1 <= self.committee <= self.nodes:
            raise ValueError("need 1 <= committee <= nodes")
        if self.epoch_length < 1 or self.block_txs < 0:
            raise ValueError("epoch_length must be >= 1 and block_txs >= 0")
        if self.blocks is None and self.duration_ms is None:
            raise ValueError("give blocks or duration_ms")
        if self.blocks is not None and self.blocks < 1:
            raise ValueError("blocks must be >= 1")
        for index, behaviour in self.byzantine.items():
            if not 0 <= index < self.nodes:
                raise ValueError(f"byzantine node {index} out of range")
            Behaviour(behaviour)
        for crash in self.crashes:
            if not 0 <= crash.node < self.nodes:
                raise ValueError(f"crashed node {crash.node} out of range")
        fanout = self.relay_fanout
        if fanout is not None and (isinstance(fanout, bool) or not isinstance(fanout, int)):
            raise TypeError("relay_fanout must be an int or None")
        if fanout is not None and fanout < 1:
            raise ValueError("relay_fanout must be >= 1")

    @property
    def mode(self) -> str:
        return "all-node" if self.committee == self.nodes else "committee"


@dataclass(frozen=True)
class SimReport:
    """What one run measured (simulated time throughout).

    ``committed_blocks``: heights 1..k decided (2f+1 honest members of the height's
    committee committed it); ``sim_ms``: when the last requested height was decided (or
    when the run stopped); ``tps`` = committed txs / ``sim_ms``; ``steady_tps``: the rate
    once the first quarter of the heights is decided (txs of heights k/4+1..k over the
    time between those decisions), so that filling a pipeline of overlapping heights does
    not count (close to ``tps`` when heights run one at a time; ``tps`` below 4 heights);
    ``latency_ms``: mean over decided heights of (first proposal sent → decided);
    ``messages_per_block`` and ``bytes_per_block``: everything sent (proposals, votes,
    notices, sync, retransmissions) per decided height, bytes as put on uplinks, leaving
    out what was about heights after the last decided one;
    ``cpu_utilisation[i]``: node i's busy time / ``sim_ms``; ``uplink_utilisation[i]``:
    the time node i's uplink was transmitting / ``sim_ms``; ``view_changes``: decided
    heights whose certificate is from round > 0."""

    seed: int
    mode: str
    nodes: int
    committee: int
    block_txs: int
    committed_blocks: int
    committed_txs: int
    sim_ms: float
    tps: float
    steady_tps: float
    latency_ms: float
    messages_per_block: float
    bytes_per_block: float
    messages_by_kind: Mapping[str, int]
    cpu_utilisation: tuple[float, ...]
    uplink_utilisation: tuple[float, ...]
    view_changes: int
    safe: bool
    safety_violations: tuple[str, ...]
    evidence: tuple[tuple[int, str, int], ...]  # (finder, kind, offender), in order found
    honest_heights: tuple[int, ...]  # committed height of each honest node (-1: crashed)
    trace_digest: str


# --- keys, transactions, configuration -----------------------------------------------------------


def node_keys(seed: int, nodes: int) -> list[signing.SigningKey]:
    """The nodes' Ed25519 keys, derived from the seed (so the seed also drives elections)."""
    return [
        signing.SigningKey(hashlib.sha256(f"medshare.sim/{seed}/node/{i}".encode()).digest())
        for i in range(nodes)
    ]


def chain_config(scenario: Scenario, keys: list[signing.SigningKey]) -> chain.ChainConfig:
    validators = tuple(
        election.Validator(k.public, f"inst{i:03d}", 1000) for i, k in enumerate(keys)
    )
    return chain.ChainConfig(
        f"medshare-sim-{scenario.seed}",
        validators,
        epoch_length=scenario.epoch_length,
        committee_size=scenario.committee,
        certificate_lag=scenario.certificate_lag,
        proposer_run=scenario.proposer_run,
    )


def initial_committee(scenario: Scenario) -> tuple[int, ...]:
    """Node indices of the committee elected at genesis (height 1 onwards, first epoch)."""
    keys = node_keys(scenario.seed, scenario.nodes)
    index = {k.public: i for i, k in enumerate(keys)}
    _, state = chain.genesis(chain_config(scenario, keys))
    return tuple(index[p] for p in state.committee)


_CLIENT_KEYS = [
    signing.SigningKey(hashlib.sha256(f"medshare.sim/client/{c}".encode()).digest())
    for c in range(CLIENTS)
]


def pool_tx(i: int, chain_id: str) -> Tx:
    """Transaction ``i`` of the workload: client ``i % C``'s nonce ``i // C``, so any
    committed prefix of length k leaves exactly txs k, k+1, ... applicable."""
    client, nonce = _CLIENT_KEYS[i % CLIENTS], i // CLIENTS
    body = {"record": f"sim-{i:07d}", "patient": f"p{i % 997}", "dept": "0304",
            "digest": hashlib.sha256(i.to_bytes(8, "big")).hexdigest()}  # fmt: skip
    return Tx.create(TxKind.ANCHOR_RECORD, body, nonce, client, chain=chain_id)


def tx_pool(count: int, chain_id: str) -> list[Tx]:
    """The first ``count`` workload transactions for the chain ``chain_id``."""
    return [pool_tx(i, chain_id) for i in range(count)]


class _TxSource:
    """The shared, pre-gossiped pool: a proposer takes the next txs its state allows.

    Signed lazily, as proposers reach them (a run of fixed duration does not know how many
    it will use); signing pool txs is the clients' work, never charged to a node."""

    def __init__(self, chain_id: str) -> None:
        self.chain_id = chain_id
        self.txs: list[Tx] = []
        self.ids: set[int] = set()
        self.clients = [k.public for k in _CLIENT_KEYS]

    def take(self, start: int, limit: int) -> tuple[Tx, ...]:
        while len(self.txs) < start + limit:
            tx = pool_tx(len(self.txs), self.chain_id)
            self.txs.append(tx)
            self.ids.add(id(tx))
        return tuple(self.txs[start : start + limit])


class _PoolMempool(Mempool):
    """One node's view of the pre-gossiped pool: admits nothing, proposes the next txs its
    state allows, and charges each pool tx one verification the first time this node's
    chain rules apply it (any other tx is really verified, and metered)."""

    def __init__(self, source: _TxSource, node: _Node) -> None:
        super().__init__()
        self._source, self._node = source, node

    def offer(self, tx: Tx, txid: str, next_nonce: Callable[[bytes], int]) -> str | None:
        return "the simulated mempool is pre-gossiped"

    def take(self, limit: int, next_nonce: Callable[[bytes], int]) -> tuple[Tx, ...]:
        start = sum(next_nonce(c) for c in self._source.clients)
        return self._source.take(start, limit)

    def is_verified(self, tx: Tx) -> bool:
        key, node = id(tx), self._node
        if key not in self._source.ids:
            return False
        if key not in node.verified_txs:
            node.verified_txs.add(key)
            node.pending_txs += 1
        return True


# --- metered signature verification ---------------------------------------------------------------


class _SignatureMeter:
    """Memoised ``signing.verify`` that counts, per node, the verifications to charge."""

    def __init__(self, real: Callable[[bytes, bytes, bytes, bytes], None]) -> None:
        self._real = real
        self._cache: dict[tuple[bytes, bytes, bytes, bytes], tuple[int, bool]] = {}
        self.node: _Node | None = None

    def verify(self, public: bytes, signature: bytes, domain: bytes, message: bytes) -> None:
        key = (public, signature, domain, message)
        entry = self._cache.get(key)
        if entry is None:
            try:
                self._real(public, signature, domain, message)
                ok = True
            except signing.InvalidSignature:
                ok = False
            entry = (len(self._cache), ok)
            self._cache[key] = entry
        node = self.node
        if node is not None and entry[0] not in node.verified_sigs:
            node.verified_sigs.add(entry[0])
            node.pending_verifies += 1
        if not entry[1]:
            raise signing.InvalidSignature("signature does not verify")


_ACTIVE = False


@contextmanager
def _metered_signatures() -> Iterator[_SignatureMeter]:
    global _ACTIVE
    if _ACTIVE:
        raise RuntimeError("simulated runs do not nest")
    real = signing.verify
    meter = _SignatureMeter(real)
    signing.verify = meter.verify  # type: ignore[assignment]
    _ACTIVE = True
    try:
        yield meter
    finally:
        signing.verify = real  # type: ignore[assignment]
        _ACTIVE = False


# --- sizes ----------------------------------------------------------------------------------------


def _txs_bytes(txs: tuple[Tx, ...]) -> int:
    """Bytes the txs add to a canonical JSON list: each encoding plus the commas."""
    return sum(len(tx.encode()) for tx in txs) + max(0, len(txs) - 1)


def _shell(block: Block) -> dict:
    return Block(block.header, (), block.last_commit, block.certificate).to_json()


def _proposal_bytes(p: Proposal) -> int:
    doc = {**p.proof(), "block": _shell(p.block), "pol_votes": [v.to_json() for v in p.pol_votes]}
    return len(canonical(doc)) + _txs_bytes(p.block.txs)


# --- the driver: NodeRuntime instances on simulator-backed ports ----------------------------------


@dataclass(frozen=True)
class _Fetch:
    """Driver check: send me your proposal for (height, round) if it is for ``block_hash``."""

    height: int
    round: int
    block_hash: str


@dataclass(frozen=True)
class _Fetched:
    proposal: Proposal


_KINDS: dict[type, str] = {
    Proposal: "proposal",
    Vote: "vote",
    CommitNotice: "commit_notice",
    SyncRequest: "sync_request",
    SyncReply: "sync_reply",
    TxGossip: "tx",
    _Fetch: "proposal_request",
    _Fetched: "proposal_reply",
}


@dataclass(eq=False)
class _Node:
    index: int
    key: signing.SigningKey
    behaviour: Behaviour | None
    store: MemoryStore = field(default_factory=MemoryStore)  # the simulated disk
    runtime: NodeRuntime | None = None  # None while crashed
    verified_sigs: set[int] = field(default_factory=set)
    verified_txs: set[int] = field(default_factory=set)
    pending_verifies: int = 0
    pending_txs: int = 0
    signed: set[bytes] = field(default_factory=set)
    seen_votes: dict[int, dict[tuple[bytes, int, VoteKind], Vote]] = field(default_factory=dict)
    reported: set[tuple[Any, ...]] = field(default_factory=set)
    proposals: dict[tuple[int, int], Proposal] = field(default_factory=dict)  # first per slot
    fetched: set[tuple[int, int, str]] = field(default_factory=set)
    relayed: set[tuple[str, int, int]] = field(default_factory=set)  # (kind, height, round)

    @property
    def honest(self) -> bool:
        return self.behaviour is None

    @property
    def height(self) -> int:
        return self.store.height()


class _SimTransport:
    """Node ``node``'s uplink: proposals to the height's committee first, then the others;
    votes to the committee only; everything through :meth:`_Run.send` (sizes, CPU)."""

    def __init__(self, run: _Run, node: _Node) -> None:
        self._run, self._node = run, node

    def send(self, dest: int | bytes, payload: Message) -> None:
        self._run.send(self._node, int(dest), payload)  # type: ignore[arg-type]

    def broadcast(self, payload: Message) -> None:
        for dest in self.recipients(payload):
            self._run.send(self._node, dest, payload)

    def recipients(self, payload: Message) -> list[int]:
        height = payload.height if isinstance(payload, Proposal | Vote) else None
        members = self._run.members(self._node, height)
        if isinstance(payload, Vote):
            return members
        if isinstance(payload, Proposal) and self._run.s.relay_fanout is not None:
            return members  # the other members feed the relay tree (_Run._relay)
        inside = set(members)
        return members + [
            d for d in range(self._run.s.nodes) if d != self._node.index and d not in inside
        ]

    def peers(self) -> list[int]:
        return self.recipients(SyncRequest(0))


class _SimClock:
    def __init__(self, run: _Run, node: _Node) -> None:
        self._run, self._index = run, node.index
        self._node = node

    def now_ms(self) -> int:
        self._run.charge(self._node)
        return int(self._run.sim.node_time(self._index))

    def schedule(self, delay_ms: int, event: TimerEvent) -> None:
        self._run.charge(self._node)
        self._run.sim.schedule(self._index, delay_ms, event)


class _Run:
    def __init__(self, scenario: Scenario, meter: _SignatureMeter) -> None:
        s = scenario
        self.s = s
        self.meter = meter
        self.sim = Simulator(s.nodes, s.links, s.costs, seed=s.seed)
        self.costs = s.costs
        keys = node_keys(s.seed, s.nodes)
        self.index_of = {k.public: i for i, k in enumerate(keys)}
        self.config = chain_config(s, keys)
        base = s.consensus or sim_consensus(s.nodes, s.block_txs, s.links)
        self.consensus = replace(base, max_block_txs=s.block_txs)
        self.tick_ms = max(6000, 2 * self.consensus.propose_timeout_ms)
        self.source = _TxSource(self.config.chain_id)
        self.nodes = [_Node(i, k, s.byzantine.get(i)) for i, k in enumerate(keys)]
        self.committees: dict[int, tuple[int, ...]] = {}
        self.sizes: dict[bytes, int] = {}
        self.hashes: dict[bytes, str] = {}
        self.kinds: Counter[str] = Counter()
        # Messages and bytes about each height, so that heights still in flight when the run
        # stops (many, with overlapping heights) are not charged to the decided ones.
        self.sent_for: dict[int, int] = {}
        self.bytes_for: dict[int, int] = {}
        self.proposed_at: dict[int, float] = {}
        self.member_commits: dict[int, int] = {}
        self.decided_at: dict[int, float] = {}
        self.decided_round: dict[int, int] = {}
        self.canonical: dict[int, Block] = {}
        self.violations: list[str] = []
        self.evidence: list[tuple[int, str, int]] = []

    # --- running ---------------------------------------------------------------------------

    def go(self) -> SimReport:
        s, sim = self.s, self.sim
        for node in self.nodes:
            self._boot(node, catch_up=False)
        faults: list[tuple[float, int, str, Any]] = []
        seq = itertools.count()
        for crash in s.crashes:
            faults.append((crash.at_ms, next(seq), "crash", crash.node))
            if crash.recover_ms is not None:
                faults.append((crash.recover_ms, next(seq), "recover", crash.node))
        for part in s.partitions:
            faults.append((part.at_ms, next(seq), "partition", part.groups))
            if part.heal_ms is not None:
                faults.append((part.heal_ms, next(seq), "heal", None))
        heapq.heapify(faults)
        stop = s.max_sim_ms if s.duration_ms is None else min(s.max_sim_ms, s.duration_ms)
        handler = self._handle
        while s.blocks is None or s.blocks not in self.decided_at:
            until = min(faults[0][0], stop) if faults else stop
            if sim.run(handler, until_ms=until, max_events=1):
                continue
            if faults and sim.now_ms >= faults[0][0]:
                _, _, kind, arg = heapq.heappop(faults)
                self._fault(kind, arg)
                continue
            break  # idle, or the time limit
        return self._report()

    def _fault(self, kind: str, arg: Any) -> None:
        if kind == "crash":
            node = self.nodes[arg]
            self.sim.crash(arg)
            if node.runtime is not None:
                node.runtime.halt()
            node.runtime = None  # memory lost; the store (blocks and WAL) survives
            node.verified_sigs, node.verified_txs = set(), set()
            node.seen_votes, node.pending_verifies, node.pending_txs = {}, 0, 0
            node.proposals, node.fetched, node.relayed = {}, set(), set()
        elif kind == "recover":
            node = self.nodes[arg]
            if node.runtime is None:
                self.sim.recover(arg)
                self._boot(node, catch_up=True)
        elif kind == "partition":
            self.sim.partition([set(g) for g in arg])
        else:
            self.sim.heal()

    def _boot(self, node: _Node, *, catch_up: bool) -> None:
        """Start (or restart from the simulated disk, re-verified and charged) a node."""
        node.runtime = runtime = NodeRuntime(
            node.key,
            self.config,
            node.store,
            _SimTransport(self, node),
            _SimClock(self, node),
            consensus=self.consensus,
            behaviour=node.behaviour,
            relay=False,
            empty_block_interval_ms=0,
            sync_wait_ms=self.consensus.propose_timeout_ms,
            regossip_ms=self.tick_ms,
            mempool=_PoolMempool(self.source, node),
            notify=lambda block: self._notice_targets(node, block),
            on_commit=lambda block: self._on_commit(node, block),
            on_evidence=lambda evidence: self._on_evidence(node, evidence),
        )
        self.meter.node = node
        try:
            runtime.start(catch_up=catch_up)
        finally:
            self.meter.node = None
        self.charge(node)

    def _handle(self, i: int, item: Any, sim: Simulator) -> None:
        node = self.nodes[i]
        runtime = node.runtime
        if runtime is None:
            return
        self._note_committee(runtime)
        self.meter.node = node
        try:
            if isinstance(item, tuple):
                self._deliver(node, runtime, *item)
            else:
                runtime.fire(item)
        finally:
            self.meter.node = None
        self.charge(node)

    def _deliver(self, node: _Node, runtime: NodeRuntime, src: int, msg: Any) -> None:
        if isinstance(msg, _Fetch):
            held = node.proposals.get((msg.height, msg.round))
            if held is not None and self._hash_of(held) == msg.block_hash:
                self.send(node, src, _Fetched(held))
            return
        if isinstance(msg, _Fetched):
            self._check_proposals(node, msg.proposal)
            return
        if isinstance(msg, Vote):
            self._remember_vote(node, msg)
        elif isinstance(msg, Proposal):
            node.proposals.setdefault((msg.height, msg.round), msg)
            self._check_certificate(node, msg.block.last_commit)
            self._relay(node, msg)
        elif isinstance(msg, CommitNotice):
            self._relay(node, msg)
        elif isinstance(msg, SyncReply):
            for block in msg.blocks:
                self._check_certificate(node, block.last_commit)
                self._check_certificate(node, block.certificate)
        runtime.receive(src, msg)

    # --- the ports: committees, CPU and the wire --------------------------------------------

    def charge(self, node: _Node) -> None:
        """Charge the verifications counted so far (before the node sends or schedules)."""
        count = node.pending_verifies + node.pending_txs
        node.pending_verifies = node.pending_txs = 0
        if count:
            self.sim.charge(node.index, count * self.costs.verify_us)

    def _note_committee(self, runtime: NodeRuntime) -> None:
        for height, committee in runtime.core.open_committees():
            if height not in self.committees:
                self.committees[height] = tuple(self.index_of[p] for p in committee)

    def _committee(self, height: int) -> tuple[int, ...]:
        members = self.committees.get(height)
        if members is None:  # never seen by any core: cannot happen for a message of h
            raise RuntimeError(f"no committee known for height {height}")
        return members

    def members(self, node: _Node, height: int | None) -> list[int]:
        """The committee of ``height`` (default: the node's current height) but the node."""
        if node.runtime is not None:
            self._note_committee(node.runtime)
            height = node.runtime.core.height if height is None else height
        assert height is not None
        return [d for d in self._committee(height) if d != node.index]

    def _hash_of(self, p: Proposal) -> str:
        """The proposal's block hash, computed once (a header hash is canonical JSON)."""
        block_hash = self.hashes.get(p.signature)
        if block_hash is None:
            block_hash = self.hashes[p.signature] = p.block.hash
        return block_hash

    def _size(self, msg: Proposal | Vote) -> int:
        size = self.sizes.get(msg.signature)
        if size is None:
            if isinstance(msg, Proposal):
                size = _proposal_bytes(msg)
            else:
                size = len(canonical(msg.to_json()))
            self.sizes[msg.signature] = size
        return size

    def send(self, node: _Node, dst: int, payload: Any) -> None:
        """Put ``payload`` on the node's uplink: real size, the receiver's hashing, and the
        sender's signature (and block hash) once per message it signed."""
        self.charge(node)
        if isinstance(payload, Proposal | Vote):
            author = signer(payload)
            if author == node.key.public and payload.signature not in node.signed:
                if isinstance(payload, Proposal):
                    self.proposed_at.setdefault(payload.height, self.sim.node_time(node.index))
                    node.proposals.setdefault((payload.height, payload.round), payload)
                node.signed.add(payload.signature)
                cost = self.costs.sign_us
                if isinstance(payload, Proposal) and payload.block.header.proposer == author:
                    cost += self.costs.hash_us(self._size(payload))
                self.sim.charge(node.index, cost)
        if isinstance(payload, Proposal | Vote | _Fetched):
            inner = payload.proposal if isinstance(payload, _Fetched) else payload
            size = self._size(inner)
            cpu = 0.0 if isinstance(payload, Vote) else self.costs.hash_us(size)
        elif isinstance(payload, CommitNotice):
            size, cpu = len(canonical(payload.certificate.to_json())), 0.0
        elif isinstance(payload, SyncReply):
            size = sum(len(b.encode()) for b in payload.blocks) + 2
            cpu = self.costs.hash_us(size)
        elif isinstance(payload, TxGossip):
            size, cpu = len(payload.tx.encode()), 0.0
        else:
            size, cpu = _SMALL_MESSAGE_BYTES, 0.0
        self.kinds[_KINDS[type(payload)]] += 1
        height = _height_of(payload)
        if height is not None:
            self.sent_for[height] = self.sent_for.get(height, 0) + 1
            self.bytes_for[height] = self.bytes_for.get(height, 0) + size
        self.sim.send(node.index, dst, (node.index, payload), size, cpu)

    def relay_children(self, node: _Node, height: int, position: int | None) -> list[int]:
        """Where ``node`` sends a proposal or notice of ``height`` in the relay tree: the
        nodes outside that height's committee, in an order rotated by the height (so the
        relaying load spreads), laid out as an F-ary heap: ``position`` None gives the F
        roots (where a notice sender sends); the replica at ``position`` feeds its F
        children."""
        fanout = self.s.relay_fanout
        assert fanout is not None
        order = self._replicas(height)
        first = 0 if position is None else fanout * (position + 1)
        return [d for d in order[first : first + fanout] if d != node.index]

    def _replicas(self, height: int) -> list[int]:
        inside = set(self._committee(height))
        outside = [d for d in range(self.s.nodes) if d not in inside]
        if not outside:
            return []
        shift = height % len(outside)
        return outside[shift:] + outside[:shift]

    def _relay(self, node: _Node, msg: Proposal | CommitNotice) -> None:
        """Forward a proposal or notice, the first time: a replica to its children in the
        tree; a member other than the proposer a proposal to its share of the F roots
        (so the proposer's uplink carries only the copies its voters need)."""
        fanout = self.s.relay_fanout
        if fanout is None:
            return
        if isinstance(msg, Proposal):
            key = ("proposal", msg.height, msg.round)
        else:
            key = ("notice", msg.certificate.height, 0)
        if key in node.relayed:
            return
        node.relayed.add(key)
        height = key[1]
        order = self._replicas(height)
        if node.index in order:
            targets = self.relay_children(node, height, order.index(node.index))
        elif isinstance(msg, Proposal):
            proposer = self.index_of[msg.proposer]
            feeders = [m for m in self._committee(height) if m != proposer]
            if node.index not in feeders:
                return
            mine = range(feeders.index(node.index), min(fanout, len(order)), len(feeders))
            targets = [order[i] for i in mine]
        else:
            return  # notices reach the roots from their senders (_notice_targets)
        for child in targets:
            self.send(node, child, msg)

    def _notice_targets(self, node: _Node, block: Block) -> list[int]:
        """f+1 members of the block's committee, from position ``h mod m`` on: the
        certificate to everyone else."""
        members = self._committee(block.height)
        start, count = block.height % len(members), len(members) - quorum(len(members)) + 1
        senders = [members[(start + i) % len(members)] for i in range(count)]
        if node.index not in senders or node.behaviour is Behaviour.SILENT:
            return []
        if self.s.relay_fanout is not None:
            return self.relay_children(node, block.height, None)
        inside = set(members)
        return [d for d in range(self.s.nodes) if d not in inside]

    # --- commits, safety, evidence ---------------------------------------------------------

    def _on_commit(self, node: _Node, block: Block) -> None:
        h = block.height
        assert node.height == h, (node.height, h)
        for old in [k for k in node.seen_votes if k < h - 1]:
            del node.seen_votes[old]
        for old_slot in [k for k in node.proposals if k[0] < h - 1]:
            del node.proposals[old_slot]
        node.relayed = {k for k in node.relayed if k[1] >= h - 1}
        if not node.honest:
            return
        first = self.canonical.setdefault(h, block)
        if first.hash != block.hash:
            self.violations.append(
                f"height {h}: {first.hash[:12]} and {block.hash[:12]} (node {node.index})"
            )
        members = self._committee(h)
        if node.index in members and h not in self.decided_at:
            count = self.member_commits.get(h, 0) + 1
            self.member_commits[h] = count
            if count >= quorum(len(members)):
                self.decided_at[h] = self.sim.node_time(node.index)
                assert block.certificate is not None
                self.decided_round[h] = block.certificate.round

    def _remember_vote(self, node: _Node, vote: Vote) -> None:
        """Keep the vote for the certificate check; if it is for another block than the
        proposal this node holds for its round, fetch that proposal from the voter (as a
        node fetches a block it sees votes for): two signed proposals for one slot are
        evidence. Never happens in an honest run (one proposal per height and round)."""
        slot = (vote.voter, vote.round, vote.kind)
        node.seen_votes.setdefault(vote.height, {}).setdefault(slot, vote)
        if vote.block_hash is None or not node.honest:
            return
        held = node.proposals.get((vote.height, vote.round))
        if held is None or self._hash_of(held) == vote.block_hash:
            return
        want = (vote.height, vote.round, vote.block_hash)
        if want not in node.fetched:
            node.fetched.add(want)
            self.send(node, self.index_of[vote.voter], _Fetch(*want))

    def _check_proposals(self, node: _Node, fetched: Proposal) -> None:
        held = node.proposals.get((fetched.height, fetched.round))
        slot = ("proposal", fetched.height, fetched.round)
        if held is None or self._hash_of(held) == self._hash_of(fetched) or slot in node.reported:
            return
        evidence = ConflictingProposals(held, fetched)
        try:
            evidence.check(self.config.chain_id)
        except (signing.InvalidSignature, ValueError):
            return
        node.reported.add(slot)
        self._on_evidence(node, evidence)

    def _check_certificate(self, node: _Node, cert: CommitCertificate | None) -> None:
        """Compare a certificate's signed precommits with the precommits this node received
        itself: the same member, slot and a different block is a double vote."""
        if cert is None or not node.honest:
            return
        seen = node.seen_votes.get(cert.height)
        if not seen:
            return
        for vote in cert.votes():
            prior = seen.get((vote.voter, vote.round, vote.kind))
            if prior is None or prior.block_hash == vote.block_hash:
                continue
            slot = (vote.voter, vote.height, vote.round, vote.kind)
            if slot in node.reported:
                continue
            evidence = Equivocation(prior, vote)
            try:
                evidence.check(self.config.chain_id)
            except (signing.InvalidSignature, ValueError):
                continue
            node.reported.add(slot)
            self._on_evidence(node, evidence)

    def _on_evidence(self, node: _Node, evidence: Equivocation | ConflictingProposals) -> None:
        if isinstance(evidence, Equivocation):
            kind, offender = "equivocation", evidence.first.voter
        else:
            kind, offender = "conflicting_proposals", evidence.offender
        self.evidence.append((node.index, kind, self.index_of.get(offender, -1)))

    # --- the report ------------------------------------------------------------------------

    @staticmethod
    def _after(counts: Mapping[int, int], height: int) -> int:
        return sum(n for h, n in counts.items() if h > height)

    def _steady_tps(self, committed: int) -> float | None:
        sizes = {h: len(self.canonical[h].txs) for h in range(1, committed + 1)}
        return _steady(self.decided_at, sizes, committed) if committed else None

    def _report(self) -> SimReport:
        s, sim = self.s, self.sim
        committed = 0  # heights 1..k decided (heights decide in order)
        while committed + 1 in self.decided_at and committed != s.blocks:
            committed += 1  # (a sync reply may decide several heights past the last asked)
        finished = (
            s.blocks is not None and committed == s.blocks
        )  # else: stalled, count to the stop
        duration = self.decided_at[committed] if finished else sim.now_ms
        txs = sum(len(self.canonical[h].txs) for h in range(1, committed + 1))
        steady = self._steady_tps(committed)
        latencies = [self.decided_at[h] - self.proposed_at[h] for h in range(1, committed + 1)]
        stats = sim.stats()
        per_block = max(committed, 1)
        seconds = duration / 1000.0
        return SimReport(
            seed=s.seed,
            mode=s.mode,
            nodes=s.nodes,
            committee=s.committee,
            block_txs=s.block_txs,
            committed_blocks=committed,
            committed_txs=txs,
            sim_ms=duration,
            tps=txs / seconds if seconds > 0 else 0.0,
            steady_tps=(txs / seconds if seconds > 0 else 0.0) if steady is None else steady,
            latency_ms=math.fsum(latencies) / len(latencies) if latencies else math.nan,
            messages_per_block=(stats.messages_sent - self._after(self.sent_for, committed))
            / per_block,
            bytes_per_block=(stats.bytes_sent - self._after(self.bytes_for, committed)) / per_block,
            messages_by_kind=dict(sorted(self.kinds.items())),
            cpu_utilisation=tuple(
                busy / duration if duration > 0 else 0.0 for busy in stats.cpu_busy_ms
            ),
            uplink_utilisation=tuple(
                busy / duration if duration > 0 else 0.0 for busy in stats.uplink_busy_ms
            ),
            view_changes=sum(1 for h in range(1, committed + 1) if self.decided_round[h] > 0),
            safe=not self.violations,
            safety_violations=tuple(self.violations),
            evidence=tuple(self.evidence),
            honest_heights=tuple(
                n.height if n.runtime is not None else -1 for n in self.nodes if n.honest
            ),
            trace_digest=sim.trace_digest(),
        )


def _height_of(payload: Any) -> int | None:
    """The height a message is about (None: sync and gossip traffic)."""
    if isinstance(payload, Proposal | Vote):
        return payload.height
    if isinstance(payload, _Fetched):
        return payload.proposal.height
    if isinstance(payload, CommitNotice):
        return payload.certificate.height
    return None


def _steady(decided_at: Mapping[int, float], txs: Mapping[int, int], k: int) -> float | None:
    """Committed tx/s over heights k/4+1..k, timed between the decisions of k/4 and k."""
    first = k // 4
    if first < 1 or decided_at[k] <= decided_at[first]:
        return None
    count = sum(txs[h] for h in range(first + 1, k + 1))
    return count / ((decided_at[k] - decided_at[first]) / 1000.0)


def run(scenario: Scenario) -> SimReport:
    """Run one scenario on the simulated network and report what it measured."""
    with _metered_signatures() as meter:
        return _Run(scenario, meter).go()
