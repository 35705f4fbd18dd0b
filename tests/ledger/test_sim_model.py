"""The CometBFT model: deterministic, CometBFT's gossip counts, and CPU that only helps.

No timed asserts: every figure here is the model's own (simulated time), never the wall
clock."""

from __future__ import annotations

import itertools

import pytest

from medshare.ledger.sim.cometbft_model import (
    INSTITUTIONS,
    LOOPBACK,
    ClosedLoop,
    Costs,
    Cpu,
    PerHeight,
    Scenario,
    simulate,
)

COSTS = Costs.reference()


def scenario(**overrides) -> Scenario:
    base = dict(
        nodes=16,
        validators=4,
        load=PerHeight(10),
        cpu=Cpu(2.0),
        links=INSTITUTIONS,
        costs=COSTS,
        heights=4,
        warmup=2,
        seed=11,
    )
    base.update(overrides)
    return Scenario(**base)


def test_same_seed_same_result_and_another_seed_another() -> None:
    first = simulate(scenario()).as_dict()
    again = simulate(scenario()).as_dict()
    assert first == again
    other = simulate(scenario(seed=12)).as_dict()
    assert other != first
    assert first["heights"] == 4 and first["block_txs"] > 0 and first["tx_per_s"] > 0


def test_closed_loop_on_a_shared_pool_is_deterministic() -> None:
    sc = scenario(
        nodes=4, validators=4, load=ClosedLoop(2, 32), cpu=Cpu(1.5, shared=True), links=LOOPBACK
    )
    assert simulate(sc).as_dict() == simulate(sc).as_dict()


@pytest.mark.parametrize("nodes", [16, 32])
def test_vote_gossip_is_o_of_m_per_link(nodes: int) -> None:
    """Per height, every node tells each peer about every vote it adds (HasVote): 2m per
    directed link; each vote crosses a link at most once. So the committee's vote traffic
    per link follows m, the all-validator one N."""
    per_link = {}
    for m in (4, nodes):
        report = simulate(scenario(nodes=nodes, validators=m))
        links = nodes * (nodes - 1)  # full mesh, directed
        has_vote = report.messages_by_type["HasVote"] / links
        votes = report.messages_by_type["Vote"] / links
        assert has_vote == pytest.approx(2 * m)
        assert 0 < votes <= 2 * m
        # each node gets every vote of the others at least once
        assert report.messages_by_type["Vote"] >= nodes * (2 * m - 2)
        per_link[m] = has_vote + votes
    ratio = per_link[nodes] / per_link[4]
    assert nodes / 4 * 0.7 <= ratio <= nodes / 4 * 1.3


def test_committee_sends_fewer_vote_messages_than_all_validators() -> None:
    small = simulate(scenario(nodes=32, validators=7))
    full = simulate(scenario(nodes=32, validators=32))
    assert full.vote_messages_per_node_block > 3 * small.vote_messages_per_node_block
    assert full.cpu_ms_per_block_validator > small.cpu_ms_per_block_validator


def test_every_transaction_is_checked_once_per_node_and_flooded() -> None:
    report = simulate(scenario(nodes=8, validators=4, load=PerHeight(40)))
    # the mempool floods: each node receives each transaction from most of its 7 peers
    per_tx_per_node = report.messages_by_type["Txs"] / (report.block_txs * 8)
    assert 3 <= per_tx_per_node <= 7


@pytest.mark.parametrize("shared", [True, False])
def test_more_cores_never_lower_throughput(shared: bool) -> None:
    load = ClosedLoop(4, 64) if shared else PerHeight(400)
    nodes = 8
    rates = []
    for cores in (0.5, 1.0, 2.0, 4.0, 8.0):
        sc = scenario(
            nodes=nodes,
            validators=nodes,
            load=load,
            cpu=Cpu(cores, shared=shared),
            links=LOOPBACK if shared else INSTITUTIONS,
            heights=5,
        )
        rates.append(simulate(sc).tx_per_s)
    assert all(b >= a for a, b in itertools.pairwise(rates)), rates
    assert rates[-1] > rates[0]


def test_costs_validate() -> None:
    with pytest.raises(ValueError):
        Costs(**{**COSTS.as_dict(), "verify_us": -1.0})
    with pytest.raises(ValueError):
        Costs(**{**COSTS.as_dict(), "checktx_share": 0.9, "process_share": 0.2})
    with pytest.raises(ValueError):
        Scenario(4, 5, PerHeight(10), Cpu(1.0), LOOPBACK, COSTS)
