"""Group commit over a real ledger (the in-process harness running the real ABCI rules):
concurrent callers share blocks, one key's nonces never collide, and a refused
transaction fails only its own caller."""

from __future__ import annotations

import threading

import pytest

from medshare.crypto.signing import SigningKey
from medshare.ledger.group_commit import GroupCommitter
from medshare.ledger.inprocess import InProcessLedger
from medshare.ledger.port import TxRejected
from medshare.ledger.types import Tx, TxKind

CALLERS = 12


@pytest.fixture
def ledger(tmp_path):
    with InProcessLedger.create(tmp_path / "ledger", nodes=4, committee=4) as made:
        yield made


def _access(i: int) -> dict:
    return {"record": f"Observation/{i}", "patient": "p", "actor": "dr.x@H001",
            "area": "institution", "outcome": "success"}  # fmt: skip


def _concurrently(committer: GroupCommitter, parts_of, n: int) -> tuple[list, list]:
    results: list = [None] * n
    errors: list = [None] * n
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = committer.commit(parts_of(i))
        except Exception as exc:
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def test_concurrent_callers_with_one_key_share_blocks_and_never_collide(ledger):
    node = ledger.node_key(0)
    committer = GroupCommitter(ledger)
    before = ledger.height()
    results, errors = _concurrently(
        committer, lambda i: [(node, TxKind.ACCESS, [_access(i), _access(100 + i)])], CALLERS
    )
    assert errors == [None] * CALLERS
    nonces = sorted(c.tx.nonce for got in results for c in got)
    assert nonces == list(range(nonces[0], nonces[0] + 2 * CALLERS))  # no gap, no repeat
    for i, got in enumerate(results):  # each caller's own txs, in its order, one block
        assert [c.tx.body["record"] for c in got] == [f"Observation/{i}", f"Observation/{100 + i}"]
        assert got[0].height == got[1].height and got[1].index == got[0].index + 1
    blocks = ledger.height() - before
    assert blocks < CALLERS  # callers that arrived during a commit shared the next block
    assert ledger.next_nonce(node.public) == nonces[-1] + 1


def test_a_refused_transaction_fails_only_its_caller(ledger):
    node = ledger.node_key(0)
    stranger = SigningKey.generate()  # not registered: the chain refuses its txs
    committer = GroupCommitter(ledger)

    def parts(i: int):
        key = stranger if i == 3 else node
        return [(key, TxKind.ACCESS, [_access(i)])]

    results, errors = _concurrently(committer, parts, 6)
    assert isinstance(errors[3], TxRejected) and errors[3].index == 0
    assert "not registered" in str(errors[3])
    assert all(errors[i] is None and len(results[i]) == 1 for i in range(6) if i != 3)
    nonces = sorted(results[i][0].tx.nonce for i in range(6) if i != 3)
    assert nonces == list(range(nonces[0], nonces[0] + 5))


def test_relayed_and_malformed_parts(ledger):
    node = ledger.node_key(0)
    committer = GroupCommitter(ledger)
    signed = Tx.create(TxKind.ACCESS, _access(1), ledger.next_nonce(node.public), node,
                       chain=ledger.chain_id)  # fmt: skip
    (relayed,) = committer.commit([signed])
    assert relayed.tx.txid == signed.txid
    (after,) = committer.commit([(node, TxKind.ACCESS, [_access(2)])])
    assert after.tx.nonce == signed.nonce + 1
    with pytest.raises(TxRejected, match="malformed"):
        committer.commit([(node, TxKind.ACCESS, [{"x": float("nan")}])])
    (again,) = committer.commit([(node, TxKind.ACCESS, [_access(3)])])
    assert again.tx.nonce == after.tx.nonce + 1  # the malformed body took no nonce
    assert committer.commit([]) == []
