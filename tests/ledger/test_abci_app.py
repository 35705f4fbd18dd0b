"""The ABCI adapter and its socket server, driven in-process with CometBFT's own protobuf
messages (a harness that only moves bytes; consensus is CometBFT's, tested elsewhere)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from appkit import NODE_KEYS, make_genesis
from hypothesis import given
from hypothesis import strategies as st

from medshare.crypto.signing import SigningKey
from medshare.ledger.app import rules
from medshare.ledger.app.abci import LedgerApplication
from medshare.ledger.app.genesis import MEMBER_POWER
from medshare.ledger.app.store import StateStore
from medshare.ledger.cometbft import server
from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci
from medshare.ledger.cometbft.proto.tendermint.types import validator_pb2
from medshare.ledger.types import Tx, TxKind


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    s = StateStore(tmp_path / "app.db")
    yield s
    s.close()


def init(app: LedgerApplication, genesis=None) -> abci.ResponseInitChain:
    genesis = genesis or make_genesis()
    return app.init_chain(
        abci.RequestInitChain(chain_id="c", app_state_bytes=json.dumps(genesis.to_json()).encode())
    )


def check(app: LedgerApplication, tx: Tx | bytes, recheck: bool = False) -> abci.ResponseCheckTx:
    raw = tx if isinstance(tx, bytes) else tx.encode()
    kind = abci.CheckTxType.RECHECK if recheck else abci.CheckTxType.NEW
    return app.check_tx(abci.RequestCheckTx(tx=raw, type=kind))


def finalize(
    app: LedgerApplication, height: int, txs: list[bytes], *, misbehaving=()
) -> abci.ResponseFinalizeBlock:
    state = app._committed()
    votes = [
        abci.VoteInfo(
            validator=abci.Validator(address=rules.address(m), power=MEMBER_POWER),
            block_id_flag=validator_pb2.BLOCK_ID_FLAG_COMMIT,
        )
        for m in state.committee
    ]
    evidence = [
        abci.Misbehavior(
            type=abci.DUPLICATE_VOTE,
            validator=abci.Validator(address=rules.address(m), power=MEMBER_POWER),
        )
        for m in misbehaving
    ]
    return app.finalize_block(
        abci.RequestFinalizeBlock(
            txs=txs,
            decided_last_commit=abci.CommitInfo(votes=votes),
            misbehavior=evidence,
            hash=hashlib.sha256(b"%d" % height).digest(),
            height=height,
            proposer_address=rules.address(state.committee[0]),
        )
    )


def commit_block(
    app: LedgerApplication, height: int, txs: list[bytes], **kw
) -> abci.ResponseFinalizeBlock:
    response = finalize(app, height, txs, **kw)
    app.commit(abci.RequestCommit())
    return response


def identity_tx(app: LedgerApplication, who: SigningKey, nonce: int = 0) -> Tx:
    chain = app._committed().genesis.chain_id
    body = {"identity": f"nurse-{who.public.hex()[:12]}@H001", "key": who.public.hex()}
    return Tx.create(TxKind.REGISTER_IDENTITY, body, nonce, NODE_KEYS[0], chain=chain)


def access_tx(app: LedgerApplication, who: SigningKey, nonce: int) -> Tx:
    chain = app._committed().genesis.chain_id
    return Tx.create(
        TxKind.ACCESS, {"record": "r", "actor": "n", "area": "institution"}, nonce, who, chain=chain
    )


def test_init_chain_returns_the_elected_committee_as_validators(store: StateStore) -> None:
    app = LedgerApplication(store)
    genesis = make_genesis()
    response = init(app, genesis)
    keys = sorted(v.pub_key.ed25519 for v in response.validators)
    assert keys == sorted(genesis.first_committee())
    assert all(v.power == MEMBER_POWER for v in response.validators)
    assert app.info(abci.RequestInfo()).last_block_height == 0


def test_check_tx_tracks_pending_nonces_and_recheck_after_commit(store: StateStore) -> None:
    app = LedgerApplication(store)
    init(app)
    alice = SigningKey.generate()
    assert check(app, identity_tx(app, alice, 0)).code == 0
    assert check(app, identity_tx(app, SigningKey.generate(), 1)).code == 0  # next pending nonce
    # A second transaction for a nonce already pending is refused, and so is a gap.
    assert check(app, identity_tx(app, SigningKey.generate(), 1)).code == rules.Code.BAD_NONCE
    assert check(app, identity_tx(app, SigningKey.generate(), 3)).code == rules.Code.BAD_NONCE
    assert (
        check(app, access_tx(app, alice, 0)).code == rules.Code.NOT_PERMITTED
    )  # not committed yet
    pending = identity_tx(app, SigningKey.generate(), 1)
    commit_block(app, 1, [identity_tx(app, alice, 0).encode()])
    # After the commit the mempool view restarts from the committed state; CometBFT
    # re-checks what is left in its mempool, in order, and the pending nonce 1 still fits.
    assert check(app, pending, recheck=True).code == 0
    assert (
        check(app, identity_tx(app, SigningKey.generate(), 0), recheck=True).code
        == rules.Code.BAD_NONCE
    )
    assert check(app, access_tx(app, alice, 0)).code == 0


def test_check_tx_refuses_garbage_with_a_code_not_an_exception(store: StateStore) -> None:
    app = LedgerApplication(store)
    init(app)
    for junk in (b"", b"\x00" * 10, b"{}", b"null", "é".encode() * 100):
        response = check(app, junk)
        assert response.code == rules.Code.MALFORMED and response.log


def test_prepare_proposal_drops_invalid_and_keeps_order(store: StateStore) -> None:
    app = LedgerApplication(store)
    init(app)
    alice = SigningKey.generate()
    good = [
        identity_tx(app, alice, 0).encode(),
        identity_tx(app, SigningKey.generate(), 1).encode(),
    ]
    gap = identity_tx(app, SigningKey.generate(), 5).encode()
    txs = [good[0], b"junk", gap, good[1]]
    response = app.prepare_proposal(abci.RequestPrepareProposal(txs=txs, max_tx_bytes=10**6))
    assert list(response.txs) == good
    small = app.prepare_proposal(abci.RequestPrepareProposal(txs=txs, max_tx_bytes=len(good[0])))
    assert list(small.txs) == [good[0]]


def test_process_proposal_rejects_a_forged_signature(store: StateStore) -> None:
    app = LedgerApplication(store)
    init(app)
    good = identity_tx(app, SigningKey.generate())
    doc = good.to_json()
    doc["signature"] = "00" * 64
    forged = Tx.from_json(doc).encode()
    accept = abci.ResponseProcessProposal.ACCEPT
    assert app.process_proposal(abci.RequestProcessProposal(txs=[good.encode()])).status == accept
    assert app.process_proposal(abci.RequestProcessProposal(txs=[forged])).status != accept
    assert app.process_proposal(abci.RequestProcessProposal(txs=[b"junk"])).status != accept


def test_finalize_skips_bad_txs_with_codes_and_a_forged_one_even_if_a_good_one_was_cached(
    store: StateStore,
) -> None:
    app = LedgerApplication(store)
    init(app)
    good = identity_tx(app, SigningKey.generate())
    assert check(app, good).code == 0  # now cached as verified
    doc = good.to_json()
    doc["signature"] = "11" * 64
    forged = Tx.from_json(doc)
    response = finalize(app, 1, [forged.encode(), good.encode(), good.encode()])
    codes = [r.code for r in response.tx_results]
    assert codes == [rules.Code.BAD_SIGNATURE, 0, rules.Code.BAD_NONCE]


def test_misbehaviour_becomes_validator_updates(store: StateStore) -> None:
    app = LedgerApplication(store)
    init(app)
    offender = app._committed().committee[0]
    response = commit_block(app, 1, [], misbehaving=[offender])
    updates = {u.pub_key.ed25519: u.power for u in response.validator_updates}
    assert updates[offender] == 0
    assert sorted(updates.values()) == [0, MEMBER_POWER]
    status = json.loads(app.query(abci.RequestQuery(path="/state")).value)
    assert any(n["ejected"] for n in status["nodes"])


def test_state_survives_a_restart_and_uncommitted_blocks_do_not(
    store: StateStore, tmp_path: Path
) -> None:
    app = LedgerApplication(store)
    init(app)
    alice = SigningKey.generate()
    commit_block(app, 1, [identity_tx(app, alice).encode()])
    hash_after_1 = app.info(abci.RequestInfo()).last_block_app_hash
    finalize(app, 2, [access_tx(app, alice, 0).encode()])  # crash before Commit
    reopened = LedgerApplication(StateStore(tmp_path / "app.db"))
    info = reopened.info(abci.RequestInfo())
    assert (info.last_block_height, info.last_block_app_hash) == (1, hash_after_1)
    # CometBFT replays block 2: the same app hash as before the crash.
    replayed = finalize(reopened, 2, [access_tx(reopened, alice, 0).encode()])
    original = finalize(app, 2, [access_tx(app, alice, 0).encode()])
    assert replayed.app_hash == original.app_hash
    nonce = reopened.query(abci.RequestQuery(path="/nonce", data=alice.public))
    assert json.loads(nonce.value) == {"next_nonce": 0}


def test_reputation_not_yet_in_the_app_hash_survives_a_restart(
    store: StateStore, tmp_path: Path
) -> None:
    """Reputation credited mid-epoch is in no app hash yet, so a node that restarted
    without it would seal another hash at the epoch's end than its peers: it is persisted
    with each block."""
    app = LedgerApplication(store)
    init(app)
    epoch = app._committed().genesis.epoch_length
    commit_block(app, 1, [])
    before = app._committed().validators
    commit_block(app, 2, [])
    assert app._committed().validators != before  # the empty block's commit was credited
    restarted = LedgerApplication(StateStore(tmp_path / "app.db"))  # the same node, again
    assert restarted._committed().validators == app._committed().validators
    never_stopped = LedgerApplication(StateStore(tmp_path / "other.db"))
    init(never_stopped)
    for h in range(1, epoch + 1):
        sealed = commit_block(never_stopped, h, []).app_hash
        if h > 2:
            assert commit_block(restarted, h, []).app_hash == sealed


def test_unknown_query_path_is_an_error_code(store: StateStore) -> None:
    app = LedgerApplication(store)
    init(app)
    assert app.query(abci.RequestQuery(path="/secret")).code != 0


# --- the socket server ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16_384, 2**21 + 5])
def test_frame_round_trip(n: int) -> None:
    payload = b"x" * n

    async def read() -> bytes | None:
        reader = asyncio.StreamReader()
        reader.feed_data(server.encode_frame(payload))
        reader.feed_eof()
        return await server.read_frame(reader)

    assert asyncio.run(read()) == payload


@pytest.mark.parametrize(
    "data",
    [b"\x80", b"\xff" * 11, b"\x05ab", server.encode_frame(b"")[:0] + b"\xff\xff\xff\xff\x7f"],
)
def test_malformed_frames_raise_wire_error(data: bytes) -> None:
    async def read() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        await server.read_frame(reader)

    with pytest.raises(server.WireError):
        asyncio.run(read())


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=3000), max_size=8),
    step=st.integers(min_value=1, max_value=5000),
)
def test_frame_buffer_splits_any_chunking_into_the_same_frames(sizes: list[int], step: int) -> None:
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    stream = b"".join(server.encode_frame(p) for p in payloads)
    frames = server.FrameBuffer()
    out: list[bytes] = []
    for start in range(0, len(stream), step):
        out += frames.feed(stream[start : start + step])
    assert out == payloads
    assert len(frames) == 0


@pytest.mark.parametrize("data", [b"\xff" * 11, b"\xff\xff\xff\xff\x7f"])
def test_frame_buffer_refuses_bad_length_prefixes(data: bytes) -> None:
    with pytest.raises(server.WireError):
        server.FrameBuffer().feed(data)


def test_frame_buffer_keeps_an_incomplete_frame() -> None:
    frames = server.FrameBuffer()
    assert frames.feed(server.encode_frame(b"abc")[:-1]) == []
    assert len(frames) == 3
    assert frames.feed(b"c") == [b"abc"]


def test_handle_maps_app_bugs_to_exception_responses(store: StateStore) -> None:
    app = LedgerApplication(store)  # not initialised: a query is a bug in the caller
    response = server.handle(app, abci.Request(query=abci.RequestQuery(path="/state")))
    assert response.WhichOneof("value") == "exception"
    echo = server.handle(app, abci.Request(echo=abci.RequestEcho(message="hi")))
    assert echo.echo.message == "hi"


def test_server_answers_in_order_over_a_unix_socket(store: StateStore, tmp_path: Path) -> None:
    app = LedgerApplication(store)
    path = Path("/tmp") / f"abci-test-{tmp_path.name}.sock"

    async def scenario() -> list[abci.Response]:
        stop = asyncio.Event()
        path.unlink(missing_ok=True)  # a leftover from an earlier run must not look ready
        serving = asyncio.create_task(server.AbciServer(app, path).serve(stop))
        for _ in range(200):
            if path.exists():
                break
            await asyncio.sleep(0.01)
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        reader, writer = await asyncio.open_unix_connection(str(path))
        genesis = make_genesis()
        requests = [
            abci.Request(echo=abci.RequestEcho(message="a")),
            abci.Request(
                init_chain=abci.RequestInitChain(
                    app_state_bytes=json.dumps(genesis.to_json()).encode()
                )
            ),
            abci.Request(check_tx=abci.RequestCheckTx(tx=b"junk")),
            abci.Request(flush=abci.RequestFlush()),
        ]
        for r in requests:
            writer.write(server.encode_frame(r.SerializeToString()))
        await writer.drain()
        answers = [abci.Response.FromString(await server.read_frame(reader)) for _ in requests]
        # A garbage frame closes that connection only; the server keeps serving others.
        writer.write(b"\xff" * 11)
        await writer.drain()
        assert await server.read_frame(reader) is None
        writer.close()
        reader2, writer2 = await asyncio.open_unix_connection(str(path))
        # Responses are written when CometBFT flushes, as its own server does.
        for r in (
            abci.Request(echo=abci.RequestEcho(message="b")),
            abci.Request(flush=abci.RequestFlush()),
        ):
            writer2.write(server.encode_frame(r.SerializeToString()))
        await writer2.drain()
        answers.append(abci.Response.FromString(await server.read_frame(reader2)))
        answers.append(abci.Response.FromString(await server.read_frame(reader2)))
        writer2.close()
        stop.set()
        await serving
        return answers

    try:
        answers = asyncio.run(scenario())
    finally:
        path.unlink(missing_ok=True)
    kinds = [a.WhichOneof("value") for a in answers]
    assert kinds == ["echo", "init_chain", "check_tx", "flush", "echo", "flush"]
    assert answers[2].check_tx.code == rules.Code.MALFORMED
    assert answers[4].echo.message == "b"
