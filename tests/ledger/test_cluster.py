"""The in-process cluster: replication, epochs, Byzantine members, crash and restart.

Everything is real: Ed25519 signatures, the chain rules of ``chain.py`` and (for the
crash tests) SQLite stores. Safety is checked on every run: at every height, all honest
stores hold the same block.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from medshare.crypto.signing import SigningKey
from medshare.ledger import audit, chain, election
from medshare.ledger.cluster import Behaviour, InProcessCluster, LivenessError, Mempool
from medshare.ledger.consensus import WAL_KEY, Broadcast, Commit, ConsensusConfig, Proposal
from medshare.ledger.store import BlockStore, MemoryStore, SQLiteStore
from medshare.ledger.types import (
    Equivocation,
    Tx,
    TxKind,
    Vote,
    VoteKind,
    conflicting_proposals_offender,
    invalid_block_offender,
)

KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(7)]
CLIENTS = [SigningKey(bytes([100 + i]) * 32) for i in range(10)]


def config(
    nodes: int, committee: int, epoch_length: int = 5, lag: int = 1, run: int = 1
) -> chain.ChainConfig:
    validators = tuple(
        election.Validator(k.public, f"n{i}", 1000) for i, k in enumerate(KEYS[:nodes])
    )
    return chain.ChainConfig(
        "cluster-test",
        validators,
        epoch_length=epoch_length,
        committee_size=committee,
        certificate_lag=lag,
        proposer_run=run,
    )


def anchor(cfg: chain.ChainConfig, client: SigningKey, nonce: int, tag: str = "") -> Tx:
    body = {"record": f"r{nonce}{tag}", "patient": "p", "dept": "0304", "digest": "ab" * 32}
    return Tx.create(TxKind.ANCHOR_RECORD, body, nonce, client, chain=cfg.chain_id)


def committed(store: BlockStore) -> Counter[str]:
    """Committed client transactions (evidence txs of the nodes themselves left out)."""
    return Counter(
        tx.txid for block in store.blocks() for tx in block.txs if tx.kind is not TxKind.EVIDENCE
    )


def committees(store: BlockStore, cfg: chain.ChainConfig) -> dict[int, tuple[bytes, ...]]:
    """The committee that certified each stored height (replaying the chain rules)."""
    state, out = chain.genesis(cfg)[1], {}
    for block in store.blocks(1):
        state = chain.apply_block(state, block)
        out[block.height] = state.head_committee
    return out


def assert_replicated(cluster: InProcessCluster, height: int) -> None:
    cluster.check_safety()
    heads = {head for head, node in zip(cluster.heads(), cluster.nodes, strict=True) if node.honest}
    assert len(heads) == 1 and next(iter(heads))[0] >= height
    for node in cluster.honest():
        assert audit.verify_chain(node.store).ok  # every certificate, from genesis


# --- honest replication -------------------------------------------------------------------------


def test_four_nodes_commit_200_txs_in_20_blocks_once_each() -> None:
    cfg = config(4, 4)
    cluster = InProcessCluster(cfg, KEYS[:4], consensus=ConsensusConfig(max_block_txs=10))
    txs = [anchor(cfg, c, n) for n in range(20) for c in CLIENTS[:9]]
    txs += [anchor(cfg, CLIENTS[9], n) for n in range(19)]
    for i, tx in enumerate(txs):
        assert cluster.submit(tx, node=i % 4)
    # Two well-signed txs with the same sender and nonce: both admitted, one can commit.
    twins = [anchor(cfg, CLIENTS[9], 19, tag) for tag in ("-a", "-b")]
    assert cluster.submit(twins[0], node=1) and cluster.submit(twins[1], node=2)
    forged = dataclasses.replace(anchor(cfg, CLIENTS[0], 20), signature=bytes(64))
    assert not cluster.submit(forged)
    assert not cluster.submit(txs[0])  # duplicate
    cluster.run_until_height(2)
    replay = anchor(cfg, CLIENTS[0], 0, tag="-replayed")  # nonce 0 of a sender already used
    assert not cluster.submit(replay)
    elsewhere = anchor(
        config(4, 4, epoch_length=9), CLIENTS[8], 25
    )  # nonce not yet used, other chain
    assert not cluster.submit(elsewhere)
    cluster.run_until_height(25)  # ≥ 20 blocks of at most 10 txs
    assert_replicated(cluster, 25)
    assert not cluster.submit(txs[5])  # already committed
    for node in cluster.nodes:
        counts = committed(node.store)
        assert len(txs) + 1 == 200 and sum(counts.values()) == 200
        assert set(counts.values()) == {1}  # nothing twice
        assert {tx.txid for tx in txs} < set(counts)
        assert len({t.txid for t in twins} & set(counts)) == 1
        for bad in (forged, replay, elsewhere):
            assert bad.txid not in counts and node.store.find_tx(bad.txid) is None
        assert len(node.mempool) == 0  # the losing twin was purged with its stale nonce
    sizes = [len(b.txs) for b in cluster.node(0).store.blocks(1)]
    assert max(sizes) == 10 and sum(1 for size in sizes if size) >= 20  # spread over blocks


def test_idle_cluster_makes_empty_blocks_as_the_clock_advances() -> None:
    cluster = InProcessCluster(config(4, 4), KEYS[:4])
    cluster.run_for(1000)
    heights = {n.state.height for n in cluster.nodes}
    assert len(heights) == 1 and 5 <= heights.pop() <= 25  # about one per 50 ms interval
    assert cluster.now_ms == 1000


@pytest.mark.parametrize("lag", [1, 3])
def test_committee_of_4_of_7_non_members_replicate_and_epochs_reelect(lag: int) -> None:
    cfg = config(7, 4, epoch_length=5, lag=lag)
    cluster = InProcessCluster(cfg, KEYS[:7])
    for n in range(12):
        cluster.submit(anchor(cfg, CLIENTS[0], n), node=n % 7)
    cluster.run_until_height(16)
    assert_replicated(cluster, 16)
    history = committees(cluster.node(6).store, cfg)
    by_epoch: dict[int, set[tuple[bytes, ...]]] = {}
    for height, members in history.items():
        by_epoch.setdefault(election.epoch_of(height, 5), set()).add(members)
    assert all(len(c) == 1 for c in by_epoch.values())  # fixed within an epoch
    elected = [next(iter(by_epoch[e])) for e in sorted(by_epoch)]
    assert len(set(elected)) > 1  # re-elected at a boundary
    signers = set()
    for block in cluster.node(0).store.blocks(1):
        voters = {v for v, _ in block.certificate.signatures}
        assert voters <= set(history[block.height])  # only that height's committee signs
        signers |= voters
    outsiders = {k.public for k in KEYS[:7]} - {m for c in elected for m in c}
    assert not signers & outsiders
    assert len(committed(cluster.node(3).store)) == 12


def test_a_leader_proposes_a_run_of_heights_and_non_members_follow() -> None:
    cfg = config(7, 4, epoch_length=12, run=3)
    cluster = InProcessCluster(cfg, KEYS[:7])
    for n in range(9):
        cluster.submit(anchor(cfg, CLIENTS[0], n), node=n % 7)
    cluster.run_until_height(14)
    assert_replicated(cluster, 14)
    history = committees(cluster.node(6).store, cfg)
    for block in cluster.node(5).store.blocks(1):
        assert block.certificate.round == 0  # no faults: every height decided in round 0
        expected = election.proposer(history[block.height], block.height, 0, run=3)
        assert block.header.proposer == expected
    leaders = [b.header.proposer for b in cluster.node(0).store.blocks(3)][:6]  # 3..8
    assert len(set(leaders[0:3])) == len(set(leaders[3:6])) == 1 != len(set(leaders))
    assert len(committed(cluster.node(4).store)) == 9


SWEEP = [
    (4, {1: Behaviour.DOUBLE_VOTER}),
    (4, {2: Behaviour.EQUIVOCATING_PROPOSER}),
    (7, {1: Behaviour.DOUBLE_VOTER, 4: Behaviour.EQUIVOCATING_PROPOSER}),
    (7, {0: Behaviour.SILENT, 3: Behaviour.INVALID_BLOCK}),
]


@pytest.mark.parametrize("seed", range(4))
def test_seeded_reordering_is_still_safe_and_live(seed: int) -> None:
    """Random (seeded, replayable) delivery order with Byzantine members: a failure names
    its seed in the test id."""
    for nodes, byzantine in SWEEP:
        cfg = config(nodes, nodes)
        cluster = InProcessCluster(cfg, KEYS[:nodes], byzantine=byzantine, seed=seed, shuffle=True)
        for n in range(12):
            cluster.submit(anchor(cfg, CLIENTS[n % 3], n // 3), node=n % nodes)
        cluster.run_until_height(6, max_steps=100_000)
        assert_replicated(cluster, 6)
        assert len(committed(cluster.honest()[0].store)) == 12


# --- Byzantine committee members ----------------------------------------------------------------


# Misbehaviour that leaves signed proof: double votes, twin proposals, and a proposal of a
# block with a forged transaction (the INVALID_BLOCK behaviour alternates that with a wrong
# state root, which needs the state to prove and is punished by failed rounds only).
PROVABLE = (Behaviour.DOUBLE_VOTER, Behaviour.EQUIVOCATING_PROPOSER, Behaviour.INVALID_BLOCK)


def evidence_offenders(store: BlockStore) -> dict[bytes, int]:
    """Offender -> height at which the first evidence against it committed."""
    out: dict[bytes, int] = {}
    for block in store.blocks(1):
        for tx in block.txs:
            if tx.kind is TxKind.EVIDENCE:
                if tx.body["kind"] == "invalid_block":
                    invalid_block_offender(tx.body, tx.chain)
                elif tx.body["kind"] == "conflicting_proposals":
                    conflicting_proposals_offender(tx.body, tx.chain)
                else:
                    Equivocation.from_body(tx.body).check(tx.chain)
                out.setdefault(bytes.fromhex(tx.body["offender"]), block.height)
    return out


def assert_ejected_and_not_reelected(
    cluster: InProcessCluster, cfg: chain.ChainConfig, offender: bytes
) -> None:
    store = cluster.honest()[0].store
    caught_at = evidence_offenders(store)[offender]
    validator = cluster.honest()[0].state.validator(offender)
    assert validator.ejected and validator.reputation == 0
    next_epoch = election.epoch_start(election.epoch_of(caught_at, cfg.epoch_length) + 1, 5)
    history = committees(store, cfg)
    assert offender in history[1]
    assert next_epoch in history
    assert all(offender not in history[h] for h in history if h >= next_epoch)


@pytest.mark.parametrize("behaviour", list(Behaviour))
def test_one_byzantine_member_of_four(behaviour: Behaviour) -> None:
    cfg = config(5, 4, epoch_length=5)
    first_committee = chain.genesis(cfg)[1].committee
    byz = next(i for i, k in enumerate(KEYS) if k.public == first_committee[1])
    cluster = InProcessCluster(cfg, KEYS[:5], byzantine={byz: behaviour})
    for n in range(20):
        cluster.submit(anchor(cfg, CLIENTS[n % 2], n // 2), node=n % 5)
    cluster.run_until_height(12)  # liveness, across two epoch boundaries
    assert_replicated(cluster, 12)
    offender = KEYS[byz].public
    store = cluster.honest()[0].store
    assert len(committed(store)) == 20
    if behaviour in PROVABLE:
        assert_ejected_and_not_reelected(cluster, cfg, offender)
    else:
        assert offender not in evidence_offenders(store)  # no false accusation
    if behaviour is Behaviour.SILENT:
        validator = cluster.honest()[0].state.validator(offender)
        honest = [cluster.honest()[0].state.validator(m) for m in first_committee]
        assert validator.reputation < min(v.reputation for v in honest if v.public != offender)
        assert all(
            offender not in {v for v, _ in b.certificate.signatures} for b in store.blocks(1)
        )
    if behaviour is Behaviour.INVALID_BLOCK:
        assert all(b.header.proposer != offender for b in store.blocks(1))
        reasons = " ".join(r for n in cluster.honest() for r in n.core.rejected.values())
        assert "state root mismatch" in reasons and "invalid signature" in reasons
    if behaviour is Behaviour.EQUIVOCATING_PROPOSER:
        assert any(type(e).__name__ == "ConflictingProposals" for _, e in cluster.evidence)


@pytest.mark.parametrize(
    "behaviours",
    [
        (Behaviour.DOUBLE_VOTER, Behaviour.EQUIVOCATING_PROPOSER),
        (Behaviour.SILENT, Behaviour.INVALID_BLOCK),
    ],
    ids=["equivocators", "silent+invalid"],
)
def test_two_byzantine_members_of_seven(behaviours: tuple[Behaviour, Behaviour]) -> None:
    cfg = config(7, 7, epoch_length=5)
    byzantine = {1: behaviours[0], 4: behaviours[1]}
    cluster = InProcessCluster(cfg, KEYS[:7], byzantine=byzantine)
    for n in range(14):
        cluster.submit(anchor(cfg, CLIENTS[0], n), node=n % 7)
    cluster.run_until_height(21)
    assert_replicated(cluster, 21)
    store = cluster.honest()[0].store
    assert len(committed(store)) == 14
    caught = evidence_offenders(store)
    for index, behaviour in byzantine.items():
        offender = KEYS[index].public
        if behaviour in PROVABLE:
            assert_ejected_and_not_reelected(cluster, cfg, offender)
        else:
            assert offender not in caught


def test_three_faulty_members_of_four_cannot_fork_and_stall_visibly() -> None:
    """Beyond f: with 2 of 4 silent there is no quorum. Nothing commits, nothing forks."""
    cluster = InProcessCluster(
        config(4, 4), KEYS[:4], byzantine={0: Behaviour.SILENT, 1: Behaviour.SILENT}
    )
    with pytest.raises(LivenessError):
        cluster.run_until_height(1, max_steps=3000)
    assert cluster.check_safety() == 1  # genesis only


# --- crash and restart ------------------------------------------------------------------------


@pytest.mark.parametrize("lag", [1, 3])
def test_a_needed_node_that_missed_the_precommits_catches_up_from_the_next_proposal(
    lag: int,
) -> None:
    """One member is silent, so the other three are all needed; one of them loses the
    others' precommits of height 4. Peers never resend votes of a decided height, so it
    must learn that height from the next proposal: from its last_commit (lag 1), or by
    fetching the block its proposer already committed (a longer lag: the certificate that
    proposal carries is older)."""
    cfg = config(4, 4, epoch_length=100, lag=lag)
    missed = 4

    def lose(dest: int, src: int, message: object) -> bool:
        return (
            dest == 2
            and src != 2
            and isinstance(message, Vote)
            and message.kind is VoteKind.PRECOMMIT
            and message.height == missed
        )

    cluster = InProcessCluster(cfg, KEYS[:4], byzantine={3: Behaviour.SILENT}, lose=lose)
    cluster.run_until_height(missed + 5, max_steps=100_000)
    assert cluster.lost > 0
    assert_replicated(cluster, missed + 5)


def sqlite_stores(tmp_path, n: int) -> list[SQLiteStore]:
    return [SQLiteStore(tmp_path / f"node{i}.db") for i in range(n)]


@pytest.mark.parametrize("lag", [1, 3])
def test_crash_during_commit_restart_from_sqlite_catches_up(tmp_path, lag: int) -> None:
    """With a certificate lag of 3 the restarted node must also recover the certificates
    its next blocks carry (those of its last 3 blocks) from its database."""
    cfg = config(4, 4, lag=lag)
    stores = sqlite_stores(tmp_path, 4)
    cluster = InProcessCluster(cfg, KEYS[:4], stores=stores, consensus=ConsensusConfig(5))
    txs = [anchor(cfg, CLIENTS[n % 4], n // 4) for n in range(60)]
    for tx in txs[:30]:
        cluster.submit(tx)
    cluster.run_until_height(3)
    victim = 2
    cluster.node(victim).crash_before = lambda action: isinstance(action, Commit)
    cluster.run_until_height(4)
    assert not cluster.node(victim).alive
    crashed_at = stores[victim].height()
    doc = json.loads(stores[victim].get_meta(WAL_KEY))
    records = doc["pipeline"] if lag > 1 else [doc]  # a pipeline keeps one per open height
    # It precommitted the next height, and never appended it.
    record = next(r for r in records if r["height"] == crashed_at + 1)
    assert any(v["kind"] == "precommit" and v["block"] for v in record["votes"])
    for tx in txs[30:]:
        cluster.submit(tx, node=1)
    cluster.run_until_height(9)  # three live nodes are a quorum
    stores[victim].close()
    reopened = SQLiteStore(tmp_path / f"node{victim}.db")
    cluster.restart(victim, store=reopened)
    cluster.run_until_height(12)
    assert_replicated(cluster, 12)
    assert set(committed(reopened)) == {tx.txid for tx in txs}
    assert not [e for _, e in cluster.evidence if isinstance(e, Equivocation)]


def test_wal_lets_a_needed_node_resume_without_double_signing(tmp_path) -> None:
    """One member is silent, so the other three are all needed. One of them crashes right
    after persisting its precommit and before sending it: nothing can commit until it is
    back, and after restart it re-sends exactly the votes it had signed."""
    cfg = config(4, 4)
    stores = sqlite_stores(tmp_path, 4)
    cluster = InProcessCluster(cfg, KEYS[:4], stores=stores, byzantine={3: Behaviour.SILENT})
    for n in range(8):
        cluster.submit(anchor(cfg, CLIENTS[0], n))
    cluster.run_until_height(2)
    victim = 1
    signed: list[Vote] = []

    def crash_before_sending_precommit(action) -> bool:
        if isinstance(action, Broadcast) and isinstance(action.message, Vote):
            signed.append(action.message)
            return action.message.kind is VoteKind.PRECOMMIT
        return False

    cluster.node(victim).crash_before = crash_before_sending_precommit
    height = cluster.node(0).state.height
    cluster.run_for(20_000)
    assert not cluster.node(victim).alive
    assert cluster.node(0).state.height <= height + 1  # stuck without the victim
    stuck_at = cluster.node(0).state.height
    stores[victim].close()
    cluster.restart(victim, store=SQLiteStore(tmp_path / f"node{victim}.db"))
    cluster.run_until_height(stuck_at + 3)
    assert_replicated(cluster, stuck_at + 3)
    mine = [
        e
        for _, e in cluster.evidence
        if isinstance(e, Equivocation) and e.first.voter == KEYS[victim].public
    ]
    assert mine == []
    assert len(committed(cluster.node(victim).store)) == 8


def test_restart_in_memory_replays_store_and_keeps_running() -> None:
    stores = [MemoryStore() for _ in range(4)]
    cluster = InProcessCluster(config(4, 4), KEYS[:4], stores=stores)
    cluster.run_until_height(3)
    cluster.crash(0)
    cluster.run_until_height(6)
    cluster.restart(0)
    cluster.run_until_height(8)
    assert_replicated(cluster, 8)


# --- mempool ------------------------------------------------------------------------------------


def test_mempool_verifies_once_and_forgets_stale_nonces() -> None:
    cfg = config(4, 4)
    pool, nonces = Mempool(), {CLIENTS[0].public: 0}

    def next_nonce(sender: bytes) -> int:
        return nonces.get(sender, 0)

    txs = [anchor(cfg, CLIENTS[0], n) for n in range(3)]
    assert all(pool.admit(tx, tx.txid, next_nonce) for tx in txs)
    assert not pool.admit(txs[0], txs[0].txid, next_nonce)
    assert all(pool.is_verified(tx) for tx in txs)
    forged = dataclasses.replace(anchor(cfg, CLIENTS[0], 3), signature=bytes(64))
    assert not pool.admit(forged, forged.txid, next_nonce) and not pool.is_verified(forged)
    assert [tx.nonce for tx in pool.take(2, next_nonce)] == [0, 1]
    nonces[CLIENTS[0].public] = 2
    pool.purge(next_nonce)
    assert len(pool) == 1 and txs[2].txid in pool
    assert not pool.admit(anchor(cfg, CLIENTS[0], 1, "-late"), "x", next_nonce)  # stale nonce


@pytest.mark.parametrize("lag", [1, 3])
def test_a_node_that_missed_a_whole_height_catches_up_when_its_vote_is_needed(lag: int) -> None:
    """Node X gets neither the proposal nor the precommits of height 2, and member C falls
    silent after it: the others need X's votes above 2. A pipeline that has nothing to
    build on at its lowest height must ask for blocks when it hears of higher ones (the
    one-height core learns it from the next proposal's last_commit)."""
    cfg = config(4, 4, epoch_length=100, lag=lag)
    committee = chain.genesis(cfg)[1].committee
    index = {k.public: i for i, k in enumerate(KEYS)}
    leaders = {index[election.proposer(committee, h, 0)] for h in (2, 3)}
    x, c = [i for i in range(4) if i not in leaders][:2]

    def lose(dest: int, src: int, message: object) -> bool:
        if not isinstance(message, Proposal | Vote):
            return False
        signer = message.proposer if isinstance(message, Proposal) else message.voter
        if signer == KEYS[c].public and message.height > 2:
            return True  # C stops after height 2
        missed = isinstance(message, Proposal) or message.kind is VoteKind.PRECOMMIT
        return dest == x and message.height == 2 and missed

    cluster = InProcessCluster(cfg, KEYS[:4], lose=lose, regossip_ms=300)
    cluster.run_until_height(5, max_steps=30_000)
    assert cluster.lost > 0
    assert_replicated(cluster, 5)


@pytest.mark.parametrize("lag", [1, 3])
def test_a_node_that_missed_the_last_precommits_of_an_epoch_catches_up(lag: int) -> None:
    """One member is silent and another never gets the precommits of height 3, the last of
    an epoch; when that node also leads the next epoch's first height, the others wait for
    it. Peers never resend votes of a decided height, so the node must notice that it
    stalls while peers are past its height, and ask for the block (every pair tried)."""
    cfg = config(4, 4, epoch_length=3, lag=lag)

    for silent in range(4):
        for stuck in (i for i in range(4) if i != silent):

            def lose(dest: int, src: int, message: object, stuck: int = stuck) -> bool:
                return (
                    dest == stuck
                    and isinstance(message, Vote)
                    and message.kind is VoteKind.PRECOMMIT
                    and message.height == 3
                )

            cluster = InProcessCluster(
                cfg, KEYS[:4], byzantine={silent: Behaviour.SILENT}, lose=lose, regossip_ms=300
            )
            cluster.run_until_height(6, max_steps=50_000)
            assert_replicated(cluster, 6)


@pytest.mark.parametrize("regossip_ms", [None, 300])
def test_a_stalled_node_keeps_checking_after_one_commit(regossip_ms: int | None) -> None:
    """Node 1 loses the precommits of heights 2 and 3, node 0 is silent: node 1 learns 2
    from the next proposal, but 3 only by asking; its stall check, armed before it
    committed 2, must look again rather than give up."""
    cfg = config(4, 4, epoch_length=3)

    def lose(dest: int, src: int, message: object) -> bool:
        return (
            dest == 1
            and isinstance(message, Vote)
            and message.kind is VoteKind.PRECOMMIT
            and message.height in (2, 3)
        )

    cluster = InProcessCluster(
        cfg,
        KEYS[:4],
        byzantine={0: Behaviour.SILENT},
        lose=lose,
        regossip_ms=regossip_ms,
        consensus=ConsensusConfig(propose_timeout_ms=100),
    )
    cluster.run_until_height(7, max_steps=60_000)
    assert_replicated(cluster, 7)
