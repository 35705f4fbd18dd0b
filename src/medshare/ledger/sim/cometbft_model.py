"""A discrete-event model of CometBFT v0.38 heights, for N beyond what one machine can run.

The model moves bytes and charges CPU; the protocol rules it follows are CometBFT's, read
in its source (v0.38.26) and listed here with where they live. It is not a second engine:
no vote is signed, no block is built, only their sizes, times and costs are tracked.

A height (``consensus/state.go``)
---------------------------------
* A node enters height h ``timeout_commit`` after it saw +2/3 precommits for h − 1
  (``StartTime = CommitTime + timeout_commit``), or when its commit of h − 1 is done if
  that is later. The proposer of h (round-robin over the validators: equal power) reaps
  its mempool, calls ``PrepareProposal``, signs the proposal, and the block spreads in
  parts of 64 KiB (``types.BlockPartSizeBytes``).
* Every node, validator or full node, runs the consensus state machine: once it holds the
  whole block it calls ``ProcessProposal``; a validator then signs its prevote; +2/3
  prevotes and the block → a validator signs its precommit; +2/3 precommits and the
  block → commit: ``FinalizeBlock`` and ``Commit`` on the app, block and state stores,
  then (``mempool.recheck``, on in ``medshare net up``) ``CheckTx`` again of every
  transaction left in the mempool, waited for (``mempool/clist_mempool.go``
  ``recheckTxs``). One round per height: no faults are modelled.
* Each vote is verified once per node, by its consensus goroutine (``types/vote_set.go``
  finds a copy it already has before verifying).

Gossip (``consensus/reactor.go``, ``mempool/reactor.go``, ``p2p/conn/connection.go``)
------------------------------------------------------------------------------------
* Every node connects to ``peers`` others (``medshare net up``: a full mesh).
* Votes: per peer, ``gossipVotesRoutine`` sends one vote it holds and believes the peer
  lacks, loops, and sleeps ``peer_gossip_sleep_duration`` (``home.py``: 20 ms) when there is none
  left. It learns that a peer has a vote when the peer sends it that vote or a
  ``HasVote``, which every node broadcasts to all its peers for every vote it adds. So a
  vote reaches a node by the first of many paths, is relayed by all who hold it, and
  arrives several times: a copy is sent whenever its sender's routine wakes before the
  receiver's ``HasVote`` has come back.
* Block parts: ``gossipDataRoutine``, the same loop and sleep; a peer is known to have a
  part only once it sent it (v0.38 announces no parts).
* Transactions: ``broadcastTxRoutine`` sends every transaction, in its own message, to
  every peer it did not get it from, as soon as ``CheckTx`` has admitted it: a flood
  with a copy on almost every link. A node checks a transaction once (the cache drops
  the copies).
* Every step change is broadcast (``NewRoundStep``), and ``NewValidBlock`` once per
  height, to every peer.
* A connection writes into a 64 KiB buffer flushed by a throttle timer
  (``flush_throttle_timeout``, ``home.py``: 10 ms) started by the first write after a flush (a full
  buffer goes out at once), at most ``send_rate`` per connection (``medshare net up``:
  20 MB/s); a node's uplink (``Links``) is shared by its connections.

CPU
---
Each node has four servers: the consensus goroutine (votes, block, commit, the
re-check requests), the p2p routines (every message in and out, the ``CheckTx`` requests
of gossiped transactions; Go may use ``go_threads`` cores for them), the RPC server
(transactions submitted, blocks read by clients) and the app (one Python thread:
``CheckTx``, ``PrepareProposal``, ``ProcessProposal``, ``FinalizeBlock``, ``Commit``, in
order, except that a consensus call waits only for the request being handled). They run
on a CPU pool (:class:`_Pool`, processor sharing, consensus goroutines first):
``Cpu(cores)`` is ``cores`` dedicated to every node, ``Cpu(cores, shared=True)`` one pool
for every process of every node and the load clients (this machine: 2 cores for all).
What each operation costs is a :class:`Costs`, fitted from real runs
(:mod:`medshare.ledger.sim.calibration`).

Load
----
``ClosedLoop(clients, outstanding)`` is ``medshare.ledger.cometbft.load``: each client
keeps ``outstanding`` transactions in flight on its node (client c on node c mod N),
broadcasts one per slot a block it read freed (it polls every 20 ms) without waiting
for the node's ``CheckTx`` (``broadcast_tx_async``; ``checked``: it waits, as
``broadcast_tx_sync``). ``PerHeight(block_txs)`` submits
``block_txs`` transactions per height, spread over the height and over random nodes: the
curve at a given block size. Transactions are followed in chunks of ``chunk_txs``.

Approximations (each stated where it is made): a message's relays are computed when it
is sent, from the queues at that moment; CPU nobody waits for (relays, duplicates,
``HasVote``) is charged in 10 ms batches; the uplink is one queue per node.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from medshare.ledger.cometbft.home import CONSENSUS, P2P_FLUSH_THROTTLE, milliseconds

# --- sizes (bytes), as CometBFT's p2p metrics count them (cmtcons.Message etc.) ---------------

VOTE_BYTES = 188  # a wrapped types.Vote: 182 B with an Ed25519 signature, no extension
HAS_VOTE_BYTES = 8
NEW_ROUND_STEP_BYTES = 10
NEW_VALID_BLOCK_BYTES = 49
PROPOSAL_BYTES = 170
BLOCK_HEADER_BYTES = 420  # header, data and evidence framing (an empty block's part ≈ 870 B
COMMIT_SIG_BYTES = 106  # with 4 validators), and one validator's signature in last_commit
TX_FRAMING_BYTES = 4  # a tx's length prefix in a block or a mempool Txs message
PART_OVERHEAD_BYTES = 48  # index, proof total/index/leaf, framing; + 32 B per proof level
#: NewRoundStep messages per peer per height, as measured (≈ 30 B per peer per height)
STEPS_PER_HEIGHT = 3
MAX_BLOCK_BYTES = 4 * 1024 * 1024  # consensus_params.block.max_bytes in our genesis
#: The most of a CPU pool the consensus goroutines take ahead of everything else (Linux
#: lets a thread that slept run first, but not forever).
PRIORITY_SHARE = 0.75
MESSAGE_TYPES = ("Txs", "BlockPart", "Proposal", "Vote", "HasVote", "NewRoundStep", "NewValidBlock")


# --- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Costs:
    """CPU per operation, in µs, each charged on the server that does it.

    Go (the ``cometbft`` process): ``verify_us`` one vote signature (consensus goroutine);
    ``sign_us`` one vote or proposal signed by a validator, with the signer's state write;
    ``msg_us`` one p2p message sent or received (encode/decode, dispatch, peer state);
    ``kb_us`` one KiB sent or received (the encrypted connection, copies);
    ``abci_request_us`` one ``CheckTx`` request to the app, first or re-check: CometBFT's
    socket client writes and flushes every request on its own (its flush timer is a 20 ns
    ``ThrottleTimer``), then reads the answer; ``tx_go_us`` the rest of one transaction on
    one node (mempool, then executing, indexing and storing it with its block), split by
    ``go_checktx_share`` between the two moments; ``height_go_us`` one height on one node
    (the height's ABCI calls, block and state stores, WAL, events); ``rpc_tx_us`` one
    transaction submitted over RPC and read back by its client, on the client's node.

    App (our Python ``medshare.ledger.app``, one thread): ``app_tx_us`` one transaction
    on one node, of which ``checktx_share`` in its first ``CheckTx``, ``process_share``
    in ``ProcessProposal`` and the rest in ``FinalizeBlock`` + ``Commit``; the proposer
    also spends ``prepare_share`` of it per transaction in ``PrepareProposal``;
    ``recheck_app_us`` one transaction re-checked after a commit (decoded and verified
    already); ``app_height_us`` one height.

    ``client_tx_us``: the load clients' CPU per committed transaction (signing,
    broadcasting, reading blocks), charged only when the clients share the CPU pool.
    """

    verify_us: float
    sign_us: float
    msg_us: float
    kb_us: float
    abci_request_us: float
    tx_go_us: float
    height_go_us: float
    rpc_tx_us: float
    app_tx_us: float
    recheck_app_us: float
    app_height_us: float
    client_tx_us: float
    checktx_share: float = 0.9
    process_share: float = 0.01
    prepare_share: float = 0.03
    go_checktx_share: float = 0.5

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise TypeError(f"{name} must be a number")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and ≥ 0, got {value!r}")
        if self.checktx_share + self.process_share > 1 or self.go_checktx_share > 1:
            raise ValueError("shares must add up to at most 1")

    @property
    def finalize_share(self) -> float:
        return 1.0 - self.checktx_share - self.process_share

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def reference(cls) -> Costs:
        """Fixed figures of the order fitted on this machine, for tests and replays."""
        return cls(
            verify_us=65.0,
            sign_us=250.0,
            msg_us=15.0,
            kb_us=4.0,
            abci_request_us=40.0,
            tx_go_us=80.0,
            height_go_us=10_000.0,
            rpc_tx_us=600.0,
            app_tx_us=200.0,
            recheck_app_us=30.0,
            app_height_us=3000.0,
            client_tx_us=600.0,
        )


@dataclass(frozen=True)
class Timing:
    """CometBFT's settings that shape a height (``medshare.ledger.cometbft.home`` and
    CometBFT's defaults for what it leaves alone)."""

    timeout_commit_ms: float = milliseconds(CONSENSUS["timeout_commit"])
    peer_gossip_sleep_ms: float = milliseconds(CONSENSUS["peer_gossip_sleep_duration"])
    flush_throttle_ms: float = milliseconds(P2P_FLUSH_THROTTLE)
    send_rate_bytes_per_s: float = 20_480_000.0
    block_part_bytes: int = 65_536
    write_buffer_bytes: int = 65_536
    client_poll_ms: float = 20.0
    recheck: bool = True  # mempool.recheck (home.py): re-check the mempool after a commit
    recheck_timeout_ms: float = 1000.0


@dataclass(frozen=True)
class Links:
    """One-way latency per pair (uniform in [min, max], symmetric) and each node's uplink
    (uniform in [min, max] Mbit/s; ``None``: no limit but the per-connection send rate)."""

    latency_ms_min: float
    latency_ms_max: float
    bandwidth_mbps_min: float | None = None
    bandwidth_mbps_max: float | None = None


LOOPBACK = Links(0.05, 0.05)
INSTITUTIONS = Links(5.0, 80.0, 100.0, 1000.0)


@dataclass(frozen=True)
class Cpu:
    """``shared``: one pool of ``cores`` for every process (and the load clients);
    otherwise ``cores`` dedicated to each node (clients outside)."""

    cores: float
    shared: bool = False

    def __post_init__(self) -> None:
        if not self.cores > 0:
            raise ValueError("cores must be > 0")


@dataclass(frozen=True)
class ClosedLoop:
    """The load clients. They start after the warm-up heights (an idle chain, as a real
    run registers its keys first) and, with ``window_ms``, are measured as the real
    clients are: what they read committed in their first ``window_ms`` (ramp included)."""

    clients: int
    outstanding: int
    window_ms: float | None = None
    checked: bool = False  # broadcast_tx_sync (wait for CheckTx) instead of async


@dataclass(frozen=True)
class PerHeight:
    block_txs: int
    batches: int = 8  # submissions per height, each at a random node and moment


@dataclass(frozen=True)
class Scenario:
    nodes: int
    validators: int
    load: ClosedLoop | PerHeight
    cpu: Cpu
    links: Links
    costs: Costs
    timing: Timing = field(default_factory=Timing)
    heights: int = 20  # heights measured after the warm-up (not with ClosedLoop.window_ms)
    warmup: int = 4  # heights before the window (the clients start after them)
    seed: int = 7
    peers: int | None = None  # None: full mesh (what `medshare net up` configures)
    tx_bytes: int = 352  # a load transaction (ACCESS, canonical JSON)
    go_threads: int = 2
    chunk_txs: int = 8  # transactions followed together through CheckTx and gossip

    def __post_init__(self) -> None:
        if self.nodes < 1 or not 1 <= self.validators <= self.nodes:
            raise ValueError("need 1 ≤ validators ≤ nodes")
        if self.heights < 1 or self.warmup < 1:
            raise ValueError("heights ≥ 1 and warmup ≥ 1")


@dataclass
class Report:
    nodes: int
    validators: int
    block_txs: float  # mean transactions per measured block
    heights: int
    tx_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    block_interval_ms: float
    messages_per_block: float  # p2p messages received by all nodes together, per block
    bytes_per_block: float  # p2p bytes received by all nodes together, per block
    messages_by_type: dict[str, float]  # per block, all nodes
    bytes_by_type: dict[str, float]
    vote_messages_per_node_block: float  # Vote + HasVote received by one node per block
    duplicate_votes_per_node_block: float
    cpu_ms_per_block_validator: float  # mean over validators, Go and app together
    cpu_ms_per_block_full_node: float | None
    cpu_ms_per_block_max: float
    cpu_utilisation_max: float  # the busiest node's cores (dedicated), or the pool (shared)
    committed: int
    sim_ms: float
    seed: int

    def as_dict(self) -> dict:
        """Plain Python numbers (JSON-ready)."""
        return json.loads(json.dumps(asdict(self), default=float))


# --- CPU: processor sharing over a pool of cores ---------------------------------------------


class _Server:
    __slots__ = ("busy", "cls", "done", "finish_v", "node", "pool", "queue", "weight")

    def __init__(self, pool: _Pool, weight: float, node: int, cls: int) -> None:
        self.pool = pool
        self.weight = weight
        self.node = node
        self.cls = cls  # 0: a consensus goroutine, served first; 1: the rest
        self.queue: deque[tuple[float, Callable[[float], None] | None]] = deque()
        self.busy = False
        self.done: Callable[[float], None] | None = None
        self.finish_v = 0.0


class _Pool:
    """Processor sharing over ``cores`` with weights and two classes. A busy server of
    weight w (it may use up to w cores) gets w·x of its class: class 0, the nodes'
    consensus goroutines (short bursts: a vote, a signature, a commit), gets
    x₀ = min(1, PRIORITY_SHARE · cores / Σ busy class-0 weights); class 1 (the p2p and
    RPC goroutines, the apps and the load clients, which queue work) shares what is left.
    This is how Linux's scheduler treats a thread that mostly sleeps: on waking it runs
    ahead of the threads that keep the cores busy. Each class keeps a virtual time V
    (dV/dt = x): a job of work W that starts at V0 ends at V0 + W / w."""

    def __init__(self, sim: _Sim, cores: float) -> None:
        self.sim = sim
        self.cores = cores
        self.v = [0.0, 0.0]
        self.t = 0.0
        self.busy_weight = [0.0, 0.0]
        self.heaps: list[list[tuple[float, int, _Server]]] = [[], []]
        self.token = 0
        self.busy_ms = 0.0  # core-ms used so far

    def xs(self) -> tuple[float, float]:
        w0, w1 = self.busy_weight
        first = self.cores * (PRIORITY_SHARE if w1 > 1e-12 else 1.0)
        x0 = min(1.0, first / w0) if w0 > 1e-12 else 1.0
        left = self.cores - (x0 * w0 if w0 > 1e-12 else 0.0)
        x1 = min(1.0, left / w1) if w1 > 1e-12 else 1.0
        return x0, x1

    def advance(self, now: float) -> None:
        if now > self.t:
            dt = now - self.t
            for cls, x in enumerate(self.xs()):
                if self.busy_weight[cls] > 1e-12:
                    self.v[cls] += x * dt
                    self.busy_ms += x * self.busy_weight[cls] * dt
            self.t = now

    def submit(
        self,
        server: _Server,
        work_ms: float,
        done: Callable[[float], None] | None,
        urgent: bool = False,
    ) -> None:
        """Queue a job; an ``urgent`` one goes before the queued ones (not before the one
        running)."""
        self.advance(self.sim.now)
        if server.busy:
            if urgent:
                server.queue.appendleft((work_ms, done))
            else:
                server.queue.append((work_ms, done))
            return
        self._start(server, work_ms, done)
        self._reschedule()

    def _start(self, server: _Server, work_ms: float, done: Callable[[float], None] | None) -> None:
        cls = server.cls
        server.busy = True
        server.done = done
        server.finish_v = self.v[cls] + work_ms / server.weight
        self.busy_weight[cls] += server.weight
        heapq.heappush(self.heaps[cls], (server.finish_v, next(self.sim.seq), server))

    def _reschedule(self) -> None:
        self.token += 1
        xs = self.xs()
        delays = [
            max(0.0, heap[0][0] - self.v[cls]) / xs[cls]
            for cls, heap in enumerate(self.heaps)
            if heap
        ]
        if delays:
            self.sim.at(self.t + min(delays), self._tick, self.token)

    def _tick(self, token: int) -> None:
        if token != self.token:
            return
        now = self.sim.now
        self.advance(now)
        finished = []
        for cls, heap in enumerate(self.heaps):
            while heap and heap[0][0] <= self.v[cls] + 1e-9:
                server = heapq.heappop(heap)[2]
                server.busy = False
                self.busy_weight[cls] -= server.weight
                finished.append((server, server.done))
            if self.busy_weight[cls] < 1e-9:
                self.busy_weight[cls] = 0.0
        for server, _ in finished:
            if server.queue:
                work, done = server.queue.popleft()
                self._start(server, work, done)
        self._reschedule()
        for _, done in finished:
            if done is not None:
                done(now)

    def delay_ms(self, server: _Server, work_ms: float) -> float:
        """About how long a job of ``work_ms`` submitted now to ``server`` takes to finish
        (its queue and the job, at the current share)."""
        queued = sum(w for w, _ in server.queue)
        cls = server.cls
        if server.busy:
            queued += max(0.0, server.finish_v - self.v[cls]) * server.weight
        else:
            self.busy_weight[cls] += server.weight
        x = self.xs()[cls]
        if not server.busy:
            self.busy_weight[cls] -= server.weight
        return (queued + work_ms) / (server.weight * x)


# --- the simulation ------------------------------------------------------------------------


@dataclass
class _Batch:
    """Transactions submitted together (one client's broadcast, or one injection)."""

    id: int
    count: int
    origin: int
    submitted: float
    client: int | None
    height: int | None = None  # the height whose block carries it


class _Votes:
    """One height's prevotes or precommits: when each vote reaches each node."""

    def __init__(self, n: int) -> None:
        self.first: list[np.ndarray] = []  # first arrival of each vote at every node
        self.proc: list[np.ndarray] = []  # and how long each node takes to add it
        self.voters: set[int] = set()
        self.decided = np.full(n, np.inf)
        self.tentative = np.full(n, np.inf)
        self.token = 0


class _Height:
    def __init__(self, h: int, proposer: int, n: int) -> None:
        self.h = h
        self.proposer = proposer
        self.batches: list[_Batch] = []
        self.txs = 0
        self.bytes = 0
        self.proposed = False
        self.entered = np.full(n, np.inf)  # when each node entered this height
        self.block_at = np.full(n, np.inf)  # when each node received the whole block
        self.processed_at = np.full(n, np.inf)  # ... and its ProcessProposal returned
        self.waiting: set[int] = set()  # nodes that got the block before entering h
        self.prevotes = _Votes(n)
        self.precommits = _Votes(n)
        self.quorum_at = np.full(n, np.inf)  # +2/3 precommits
        self.committing: set[int] = set()
        self.commit_at = np.full(n, np.inf)  # commit done


class _Sim:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        n = self.n = sc.nodes
        self.rng = np.random.default_rng(sc.seed)
        self.seq = itertools.count()
        self.events: list = []
        self.now = 0.0
        self.timing = sc.timing
        self.costs = sc.costs
        order = self.rng.permutation(n)
        self.validators = sorted(int(i) for i in order[: sc.validators])
        self.is_validator = np.zeros(n, bool)
        self.is_validator[self.validators] = True
        self.quorum = (2 * len(self.validators)) // 3 + 1
        self.reference = self.validators[0]
        self._links()
        self._cpu()
        sleep = self.timing.peer_gossip_sleep_ms
        self.wake_votes = self.rng.uniform(0, sleep, (n, n))  # each gossip routine's next
        self.wake_data = self.rng.uniform(0, sleep, (n, n))  # wake-up, per peer
        self.armed = np.full((n, n), -np.inf)  # each connection's flush timer
        self.uplink_free = np.zeros(n)
        self.hop_ms = self.timing.flush_throttle_ms / 2 + sleep / 2  # a typical gossip hop
        # accounting
        self.counting = False
        self.window: tuple[float, float] | None = None
        self.msgs = {t: np.zeros(n) for t in MESSAGE_TYPES}
        self.bytes = {t: np.zeros(n) for t in MESSAGE_TYPES}
        self.dup_votes = np.zeros(n)
        self.cpu_ms = np.zeros(n)
        self.pending = np.zeros((5, n))  # CPU off the critical path, charged in batches
        self.delay_cache: dict[int, tuple[float, np.ndarray, np.ndarray]] = {}
        self.batch_ids = itertools.count()
        self.mempool: list[dict[int, _Batch]] = [{} for _ in range(n)]  # ready batches
        self.heights: dict[int, _Height] = {}
        self.node_height = [0] * n
        self.commit_times: list[float] = []  # the reference node's commits
        self.latencies: list[tuple[float, int]] = []
        self.read_txs = 0  # transactions the clients saw committed in the window
        self.finished = False

    # --- plumbing --------------------------------------------------------------------------

    def at(self, t: float, fn: Callable, *args: object) -> None:
        heapq.heappush(self.events, (t, next(self.seq), fn, args))

    def run(self) -> None:
        for i in range(self.n):
            self.at(0.0, self._enter, i, 1)
        self.at(0.0, self._flush_pending)
        self._start_load()
        budget = 20_000_000
        while self.events and not self.finished:
            t, _, fn, args = heapq.heappop(self.events)
            self.now = t
            fn(*args)
            budget -= 1
            if budget == 0:
                raise RuntimeError("the model did not finish (event budget spent)")

    def _links(self) -> None:
        sc, n = self.sc, self.n
        links = sc.links
        lat = np.triu(self.rng.uniform(links.latency_ms_min, links.latency_ms_max, (n, n)), 1)
        lat = lat + lat.T
        adjacency = np.ones((n, n), bool)
        if sc.peers is not None and sc.peers < n - 1:
            adjacency = self._random_graph(sc.peers)
        np.fill_diagonal(adjacency, False)
        self.adjacency = adjacency
        self.degree = adjacency.sum(axis=1).astype(float)
        self.lat = np.where(adjacency, lat, np.inf)
        if links.bandwidth_mbps_min is None:
            self.uplink = np.full(n, np.inf)  # bytes per ms
        else:
            high = links.bandwidth_mbps_max or links.bandwidth_mbps_min
            self.uplink = self.rng.uniform(links.bandwidth_mbps_min, high, n) * 1e6 / 8 / 1000
        self.conn_rate = self.timing.send_rate_bytes_per_s / 1000  # bytes per ms
        # the order in which a node's per-peer routines get its uplink, rotated per message
        ranks = np.argsort(self.rng.random((n, n)), axis=1).astype(float)
        self.rank_finite = np.where(adjacency, ranks, 0.0)

    def _random_graph(self, degree: int) -> np.ndarray:
        """Each node dials ``degree / 2`` random others; links are both ways."""
        n = self.n
        adj = np.zeros((n, n), bool)
        for i in range(n):
            others = np.delete(np.arange(n), i)
            picks = self.rng.choice(others, size=max(1, degree // 2), replace=False)
            adj[i, picks] = True
        return adj | adj.T

    def _cpu(self) -> None:
        sc, n = self.sc, self.n
        go = min(float(sc.go_threads), sc.cpu.cores)
        if sc.cpu.shared:
            self.pools = [_Pool(self, sc.cpu.cores)]
            node_pool = [self.pools[0]] * n
        else:
            self.pools = [_Pool(self, sc.cpu.cores) for _ in range(n)]
            node_pool = self.pools
        self.cons = [_Server(node_pool[i], 1.0, i, 0) for i in range(n)]
        # the p2p routines, split by reactor: consensus messages, and the mempool's flood
        self.net = [_Server(node_pool[i], go, i, 1) for i in range(n)]
        self.mem = [_Server(node_pool[i], go, i, 1) for i in range(n)]
        self.app = [_Server(node_pool[i], 1.0, i, 1) for i in range(n)]
        self.rpc = [_Server(node_pool[i], 1.0, i, 1) for i in range(n)]
        self.servers = (self.cons, self.net, self.app, self.rpc, self.mem)
        self.clients: list[_Server] = []
        if sc.cpu.shared and isinstance(sc.load, ClosedLoop):
            self.clients = [_Server(self.pools[0], 1.0, -1, 1) for _ in range(sc.load.clients)]

    def charge(
        self,
        server: _Server,
        work_us: float,
        done: Callable[[float], None],
        urgent: bool = False,
    ) -> None:
        """A job on the critical path: ``done`` runs when it finishes. The app serves its
        four ABCI connections from one loop, so a consensus call (``urgent``) waits only
        for the request being handled, not for the mempool's queue of ``CheckTx``."""
        if self.counting and server.node >= 0:
            self.cpu_ms[server.node] += work_us / 1000
        server.pool.submit(server, work_us / 1000, done, urgent)

    def background(self, kind: int, work_us: np.ndarray) -> None:
        """CPU nobody waits for (relaying, duplicates, HasVote): charged in batches."""
        self.pending[kind] += work_us

    def _flush_pending(self) -> None:
        if self.counting:
            self.cpu_ms += self.pending.sum(axis=0) / 1000
        for kind, servers in enumerate(self.servers):
            for i in np.flatnonzero(self.pending[kind] > 0):
                servers[i].pool.submit(servers[i], self.pending[kind][i] / 1000, None)
        self.pending[:] = 0.0
        if not self.finished:
            self.at(self.now + 10.0, self._flush_pending)

    def delays(self, kind: int, work_us: float) -> np.ndarray:
        """About how long each node's server of ``kind`` (0 consensus, 1 p2p consensus
        messages, 2 app, 3 RPC, 4 p2p mempool messages) takes to do ``work_us``
        submitted now: its queue at its current share, then the work. A consensus message
        waits behind the consensus messages before it, not behind the mempool's flood
        (CometBFT's connections send the consensus channels first); a node that cannot
        keep up with either reads it late. The queues are read at most every 2 ms of
        model time (they move slowly next to a gossip hop)."""
        cached = self.delay_cache.get(kind)
        if cached is None or self.now - cached[0] > 2.0:
            servers = self.servers[kind]
            queue = np.array([s.pool.delay_ms(s, 0.0) for s in servers])
            rate = np.array([s.pool.delay_ms(s, 1.0) for s in servers]) - queue  # ms per ms
            cached = self.delay_cache[kind] = (self.now, queue, rate)
        _, queue, rate = cached
        return queue + rate * (work_us / 1000)

    def count(self, kind: str, received: np.ndarray, size: float) -> None:
        if self.counting:
            self.msgs[kind] += received
            self.bytes[kind] += received * size

    def traffic(
        self,
        recv: np.ndarray,
        sends: np.ndarray,
        size: float,
        extra: float | np.ndarray = 0.0,
        kind: int = 1,
    ) -> None:
        """Go CPU of moving these copies (both ends) plus ``extra`` messages per node."""
        c = self.costs
        messages = recv + sends
        self.background(kind, (messages + extra) * c.msg_us + messages * size / 1024 * c.kb_us)

    # --- gossip ----------------------------------------------------------------------------

    def flood(self, kind: str, origin: int, t0: float, size: float, proc: np.ndarray):
        """Spread one message from ``origin`` (ready there at ``t0``) the way CometBFT's
        reactor for ``kind`` ("vote", "data" or "tx") does. Returns the first arrival at
        every node, and the copies every node received and sent. ``proc``: how long each
        node takes from receiving it to being able to relay it.

        Every node that holds the message sends it on each link when that link's routine
        next wakes (votes, data: ``peer_gossip_sleep``; txs: at once), behind the bytes
        queued on its uplink, and the connection writes it at its next flush. The first
        arrival at each node is the earliest over all paths (relaxed hop by hop)."""
        n = self.n
        timing = self.timing
        sleep, flush = timing.peer_gossip_sleep_ms, timing.flush_throttle_ms
        buffered = size < timing.write_buffer_bytes  # a full buffer is written at once
        wake = {"vote": self.wake_votes, "data": self.wake_data}.get(kind)
        limited = np.isfinite(self.uplink)
        per_copy = np.where(limited, size / np.where(limited, self.uplink, 1.0), 0.0)
        backlog = np.where(limited, np.maximum(self.uplink_free - self.now, 0.0), 0.0)
        offset = self.rng.integers(0, n, n)[:, None] if limited.any() else None
        wire = size / self.conn_rate

        def links(rows: np.ndarray, r: np.ndarray):
            """Departure, flush and arrival times on every link out of ``rows``."""
            r = r[:, None]
            # votes, data: the routine's next wake-up at or after r (its phase); txs: the
            # mempool routine sends as soon as the tx is in the mempool
            dep = r + np.mod(wake[rows] - r, sleep) if wake is not None else np.repeat(r, n, 1)
            if offset is not None:  # the uplink's queue, then one copy per peer before
                turn = np.mod(self.rank_finite[rows] + offset[rows], self.degree[rows, None])
                dep = dep + backlog[rows, None] + turn * per_copy[rows, None]
            if buffered:
                armed = self.armed[rows]
                fl = np.where((dep <= armed) & (dep >= armed - flush), armed, dep + flush)
            else:
                fl = dep
            arr = np.maximum(fl, dep + wire) + self.lat[rows]
            return dep, fl, arr

        dep = np.full((n, n), np.inf)
        fl = np.full((n, n), np.inf)
        arr = np.full((n, n), np.inf)
        ready = np.full(n, np.inf)
        ready[origin] = t0
        first = ready.copy()
        rows = np.array([origin])
        for _ in range(5):
            d, f, a = links(rows, ready[rows])
            dep[rows], fl[rows], arr[rows] = d, f, a
            first = np.minimum(first, a.min(axis=0))
            first[origin] = t0
            new = np.minimum(ready, first + proc)
            new[origin] = t0
            rows = np.flatnonzero(new < ready)
            ready = new
            if rows.size == 0:
                break
        reached = np.isfinite(ready)
        if kind == "tx":  # k skips j if j's copy reached k before k had checked it
            sent = ready[:, None] < arr.T
        elif kind == "vote":  # ... or j's HasVote reached k before k's routine woke
            sent = dep < np.minimum(ready[None, :] + flush / 2 + self.lat.T, arr.T)
        else:  # block parts: a peer is known to have them once it sent them
            sent = dep < arr.T
        sent &= self.adjacency
        sent &= reached[:, None]
        recv = sent.sum(axis=0).astype(float)
        sends = sent.sum(axis=1).astype(float)
        if wake is not None:
            wake[sent] = dep[sent] + sleep
        if buffered:
            np.maximum(self.armed, fl, where=sent, out=self.armed)
        if offset is not None:  # the copies join the uplink's queue
            self.uplink_free = np.maximum(self.uplink_free, self.now) + sends * per_copy
        return first, recv, sends

    # --- load ------------------------------------------------------------------------------

    def _start_load(self) -> None:
        load = self.sc.load
        if isinstance(load, ClosedLoop):
            self.client_read = [0] * load.clients  # last height each client has read
            self.client_idle = [load.outstanding] * load.clients
            self.client_busy = [False] * load.clients
            # the clients start with the window (after the warm-up heights)
        else:
            self.at(0.0, self._inject, 400.0)

    def _client_submit(self, c: int) -> None:
        """Sign a transaction per idle slot, then broadcast them to the client's node in one
        request, which answers at once (``broadcast_tx_async``) or, ``checked``, once its
        CheckTx of each is done (``broadcast_tx_sync``); each enters the mempool, and is
        gossiped, as soon as it is checked."""
        count = self.client_idle[c]
        self.client_idle[c] = 0
        self.client_busy[c] = True
        node = c % self.n
        checked = isinstance(self.sc.load, ClosedLoop) and self.sc.load.checked

        def signed(_: float) -> None:
            if checked:
                self._submit(node, count, c, lambda _: self._broadcast_done(c))
            else:
                self._submit(node, count, c, lambda _: None)
                self._broadcast_done(c)

        if self.clients:
            self.charge(self.clients[c], count * self.costs.client_tx_us / 2, signed)
        else:
            signed(self.now)

    def _submit(
        self, node: int, count: int, client: int | None, done: Callable[[float], None]
    ) -> None:
        """``count`` transactions arrive at ``node`` over RPC: checked one chunk after the
        other (a chunk stands for a few transactions checked back to back)."""
        size = self.sc.chunk_txs
        chunks = [min(size, count - i) for i in range(0, count, size)]
        self.background(3, self._one(node, count * self.costs.rpc_tx_us))
        submitted = self.now

        def step(index: int) -> None:
            batch = _Batch(next(self.batch_ids), chunks[index], node, submitted, client)
            last = index + 1 == len(chunks)
            self._checktx(node, batch, done if last else (lambda _: step(index + 1)))

        step(0)

    def _one(self, node: int, work_us: float) -> np.ndarray:
        out = np.zeros(self.n)
        out[node] = work_us
        return out

    def _broadcast_done(self, c: int) -> None:
        self.client_busy[c] = False
        self._client_poll(c)

    def _client_poll(self, c: int) -> None:
        """The load client's loop: read the blocks its node has committed since it last
        looked (each client reads every block), free the slots of its own transactions
        in them, then broadcast for the freed slots, or poll again 20 ms later. (The
        node's RPC work of serving the blocks is charged with the submissions, in
        ``rpc_tx_us``.)"""
        if self.client_busy[c]:
            return
        node = c % self.n
        freed = 0
        while True:
            height = self.heights.get(self.client_read[c] + 1)
            if height is None or height.commit_at[node] > self.now:
                break
            self.client_read[c] = height.h
            for batch in height.batches:
                if batch.client == c:
                    freed += batch.count
                    if self.counting:
                        self.latencies.append((self.now - batch.submitted, batch.count))
                        self.read_txs += batch.count
        self.client_idle[c] += freed
        if not self.client_idle[c]:
            self.at(self.now + self.timing.client_poll_ms, self._client_poll, c)
        elif self.clients and freed:
            self.client_busy[c] = True

            def read(_: float) -> None:
                self.client_busy[c] = False
                self._client_submit(c)

            self.charge(self.clients[c], freed * self.costs.client_tx_us / 2, read)
        else:
            self._client_submit(c)

    def _inject(self, duration: float) -> None:
        """Per-height load: ``block_txs`` transactions over the coming height, in
        ``batches`` parts at random nodes and moments."""
        load = self.sc.load
        assert isinstance(load, PerHeight)
        parts = max(1, min(load.batches, load.block_txs))
        base, extra = divmod(load.block_txs, parts)
        for i in range(parts):
            node = int(self.rng.integers(0, self.n))
            when = self.now + float(self.rng.uniform(0, duration))
            self.at(when, self._inject_batch, node, base + (1 if i < extra else 0))

    def _inject_batch(self, node: int, count: int) -> None:
        self._submit(node, count, None, lambda _: None)

    def _checktx(self, node: int, batch: _Batch, done: Callable[[float], None]) -> None:
        """``CheckTx`` of a batch on one node (Go's request, the app's check); once in the
        mempool it is gossiped on (by the node it was submitted to, the flood is started
        here for everyone)."""
        c = self.costs
        go = c.abci_request_us + c.tx_go_us * c.go_checktx_share
        self.background(3 if node == batch.origin else 4, self._one(node, batch.count * go))

        def checked(t: float) -> None:
            if batch.height is None or node != batch.origin:
                self.mempool[node][batch.id] = batch
            if node == batch.origin:
                self._tx_flood(batch, t)
            done(t)

        self.charge(self.app[node], batch.count * c.app_tx_us * c.checktx_share, checked)

    def _tx_flood(self, batch: _Batch, t: float) -> None:
        c = self.costs
        size = self.sc.tx_bytes + TX_FRAMING_BYTES
        received = self.delays(4, batch.count * (c.msg_us + size / 1024 * c.kb_us))
        proc = received + self.delays(2, batch.count * c.app_tx_us * c.checktx_share)
        first, recv, sends = self.flood("tx", batch.origin, t, size, proc)
        self.count("Txs", recv * batch.count, size)
        self.traffic(recv * batch.count, sends * batch.count, size, kind=4)
        arrive = first + received
        for i in np.flatnonzero(np.isfinite(first)):
            if i != batch.origin:
                self.at(float(arrive[i]), self._tx_arrives, int(i), batch)

    def _tx_arrives(self, node: int, batch: _Batch) -> None:
        if batch.height is not None and batch.height <= self.node_height[node] - 1:
            return  # in a block this node has committed: CometBFT's cache drops it
        self._checktx(node, batch, lambda _: None)

    # --- heights ---------------------------------------------------------------------------

    def _height(self, h: int) -> _Height:
        height = self.heights.get(h)
        if height is None:
            proposer = self.validators[(h - 1) % len(self.validators)]
            height = self.heights[h] = _Height(h, proposer, self.n)
        return height

    def _enter(self, node: int, h: int) -> None:
        self.node_height[node] = h
        height = self._height(h)
        height.entered[node] = self.now
        c = self.costs
        self.background(1, self._one(node, STEPS_PER_HEIGHT * 2 * self.degree[node] * c.msg_us))
        if node == height.proposer:
            self._propose(height)
        if node in height.waiting:  # the block came before we entered the height
            height.waiting.discard(node)
            self.at(self.now + self.hop_ms, self._process_proposal, node, height)
        for votes in (height.prevotes, height.precommits):
            if len(votes.first) >= self.quorum:
                self._update_quorum(height, votes)

    def _propose(self, height: _Height) -> None:
        node, c = height.proposer, self.costs
        room = MAX_BLOCK_BYTES - BLOCK_HEADER_BYTES - COMMIT_SIG_BYTES * len(self.validators)
        per_tx = self.sc.tx_bytes + TX_FRAMING_BYTES
        for batch in list(self.mempool[node].values()):
            if batch.height is not None or batch.count * per_tx > room:
                continue
            batch.height = height.h
            height.batches.append(batch)
            height.txs += batch.count
            room -= batch.count * per_tx
        height.bytes = (
            BLOCK_HEADER_BYTES + COMMIT_SIG_BYTES * len(self.validators) + height.txs * per_tx
        )
        height.proposed = True
        prepare = height.txs * c.app_tx_us * c.prepare_share

        def prepared(_: float) -> None:
            self.charge(self.cons[node], c.sign_us, lambda t: self._send_block(height, t))

        self.charge(self.app[node], prepare, prepared, urgent=True)

    def _send_block(self, height: _Height, t: float) -> None:
        c = self.costs
        parts = max(1, math.ceil(height.bytes / self.timing.block_part_bytes))
        part = height.bytes / parts + PART_OVERHEAD_BYTES + 32 * math.ceil(math.log2(parts))
        proc = self.delays(1, c.msg_us + part / 1024 * c.kb_us)
        first, recv, sends = self.flood("data", height.proposer, t, part, proc)
        # later parts follow the first at the connection's rate, from several peers
        block_at = first + proc + (parts - 1) * part / self.conn_rate
        block_at[height.proposer] = t
        height.block_at = block_at
        self.count("BlockPart", recv * parts, part)
        self.count("Proposal", recv, PROPOSAL_BYTES)
        self.count("NewValidBlock", self.degree, NEW_VALID_BLOCK_BYTES)
        self.count("NewRoundStep", STEPS_PER_HEIGHT * self.degree, NEW_ROUND_STEP_BYTES)
        self.traffic(recv * parts, sends * parts, part, extra=2 * (1 + 2 * self.degree.mean()))
        for i in range(self.n):
            self.at(float(block_at[i]), self._block_arrives, i, height)

    def _block_arrives(self, node: int, height: _Height) -> None:
        if self.node_height[node] < height.h:
            height.waiting.add(node)
            return
        self._process_proposal(node, height)

    def _process_proposal(self, node: int, height: _Height) -> None:
        c = self.costs

        def processed(t: float) -> None:
            height.processed_at[node] = t
            if self.is_validator[node]:
                self.charge(self.cons[node], c.sign_us, lambda t2: self._vote(node, height, 0, t2))
                if np.isfinite(height.prevotes.decided[node]):  # the polka came first
                    self._precommit(node, height)
            self._maybe_commit(node, height)

        self.charge(
            self.app[node], height.txs * c.app_tx_us * c.process_share, processed, urgent=True
        )

    def _vote(self, node: int, height: _Height, kind: int, t: float) -> None:
        votes = height.prevotes if kind == 0 else height.precommits
        if node in votes.voters:
            return
        votes.voters.add(node)
        c = self.costs
        proc = self.delays(1, c.msg_us) + self.delays(0, c.verify_us)
        first, recv, sends = self.flood("vote", node, t, VOTE_BYTES, proc)
        first[node] = t
        votes.first.append(first)
        proc = proc.copy()
        proc[node] = 0.0
        votes.proc.append(proc)
        self.count("Vote", recv, VOTE_BYTES)
        self.count("HasVote", self.degree, HAS_VOTE_BYTES)
        if self.counting:
            self.dup_votes += np.maximum(recv - 1, 0)
        # every node that adds the vote tells all its peers (HasVote), both ways
        self.traffic(recv, sends, VOTE_BYTES, extra=2 * self.degree)
        verify = np.full(self.n, c.verify_us)
        verify[node] = 0.0
        self.background(0, verify)
        if len(votes.first) >= self.quorum:
            self._update_quorum(height, votes)

    def _update_quorum(self, height: _Height, votes: _Votes) -> None:
        """When each node holds +2/3 of the votes: the quorum-th vote added (a vote reaches a
        node only once the node is at its height, one gossip hop after it entered)."""
        first = np.vstack(votes.first)
        usable = np.maximum(first, height.entered + self.hop_ms) + np.vstack(votes.proc)
        q = self.quorum - 1
        qth = np.partition(usable, q, axis=0)[q]
        votes.tentative = qth
        open_ = ~np.isfinite(votes.decided) & np.isfinite(qth)
        if open_.any():
            votes.token += 1
            when = max(float(qth[open_].min()), self.now)
            self.at(when, self._quorum_due, height, votes, votes.token)

    def _quorum_due(self, height: _Height, votes: _Votes, token: int) -> None:
        if token != votes.token:
            return
        open_ = ~np.isfinite(votes.decided) & np.isfinite(votes.tentative)
        due = np.flatnonzero(open_ & (votes.tentative <= self.now + 1e-9))
        votes.decided[due] = self.now
        for i in due:
            if votes is height.prevotes:
                if self.is_validator[i] and height.processed_at[i] <= self.now:
                    self._precommit(int(i), height)
            else:
                height.quorum_at[i] = self.now
                self._maybe_commit(int(i), height)
        rest = open_ & ~np.isfinite(votes.decided)
        if rest.any():
            votes.token += 1
            self.at(
                float(votes.tentative[rest].min()), self._quorum_due, height, votes, votes.token
            )

    def _precommit(self, node: int, height: _Height) -> None:
        self.charge(self.cons[node], self.costs.sign_us, lambda t: self._vote(node, height, 1, t))

    def _maybe_commit(self, node: int, height: _Height) -> None:
        """Commit once the node holds the processed block and +2/3 precommits:
        ``FinalizeBlock`` and ``Commit`` on the app, the stores, then (``mempool.recheck``)
        every transaction left in the mempool is checked again, and the commit returns
        when the app has answered them all (or after ``recheck_timeout``)."""
        if height.quorum_at[node] > self.now or height.processed_at[node] > self.now:
            return
        if node in height.committing:
            return
        height.committing.add(node)
        c = self.costs
        go = c.height_go_us + height.txs * c.tx_go_us * (1 - c.go_checktx_share)
        app = c.app_height_us + height.txs * c.app_tx_us * c.finalize_share

        def finalize(_: float) -> None:
            self.charge(self.app[node], app, saved, urgent=True)

        def saved(_: float) -> None:
            self.charge(self.cons[node], go / 2, recheck)

        def recheck(t: float) -> None:
            done = set(b.id for b in height.batches)
            left = sum(b.count for bid, b in self.mempool[node].items() if bid not in done)
            if not (self.timing.recheck and left):
                self._committed(node, height, t)
                return
            self.background(0, self._one(node, left * c.abci_request_us))
            deadline = t + self.timing.recheck_timeout_ms
            finished = [False]

            def answered(t2: float) -> None:
                if not finished[0]:
                    finished[0] = True
                    self._committed(node, height, t2)

            self.charge(self.app[node], left * c.recheck_app_us, answered)
            self.at(deadline, lambda: answered(self.now))

        self.charge(self.cons[node], go / 2, finalize)

    def _committed(self, node: int, height: _Height, t: float) -> None:
        height.commit_at[node] = t
        for batch in height.batches:
            self.mempool[node].pop(batch.id, None)
        if node == self.reference:
            self._reference_commit(height, t)
        start = max(t, float(height.quorum_at[node]) + self.timing.timeout_commit_ms)
        self.at(start, self._enter, node, height.h + 1)

    def _reference_commit(self, height: _Height, t: float) -> None:
        sc = self.sc
        self.commit_times.append(t)
        if isinstance(sc.load, PerHeight):
            interval = t - self.commit_times[-2] if len(self.commit_times) > 1 else 400.0
            self._inject(interval)
            if self.counting:
                self.latencies.extend((t - b.submitted, b.count) for b in height.batches)
        done = len(self.commit_times)
        load = sc.load
        timed = isinstance(load, ClosedLoop) and load.window_ms is not None
        if done == sc.warmup:
            self.counting = True
            self.window_start = t
            self.window_first_height = height.h + 1
            for pool in self.pools:
                pool.advance(t)
            self.pool_busy0 = [p.busy_ms for p in self.pools]
            if isinstance(load, ClosedLoop):
                for c in range(load.clients):
                    self.at(t, self._client_poll, c)
                if timed:
                    self.at(t + load.window_ms, self._close_window)
        elif not timed and done == sc.warmup + sc.heights:
            self._close_window()

    def _close_window(self) -> None:
        for pool in self.pools:
            pool.advance(self.now)
        self.window = (self.window_start, self.now)
        self.window_last_height = len(self.commit_times)  # the reference commits in order
        self.finished = True


def simulate(sc: Scenario) -> Report:
    """Run the model; the result depends only on the scenario (seed included)."""
    sim = _Sim(sc)
    sim.run()
    if sim.window is None:
        raise RuntimeError("the model stopped before the measured heights were decided")
    start, end = sim.window
    duration = end - start
    first, last = sim.window_first_height, sim.window_last_height
    heights = max(1, last - first + 1)
    measured = [sim.heights[h] for h in range(first, last + 1)]
    committed = sum(h.txs for h in measured)
    latencies = sorted(sim.latencies)
    per_block = {k: float(v.sum()) / heights for k, v in sim.msgs.items()}
    bytes_block = {k: float(v.sum()) / heights for k, v in sim.bytes.items()}
    cpu = sim.cpu_ms / heights
    full = ~sim.is_validator
    used = [p.busy_ms - b for p, b in zip(sim.pools, sim.pool_busy0, strict=True)]
    util = max(used) / (duration * sc.cpu.cores)
    return Report(
        nodes=sc.nodes,
        validators=sc.validators,
        block_txs=committed / heights,
        heights=heights,
        # closed loop: what the clients saw committed in the window (as the load clients
        # count); per-height load: what the blocks of the window carry
        tx_per_s=(sim.read_txs if isinstance(sc.load, ClosedLoop) else committed)
        / (duration / 1000.0),
        p50_ms=_quantile(latencies, 0.5),
        p99_ms=_quantile(latencies, 0.99),
        block_interval_ms=duration / heights,
        messages_per_block=sum(per_block.values()),
        bytes_per_block=sum(bytes_block.values()),
        messages_by_type=per_block,
        bytes_by_type=bytes_block,
        vote_messages_per_node_block=float((sim.msgs["Vote"] + sim.msgs["HasVote"]).mean())
        / heights,
        duplicate_votes_per_node_block=float(sim.dup_votes.mean()) / heights,
        cpu_ms_per_block_validator=float(cpu[sim.is_validator].mean()),
        cpu_ms_per_block_full_node=float(cpu[full].mean()) if full.any() else None,
        cpu_ms_per_block_max=float(cpu.max()),
        cpu_utilisation_max=float(util),
        committed=committed,
        sim_ms=end,
        seed=sc.seed,
    )


def _quantile(pairs: list[tuple[float, int]], q: float) -> float | None:
    """The q-quantile of (value, weight) pairs sorted by value."""
    total = sum(w for _, w in pairs)
    if total == 0:
        return None
    seen = 0
    for value, weight in pairs:
        seen += weight
        if seen >= q * total:
            return value
    return pairs[-1][0]
