"""An in-process cluster of consensus nodes: tests, the demo and the in-process benchmark.

N :class:`~medshare.ledger.node.NodeRuntime` drivers share one process, one message queue
(the in-memory :class:`~medshare.ledger.node.Transport`) and one simulated clock (the
:class:`~medshare.ledger.node.Clock`). The queue is FIFO (deterministic) unless
``shuffle=True``, in which case a ``random.Random(seed)`` picks the next message; when the
queue is empty the clock jumps to the next scheduled timer. Everything a node does
(mempool, gossip, relay, sync, evidence, Byzantine rewriting) is the runtime's; this module
only moves messages and time.

Crash and restart: :meth:`InProcessCluster.crash` drops a node's memory (runtime, mempool,
pending timers and messages to it); :meth:`InProcessCluster.restart` rebuilds it from its
store (re-verified from genesis) plus the consensus WAL, then fetches the certified blocks
it missed from a peer.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable, Sequence

from medshare.crypto import signing
from medshare.ledger import chain
from medshare.ledger.consensus import Action, ConflictingProposals, Consensus, ConsensusConfig
from medshare.ledger.node import (
    Behaviour,
    Mempool,
    Message,
    NodeRuntime,
    Rejected,
    SyncReply,
    SyncRequest,
    TimerEvent,
    TxGossip,
)
from medshare.ledger.store import BlockStore, MemoryStore
from medshare.ledger.types import Equivocation, Tx

__all__ = [
    "Behaviour",
    "InProcessCluster",
    "LivenessError",
    "Mempool",
    "Node",
    "SafetyViolation",
    "SyncReply",
    "SyncRequest",
    "TxGossip",
]


class LivenessError(RuntimeError):
    """The run stopped making progress (or exceeded its step budget)."""


class SafetyViolation(AssertionError):
    """Two honest nodes committed different blocks at one height."""


class Node:
    """One simulated node: its key, store (which survives crashes) and runtime (``None``
    while crashed).

    ``crash_before`` is a fault-injection hook: the node crashes right before executing
    the first action for which it returns True (e.g. before appending a block, or between
    persisting a vote and sending it)."""

    def __init__(
        self, index: int, key: signing.SigningKey, store: BlockStore, behaviour: Behaviour | None
    ) -> None:
        self.index, self.key, self.public = index, key, key.public
        self.store = store
        self.behaviour = behaviour
        self.runtime: NodeRuntime | None = None
        self.incarnation = 0
        self.evidence: list[Equivocation | ConflictingProposals] = []
        self.committed_txs = 0

    @property
    def alive(self) -> bool:
        return self.runtime is not None

    @property
    def honest(self) -> bool:
        return self.behaviour is None

    @property
    def core(self) -> Consensus:
        if self.runtime is None:
            raise RuntimeError(f"node {self.index} is crashed")
        return self.runtime.core

    @property
    def state(self) -> chain.ChainState:
        return self.core.state

    @property
    def mempool(self) -> Mempool:
        return self.runtime.mempool if self.runtime is not None else Mempool()

    @property
    def crash_before(self) -> Callable[[Action], bool] | None:
        return self.runtime.crash_before if self.runtime is not None else None

    @crash_before.setter
    def crash_before(self, hook: Callable[[Action], bool] | None) -> None:
        if self.runtime is None:
            raise RuntimeError(f"node {self.index} is crashed")
        self.runtime.crash_before = hook


class _QueueTransport:
    """Node ``index``'s view of the cluster's shared FIFO queue."""

    def __init__(self, cluster: InProcessCluster, index: int) -> None:
        self._cluster, self._index = cluster, index
        self._peers = [j for j in range(len(cluster.nodes)) if j != index]

    def send(self, dest: int | bytes, payload: Message) -> None:
        self._cluster._queue.append((int(dest), self._index, payload))  # type: ignore[arg-type]

    def broadcast(self, payload: Message) -> None:
        for dest in self._peers:
            self._cluster._queue.append((dest, self._index, payload))

    def peers(self) -> list[int]:
        return self._peers


class _SimClock:
    """The cluster's clock as seen by one incarnation of one node (its timers die with it)."""

    def __init__(self, cluster: InProcessCluster, node: Node) -> None:
        self._cluster, self._index, self._incarnation = cluster, node.index, node.incarnation

    def now_ms(self) -> int:
        return self._cluster.now_ms

    def schedule(self, delay_ms: int, event: TimerEvent) -> None:
        c = self._cluster
        entry = (c.now_ms + delay_ms, next(c._seq), self._index, self._incarnation, event)
        heapq.heappush(c._timers, entry)


class InProcessCluster:
    """N nodes, one FIFO (or seeded-shuffle) queue, one simulated clock in ms.

    ``byzantine`` maps node index to a :class:`Behaviour`; ``relay`` forwards each proposal
    and vote once per node (gossip); ``empty_block_interval_ms`` is how long a proposer with
    an empty mempool waits before proposing an empty block; ``regossip_ms`` (off by
    default) makes a node that committed nothing for that long re-send its own messages of
    the current height, which more than f nodes down at once (messages to them are lost)
    need to get going again once they are back. ``lose(dest, src, message)``,
    if given, names messages the network loses (a lossy link, for fault experiments);
    :attr:`lost` counts them."""

    def __init__(
        self,
        config: chain.ChainConfig,
        keys: Sequence[signing.SigningKey],
        stores: Sequence[BlockStore] | None = None,
        byzantine: dict[int, Behaviour] | None = None,
        seed: int = 0,
        *,
        consensus: ConsensusConfig | None = None,
        relay: bool = True,
        shuffle: bool = False,
        empty_block_interval_ms: int = 50,
        regossip_ms: int | None = None,
        start_ms: int | None = None,
        lose: Callable[[int, int, Message], bool] | None = None,
    ) -> None:
        if stores is not None and len(stores) != len(keys):
            raise ValueError("need one store per key")
        self.config = config
        self.consensus_config = consensus or ConsensusConfig()
        self.rng = random.Random(seed)
        self.relay, self.shuffle = relay, shuffle
        self.empty_block_interval_ms = empty_block_interval_ms
        self.regossip_ms = regossip_ms
        self.lose = lose
        self.lost = 0
        # A cluster re-opened over existing stores starts its clock later than genesis
        # (``start_ms``), so block times keep increasing across runs.
        self.now_ms = config.genesis_time_ms if start_ms is None else start_ms
        self._queue: deque[tuple[int, int, Message]] = deque()
        self._timers: list[tuple[int, int, int, int, TimerEvent]] = []
        self._seq = itertools.count()
        self.delivered: Counter[str] = Counter()
        self.evidence: list[tuple[int, Equivocation | ConflictingProposals]] = []
        byz = byzantine or {}
        self.nodes = [
            Node(i, k, stores[i] if stores is not None else MemoryStore(), byz.get(i))
            for i, k in enumerate(keys)
        ]
        for node in self.nodes:
            self._boot(node, catch_up=False)

    # --- public API ------------------------------------------------------------------------

    def node(self, i: int) -> Node:
        return self.nodes[i]

    def submit(self, tx: Tx, node: int = 0) -> bool:
        """Give ``tx`` to one node, which admits it and gossips it to the others."""
        runtime = self.nodes[node].runtime
        if runtime is None:
            return False
        try:
            runtime.submit(tx)
        except Rejected:
            return False
        return True

    def heads(self) -> list[tuple[int, str] | None]:
        return [(n.state.height, n.state.head_hash) if n.alive else None for n in self.nodes]

    def honest(self) -> list[Node]:
        return [n for n in self.nodes if n.honest]

    def step(self) -> bool:
        """Deliver one message, or fire the next timer; False when nothing is left."""
        if self._queue:
            if self.shuffle and len(self._queue) > 1:
                i = self.rng.randrange(len(self._queue))
                self._queue.rotate(-i)
                item = self._queue.popleft()
                self._queue.rotate(i)
            else:
                item = self._queue.popleft()
            self._deliver(*item)
            return True
        while self._timers:
            at, _, index, incarnation, event = heapq.heappop(self._timers)
            node = self.nodes[index]
            if node.incarnation != incarnation or node.runtime is None:
                continue
            self.now_ms = max(self.now_ms, at)
            node.runtime.fire(event)
            return True
        return False

    def run_until_height(self, height: int, max_steps: int = 500_000) -> int:
        """Run until every live honest node has committed ``height``; returns steps taken."""
        steps = 0
        while min((n.state.height for n in self.honest() if n.alive), default=height) < height:
            if steps >= max_steps:
                raise LivenessError(f"no height {height} after {max_steps} steps: {self.heads()}")
            if not self.step():
                raise LivenessError(f"cluster idle before height {height}: {self.heads()}")
            steps += 1
        return steps

    def run_for(self, ms: int, max_steps: int = 500_000) -> int:
        """Run until the simulated clock has advanced ``ms``; returns steps taken."""
        deadline = self.now_ms + ms
        steps = 0
        while steps < max_steps:
            if not self._queue and (not self._timers or self._timers[0][0] > deadline):
                break
            self.step()
            steps += 1
        self.now_ms = max(self.now_ms, deadline)
        return steps

    def crash(self, i: int) -> None:
        """Lose node ``i``'s memory; its store (blocks and WAL) survives."""
        node = self.nodes[i]
        if node.runtime is not None:
            node.runtime.halt()
        node.runtime = None
        node.incarnation += 1

    def restart(self, i: int, store: BlockStore | None = None) -> None:
        """Rebuild node ``i`` from its store (or ``store``, e.g. the SQLite file reopened)
        and its WAL, then catch up from a peer."""
        node = self.nodes[i]
        if node.alive:
            raise RuntimeError(f"node {i} is running")
        if store is not None:
            node.store = store
        self._boot(node, catch_up=True)

    def check_safety(self) -> int:
        """Raise :class:`SafetyViolation` unless all honest stores agree at every height
        they share; returns the number of heights compared."""
        seen: dict[int, tuple[int, str]] = {}
        for node in self.honest():
            for block in node.store.blocks():
                first = seen.setdefault(block.height, (node.index, block.hash))
                if first[1] != block.hash:
                    raise SafetyViolation(
                        f"height {block.height}: node {first[0]} committed {first[1][:12]}, "
                        f"node {node.index} committed {block.hash[:12]}"
                    )
        return len(seen)

    # --- wiring ----------------------------------------------------------------------------

    def _boot(self, node: Node, *, catch_up: bool) -> None:
        def on_commit(block) -> None:
            node.committed_txs += len(block.txs)

        def on_evidence(evidence: Equivocation | ConflictingProposals) -> None:
            node.evidence.append(evidence)
            self.evidence.append((node.index, evidence))

        node.runtime = NodeRuntime(
            node.key,
            self.config,
            node.store,
            _QueueTransport(self, node.index),
            _SimClock(self, node),
            consensus=self.consensus_config,
            behaviour=node.behaviour,
            relay=self.relay,
            empty_block_interval_ms=self.empty_block_interval_ms,
            regossip_ms=self.regossip_ms,
            on_commit=on_commit,
            on_evidence=on_evidence,
            on_halt=lambda: self.crash(node.index),
        )
        node.runtime.start(catch_up=catch_up)

    def _deliver(self, dest: int, src: int, payload: Message) -> None:
        runtime = self.nodes[dest].runtime
        if runtime is None:
            return
        if self.lose is not None and self.lose(dest, src, payload):
            self.lost += 1
            return
        self.delivered[type(payload).__name__] += 1
        runtime.receive(src, payload)
