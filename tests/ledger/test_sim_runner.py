"""Real consensus cores on the simulated network (DESIGN §4, STYLE "Tests" item 4).

Every run is seeded and deterministic; each assertion message names the seed (and the
scenario) so a failure can be replayed exactly with ``run(scenario)``. Set
``MEDSHARE_SIM_SEED`` to run the seeded tests with one more seed.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from medshare.ledger.sim import CostModel, LinkModel
from medshare.ledger.sim.runner import (
    Behaviour,
    Crash,
    PartitionEvent,
    Scenario,
    SimReport,
    initial_committee,
    run,
)

_EXTRA = os.environ.get("MEDSHARE_SIM_SEED")
SEEDS = [1, 2] + ([int(_EXTRA)] if _EXTRA else [])
COSTS = CostModel.fixed()  # never the machine's: runs must replay anywhere
FIXED_COMMITTEE = 1000  # epoch length: the genesis committee stays for the whole run


def why(scenario: Scenario, report: SimReport) -> str:
    return (
        f"seed={scenario.seed} scenario={scenario!r}: blocks={report.committed_blocks} "
        f"safe={report.safe} {report.safety_violations} heights={report.honest_heights} "
        f"evidence={report.evidence} messages={dict(report.messages_by_kind)}"
    )


def assert_progress_and_safety(scenario: Scenario, report: SimReport) -> None:
    assert report.safe, why(scenario, report)
    assert report.committed_blocks == scenario.blocks, why(scenario, report)
    # Every honest live node has the chain up to at least the height before the last (a
    # non-member learns a height one notice after the members decide it; overlapping
    # heights decide up to certificate_lag at once).
    live = [h for h in report.honest_heights if h >= 0]
    assert scenario.blocks is not None
    assert min(live) >= scenario.blocks - scenario.certificate_lag, why(scenario, report)


# --- determinism ------------------------------------------------------------------------------


def test_same_scenario_same_report() -> None:
    scenario = Scenario(seed=11, nodes=16, committee=4, epoch_length=3, blocks=8, costs=COSTS)
    first, second = run(scenario), run(scenario)
    assert first == second, f"seed={scenario.seed}: two runs of one scenario differ"
    assert first.trace_digest == second.trace_digest
    other = run(replace(scenario, seed=12))
    assert other.trace_digest != first.trace_digest, "the seed must drive the run"


def test_scenario_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Scenario(nodes=4, committee=5)
    with pytest.raises(ValueError):
        Scenario(nodes=4, committee=4, byzantine={4: Behaviour.SILENT})
    with pytest.raises(ValueError):
        Scenario(blocks=None)
    with pytest.raises(TypeError):
        Scenario(nodes=4.0)  # type: ignore[arg-type]


# --- honest runs: replication, safety, message complexity -------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("nodes", "committee"), [(4, 4), (16, 4), (16, 7), (16, 16), (32, 7), (32, 32)]
)
def test_honest_runs_commit_and_scale(seed: int, nodes: int, committee: int) -> None:
    scenario = Scenario(
        seed=seed, nodes=nodes, committee=committee, epoch_length=4, blocks=9, costs=COSTS
    )
    report = run(scenario)
    assert_progress_and_safety(scenario, report)
    assert report.evidence == (), why(scenario, report)
    assert report.view_changes == 0, why(scenario, report)
    assert report.committed_txs == 9 * scenario.block_txs, why(scenario, report)
    assert report.tps > 0 and report.latency_ms > 0
    blocks = report.committed_blocks
    kinds = report.messages_by_kind
    # votes: prevote + precommit from each member to the m − 1 others: 2m(m − 1) per block
    votes = kinds.get("vote", 0) / blocks
    low, high = 1.7 * committee * (committee - 1), 2.3 * committee * (committee - 1)
    assert low <= votes <= high, why(scenario, report)
    # proposals: one to each of the N − 1 others (the run stops after the next one starts)
    assert (nodes - 1) <= kinds["proposal"] / blocks <= 1.3 * (nodes - 1), why(scenario, report)
    # commit notices: f + 1 members to the N − m others; none in all-node mode
    f = (committee - 1) // 3
    notices = kinds.get("commit_notice", 0) / blocks
    assert notices <= 1.1 * (f + 1) * (nodes - committee), why(scenario, report)
    if committee == nodes:
        assert notices == 0
    # no sync, no proposal fetch, no retransmission in an honest run
    assert set(kinds) <= {"vote", "proposal", "commit_notice"}, why(scenario, report)


def test_message_complexity_committee_vs_all_nodes() -> None:
    """O(m²) + O(N) per block for a committee, O(N²) for all-node BFT."""
    base = Scenario(seed=5, nodes=32, committee=4, epoch_length=4, blocks=8, costs=COSTS)
    small = run(base)
    full = run(replace(base, committee=32))
    for scenario, report in ((base, small), (replace(base, committee=32), full)):
        assert_progress_and_safety(scenario, report)
    # all-node: 2·32·31 votes + 31 proposals ≈ 2,015; committee 4: 24 + 31 + 2·28 ≈ 111
    ratio = full.messages_per_block / small.messages_per_block
    context = f"seed={base.seed} ratio={ratio:.1f} {why(base, small)} / {full.messages_by_kind}"
    assert 12 <= ratio <= 25, context
    assert full.bytes_per_block > 3 * small.bytes_per_block, context
    # the all-node nodes verify ~2N votes per block, committee members ~2m
    assert max(full.cpu_utilisation) > max(small.cpu_utilisation), context


def test_non_members_replicate_every_block() -> None:
    scenario = Scenario(seed=3, nodes=24, committee=4, epoch_length=2, blocks=10, costs=COSTS)
    report = run(scenario)
    assert_progress_and_safety(scenario, report)
    assert len(report.honest_heights) == 24


def test_non_members_behind_on_slow_uplinks_catch_up_and_serve_the_next_committee() -> None:
    """Regression (liveness): with 1,000-tx blocks on 10–100 Mbit/s uplinks the last
    non-members in a proposer's fan-out fall heights behind and catch up by sync; three
    of them are in the next epoch's committee. A commit notice of height h that arrived
    while such a node was at h − 1 was forgotten, so holding h's proposal but no
    certificate it never asked for h, and that committee never reached 2f+1."""
    links = LinkModel(5.0, 80.0, jitter_ms=2.0, bandwidth_mbps=10.0, bandwidth_mbps_max=100.0)
    scenario = Scenario(
        seed=3, nodes=24, committee=7, epoch_length=4, block_txs=1000, blocks=6, links=links,
        costs=COSTS,
    )  # fmt: skip
    report = run(scenario)
    assert report.safe, why(scenario, report)
    assert report.committed_blocks == scenario.blocks, why(scenario, report)


# --- Byzantine committee members ---------------------------------------------------------------

BYZANTINE_CASES = [
    pytest.param(nodes, committee, f, behaviour, id=f"{behaviour.value}-f{f}-m{committee}")
    for nodes, committee, f in ((4, 4, 1), (16, 7, 2))
    for behaviour in Behaviour
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("nodes", "committee", "f", "behaviour"), BYZANTINE_CASES)
def test_f_byzantine_members(
    seed: int, nodes: int, committee: int, f: int, behaviour: Behaviour
) -> None:
    probe = Scenario(seed=seed, nodes=nodes, committee=committee, epoch_length=FIXED_COMMITTEE)
    byzantine = {index: behaviour for index in initial_committee(probe)[:f]}
    scenario = replace(probe, blocks=10, byzantine=byzantine, costs=COSTS)
    report = run(scenario)
    assert_progress_and_safety(scenario, report)
    offenders = {offender for _, _, offender in report.evidence}
    assert offenders <= set(byzantine), why(scenario, report)  # never blames an honest node
    finders = {finder for finder, _, _ in report.evidence}
    assert not finders & set(byzantine), why(scenario, report)
    if behaviour is Behaviour.DOUBLE_VOTER:
        assert offenders == set(byzantine), why(scenario, report)
        assert {kind for _, kind, _ in report.evidence} == {"equivocation"}
    if behaviour is Behaviour.EQUIVOCATING_PROPOSER:
        assert offenders == set(byzantine), why(scenario, report)
    if behaviour is Behaviour.SILENT:
        assert report.evidence == (), why(scenario, report)
    if behaviour is Behaviour.INVALID_BLOCK:
        assert report.view_changes > 0, why(scenario, report)  # its rounds fail


def test_more_than_f_byzantine_may_stall_but_never_fork() -> None:
    probe = Scenario(seed=4, nodes=7, committee=7, epoch_length=FIXED_COMMITTEE)
    byzantine = {i: Behaviour.DOUBLE_VOTER for i in initial_committee(probe)[:3]}
    scenario = replace(probe, blocks=6, byzantine=byzantine, costs=COSTS, max_sim_ms=30_000.0)
    report = run(scenario)
    assert report.safe, why(scenario, report)


# --- crashes and partitions ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_crashed_committee_members_progress_with_2f_plus_1(seed: int) -> None:
    probe = Scenario(seed=seed, nodes=16, committee=7, epoch_length=FIXED_COMMITTEE)
    members = initial_committee(probe)
    crashes = (Crash(members[0], 300.0), Crash(members[3], 500.0))  # f = 2 of 7
    scenario = replace(probe, blocks=10, crashes=crashes, costs=COSTS)
    report = run(scenario)
    assert_progress_and_safety(scenario, report)
    assert report.honest_heights.count(-1) == 2


def test_three_of_seven_crashed_stops_progress_safely() -> None:
    probe = Scenario(seed=6, nodes=7, committee=7, epoch_length=FIXED_COMMITTEE)
    members = initial_committee(probe)
    crashes = tuple(Crash(members[i], 300.0) for i in range(3))
    scenario = replace(probe, blocks=10, crashes=crashes, costs=COSTS, max_sim_ms=20_000.0)
    report = run(scenario)
    assert report.safe, why(scenario, report)
    assert report.committed_blocks < 10, why(scenario, report)  # 4 < 2f+1 = 5 alive


@pytest.mark.parametrize("seed", SEEDS)
def test_restarted_member_catches_up(seed: int) -> None:
    probe = Scenario(seed=seed, nodes=16, committee=7, epoch_length=FIXED_COMMITTEE)
    member = initial_committee(probe)[0]
    scenario = replace(probe, blocks=20, crashes=(Crash(member, 300.0, 900.0),), costs=COSTS)
    report = run(scenario)
    assert_progress_and_safety(scenario, report)
    assert -1 not in report.honest_heights
    assert report.messages_by_kind.get("sync_reply", 0) >= 1, report.messages_by_kind


@pytest.mark.parametrize("seed", SEEDS)
def test_partition_heals_and_liveness_returns(seed: int) -> None:
    halves = (frozenset({0, 1}), frozenset({2, 3}))  # neither side has 2f+1 = 3
    scenario = Scenario(
        seed=seed,
        nodes=4,
        committee=4,
        blocks=8,
        partitions=(PartitionEvent(halves, 250.0, 4000.0),),
        costs=COSTS,
    )
    report = run(scenario)
    assert_progress_and_safety(scenario, report)
    assert report.sim_ms > 4000.0, why(scenario, report)  # the last blocks came after healing


# --- overlapping heights (ledger/pipeline.py) -----------------------------------------------------

PIPELINED = {"certificate_lag": 6, "proposer_run": 12}


def test_overlapping_heights_commit_the_same_blocks_sooner() -> None:
    plain = Scenario(seed=3, nodes=16, committee=4, epoch_length=FIXED_COMMITTEE, blocks=24,
                     costs=COSTS)  # fmt: skip
    piped = replace(plain, **PIPELINED)
    one, many = run(plain), run(piped)
    assert_progress_and_safety(plain, one)
    assert_progress_and_safety(piped, many)
    assert many.committed_txs == one.committed_txs, why(piped, many)
    assert many.sim_ms < one.sim_ms / 2, (one.sim_ms, many.sim_ms)  # simulated, not wall time
    assert many.latency_ms >= one.latency_ms * 0.8, why(piped, many)  # a height is no faster


@pytest.mark.parametrize("behaviour", list(Behaviour))
def test_pipelined_committee_with_f_byzantine_members(behaviour: Behaviour) -> None:
    probe = Scenario(seed=5, nodes=16, committee=7, epoch_length=FIXED_COMMITTEE, **PIPELINED)
    byzantine = {index: behaviour for index in initial_committee(probe)[:2]}
    scenario = replace(probe, blocks=16, byzantine=byzantine, costs=COSTS)
    report = run(scenario)
    assert_progress_and_safety(scenario, report)
    offenders = {offender for _, _, offender in report.evidence}
    assert offenders <= set(byzantine), why(scenario, report)
    if behaviour in (Behaviour.DOUBLE_VOTER, Behaviour.EQUIVOCATING_PROPOSER):
        assert offenders == set(byzantine), why(scenario, report)


def test_pipelined_member_restarts_and_catches_up() -> None:
    probe = Scenario(seed=2, nodes=16, committee=7, epoch_length=FIXED_COMMITTEE, **PIPELINED)
    member = initial_committee(probe)[1]
    scenario = replace(probe, blocks=30, crashes=(Crash(member, 250.0, 700.0),), costs=COSTS)
    report = run(scenario)
    assert_progress_and_safety(scenario, report)
    assert -1 not in report.honest_heights
