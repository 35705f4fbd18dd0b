"""Chain rules: what a valid next block is, enforced on every path."""

from __future__ import annotations

import dataclasses

import pytest
from chainkit import Kit
from hypothesis import given, settings
from hypothesis import strategies as st

from medshare.crypto.signing import SigningKey
from medshare.ledger import audit, chain, election
from medshare.ledger.store import MemoryStore
from medshare.ledger.types import (
    Block,
    CommitCertificate,
    Equivocation,
    LedgerFormatError,
    Tx,
    TxKind,
    Vote,
    VoteKind,
    canonical,
    digest_hex,
)


def test_blocks_apply_and_state_advances() -> None:
    kit = Kit.new()
    for _ in range(3):
        kit.next_block([kit.tx(0), kit.tx(1)])
    assert kit.state.height == 3
    assert kit.state.next_nonce(kit.keys[0].public) == 3


def test_replayed_transaction_is_dropped_by_proposer_and_rejected_in_block() -> None:
    kit = Kit.new()
    tx = kit.tx(0)
    kit.next_block([tx])
    block, dropped = chain.build_block(
        kit.state, [tx], kit.state.committee[0], kit.state.head_time_ms + 5, kit.last_commit
    )
    assert dropped == [tx] and block.txs == ()
    forced = Block(
        dataclasses.replace(block.header, merkle_root=chain.merkle_root_hex([tx])),
        (tx,),
        block.last_commit,
    )
    with pytest.raises(chain.InvalidBlock, match="nonce"):
        chain.apply_block(kit.state, forced, require_certificate=False)


def test_forged_signature_is_rejected() -> None:
    kit = Kit.new()
    tx = kit.tx(0)
    forged = dataclasses.replace(tx, body={**tx.body, "digest": "cd" * 32})
    state = kit.state.clone()
    with pytest.raises(chain.TxRejected, match="invalid signature"):
        chain.apply_tx(state, forged)
    assert state.next_nonce(tx.sender) == 0  # nothing applied


def test_a_tx_signed_for_another_chain_is_rejected_and_cannot_be_relabelled() -> None:
    """Same validator and client keys, another genesis (here: another epoch length): the
    nonces line up, so without the chain id the tx would replay."""
    here, there = Kit.new(), Kit.new(epoch_length=7)
    assert here.config.chain_id != there.config.chain_id
    foreign = there.tx(0)
    state = here.state.clone()
    with pytest.raises(chain.TxRejected, match="another chain"):
        chain.apply_tx(state, foreign)
    relabelled = dataclasses.replace(foreign, chain=here.config.chain_id)
    with pytest.raises(chain.TxRejected, match="invalid signature"):
        chain.apply_tx(state, relabelled)
    assert state.next_nonce(foreign.sender) == 0
    here.next_block([here.tx(0)])  # the same sender's own tx for this chain applies


@pytest.mark.parametrize("chain_id", [None, "", "AB" * 16, "ab" * 15, "zz" * 16, 7])
def test_a_tx_without_a_well_formed_chain_id_does_not_decode(chain_id: object) -> None:
    doc = Kit.new().tx(0).to_json()
    if chain_id is None:
        del doc["chain"]
    else:
        doc["chain"] = chain_id
    with pytest.raises(LedgerFormatError, match="chain id"):
        Tx.from_json(doc)


def test_certificate_needs_a_quorum_of_the_committee() -> None:
    kit = Kit.new()
    with pytest.raises(chain.InvalidBlock, match="needs 3"):
        kit.next_block([kit.tx(0)], signers=2)


def test_certificate_from_outsiders_does_not_count() -> None:
    kit = Kit.new()
    block, _ = chain.build_block(
        kit.state, [], kit.state.committee[0], kit.state.head_time_ms + 5, None
    )
    outsiders = [SigningKey.generate() for _ in range(3)]
    votes = [
        Vote.create(VoteKind.PRECOMMIT, 1, 0, block.hash, k, chain=kit.config.chain_id)
        for k in outsiders
    ]
    with pytest.raises(chain.InvalidBlock, match="0 valid committee signatures"):
        chain.apply_block(kit.state, block.with_certificate(CommitCertificate.from_votes(votes)))


def test_votes_signed_on_another_chain_neither_certify_nor_frame_a_validator() -> None:
    """One validator key serving two chains (same keys, another genesis): its honest votes
    on each must not add up to equivocation on either, nor certify the other's blocks."""
    here, there = Kit.new(), Kit.new(epoch_length=7)
    member = here.key(here.state.committee[1])
    on_here = Vote.create(VoteKind.PREVOTE, 3, 0, "aa" * 32, member, chain=here.config.chain_id)
    on_there = Vote.create(VoteKind.PREVOTE, 3, 0, "bb" * 32, member, chain=there.config.chain_id)
    framed = Equivocation(on_here, on_there).to_body()
    with pytest.raises(chain.TxRejected, match="invalid evidence"):
        chain.apply_tx(here.state.clone(), here.tx(0, TxKind.EVIDENCE, framed))
    assert not on_there.is_valid(here.config.chain_id) and on_here.is_valid(here.config.chain_id)

    block, _ = chain.build_block(
        here.state, [], here.state.committee[0], here.state.head_time_ms + 5, None
    )
    elsewhere = [
        Vote.create(VoteKind.PRECOMMIT, 1, 0, block.hash, here.key(m), chain=there.config.chain_id)
        for m in here.state.committee
    ]
    with pytest.raises(chain.InvalidBlock, match="0 valid committee signatures"):
        chain.apply_block(
            here.state, block.with_certificate(CommitCertificate.from_votes(elsewhere))
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"height": 5}, "expected height"),
        ({"prev_hash": "11" * 32}, "does not extend"),
        ({"state_root": "22" * 32}, "state root"),
        ({"merkle_root": "33" * 32}, "Merkle root"),
        ({"epoch": 7}, "epoch"),
        ({"proposer": bytes(32)}, "proposer"),
        ({"timestamp_ms": 0}, "time"),
        ({"last_commit_hash": "44" * 32}, "last-commit"),
    ],
)
def test_header_rules(change: dict, message: str) -> None:
    kit = Kit.new()
    block, _ = chain.build_block(
        kit.state, [kit.tx(0)], kit.state.committee[0], kit.state.head_time_ms + 5, None
    )
    bad = Block(dataclasses.replace(block.header, **change), block.txs, block.last_commit)
    with pytest.raises(chain.InvalidBlock, match=message):
        chain.apply_block(kit.state, bad, require_certificate=False)


def test_epoch_boundary_elects_a_new_committee_from_all_validators() -> None:
    kit = Kit.new(nodes=7, committee=4, epoch_length=3)
    committees = set()
    for _ in range(12):
        kit.next_block([])
        committees.add(kit.state.committee)
        assert len(kit.state.committee) == 4
    assert len(committees) > 1  # 4 epochs over 7 validators: re-elected at least once


def test_reputation_rewards_signers_and_penalises_absentees() -> None:
    kit = Kit.new()
    kit.next_block([])
    kit.next_block([])  # applies block 1's certificate (3 of 4 signed)
    by_key = {v.public: v.reputation for v in kit.state.validators}
    committee = kit.state.committee
    absent = committee[3]
    assert by_key[absent] < 1000
    assert all(by_key[m] > 1000 for m in committee[:3])


def test_equivocation_evidence_ejects_the_offender() -> None:
    kit = Kit.new(nodes=5, committee=4, epoch_length=2)
    offender = kit.keys[1]
    a = Vote.create(VoteKind.PREVOTE, 3, 0, "aa" * 32, offender, chain=kit.config.chain_id)
    b = Vote.create(VoteKind.PREVOTE, 3, 0, "bb" * 32, offender, chain=kit.config.chain_id)
    evidence = Equivocation(a, b).to_body()
    kit.next_block([kit.tx(0, TxKind.EVIDENCE, evidence)])
    validator = kit.state.validator(offender.public)
    assert validator is not None and validator.ejected and validator.reputation == 0
    for _ in range(6):
        kit.next_block([])
        assert offender.public not in kit.state.committee


def test_a_pipelined_chain_keeps_the_offenders_seat_until_the_epoch_ends() -> None:
    """With a certificate lag > 1 heights after the evidence may already be in flight, so
    their committee must not change; the offender is ejected at once and never re-elected."""
    kit = Kit.new(nodes=6, committee=4, epoch_length=4, lag=2)
    kit.next_block([])
    committee = kit.state.committee
    offender = kit.key(committee[1])
    a = Vote.create(VoteKind.PREVOTE, 1, 0, "aa" * 32, offender, chain=kit.config.chain_id)
    b = Vote.create(VoteKind.PREVOTE, 1, 0, "bb" * 32, offender, chain=kit.config.chain_id)
    kit.next_block([kit.tx(0, TxKind.EVIDENCE, Equivocation(a, b).to_body())])  # height 2
    validator = kit.state.validator(offender.public)
    assert validator is not None and validator.ejected and validator.reputation == 0
    for _ in range(2):  # heights 3 and 4: the rest of epoch 0
        kit.next_block([])
        assert kit.state.committee == committee
    for _ in range(8):  # epochs 1 and 2
        kit.next_block([])
        assert offender.public not in kit.state.committee


def test_evidence_that_does_not_conflict_is_rejected() -> None:
    kit = Kit.new()
    a = Vote.create(VoteKind.PREVOTE, 3, 0, "aa" * 32, kit.keys[1], chain=kit.config.chain_id)
    body = Equivocation(a, a).to_body()
    state = kit.state.clone()
    with pytest.raises(chain.TxRejected, match="invalid evidence"):
        chain.apply_tx(state, kit.tx(0, TxKind.EVIDENCE, body))


def test_register_node_needs_an_active_validator() -> None:
    kit = Kit.new()
    newcomer = SigningKey.generate()
    outsider_tx = Tx.create(
        TxKind.REGISTER_NODE,
        {"node": newcomer.public.hex(), "name": "x"},
        0,
        newcomer,
        chain=kit.config.chain_id,
    )
    with pytest.raises(chain.TxRejected, match="active validator"):
        chain.apply_tx(kit.state.clone(), outsider_tx)
    kit.next_block(
        [kit.tx(0, TxKind.REGISTER_NODE, {"node": newcomer.public.hex(), "name": "lab"})]
    )
    joined = kit.state.validator(newcomer.public)
    assert joined == election.Validator(newcomer.public, "lab", 1000)


def test_unknown_evidence_kind_is_rejected() -> None:
    kit = Kit.new()
    body = {"offender": "00" * 32, "kind": "gossip", "proof": []}
    with pytest.raises(chain.TxRejected, match="unknown evidence kind"):
        chain.apply_tx(kit.state.clone(), kit.tx(0, TxKind.EVIDENCE, body))


def test_block_time_is_capped_so_the_chain_cannot_be_halted() -> None:
    kit = Kit.new()
    block, _ = chain.build_block(
        kit.state, [], kit.state.committee[0], chain.MAX_TIMESTAMP_MS + 1, None
    )
    with pytest.raises(chain.InvalidBlock, match="time is beyond"):
        chain.apply_block(kit.state, block, require_certificate=False)


def test_equivocation_evidence_must_name_the_signer() -> None:
    kit = Kit.new()
    a = Vote.create(VoteKind.PREVOTE, 3, 0, "aa" * 32, kit.keys[1], chain=kit.config.chain_id)
    b = Vote.create(VoteKind.PREVOTE, 3, 0, "bb" * 32, kit.keys[1], chain=kit.config.chain_id)
    body = {**Equivocation(a, b).to_body(), "offender": kit.keys[2].public.hex()}
    with pytest.raises(chain.TxRejected, match="another offender"):
        chain.apply_tx(kit.state.clone(), kit.tx(0, TxKind.EVIDENCE, body))


# --- certificate lag (block h carries the certificate of block h - W) ----------------------------


def test_with_lag_3_block_h_carries_the_certificate_of_h_minus_3() -> None:
    kit = Kit.new(lag=3)
    blocks = [kit.next_block([kit.tx(0)]) for _ in range(6)]
    assert [b.last_commit is None for b in blocks] == [True, True, True, False, False, False]
    assert [b.last_commit.height for b in blocks[3:]] == [1, 2, 3]
    assert [head.height for head in kit.state.pending] == [4, 5, 6]
    # the proposer of block 1 is credited only when block 4 carries block 1's certificate
    store = MemoryStore()
    audit.init_store(store, kit.config)
    for block in blocks:
        store.append(block)
    assert audit.verify_chain(store).ok
    tampered = MemoryStore()
    audit.init_store(tampered, kit.config)
    for block in blocks[:4]:
        tampered.append(block)
    forged_cert = dataclasses.replace(blocks[4].last_commit, round=1)  # signatures now fail
    body = dataclasses.replace(blocks[4], last_commit=forged_cert)
    tampered.append(body)
    report = audit.verify_chain(tampered)
    assert not report.ok and report.first_bad_height == 5


def test_with_lag_3_a_wrong_missing_or_early_last_commit_is_rejected() -> None:
    kit = Kit.new(lag=3)
    early = kit.next_block([])
    for _ in range(2):
        kit.next_block([])
    carried = kit.due_certificate()
    assert carried is not None and carried.height == 1
    proposer = election.proposer(chain.begin_block(kit.state, carried).committee, 4, 0)
    later = kit.state.head_time_ms + 10
    wrong = kit.certificates[3]  # valid, but for block 3, not block 1
    for last_commit, message in ((wrong, "certificate for block 1"), (None, "no commit cert")):
        with pytest.raises(chain.InvalidBlock, match=message):
            chain.build_block(kit.state, [], proposer, later, last_commit)
    genesis_state = chain.genesis(kit.config)[1]
    one = chain.apply_block(genesis_state, early)
    with pytest.raises(chain.InvalidBlock, match="must not carry a last commit"):
        chain.build_block(one, [], proposer, later, early.certificate)


def test_reputation_is_credited_from_the_lagged_certificate() -> None:
    lagged, plain = Kit.new(lag=3), Kit.new()
    for kit in (lagged, plain):
        for _ in range(3):
            kit.next_block([])
    # after 3 blocks, the plain chain has credited blocks 1-2, the lagged one nothing yet
    assert all(v.reputation == 1000 for v in lagged.state.validators)
    assert any(v.reputation != 1000 for v in plain.state.validators)
    lagged.next_block([])
    assert any(v.reputation != 1000 for v in lagged.state.validators)


def test_proposer_run_is_part_of_the_genesis_only_when_not_1() -> None:
    kit = Kit.new()
    assert "proposer_run" not in kit.config.to_json()
    led = dataclasses.replace(kit.config, proposer_run=8)
    doc = led.to_json()
    assert doc["proposer_run"] == 8
    assert chain.ChainConfig.from_json(doc) == led
    assert led.chain_id != kit.config.chain_id
    for bad in (0, chain.MAX_PROPOSER_RUN + 1):
        with pytest.raises(ValueError, match="proposer_run"):
            dataclasses.replace(kit.config, proposer_run=bad)
    with pytest.raises(TypeError, match="proposer_run"):
        dataclasses.replace(kit.config, proposer_run="8")
    with pytest.raises(LedgerFormatError, match="proposer_run"):
        chain.ChainConfig.from_json({**doc, "proposer_run": 0})


def test_certificate_lag_is_part_of_the_genesis_only_when_not_1() -> None:
    kit = Kit.new()
    assert "certificate_lag" not in kit.config.to_json()  # default genesis hashes unchanged
    lagged = dataclasses.replace(kit.config, certificate_lag=4)
    doc = lagged.to_json()
    assert doc["certificate_lag"] == 4
    assert chain.ChainConfig.from_json(doc) == lagged
    assert lagged.chain_id != kit.config.chain_id
    for bad in (0, -1, True, "2", chain.MAX_CERTIFICATE_LAG + 1):
        with pytest.raises((ValueError, TypeError)):
            dataclasses.replace(kit.config, certificate_lag=bad)
    with pytest.raises(LedgerFormatError, match="chain config"):
        chain.ChainConfig.from_json({**doc, "certificate_lag": 0})


@settings(max_examples=60, deadline=None)
@given(
    names=st.lists(st.text(max_size=12), min_size=1, max_size=6),
    reputations=st.lists(st.integers(1, 10_000), min_size=6, max_size=6),
    nonces=st.dictionaries(
        st.text("0123456789abcdef", min_size=2, max_size=8), st.integers(0, 2**53 - 1), max_size=5
    ),
    height=st.integers(0, 2**53 - 1),
)
def test_state_root_is_the_digest_of_the_whole_canonical_state(
    names: list[str], reputations: list[int], nonces: dict[str, int], height: int
) -> None:
    """The state root is built member by member from cached parts; it must be the same
    bytes as canonicalising the whole state object (any validator names, any nonces)."""
    validators = tuple(
        election.Validator(bytes([i + 1]) * 32, name, reputations[i], ejected=i % 2 == 1)
        for i, name in enumerate(names)
    )
    config = chain.ChainConfig("roots", validators, committee_size=1)
    _, state = chain.genesis(config)
    state.height, state.nonces = height, nonces
    whole = {
        "height": state.height,
        "validators": election.state_json(state.validators),
        "committee": [c.hex() for c in state.committee],
        "nonces": state.nonces,
    }
    assert state.state_root() == digest_hex(canonical(whole))
    assert election.state_digest(validators) == digest_hex(canonical(whole["validators"]))
