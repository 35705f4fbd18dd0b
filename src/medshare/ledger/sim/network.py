"""A deterministic discrete-event model of the institutions' network and CPUs (DESIGN §4).

The simulator knows nothing about consensus. It moves opaque messages, each with a size in
bytes and a CPU cost in µs, between ``n_nodes`` nodes, and calls one handler
``handler(node, payload, sim)`` for every delivered message or timer. A sans-I/O state
machine is plugged in by a runner that turns its actions into :meth:`Simulator.send`,
:meth:`~Simulator.broadcast`, :meth:`~Simulator.schedule` and :meth:`~Simulator.charge`.

What a message is charged, and why
----------------------------------
With latency alone, message complexity never shows in throughput: N² votes cost the same
as m² votes as long as they travel in parallel. So every message pays three things:

1. **Uplink bandwidth at the sender.** Each node has one uplink (default 100 Mbit/s);
   messages leave it one after another: ``departure = max(t, uplink_free) + bytes·8/bw``.
   A broadcast is one send per destination, so it occupies the uplink N times — this is
   where O(N²) message complexity turns into time.
2. **Link latency.** Each *ordered* pair (src, dst) gets a fixed base latency drawn
   uniformly in ``[latency_ms_min, latency_ms_max]`` (institution links, 5–80 ms by
   default) when the simulator is built, plus per-message jitter uniform in
   ``[0, jitter_ms]`` (so a link may reorder). Because pairs differ, a quorum of 2N/3+1
   waits for its ⌈2N/3⌉-th fastest link, which grows with N.
3. **Receiver CPU.** On arrival a message joins the receiver's FIFO inbox; the node
   handles one item at a time and pays ``cpu_us + costs.per_message_us`` (the caller puts
   signature verifications and hashing in ``cpu_us``, from :class:`CostModel`). An item
   arriving at ``t`` starts at ``max(t, busy_until)``; the handler is called at the *end*
   of its processing. An all-node BFT node verifies ~2N votes per block, a committee
   member ~2m. With large blocks, per-transaction verification dominates and is the same
   in both modes, so the gain shrinks — the model lets that show rather than hide it.

Work a node does on its own (signing its vote, hashing the block it builds) is charged with
:meth:`Simulator.charge`. Everything a node does — sends, timers, charges — happens at its
*local time* ``max(now, busy_until[node])``: messages sent from a handler leave when the
handler (and any work charged before the send) has finished.

Not modelled (same for every protocol compared): downlink contention, the CPU cost of
sending, TCP dynamics. Loopback (``src == dst``) uses no uplink or latency but still pays
receiver CPU, so "broadcast to all including myself" costs the same in both modes.

Faults
------
``loss`` drops each message with that probability. :meth:`~Simulator.partition` drops
messages between different groups (checked when sent and again when they arrive, so a
message in flight when a partition starts is lost; nodes missing from every group are
isolated). :meth:`~Simulator.crash` is a process death: the inbox, the message being
processed, the pending timers and any message not yet fully out of the uplink are lost;
a crashed node receives nothing and its timers never fire, even after
:meth:`~Simulator.recover` (a restarted process has no timers; the runner restarts its
state machine, which sets new ones).

Determinism
-----------
One seed drives everything: the simulator owns ``random.Random(seed)`` (never the global
``random``), the event heap breaks ties on ``(time, sequence number)``, and floats are
computed in a fixed order. Same seed + same costs + same handler behaviour ⇒ the same
trace, which :meth:`~Simulator.trace_digest` summarises as a running SHA-256 over
``(time, node, kind, src, size)`` of every delivered event. Components that need their own
randomness (a Byzantine strategy, a workload) take :meth:`~Simulator.derive_seed`.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from medshare.ledger.sim.costs import CostModel

#: ``handler(node, payload, sim)``: payload is the delivered message or timer event.
Handler = Callable[[int, Any, "Simulator"], None]

# Heap entries: (time_ms, seq, kind, node, ...). seq is unique, so tuples never compare
# beyond it and payloads are never compared.
_ARRIVE = 0  # (t, seq, _ARRIVE, dst, src, src_incarnation, tx_end_ms, message, size, cost_ms)
_DONE = 1  # (t, seq, _DONE, node, incarnation)
_TIMER = 2  # (t, seq, _TIMER, node, incarnation, event)

_TIMER_SRC = -1  # inbox items from timers carry this as their source
_TRACE = struct.Struct("<dIiQ")  # time, node, src (-1: timer), size


@dataclass(frozen=True)
class LinkModel:
    """Institution links. Latencies and jitter in ms, bandwidth in Mbit/s (10^6 bit/s).

    ``bandwidth_mbps`` is every node's uplink; if ``bandwidth_mbps_max`` is given, each
    node's uplink is instead drawn uniformly in ``[bandwidth_mbps, bandwidth_mbps_max]``
    from the seed (e.g. 100 Mbit/s – 1 Gbit/s).
    """

    latency_ms_min: float = 5.0
    latency_ms_max: float = 80.0
    jitter_ms: float = 0.0
    bandwidth_mbps: float = 100.0
    loss: float = 0.0
    bandwidth_mbps_max: float | None = None

    def __post_init__(self) -> None:
        for name in ("latency_ms_min", "latency_ms_max", "jitter_ms", "bandwidth_mbps", "loss"):
            _check_number(name, getattr(self, name))
        if self.bandwidth_mbps_max is not None:
            _check_number("bandwidth_mbps_max", self.bandwidth_mbps_max)
            if self.bandwidth_mbps_max < self.bandwidth_mbps:
                raise ValueError("bandwidth_mbps_max must be >= bandwidth_mbps")
        if self.latency_ms_max < self.latency_ms_min:
            raise ValueError("latency_ms_max must be >= latency_ms_min")
        if self.bandwidth_mbps <= 0:
            raise ValueError("bandwidth_mbps must be > 0")
        if self.loss > 1:
            raise ValueError("loss is a probability in [0, 1]")


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


@dataclass(frozen=True)
class SimStats:
    """Counters for the benchmark. ``messages_sent`` counts every send call, so once the
    simulator is idle ``messages_sent == messages_delivered + messages_dropped``.
    ``bytes_sent`` counts bytes put on an uplink (not loopback, not sends while crashed).
    ``cpu_busy_ms[i]`` is node i's processing plus charged work; ``uplink_busy_ms[i]`` is
    the time node i's uplink spent transmitting."""

    now_ms: float
    messages_sent: int
    messages_delivered: int
    messages_dropped: int
    bytes_sent: int
    timers_fired: int
    timers_dropped: int
    cpu_busy_ms: tuple[float, ...]
    uplink_busy_ms: tuple[float, ...] = ()


class Simulator:
    """Discrete-event network + CPU model; see the module docstring for what it charges."""

    def __init__(
        self,
        n_nodes: int,
        links: LinkModel | None = None,
        costs: CostModel | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(n_nodes, bool) or not isinstance(n_nodes, int):
            raise TypeError("n_nodes must be an int")
        if n_nodes < 1:
            raise ValueError("n_nodes must be >= 1")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError("seed must be an int")
        self.n_nodes = n_nodes
        self.links = links if links is not None else LinkModel()
        self.costs = costs if costs is not None else CostModel.fixed()
        self.seed = seed
        self._rng = random.Random(seed)
        rng = self._rng
        lo, hi = self.links.latency_ms_min, self.links.latency_ms_max
        nodes = range(n_nodes)
        self._latency = [[0.0 if s == d else rng.uniform(lo, hi) for d in nodes] for s in nodes]
        bw_lo, bw_hi = self.links.bandwidth_mbps, self.links.bandwidth_mbps_max
        bandwidth = [bw_lo if bw_hi is None else rng.uniform(bw_lo, bw_hi) for _ in nodes]
        # bytes·8 / (Mbit/s · 10^6) s = bytes · 8 / (Mbit/s · 10^3) ms
        self._ms_per_byte = [8.0 / (bw * 1000.0) for bw in bandwidth]

        self.now_ms = 0.0
        self._heap: list[tuple[Any, ...]] = []
        self._seq = itertools.count()
        self._uplink_free = [0.0] * n_nodes
        self._busy_until = [0.0] * n_nodes
        self._inbox: list[deque[tuple[float, Any, int, int]]] = [deque() for _ in nodes]
        self._current: list[tuple[float, Any, int, int] | None] = [None] * n_nodes
        self._crashed = [False] * n_nodes
        self._incarnation = [0] * n_nodes
        self._crash_at: dict[tuple[int, int], float] = {}
        self._group: list[int] | None = None
        self._cpu_busy_ms = [0.0] * n_nodes
        self._uplink_busy_ms = [0.0] * n_nodes
        self._trace = hashlib.sha256(b"medshare.ledger.sim/1")

        self.messages_sent = 0
        self.messages_delivered = 0
        self.messages_dropped = 0
        self.bytes_sent = 0
        self.timers_fired = 0
        self.timers_dropped = 0

    def __repr__(self) -> str:
        return f"Simulator(n_nodes={self.n_nodes}, seed={self.seed}, now_ms={self.now_ms})"

    # ----------------------------------------------------------------- inspection

    def latency_ms(self, src: int, dst: int) -> float:
        """The base latency of the ordered link src → dst (0 for loopback)."""
        self._check_node(src)
        self._check_node(dst)
        return self._latency[src][dst]

    def bandwidth_mbps(self, node: int) -> float:
        """The node's uplink bandwidth."""
        self._check_node(node)
        return 8.0 / (self._ms_per_byte[node] * 1000.0)

    def node_time(self, node: int) -> float:
        """The node's local time: when its next send, timer or charged work starts."""
        self._check_node(node)
        busy = self._busy_until[node]
        return busy if busy > self.now_ms else self.now_ms

    def is_crashed(self, node: int) -> bool:
        self._check_node(node)
        return self._crashed[node]

    def derive_seed(self, label: str) -> int:
        """An independent 64-bit seed for a sub-component, derived from this run's seed, so
        one seed still drives everything without the streams disturbing each other."""
        digest = hashlib.sha256(f"{self.seed}\x00{label}".encode()).digest()
        return int.from_bytes(digest[:8], "big")

    def trace_digest(self) -> str:
        """Hex SHA-256 over (time, node, kind, src, size) of every event delivered so far."""
        return self._trace.hexdigest()

    def stats(self) -> SimStats:
        return SimStats(
            now_ms=self.now_ms,
            messages_sent=self.messages_sent,
            messages_delivered=self.messages_delivered,
            messages_dropped=self.messages_dropped,
            bytes_sent=self.bytes_sent,
            timers_fired=self.timers_fired,
            timers_dropped=self.timers_dropped,
            cpu_busy_ms=tuple(self._cpu_busy_ms),
            uplink_busy_ms=tuple(self._uplink_busy_ms),
        )

    # ----------------------------------------------------------------- node actions

    def send(self, src: int, dst: int, message: Any, size_bytes: int, cpu_us: float) -> None:
        """Send ``message`` (``size_bytes`` on the wire) from src to dst; on arrival dst's CPU
        is charged ``cpu_us + costs.per_message_us`` before its handler sees it."""
        n = self.n_nodes
        if not (0 <= src < n and 0 <= dst < n):
            raise IndexError(f"node out of range: src={src}, dst={dst}, n_nodes={n}")
        if size_bytes < 0 or cpu_us < 0:
            raise ValueError("size_bytes and cpu_us must be >= 0")
        self.messages_sent += 1
        if self._crashed[src]:
            self.messages_dropped += 1
            return
        start = self._busy_until[src]
        if start < self.now_ms:
            start = self.now_ms
        cost_ms = (cpu_us + self.costs.per_message_us) / 1000.0
        if src == dst:
            heapq.heappush(
                self._heap,
                (start, next(self._seq), _ARRIVE, dst, src, self._incarnation[src], start,
                 message, size_bytes, cost_ms),
            )  # fmt: skip
            return
        uplink = self._uplink_free[src]
        if uplink > start:
            start = uplink
        on_wire = size_bytes * self._ms_per_byte[src]
        tx_end = start + on_wire
        self._uplink_free[src] = tx_end
        self._uplink_busy_ms[src] += on_wire
        self.bytes_sent += size_bytes
        links = self.links
        if links.loss > 0.0 and self._rng.random() < links.loss:
            self.messages_dropped += 1
            return
        arrive = tx_end + self._latency[src][dst]
        if links.jitter_ms > 0.0:
            arrive += self._rng.random() * links.jitter_ms
        group = self._group
        if group is not None and group[src] != group[dst]:
            self.messages_dropped += 1
            return
        heapq.heappush(
            self._heap,
            (arrive, next(self._seq), _ARRIVE, dst, src, self._incarnation[src], tx_end,
             message, size_bytes, cost_ms),
        )  # fmt: skip

    def broadcast(
        self, src: int, dsts: Iterable[int], message: Any, size_bytes: int, cpu_us: float
    ) -> None:
        """One :meth:`send` per destination, in the given order; each occupies the uplink in
        turn, so the last destination receives N transmission times later."""
        for dst in dsts:
            self.send(src, dst, message, size_bytes, cpu_us)

    def charge(self, node: int, cpu_us: float) -> None:
        """Local work (signing, building a block): delays the node's later processing and
        sends by ``cpu_us``. Ignored while the node is crashed."""
        self._check_node(node)
        if cpu_us < 0:
            raise ValueError("cpu_us must be >= 0")
        if self._crashed[node]:
            return
        cost_ms = cpu_us / 1000.0
        self._busy_until[node] = self.node_time(node) + cost_ms
        self._cpu_busy_ms[node] += cost_ms

    def schedule(self, node: int, delay_ms: float, event: Any) -> None:
        """Deliver ``event`` to the node's handler ``delay_ms`` after its local time. No link
        is involved and no CPU is charged, but it queues behind messages the node is
        handling. Dropped if the node is (or has since been) crashed."""
        self._check_node(node)
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        if self._crashed[node]:
            self.timers_dropped += 1
            return
        heapq.heappush(
            self._heap,
            (self.node_time(node) + delay_ms, next(self._seq), _TIMER, node,
             self._incarnation[node], event),
        )  # fmt: skip

    # ----------------------------------------------------------------- faults

    def crash(self, node: int) -> None:
        """Kill the node's process: see the module docstring for what is lost."""
        self._check_node(node)
        if self._crashed[node]:
            return
        now = self.now_ms
        self._crashed[node] = True
        self._crash_at[(node, self._incarnation[node])] = now
        self._incarnation[node] += 1
        lost = [item for item in self._inbox[node] if item[2] != _TIMER_SRC]
        current = self._current[node]
        if current is not None and current[2] != _TIMER_SRC:
            lost.append(current)
        self.messages_dropped += len(lost)
        self.timers_dropped += len(self._inbox[node]) + (current is not None) - len(lost)
        self._inbox[node].clear()
        self._current[node] = None
        if self._busy_until[node] > now:  # unfinished work was never done
            self._cpu_busy_ms[node] -= self._busy_until[node] - now
            self._busy_until[node] = now
        if self._uplink_free[node] > now:  # messages not yet out are lost (see _ARRIVE)
            self._uplink_busy_ms[node] -= self._uplink_free[node] - now
            self._uplink_free[node] = now

    def recover(self, node: int) -> None:
        """Restart the node: it receives and sends again, with no pending timers."""
        self._check_node(node)
        self._crashed[node] = False

    def partition(self, groups: Sequence[set[int]]) -> None:
        """Drop messages between different groups until :meth:`heal` (or another call)."""
        group = [-1 - node for node in range(self.n_nodes)]  # unlisted: isolated
        seen: set[int] = set()
        for index, members in enumerate(groups):
            for node in members:
                self._check_node(node)
                if node in seen:
                    raise ValueError(f"node {node} is in more than one group")
                seen.add(node)
                group[node] = index
        self._group = group

    def heal(self) -> None:
        self._group = None

    # ----------------------------------------------------------------- event loop

    def run(
        self, handler: Handler, until_ms: float | None = None, max_events: int | None = None
    ) -> int:
        """Process events in (time, sequence) order until the heap is empty, the next event
        is later than ``until_ms`` (the clock then advances to ``until_ms``), or
        ``max_events`` handler calls were made. Returns the number of handler calls."""
        heap = self._heap
        heappop = heapq.heappop
        heappush = heapq.heappush
        seq = self._seq
        inbox = self._inbox
        current = self._current
        crashed = self._crashed
        incarnation = self._incarnation
        busy_until = self._busy_until
        cpu_busy = self._cpu_busy_ms
        trace_update = self._trace.update
        trace_pack = _TRACE.pack
        limit = math.inf if until_ms is None else until_ms
        budget = -1 if max_events is None else max_events
        handled = 0

        while heap and handled != budget:
            if heap[0][0] > limit:
                break
            event = heappop(heap)
            now = event[0]
            self.now_ms = now
            kind = event[2]
            node = event[3]
            if kind == _DONE:
                if event[4] != incarnation[node]:
                    continue  # the node crashed while processing this item
                item = current[node]
                current[node] = None
                assert item is not None
                src = item[2]
                trace_update(trace_pack(now, node, src, item[3]))
                if src == _TIMER_SRC:
                    self.timers_fired += 1
                else:
                    self.messages_delivered += 1
                handled += 1
                handler(node, item[1], self)
                queue = inbox[node]
                if not queue or crashed[node] or current[node] is not None:
                    continue
            elif kind == _ARRIVE:
                src = event[4]
                src_inc = event[5]
                if (
                    crashed[node]
                    or (src_inc != incarnation[src] and event[6] > self._crash_at[(src, src_inc)])
                    or (self._group is not None and self._group[src] != self._group[node])
                ):
                    self.messages_dropped += 1
                    continue
                queue = inbox[node]
                queue.append((event[9], event[7], src, event[8]))
                if current[node] is not None:
                    continue
            else:  # _TIMER
                if crashed[node] or event[4] != incarnation[node]:
                    self.timers_dropped += 1
                    continue
                queue = inbox[node]
                queue.append((0.0, event[5], _TIMER_SRC, 0))
                if current[node] is not None:
                    continue
            # The node is idle and has work: start the next item of its inbox.
            item = queue.popleft()
            start = busy_until[node]
            if start < now:
                start = now
            end = start + item[0]
            busy_until[node] = end
            cpu_busy[node] += item[0]
            current[node] = item
            heappush(heap, (end, next(seq), _DONE, node, incarnation[node]))

        if until_ms is not None and handled != budget and self.now_ms < until_ms:
            self.now_ms = until_ms
        return handled

    def _check_node(self, node: int) -> None:
        if not 0 <= node < self.n_nodes:
            raise IndexError(f"node {node} out of range 0..{self.n_nodes - 1}")
