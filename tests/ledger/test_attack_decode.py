"""Adversarial review: what attacker-chosen transaction bytes do to the ABCI application.

Driven in-process with CometBFT's protobuf requests, like ``test_abci_app.py``; the
real-process consequences (a node whose CometBFT exits) are in ``test_attack_net.py``.

Tests that FAIL on the current code demonstrate a vulnerability (their docstring says what
is wrong and what the fix is); tests that PASS are regression tests for attacks the code
resists.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from appkit import NODE_KEYS
from test_abci_app import check, commit_block, finalize, identity_tx, init

from medshare.crypto.signing import SigningKey
from medshare.ledger.app import rules
from medshare.ledger.app.abci import LedgerApplication
from medshare.ledger.app.store import StateStore
from medshare.ledger.cometbft import server
from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci
from medshare.ledger.types import MAX_TX_BYTES, TX_DOMAIN, LedgerFormatError, Tx, TxKind

# --- payloads -------------------------------------------------------------------------------

# Each is far below MAX_TX_BYTES (64 KiB) and below CometBFT's mempool limit (1 MiB), so
# CometBFT hands it to CheckTx; a Byzantine proposer can also put it in a proposal.
BOMBS: dict[str, bytes] = {
    # json.loads recurses once per level: RecursionError (not a JSONDecodeError)
    "deep-array": b"[" * 5000,
    "deep-object": b'{"a":' * 3000,
    # Python 3.11's int-from-string limit (4300 digits): ValueError, not JSONDecodeError
    "huge-int": b"9" * 5000,
}


@pytest.fixture(scope="module")
def node_recursion_limit() -> int:
    """The recursion limit of a node's application process (``appmain``): the test process
    may have another one (``py_ecc``, imported through web3 by the anchoring tests' conftest,
    raises it to 100000 on import), and whether a JSON bomb raises depends on it."""
    code = "import sys, medshare.ledger.cometbft.appmain as m; print(sys.getrecursionlimit())"
    src = Path(__file__).resolve().parents[2] / "src"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(src)},
    )
    return int(out.stdout)


@pytest.fixture(autouse=True)
def as_in_the_node(node_recursion_limit: int) -> None:
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(node_recursion_limit)
    yield
    sys.setrecursionlimit(before)


@pytest.fixture
def app(tmp_path: Path) -> LedgerApplication:
    store = StateStore(tmp_path / "app.db")
    application = LedgerApplication(store)
    init(application)
    yield application
    store.close()


def _kind(response: abci.Response) -> str:
    return response.WhichOneof("value")


# --- finding: one small transaction makes CometBFT quit ------------------------------------


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_attack_json_bomb_in_check_tx_does_not_raise(app: LedgerApplication, bomb: str) -> None:
    """REGRESSION (was CRITICAL at HEAD 8f67e77; fixed in 769a03c by
    ``types.check_depth`` and ``Tx.decode``/``rules.decode`` catching ``ValueError`` and
    ``RecursionError``). The attack: ``rules.decode`` let ``RecursionError`` (deeply nested JSON)
    and ``ValueError`` (an integer literal of > 4300 digits) escape — ``Tx.decode`` only
    catches ``JSONDecodeError``/``UnicodeDecodeError`` — so ``CheckTx`` raises, the socket
    server answers ABCI ``exception``, and CometBFT v0.38's socket client stops on it and
    ``killTMOnClientError`` kills the node. Anyone who can reach a node's RPC
    (``broadcast_tx_sync``) or its p2p port (mempool gossip is CheckTx'd on receipt) stops
    that node with one ~5 KB transaction, repeatably.

    Fix: in ``Tx.decode`` refuse nesting deeper than a small fixed bound (e.g. 32) with a
    byte scan *before* ``json.loads`` and map every parse failure (``ValueError``,
    ``RecursionError``) to ``LedgerFormatError``; ``rules.decode`` then returns MALFORMED."""
    request = abci.Request(check_tx=abci.RequestCheckTx(tx=BOMBS[bomb]))
    response = server.handle(app, request)
    assert _kind(response) == "check_tx", (
        f"{bomb}: CheckTx answered {_kind(response)} ({response.exception.error[:80]!r}): "
        "CometBFT quits on an exception response"
    )
    assert response.check_tx.code == rules.Code.MALFORMED


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_attack_json_bomb_in_a_proposal_is_rejected_not_fatal(
    app: LedgerApplication, bomb: str
) -> None:
    """REGRESSION (was CRITICAL at HEAD 8f67e77; fixed in 769a03c as above).
    The attack: a Byzantine committee member proposes a block carrying a JSON
    bomb. ``ProcessProposal`` only catches ``TxRejected``/``InvalidSignature``, so every
    honest validator's app raises and every honest CometBFT exits: one faulty member (f=1
    is tolerated by design) halts the whole chain, as often as it gets to propose.
    ``PrepareProposal`` (on the node's own mempool) crashes the same way.

    Fix: as above (decode never raises anything but ``TxRejected``); ``ProcessProposal``
    answers REJECT and ``PrepareProposal`` drops the bytes."""
    good = identity_tx(app, SigningKey.generate()).encode()
    txs = [good, BOMBS[bomb]]
    process = server.handle(
        app, abci.Request(process_proposal=abci.RequestProcessProposal(txs=txs))
    )
    assert _kind(process) == "process_proposal", f"{bomb}: {process.exception.error[:80]!r}"
    assert process.process_proposal.status == abci.ResponseProcessProposal.REJECT
    prepare = server.handle(
        app,
        abci.Request(prepare_proposal=abci.RequestPrepareProposal(txs=txs, max_tx_bytes=10**7)),
    )
    assert _kind(prepare) == "prepare_proposal", f"{bomb}: {prepare.exception.error[:80]!r}"
    assert list(prepare.prepare_proposal.txs) == [good]


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_attack_json_bomb_in_a_decided_block_is_skipped_not_fatal(
    app: LedgerApplication, bomb: str
) -> None:
    """REGRESSION (was CRITICAL at HEAD 8f67e77 for the deep-nesting bombs; fixed in
    769a03c as above). The attack: ``rules.finalize`` catches
    ``LedgerFormatError``/``ValueError`` per transaction but not ``RecursionError``, so a
    decided block containing one (a faulty proposer + ProcessProposal crashing is how it
    gets decided on a node that did not vote, e.g. one catching up by block sync) makes
    ``FinalizeBlock`` raise on every node that replays it: the chain cannot be replayed
    past that height (restart, block sync, ``ledger verify``).

    Fix: as above; a transaction that fails to decode is skipped with MALFORMED."""
    try:
        response = finalize(app, 1, [BOMBS[bomb]])
    except RecursionError:
        pytest.fail(f"{bomb}: FinalizeBlock raised RecursionError on a decided block")
    assert [r.code for r in response.tx_results] != [0]


# --- finding: decode's verdict depends on the Python stack depth --------------------------------


def _nested_body(depth: int) -> dict:
    deep: list = []
    for _ in range(depth - 1):
        deep = [deep]
    return {"identity": "nurse@H001", "key": SigningKey.generate().public.hex(), "x": deep}


def _at_depth(frames: int, fn: Callable[[], object]) -> object:
    return fn() if frames <= 0 else _at_depth(frames - 1, fn)


def _verdict(raw: bytes) -> str:
    try:
        rules.decode(raw)
    except rules.TxRejected as exc:
        return f"rejected {exc.code.name}"
    except RecursionError:
        return "RecursionError"
    return "ok"


def _deep_tx(depth: int, chain: str = "00" * 16) -> bytes | None:
    """A transaction with a body nested ``depth`` levels and a valid signature of node 0,
    signed by hand (``Tx.create`` now refuses such bodies itself; an attacker does not use
    it), or None when it cannot be canonicalised at this stack depth."""
    unsigned = Tx(
        TxKind.REGISTER_IDENTITY, NODE_KEYS[0].public, 0, _nested_body(depth), chain=chain
    )
    try:
        signature = NODE_KEYS[0].sign(TX_DOMAIN, unsigned.signing_bytes())
        return dataclasses.replace(unsigned, signature=signature).encode()
    except (RecursionError, LedgerFormatError):
        return None


def test_attack_decode_verdict_does_not_depend_on_the_callers_stack_depth() -> None:
    """REGRESSION (was HIGH at HEAD 8f67e77; fixed in 769a03c by the fixed
    ``MAX_JSON_DEPTH`` checked before parsing). The attack: with no explicit nesting limit,
    whether a
    transaction with a body nested ~900 levels decodes depends on how many Python frames
    are already on the stack (``sys.getrecursionlimit()`` = 1000 covers json.loads *and*
    rfc8785's recursion). The same bytes are accepted on one code path and raise on a
    deeper one: ``CheckTx``/``ProcessProposal`` (handle → app → _decode) admit it, while
    ``FinalizeBlock`` without the verified cache (handle → app → rules.finalize → _decode:
    one frame deeper — a restarted node's handshake replay, block sync, ``ledger verify``)
    fails. A registered identity can get such a transaction committed and thereby make the
    chain un-replayable; with the RecursionError caught (previous finding's fix) nodes would
    instead disagree on the result code → different app hashes.

    Fix: a fixed, small nesting bound checked before parsing (the verdict is then a pure
    function of the bytes), e.g. refuse depth > 32 in ``Tx.decode``/``check_body``."""
    disagreements, built = [], 0
    for depth in range(700, 1000, 3):
        raw = _deep_tx(depth)
        if raw is None:
            continue
        built += 1
        shallow, deep = _verdict(raw), _at_depth(40, lambda raw=raw: _verdict(raw))
        if shallow != deep:
            disagreements.append((depth, shallow, deep))
    # The verdict for a too-deep transaction is a pure function of its bytes.
    deep_bytes = b'{"body":' + b"[" * 40 + b"]" * 40 + b"}"
    assert (
        _verdict(deep_bytes) == _at_depth(40, lambda: _verdict(deep_bytes)) == "rejected MALFORMED"
    )
    assert built > 10, "the signed deep transactions could not be built"
    assert not disagreements, (
        "rules.decode gives different verdicts for the same bytes at different stack "
        f"depths (depth, shallow, 40 frames deeper): {disagreements[:3]}"
    )


def test_attack_tx_admitted_by_check_tx_crashes_a_fresh_replica_in_finalize(
    tmp_path: Path,
) -> None:
    """REGRESSION (was HIGH at HEAD 8f67e77; fixed in 769a03c as above). The
    end-to-end form of the previous finding. Replica A admitted a
    deep transaction in CheckTx (it is verified and cached); the block is decided; replica
    B, which never saw it in CheckTx/ProcessProposal (a node catching up, or any node
    after a restart replaying the block in the ABCI handshake), raises RecursionError in
    FinalizeBlock at the same call depth CometBFT uses — that node can never get past
    the block. Fix: as above (fixed nesting bound before parsing)."""
    stores = [StateStore(tmp_path / f"{n}.db") for n in ("a", "b")]
    try:
        a, b = (LedgerApplication(s) for s in stores)
        init(a)
        init(b)
        chain = a._committed().genesis.chain_id
        found = None
        for depth in range(800, 1000):
            tx = _deep_tx(depth, chain)
            if tx is None:
                break
            try:
                admitted = check(a, tx).code == 0
            except RecursionError:
                break  # CheckTx's own limit: the previous depth was the last one admitted
            if not admitted:
                continue
            try:
                finalize(b, 1, [tx])
            except RecursionError:
                found = depth
                break
            b = LedgerApplication(stores[1])  # discard the pending block, try deeper
        assert found is None, (
            f"a body nested {found} deep passes CheckTx on one replica and makes "
            "FinalizeBlock raise on another"
        )
    finally:
        for s in stores:
            s.close()


# --- resisted: canonicalisation and malleability ------------------------------------------------


def _variants(raw: bytes) -> dict[str, bytes]:
    """Byte strings that json.loads maps to the same (or an equivalent) document."""
    text = raw.decode()
    doc = json.loads(text)
    sender = doc["sender"]
    return {
        "whitespace": text.replace(",", ", ", 1).encode(),
        "trailing newline": raw + b"\n",
        "leading BOM": b"\xef\xbb\xbf" + raw,
        "key order": json.dumps(dict(reversed(doc.items())), separators=(",", ":")).encode(),
        "unicode escape": text.replace('"kind"', '"\\u006bind"').encode(),
        "escaped character": text.replace("nurse@H001", "nurse\\u0040H001").encode(),
        "duplicate key (first wins elsewhere)": text.replace(
            '"kind":', '"kind":"access","kind":', 1
        ).encode(),
        "duplicate key in body": text.replace(
            '"identity":', '"identity":"x","identity":', 1
        ).encode(),
        "nonce 0.0": text.replace('"nonce":0', '"nonce":0.0').encode(),
        "nonce -0": text.replace('"nonce":0', '"nonce":-0').encode(),
        "nonce 0e0": text.replace('"nonce":0', '"nonce":0e0').encode(),
        "upper-case sender": text.replace(sender, sender.upper()).encode(),
        "extra member": text[:-1].encode() + b',"zz":1}',
        "utf-16": text.encode("utf-16"),
    }


def test_attack_resisted_one_signed_tx_has_exactly_one_accepted_encoding() -> None:
    """RESISTED: ``rules.decode`` accepts only the RFC 8785 bytes of the parsed transaction,
    so no re-encoding (whitespace, BOM, key order, \\u escapes, duplicate keys, -0/0.0/0e0,
    upper-case hex, extra members, UTF-16) of a signed transaction is accepted: CometBFT
    cannot see two hashes (two mempool entries, two block entries) for one signed tx."""
    raw = identity_tx_bytes()
    assert rules.decode(raw).encode() == raw
    accepted = {}
    for name, variant in _variants(raw).items():
        assert variant != raw, name
        try:
            accepted[name] = rules.decode(variant)
        except rules.TxRejected as exc:
            assert exc.code is rules.Code.MALFORMED, name
    assert not accepted, f"non-canonical encodings accepted: {sorted(accepted)}"


def identity_tx_bytes() -> bytes:
    body = {"identity": "nurse@H001", "key": SigningKey.generate().public.hex()}
    return Tx.create(TxKind.REGISTER_IDENTITY, body, 0, NODE_KEYS[0], chain="00" * 16).encode()


@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "1e400", "9007199254740993", '"\\ud800"']
)
def test_attack_resisted_non_ijson_values_are_malformed(literal: str) -> None:
    """RESISTED: NaN/Infinity (accepted by json.loads), out-of-range floats, integers past
    2^53 and lone surrogates cannot be canonicalised, and are refused as MALFORMED."""
    text = identity_tx_bytes().decode()
    raw = text.replace('"identity":"nurse@H001"', f'"identity":"nurse@H001","v":{literal}').encode()
    with pytest.raises(rules.TxRejected) as err:
        rules.decode(raw)
    assert err.value.code is rules.Code.MALFORMED


def test_attack_resisted_ed25519_signature_malleability(app: LedgerApplication) -> None:
    """RESISTED: the classic Ed25519 malleation S' = S + L (same R) is refused by the
    backend (OpenSSL checks S < L), so a third party cannot make a second valid encoding
    of someone's transaction by editing its signature."""
    ell = 2**252 + 27742317777372353535851937790883648493
    tx = identity_tx(app, SigningKey.generate())
    r, s = tx.signature[:32], int.from_bytes(tx.signature[32:], "little")
    mauled = dataclasses.replace(tx, signature=r + (s + ell).to_bytes(32, "little"))
    assert mauled.encode() != tx.encode()
    assert check(app, mauled).code == rules.Code.BAD_SIGNATURE
    assert check(app, tx).code == 0


def test_attack_resisted_forged_copy_of_a_cached_tx(app: LedgerApplication) -> None:
    """RESISTED: the verified-tx cache is keyed by the exact bytes and checked by object
    identity, so a forged signature on an otherwise identical transaction is verified, not
    taken from the cache, in CheckTx, ProcessProposal and FinalizeBlock alike (every node
    reaches the same verdict whatever its cache holds)."""
    good = identity_tx(app, SigningKey.generate())
    assert check(app, good).code == 0
    forged = dataclasses.replace(good, signature=bytes(64))
    # Refused in CheckTx (its nonce is now pending, and its signature is bad either way).
    assert check(app, forged).code in (rules.Code.BAD_SIGNATURE, rules.Code.BAD_NONCE)
    assert check(app, dataclasses.replace(good, nonce=1, signature=bytes(64))).code == (
        rules.Code.BAD_SIGNATURE
    )
    process = app.process_proposal(abci.RequestProcessProposal(txs=[forged.encode()]))
    assert process.status == abci.ResponseProcessProposal.REJECT
    fresh = [r.code for r in finalize(app, 1, [forged.encode(), good.encode()]).tx_results]
    assert fresh == [rules.Code.BAD_SIGNATURE, 0]


def test_attack_resisted_oversized_tx_is_malformed(app: LedgerApplication) -> None:
    """RESISTED: bytes over MAX_TX_BYTES are refused before parsing."""
    raw = b'{"a":"' + b"x" * MAX_TX_BYTES + b'"}'
    assert check(app, raw).code == rules.Code.MALFORMED


def test_attack_resisted_vote_signature_is_not_a_tx_signature(app: LedgerApplication) -> None:
    """RESISTED: a node's ledger key is its CometBFT validator key. CometBFT signs
    length-prefixed ``CanonicalVote`` protobufs; the ledger signs ``len(tag)‖tag‖JSON`` with
    a 2-byte length starting 0x00 — a vote's sign bytes start with a non-zero varint —
    so no vote/proposal signature can be a transaction signature and vice versa. Here: a
    transaction whose signature was made over the untagged message is refused."""
    key = NODE_KEYS[0]
    tx = identity_tx(app, SigningKey.generate())
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw_sig = Ed25519PrivateKey.from_private_bytes(key.seed).sign(tx.signing_bytes())
    assert check(app, dataclasses.replace(tx, signature=raw_sig)).code == rules.Code.BAD_SIGNATURE
    commit_block(app, 1, [])
