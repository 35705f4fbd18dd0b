"""Tests for the deterministic network + CPU simulator (DESIGN §4, STYLE "Tests" item 4).

Every randomised test names its seed in its failure message; set ``MEDSHARE_SIM_SEED`` to
replay (or add) one seed in the fuzz test.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import pytest

from medshare.ledger.sim import CostModel, LinkModel, SimStats, Simulator, calibrate

FREE = CostModel(verify_us=0.0, sign_us=0.0, hash_us_per_kb=0.0, per_message_us=0.0)


def fixed_links(latency_ms: float = 10.0, **kw: Any) -> LinkModel:
    return LinkModel(latency_ms_min=latency_ms, latency_ms_max=latency_ms, **kw)


class Recorder:
    """A handler that records (time, node, payload) and optionally reacts."""

    def __init__(self, react: Any = None) -> None:
        self.log: list[tuple[float, int, Any]] = []
        self.react = react

    def __call__(self, node: int, payload: Any, sim: Simulator) -> None:
        self.log.append((sim.now_ms, node, payload))
        if self.react is not None:
            self.react(node, payload, sim)

    def times(self, node: int | None = None) -> list[float]:
        return [t for t, n, _ in self.log if node is None or n == node]


# --------------------------------------------------------------------------- determinism


def gossip_run(seed: int, n: int = 8) -> Simulator:
    """A small protocol exercising jitter, loss, timers, charges, a crash and a partition."""
    links = LinkModel(jitter_ms=3.0, loss=0.05, bandwidth_mbps=100.0, bandwidth_mbps_max=1000.0)
    sim = Simulator(n, links, CostModel.fixed(), seed=seed)
    rng = random.Random(sim.derive_seed("protocol"))

    def handler(node: int, payload: Any, sim: Simulator) -> None:
        kind, hop = payload
        if kind == "tick":
            sim.charge(node, sim.costs.sign_us)
            sim.broadcast(node, range(n), ("vote", 0), 200, sim.costs.verify_us)
            if hop < 5:
                sim.schedule(node, 50.0, ("tick", hop + 1))
        elif hop < 3:
            dst = rng.randrange(n)
            sim.send(node, dst, ("vote", hop + 1), rng.choice([200, 4000]), sim.costs.verify_us)

    for node in range(n):
        sim.schedule(node, rng.uniform(0, 10), ("tick", 0))
    sim.run(handler, until_ms=60)
    sim.crash(3)
    sim.partition([set(range(n // 2)), set(range(n // 2, n))])
    sim.run(handler, until_ms=140)
    sim.heal()
    sim.recover(3)
    sim.schedule(3, 1.0, ("tick", 4))
    sim.run(handler)
    return sim


def test_same_seed_same_trace_and_stats() -> None:
    a, b = gossip_run(seed=7), gossip_run(seed=7)
    assert a.trace_digest() == b.trace_digest()
    assert a.stats() == b.stats()
    assert a.stats().messages_delivered > 100


def test_different_seed_different_trace() -> None:
    assert gossip_run(seed=7).trace_digest() != gossip_run(seed=8).trace_digest()


def test_digest_covers_every_delivered_event() -> None:
    sim = Simulator(2, fixed_links(), FREE, seed=1)
    before = sim.trace_digest()
    sim.send(0, 1, "m", 10, 0)
    sim.run(Recorder())
    assert sim.trace_digest() != before
    # Same delivery, different size: different digest.
    other = Simulator(2, fixed_links(), FREE, seed=1)
    other.send(0, 1, "m", 11, 0)
    other.run(Recorder())
    assert other.trace_digest() != sim.trace_digest()


def test_link_latencies_are_per_ordered_pair_within_bounds_and_seeded() -> None:
    sim = Simulator(6, LinkModel(latency_ms_min=5, latency_ms_max=80), seed=3)
    lat = [[sim.latency_ms(s, d) for d in range(6)] for s in range(6)]
    off_diag = [lat[s][d] for s in range(6) for d in range(6) if s != d]
    assert all(5 <= x <= 80 for x in off_diag)
    assert len(set(off_diag)) == len(off_diag)  # drawn independently
    assert all(lat[i][i] == 0.0 for i in range(6))
    assert lat != [[Simulator(6, seed=4).latency_ms(s, d) for d in range(6)] for s in range(6)]
    assert lat == [[Simulator(6, seed=3).latency_ms(s, d) for d in range(6)] for s in range(6)]


def test_derive_seed_is_deterministic_and_label_specific() -> None:
    sim = Simulator(2, seed=5)
    assert sim.derive_seed("a") == Simulator(2, seed=5).derive_seed("a")
    assert sim.derive_seed("a") != sim.derive_seed("b")
    assert sim.derive_seed("a") != Simulator(2, seed=6).derive_seed("a")


# --------------------------------------------------------------------------- latency / bandwidth


def test_one_megabyte_on_100_mbit_uplink_arrives_after_transmission_plus_latency() -> None:
    sim = Simulator(2, fixed_links(10.0, bandwidth_mbps=100.0), FREE, seed=0)
    rec = Recorder()
    sim.send(0, 1, "block", 1_000_000, 0)
    sim.run(rec)
    assert rec.times() == [pytest.approx(80.0 + 10.0)]
    assert sim.stats().bytes_sent == 1_000_000


def test_back_to_back_sends_serialise_on_the_uplink() -> None:
    sim = Simulator(3, fixed_links(10.0), FREE, seed=0)
    rec = Recorder()
    sim.send(0, 1, "a", 1_000_000, 0)
    sim.send(0, 2, "b", 1_000_000, 0)  # different receiver, same uplink
    sim.run(rec)
    assert rec.log == [(pytest.approx(90.0), 1, "a"), (pytest.approx(170.0), 2, "b")]


def test_different_senders_do_not_share_an_uplink() -> None:
    sim = Simulator(3, fixed_links(10.0), FREE, seed=0)
    rec = Recorder()
    sim.send(0, 2, "a", 1_000_000, 0)
    sim.send(1, 2, "b", 1_000_000, 0)
    sim.run(rec)
    # Both arrive at 90; the receiver has no CPU cost here, so both are handled at 90.
    assert rec.times() == [pytest.approx(90.0), pytest.approx(90.0)]


def test_per_node_bandwidth_range() -> None:
    sim = Simulator(20, LinkModel(bandwidth_mbps=100, bandwidth_mbps_max=1000), seed=2)
    bws = [sim.bandwidth_mbps(i) for i in range(20)]
    assert all(100 <= b <= 1000 for b in bws)
    assert len(set(bws)) == 20
    assert Simulator(3, LinkModel(bandwidth_mbps=250)).bandwidth_mbps(1) == pytest.approx(250)


def test_jitter_is_bounded_and_can_reorder() -> None:
    sim = Simulator(2, fixed_links(10.0, jitter_ms=5.0), FREE, seed=11)
    rec = Recorder()
    for i in range(200):
        sim.send(0, 1, i, 0, 0)
    sim.run(rec)
    assert all(10.0 <= t <= 15.0 for t in rec.times())
    order = [p for _, _, p in rec.log]
    assert sorted(order) == list(range(200)) and order != list(range(200))


# --------------------------------------------------------------------------- CPU model


def test_simultaneous_arrivals_are_processed_one_at_a_time() -> None:
    sim = Simulator(4, fixed_links(10.0), FREE, seed=0)
    rec = Recorder()
    for src in (1, 2, 3):
        sim.send(src, 0, src, 0, 1000.0)
    sim.run(rec)
    assert rec.times(0) == [pytest.approx(11.0), pytest.approx(12.0), pytest.approx(13.0)]
    assert sim.stats().cpu_busy_ms[0] == pytest.approx(3.0)


def test_per_message_overhead_is_charged() -> None:
    costs = CostModel(verify_us=0, sign_us=0, hash_us_per_kb=0, per_message_us=250.0)
    sim = Simulator(2, fixed_links(10.0), costs, seed=0)
    rec = Recorder()
    sim.send(0, 1, "a", 0, 750.0)
    sim.send(0, 1, "b", 0, 0.0)
    sim.run(rec)
    assert rec.times() == [pytest.approx(11.0), pytest.approx(11.25)]


def test_sends_from_a_handler_depart_after_processing_and_charged_work() -> None:
    sim = Simulator(3, fixed_links(10.0), FREE, seed=0)

    def react(node: int, payload: Any, sim: Simulator) -> None:
        if node == 1:
            sim.charge(1, 500.0)  # e.g. sign the reply
            sim.send(1, 2, "reply", 12_500, 0)  # 1 ms on a 100 Mbit/s uplink

    rec = Recorder(react)
    sim.send(0, 1, "req", 0, 1000.0)
    sim.run(rec)
    # handled at 10 + 1 = 11; charge → 11.5; transmission 1 ms → 12.5; latency → 22.5
    assert rec.log == [(pytest.approx(11.0), 1, "req"), (pytest.approx(22.5), 2, "reply")]


def test_sends_never_depart_in_the_past() -> None:
    sim = Simulator(2, fixed_links(10.0), FREE, seed=0)
    rec = Recorder()
    sim.run(rec, until_ms=50.0)
    sim.send(0, 1, "late", 12_500, 0)
    sim.schedule(0, 5.0, "timer")
    sim.run(rec)
    assert rec.log == [(pytest.approx(55.0), 0, "timer"), (pytest.approx(61.0), 1, "late")]


def test_charge_delays_the_next_message() -> None:
    sim = Simulator(3, fixed_links(10.0), FREE, seed=0)
    rec = Recorder(lambda node, p, s: s.charge(node, 2000.0) if p == "first" else None)
    sim.send(1, 0, "first", 0, 1000.0)
    sim.send(2, 0, "second", 0, 1000.0)
    sim.run(rec)
    assert rec.times(0) == [pytest.approx(11.0), pytest.approx(14.0)]
    assert sim.stats().cpu_busy_ms[0] == pytest.approx(4.0)


def test_timer_fires_at_local_time_and_queues_behind_work() -> None:
    sim = Simulator(2, fixed_links(10.0), FREE, seed=0)
    rec = Recorder()
    sim.schedule(1, 5.0, "t1")
    sim.send(0, 1, "m", 0, 3000.0)  # busy 10..13
    sim.schedule(1, 11.0, "t2")  # fires at 11, node busy until 13
    sim.run(rec)
    assert rec.log == [
        (pytest.approx(5.0), 1, "t1"),
        (pytest.approx(13.0), 1, "m"),
        (pytest.approx(13.0), 1, "t2"),
    ]
    assert sim.stats().timers_fired == 2


def test_loopback_pays_cpu_but_no_wire() -> None:
    sim = Simulator(2, fixed_links(10.0), FREE, seed=0)
    rec = Recorder()
    sim.send(0, 0, "self", 1_000_000, 1000.0)
    sim.run(rec)
    assert rec.times() == [pytest.approx(1.0)]
    assert sim.stats().bytes_sent == 0


# --------------------------------------------------------------------------- broadcast


def last_broadcast_arrival(n_dst: int) -> float:
    sim = Simulator(n_dst + 1, fixed_links(10.0), FREE, seed=0)
    rec = Recorder()
    sim.broadcast(0, range(1, n_dst + 1), "vote", 12_500, 0)  # 1 ms per copy
    sim.run(rec)
    assert len(rec.log) == n_dst
    return max(rec.times())


def test_broadcast_costs_one_uplink_transmission_per_destination() -> None:
    arrivals = {n: last_broadcast_arrival(n) for n in (4, 16, 64)}
    for n, t in arrivals.items():
        assert t == pytest.approx(n * 1.0 + 10.0), n


def test_broadcast_counts_messages_and_bytes() -> None:
    sim = Simulator(5, fixed_links(), FREE, seed=0)
    sim.broadcast(0, range(5), "x", 100, 0)
    sim.run(Recorder())
    st = sim.stats()
    assert (st.messages_sent, st.messages_delivered, st.bytes_sent) == (5, 5, 400)


# --------------------------------------------------------------------------- faults


def test_loss_one_drops_everything() -> None:
    sim = Simulator(4, fixed_links(loss=1.0), FREE, seed=0)
    rec = Recorder()
    for src in range(4):
        sim.broadcast(src, range(4), "x", 10, 0)
    sim.run(rec)
    st = sim.stats()
    # loopback never touches a link, so only the 4 self-sends get through
    assert [n for _, n, _ in rec.log] == [0, 1, 2, 3]
    assert (st.messages_sent, st.messages_dropped, st.messages_delivered) == (16, 12, 4)


def test_loss_rate_is_roughly_respected() -> None:
    seed = 21
    sim = Simulator(2, fixed_links(loss=0.3), FREE, seed=seed)
    for _ in range(2000):
        sim.send(0, 1, "x", 0, 0)
    sim.run(Recorder())
    assert 500 < sim.stats().messages_dropped < 700, f"seed={seed}"


def test_partition_drops_cross_group_and_heal_restores() -> None:
    sim = Simulator(5, fixed_links(), FREE, seed=0)
    rec = Recorder()
    sim.partition([{0, 1}, {2, 3}])  # 4 is listed nowhere: isolated
    sim.send(0, 1, "same-group", 0, 0)
    sim.send(0, 2, "cross", 0, 0)
    sim.send(3, 2, "same-group-2", 0, 0)
    sim.send(0, 4, "to-isolated", 0, 0)
    sim.run(rec)
    assert [p for _, _, p in rec.log] == ["same-group", "same-group-2"]
    sim.heal()
    sim.send(0, 2, "healed", 0, 0)
    sim.send(0, 4, "healed-4", 0, 0)
    sim.run(rec)
    assert [p for _, _, p in rec.log][2:] == ["healed", "healed-4"]
    st = sim.stats()
    assert st.messages_sent == st.messages_delivered + st.messages_dropped == 6


def test_partition_drops_messages_in_flight() -> None:
    sim = Simulator(2, fixed_links(10.0), FREE, seed=0)
    rec = Recorder()
    sim.send(0, 1, "in-flight", 0, 0)
    sim.run(rec, until_ms=5.0)
    sim.partition([{0}, {1}])
    sim.run(rec, until_ms=20.0)
    sim.heal()
    sim.run(rec)
    assert rec.log == [] and sim.stats().messages_dropped == 1


def test_partition_rejects_overlapping_groups_and_bad_nodes() -> None:
    sim = Simulator(3, seed=0)
    with pytest.raises(ValueError):
        sim.partition([{0, 1}, {1, 2}])
    with pytest.raises(IndexError):
        sim.partition([{0, 3}])


def test_crashed_node_receives_nothing_and_its_timers_do_not_fire() -> None:
    sim = Simulator(3, fixed_links(10.0), FREE, seed=0)
    rec = Recorder()
    sim.schedule(1, 30.0, "old-timer")  # set before the crash: lost with the process
    sim.crash(1)
    sim.send(0, 1, "while-down", 0, 0)
    sim.schedule(1, 1.0, "timer-while-down")
    sim.send(1, 2, "from-crashed", 0, 0)
    sim.run(rec, until_ms=20.0)
    assert rec.log == []
    sim.recover(1)
    sim.send(0, 1, "after", 0, 0)
    sim.schedule(1, 1.0, "new-timer")
    sim.send(1, 2, "from-recovered", 0, 0)
    sim.run(rec)
    assert sorted(p for _, _, p in rec.log) == ["after", "from-recovered", "new-timer"]
    st = sim.stats()
    assert st.timers_dropped == 2 and st.timers_fired == 1
    assert st.messages_sent == st.messages_delivered + st.messages_dropped


def test_crash_loses_inbox_and_unsent_uplink_but_not_sent_messages() -> None:
    sim = Simulator(3, fixed_links(10.0), FREE, seed=0)
    rec = Recorder()
    for _ in range(3):
        sim.send(0, 1, "queued", 0, 1000.0)  # all arrive at 10, handled 11, 12, 13
    sim.send(2, 0, "a", 12_500, 0)  # on the wire 0..1 ms: gets out
    sim.send(2, 0, "b", 12_500, 0)  # on the wire 1..2 ms: cut by the crash at 1.5
    sim.run(rec, until_ms=1.5)
    sim.crash(2)
    sim.run(rec, until_ms=11.5)
    sim.crash(1)  # one message handled, one being processed, one queued
    sim.run(rec)
    assert sorted((n, p) for _, n, p in rec.log) == [(0, "a"), (1, "queued")]
    st = sim.stats()
    assert st.messages_dropped == 3
    assert st.cpu_busy_ms[1] == pytest.approx(1.5)  # 1 ms done + half of the next


# --------------------------------------------------------------------------- run control


def test_run_until_and_max_events() -> None:
    sim = Simulator(2, fixed_links(10.0), FREE, seed=0)
    rec = Recorder()
    for i in range(5):
        sim.schedule(0, float(i), i)
    assert sim.run(rec, max_events=2) == 2
    assert sim.run(rec, until_ms=3.5) == 2
    assert sim.now_ms == 3.5
    assert sim.run(rec) == 1
    assert [p for _, _, p in rec.log] == [0, 1, 2, 3, 4]
    assert sim.run(rec, until_ms=100.0) == 0 and sim.now_ms == 100.0


def test_misuse_is_rejected() -> None:
    with pytest.raises(ValueError):
        LinkModel(latency_ms_min=10, latency_ms_max=5)
    with pytest.raises(ValueError):
        LinkModel(loss=1.5)
    with pytest.raises(ValueError):
        LinkModel(bandwidth_mbps=0)
    with pytest.raises(TypeError):
        LinkModel(jitter_ms="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CostModel(verify_us=-1, sign_us=1, hash_us_per_kb=1)
    with pytest.raises(TypeError):
        CostModel(verify_us=True, sign_us=1, hash_us_per_kb=1)
    with pytest.raises(ValueError):
        Simulator(0)
    with pytest.raises(TypeError):
        Simulator(3, seed=1.5)  # type: ignore[arg-type]
    sim = Simulator(3)
    with pytest.raises(IndexError):
        sim.send(0, 3, "x", 1, 0)
    with pytest.raises(ValueError):
        sim.send(0, 1, "x", -1, 0)
    with pytest.raises(ValueError):
        sim.schedule(0, -1.0, "x")
    with pytest.raises(ValueError):
        sim.charge(0, -1.0)
    with pytest.raises(ValueError):
        calibrate(samples=0)


# --------------------------------------------------------------------------- fuzz invariants


FUZZ_SEEDS = [1, 2, 3, 42, 1234]
if os.environ.get("MEDSHARE_SIM_SEED"):
    FUZZ_SEEDS.append(int(os.environ["MEDSHARE_SIM_SEED"]))


@pytest.mark.parametrize("seed", FUZZ_SEEDS)
def test_fuzz_invariants(seed: int) -> None:
    """Random traffic, crashes and partitions; check conservation and CPU sequencing."""
    n = 6
    sim = Simulator(n, LinkModel(jitter_ms=4.0, loss=0.1), CostModel.fixed(), seed=seed)
    rng = random.Random(sim.derive_seed("fuzz"))
    handled_at: dict[int, list[float]] = {i: [] for i in range(n)}

    def handler(node: int, payload: Any, sim: Simulator) -> None:
        assert not sim.is_crashed(node), f"seed={seed}: crashed node {node} handled {payload}"
        handled_at[node].append(sim.now_ms)
        if rng.random() < 0.3:
            sim.charge(node, rng.uniform(0, 500))
        for _ in range(rng.randrange(3)):
            sim.send(node, rng.randrange(n), "m", rng.randrange(5000), rng.uniform(0, 300))
        if rng.random() < 0.2:
            sim.schedule(node, rng.uniform(0, 20), "t")

    for node in range(n):
        sim.schedule(node, 0.0, "t")
    for step in range(40):
        sim.run(handler, until_ms=(step + 1) * 25.0)
        r = rng.random()
        if r < 0.15:
            sim.crash(rng.randrange(n))
        elif r < 0.3:
            sim.recover(rng.randrange(n))
        elif r < 0.4:
            nodes = list(range(n))
            rng.shuffle(nodes)
            sim.partition([set(nodes[:3]), set(nodes[3:])])
        elif r < 0.5:
            sim.heal()
        for node in range(n):
            if not sim.is_crashed(node) and rng.random() < 0.3:
                sim.schedule(node, 0.0, "t")
    sim.heal()
    sim.run(handler)
    st = sim.stats()
    assert st.messages_sent == st.messages_delivered + st.messages_dropped, f"seed={seed}"
    assert st.messages_delivered > 0 and st.messages_dropped > 0, f"seed={seed}"
    for node, times in handled_at.items():
        assert times == sorted(times), f"seed={seed}: node {node} went back in time"
        assert st.cpu_busy_ms[node] <= st.now_ms + 1e-9, f"seed={seed}"


# --------------------------------------------------------------------------- costs


def test_fixed_costs_and_helpers() -> None:
    c = CostModel.fixed()
    assert (c.sign_us, c.verify_us, c.hash_us_per_kb) == (37.0, 107.0, 2.5)
    assert c.hash_us(64 * 1024) == pytest.approx(160.0)
    assert c.as_dict() == {
        "verify_us": 107.0,
        "sign_us": 37.0,
        "hash_us_per_kb": 2.5,
        "per_message_us": 5.0,
    }
    assert Simulator(2).costs == c  # the default never depends on the machine


def test_calibrate_returns_plausible_costs() -> None:
    c = calibrate(samples=50)
    assert 10 <= c.verify_us <= 5000
    assert 5 <= c.sign_us <= 5000
    assert 0 < c.hash_us_per_kb <= 100
    assert c.per_message_us == 5.0
    assert set(c.as_dict()) == {"verify_us", "sign_us", "hash_us_per_kb", "per_message_us"}


# --------------------------------------------------------------------------- overhead


def test_ping_pong_is_fast() -> None:
    sim = Simulator(2, LinkModel(), CostModel.fixed(), seed=9)
    round_trips = 1000

    def handler(node: int, payload: Any, sim: Simulator) -> None:
        if payload < 2 * round_trips:
            sim.send(node, 1 - node, payload + 1, 200, sim.costs.verify_us)

    sim.send(0, 1, 1, 200, sim.costs.verify_us)
    start = time.perf_counter()
    handled = sim.run(handler)
    elapsed = time.perf_counter() - start
    assert handled == 2 * round_trips
    assert sim.stats().messages_delivered == 2 * round_trips
    assert elapsed < 2.0, f"{handled / elapsed:.0f} events/s"


def test_stats_is_a_snapshot() -> None:
    sim = Simulator(2, fixed_links(), FREE, seed=0)
    before = sim.stats()
    sim.send(0, 1, "x", 1, 0)
    sim.run(Recorder())
    assert isinstance(before, SimStats)
    assert before.messages_sent == 0 and sim.stats().messages_sent == 1
