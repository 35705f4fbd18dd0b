"""Public anchoring on a real anvil node (DESIGN.md §4): contracts, Anchorer, verification.

Nothing here is mocked: the contracts are the committed artifact, compiled by the pinned
solc-js, deployed on the pinned anvil from ``npm ci``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from eth_utils import keccak, to_checksum_address

from medshare.ledger import anvil as anvil_module
from medshare.ledger.anchor import (
    Anchorer,
    AnchorError,
    AnchorRevert,
    Checkpoint,
    Deployment,
    checkpoints_due,
    compare,
    compile_contracts,
    dump_artifacts,
    load_artifacts,
    read_anchored,
    read_validator_registry,
    source_digests,
    to_bytes32,
    validator_address,
    verify_against_chain,
)
from medshare.ledger.anvil import AnvilError, AnvilProcess
from medshare.ledger.cometbft.checkpoints import due_heights

ROOT = Path(__file__).resolve().parents[2]


def h(n: int) -> str:
    """A distinct 32-byte hash as bare hex."""
    return keccak(n.to_bytes(8, "big")).hex()


CHAIN = [(height, h(height), h(10_000 + height)) for height in range(0, 41)]  # a local chain


# --- artifact ------------------------------------------------------------------------------------


def test_committed_artifact_matches_fresh_solc_compile() -> None:
    fresh = compile_contracts()
    committed = load_artifacts()
    hint = "contracts changed or solc bumped: run python -m medshare.ledger.contracts.build"
    assert fresh["warnings"] == [], fresh["warnings"]
    assert fresh["compiler"] == committed["compiler"], hint
    assert fresh["sources"] == committed["sources"], hint
    for name, spec in fresh["contracts"].items():
        assert spec["abi"] == committed["contracts"][name]["abi"], f"{name} ABI: {hint}"
        assert spec["bytecode"] == committed["contracts"][name]["bytecode"], f"{name}: {hint}"
        assert spec["deployedBytecode"] == committed["contracts"][name]["deployedBytecode"], hint
    text = (ROOT / "src/medshare/ledger/contracts/artifacts.json").read_text(encoding="utf-8")
    assert text == dump_artifacts(fresh), hint


def test_artifact_records_shipped_sources_and_pinned_solc() -> None:
    committed = load_artifacts()
    assert committed["sources"] == source_digests()
    pins = json.loads((ROOT / "package.json").read_text())["devDependencies"]
    assert committed["compiler"]["version"].startswith(pins["solc"] + "+commit."), (
        f"artifact built with {committed['compiler']['version']}, package.json pins solc "
        f"{pins['solc']}"
    )


def test_deploy_puts_the_committed_runtime_code_on_chain(anchorer: Anchorer) -> None:
    artifacts = load_artifacts()["contracts"]
    assert anchorer.deployment is not None
    for name, address in (
        ("CheckpointRegistry", anchorer.deployment.checkpoint_registry),
        ("ValidatorRegistry", anchorer.deployment.validator_registry),
    ):
        code = anchorer.w3.eth.get_code(address)
        assert "0x" + bytes(code).hex() == artifacts[name]["deployedBytecode"]
    assert anchorer.checkpoint_contract.functions.owner().call() == anchorer.account
    assert anchorer.validator_contract.functions.owner().call() == anchorer.account


# --- checkpoints ---------------------------------------------------------------------------------


def test_anchor_three_checkpoints_and_read_them_back(anchorer: Anchorer) -> None:
    assert anchorer.checkpoints() == []
    assert anchorer.latest() is None
    for height in (10, 20, 30):
        tx = anchorer.anchor_checkpoint(height, h(height), "0x" + h(10_000 + height))
        assert tx.startswith("0x") and len(tx) == 66
    expected = [Checkpoint(k, h(k), h(10_000 + k)) for k in (10, 20, 30)]
    assert anchorer.checkpoints() == expected
    assert anchorer.latest() == expected[-1]
    assert anchorer.get(20) == expected[1]
    assert anchorer.checkpoint_contract.functions.count().call() == 3
    logs = anchorer.checkpoint_contract.events.Checkpoint().get_logs(from_block=0)
    assert [(e.args.height, e.args.blockHash.hex(), e.args.index) for e in logs] == [
        (10, h(10), 0),
        (20, h(20), 1),
        (30, h(30), 2),
    ]


def test_reads_page_through_many_checkpoints(anchorer: Anchorer, monkeypatch) -> None:
    from medshare.ledger import anchor

    monkeypatch.setattr(anchor, "PAGE_SIZE", 2)  # force several page() calls
    for height in range(0, 50, 10):
        anchorer.anchor_checkpoint(height, h(height), h(10_000 + height))
    assert [c.height for c in anchorer.checkpoints()] == [0, 10, 20, 30, 40]


def test_get_of_an_unanchored_height_raises(anchorer: Anchorer) -> None:
    anchorer.anchor_checkpoint(10, h(10), h(10_010))
    with pytest.raises(AnchorRevert, match=r"UnknownHeight\(height=15\)") as info:
        anchorer.get(15)
    assert info.value.error == "UnknownHeight"


@pytest.mark.parametrize("height", [20, 19, 0])
def test_non_increasing_height_reverts(anchorer: Anchorer, height: int) -> None:
    anchorer.anchor_checkpoint(20, h(20), h(10_020))
    with pytest.raises(AnchorRevert, match="HeightNotIncreasing") as info:
        anchorer.anchor_checkpoint(height, h(99), h(98))
    assert info.value.error == "HeightNotIncreasing"
    assert info.value.args_by_name == {"height": height, "latestHeight": 20}
    assert f"anchor height {height} reverted: HeightNotIncreasing" in str(info.value)
    assert anchorer.checkpoints() == [Checkpoint(20, h(20), h(10_020))]


def test_zero_block_hash_is_rejected(anchorer: Anchorer) -> None:
    with pytest.raises(AnchorRevert, match="ZeroBlockHash"):
        anchorer.anchor_checkpoint(1, bytes(32), h(1))


def test_bad_python_input_is_rejected_before_any_transaction(anchorer: Anchorer) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        anchorer.anchor_checkpoint(1, "ab" * 31, h(1))
    with pytest.raises(ValueError, match="not hex"):
        anchorer.anchor_checkpoint(1, "zz" * 32, h(1))
    with pytest.raises(ValueError, match="height"):
        anchorer.anchor_checkpoint(-1, h(1), h(1))
    assert anchorer.checkpoints() == []


def test_non_owner_cannot_anchor_or_set_validators(
    anvil: AnvilProcess, anchorer: Anchorer, funded_key: str
) -> None:
    assert anchorer.deployment is not None
    intruder = Anchorer(anvil.rpc_url, private_key=funded_key, deployment=anchorer.deployment)
    assert intruder.account != anchorer.account
    with pytest.raises(AnchorRevert, match="NotOwner") as info:
        intruder.anchor_checkpoint(1, h(1), h(2))
    assert info.value.args_by_name == {"caller": intruder.account}
    with pytest.raises(AnchorRevert, match="NotOwner"):
        intruder.set_validators(1, [bytes(32)])
    assert anchorer.checkpoints() == []


def test_owner_with_a_private_key_signs_locally(anvil: AnvilProcess, funded_key: str) -> None:
    signer = Anchorer(anvil.rpc_url, private_key=funded_key)
    deployment = signer.deploy()
    signer.anchor_checkpoint(5, h(5), h(6))
    again = Anchorer(anvil.rpc_url, deployment=deployment)  # a reader elsewhere
    assert again.checkpoints() == [Checkpoint(5, h(5), h(6))]
    assert signer.checkpoint_contract.functions.owner().call() == signer.account


def test_using_an_address_without_code_fails_clearly(anvil: AnvilProcess) -> None:
    empty = "0x" + "12" * 20
    with pytest.raises(AnchorError, match="no contract code"):
        Anchorer(anvil.rpc_url, deployment=Deployment(empty, empty))


def test_no_node_fails_clearly() -> None:
    port = anvil_module.free_port()
    with pytest.raises(AnchorError, match="no EVM node answering"):
        Anchorer(f"http://127.0.0.1:{port}", timeout=2)


def test_an_unfunded_account_fails_clearly(anvil: AnvilProcess) -> None:
    from eth_account import Account

    broke = Anchorer(anvil.rpc_url, private_key=Account.create().key.hex())
    with pytest.raises(AnchorError, match=r"deploy CheckpointRegistry: .*[Ii]nsufficient funds"):
        broke.deploy()


# --- validators ----------------------------------------------------------------------------------


def test_validator_address_is_last_20_bytes_of_keccak_of_the_ed25519_key() -> None:
    # keccak256(32 zero bytes) = 290decd9548b62a8d60345a9 88386fc84ba6bc95484008f6362f93160ef3e563
    assert validator_address(bytes(32)) == to_checksum_address(
        "0x88386fc84ba6bc95484008f6362f93160ef3e563"
    )
    from medshare.crypto.signing import SigningKey

    public = SigningKey.generate().public
    assert validator_address(public) == to_checksum_address(keccak(public)[-20:])
    assert validator_address(public) == validator_address(bytes(public))  # deterministic
    with pytest.raises(ValueError, match="32 raw bytes"):
        validator_address(b"\x01" * 33)


def test_set_validators_round_trip(anchorer: Anchorer) -> None:
    from medshare.crypto.signing import SigningKey

    assert anchorer.validators().addresses == ()
    committee = [SigningKey.generate().public for _ in range(4)]
    anchorer.set_validators(7, committee)
    published = anchorer.validators()
    assert published.epoch == 7
    assert published.addresses == tuple(validator_address(pk) for pk in committee)
    # what Besu's validator-contract mode would call:
    assert anchorer.validator_contract.functions.getValidators().call() == list(published.addresses)

    successor = [SigningKey.generate().public for _ in range(7)]
    anchorer.set_validators(8, successor)
    assert anchorer.validators().addresses == tuple(validator_address(pk) for pk in successor)

    with pytest.raises(AnchorRevert, match=r"EpochNotIncreasing\(epoch=8, currentEpoch=8\)"):
        anchorer.set_validators(8, committee)
    with pytest.raises(AnchorRevert, match="DuplicateValidator"):
        anchorer.set_validators(9, [committee[0], committee[1], committee[0]])
    with pytest.raises(AnchorRevert, match="EmptyValidatorSet"):
        anchorer.set_validators(9, [])
    assert anchorer.validators().epoch == 8


# --- verification --------------------------------------------------------------------------------


@pytest.fixture
def anchored(anchorer: Anchorer) -> Anchorer:
    """Checkpoints every 10 blocks of CHAIN anchored (heights 0, 10, 20, 30, 40)."""
    for height, block_hash, state_root in checkpoints_due(CHAIN, 10):
        anchorer.anchor_checkpoint(height, block_hash, state_root)
    return anchorer


def registry(anchorer: Anchorer) -> str:
    assert anchorer.deployment is not None
    return anchorer.deployment.checkpoint_registry


def test_verify_ok_on_the_matching_local_chain(anvil: AnvilProcess, anchored: Anchorer) -> None:
    report = verify_against_chain(CHAIN, anvil.rpc_url, registry(anchored))
    assert report.ok
    assert (report.checked, report.mismatches, report.missing) == (5, [], [])
    assert (report.anchored, report.latest_anchored) == (5, 40)
    assert report.summary().startswith("OK: 5 of 5")
    # only the anchored heights are needed, given as bytes or 0x-hex
    sparse = [(k, "0x" + b, bytes.fromhex(r)) for k, b, r in checkpoints_due(CHAIN, 10)]
    assert verify_against_chain(sparse, anvil.rpc_url, registry(anchored)).ok


def test_verify_reports_a_different_local_block_hash(
    anvil: AnvilProcess, anchored: Anchorer
) -> None:
    forked = [(k, h(777) if k == 20 else b, r) for k, b, r in CHAIN]
    report = verify_against_chain(forked, anvil.rpc_url, registry(anchored))
    assert not report.ok
    assert report.checked == 5 and report.missing == []
    assert report.mismatches == [
        f"height 20: block hash differs (local {h(777)}, anchored {h(20)})"
    ]
    assert report.first_mismatch == 20
    assert "FAILED" in report.summary() and "height 20" in report.summary()


def test_verify_reports_a_different_state_root(anvil: AnvilProcess, anchored: Anchorer) -> None:
    rewritten = [(k, b, h(555) if k == 30 else r) for k, b, r in CHAIN]
    report = verify_against_chain(rewritten, anvil.rpc_url, registry(anchored))
    assert not report.ok
    assert report.mismatches == [
        f"height 30: state root differs (local {h(555)}, anchored {h(10_030)})"
    ]


def test_verify_reports_anchored_heights_missing_locally(
    anvil: AnvilProcess, anchored: Anchorer
) -> None:
    truncated = [row for row in CHAIN if row[0] < 25]  # local chain stops at height 24
    report = verify_against_chain(truncated, anvil.rpc_url, registry(anchored))
    assert not report.ok
    assert report.missing == [30, 40]
    assert report.checked == 3 and report.mismatches == [] and report.first_mismatch is None
    assert "missing locally: heights 30, 40" in report.summary()


def test_verify_with_nothing_anchored_is_ok(anvil: AnvilProcess, anchorer: Anchorer) -> None:
    report = verify_against_chain(CHAIN, anvil.rpc_url, registry(anchorer))
    assert report.ok and report.checked == 0 and report.anchored == 0
    assert "nothing to verify" in report.summary()


def test_verify_rejects_bad_local_input_and_bad_addresses(
    anvil: AnvilProcess, anchored: Anchorer
) -> None:
    with pytest.raises(ValueError, match="two different blocks at height 10"):
        verify_against_chain([*CHAIN, (10, h(1), h(2))], anvil.rpc_url, registry(anchored))
    with pytest.raises(AnchorError, match="no contract code"):
        verify_against_chain(CHAIN, anvil.rpc_url, "0x" + "ab" * 20)
    with pytest.raises(AnchorError, match="not an EVM address"):
        verify_against_chain(CHAIN, anvil.rpc_url, "registry")


def test_read_anchored_and_the_validator_registry_need_no_account(
    anvil: AnvilProcess, anchored: Anchorer
) -> None:
    assert anchored.deployment is not None
    deployment = anchored.deployment
    assert read_anchored(anvil.rpc_url, deployment.checkpoint_registry) == anchored.checkpoints()
    assert read_validator_registry(anvil.rpc_url, deployment.validator_registry) is None
    anchored.set_validators(7, [bytes([i]) * 32 for i in range(1, 4)])
    published = read_validator_registry(anvil.rpc_url, deployment.validator_registry)
    assert published == anchored.validators() and published.epoch == 7
    with pytest.raises(AnchorError, match="no contract code"):
        read_validator_registry(anvil.rpc_url, "0x" + "ab" * 20)


# --- pure helpers --------------------------------------------------------------------------------


def test_compare_reports_the_lowest_mismatching_height_first() -> None:
    anchored = [Checkpoint(k, h(k), h(10_000 + k)) for k in (5, 10, 15)]
    local = {k: (h(k), h(10_000 + k)) for k in (5, 10, 15)}
    assert compare(anchored, local).ok
    local[15] = (h(1), h(10_015))
    report = compare(anchored, local, [(10, "the node contradicts itself")])
    assert not report.ok and report.first_mismatch == 10 and report.checked == 3
    assert report.mismatches == [
        "height 10: the node contradicts itself",
        f"height 15: block hash differs (local {h(1)}, anchored {h(15)})",
    ]
    report = compare(anchored, {5: local[5]})
    assert report.missing == [10, 15] and report.first_mismatch is None and not report.ok


def test_cometbft_due_heights_start_at_k_and_need_the_next_header() -> None:
    assert due_heights(10, 31) == [10, 20, 30]
    assert due_heights(10, 30) == [10, 20]  # 30 needs header 31 (its state root)
    assert due_heights(10, 10) == []
    assert due_heights(10, 45, after=20) == [30, 40]
    assert due_heights(10, 45, after=25) == [30, 40]
    assert due_heights(5, 12, after=0) == [5, 10]  # a --db registry may hold genesis (0)
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="every"):
            due_heights(bad, 20)


def test_checkpoints_due_picks_multiples_of_k() -> None:
    rows = [(k, f"hash{k}") for k in range(1, 26)]
    assert checkpoints_due(rows, 10) == [(10, "hash10"), (20, "hash20")]
    assert checkpoints_due(rows, 10, after=10) == [(20, "hash20")]
    assert [r[0] for r in checkpoints_due(CHAIN, 20)] == [0, 20, 40]  # genesis is due
    assert checkpoints_due([], 5) == []
    for bad in (0, -3, True, 2.0):
        with pytest.raises(ValueError, match="every_k"):
            checkpoints_due(rows, bad)  # type: ignore[arg-type]


def test_to_bytes32_accepts_hex_and_bytes_only() -> None:
    raw = bytes(range(32))
    assert to_bytes32(raw) == raw == to_bytes32(raw.hex()) == to_bytes32("0x" + raw.hex())
    assert to_bytes32(raw.hex().upper()) == raw
    with pytest.raises(TypeError):
        to_bytes32(5)  # type: ignore[arg-type]


# --- the anvil process ---------------------------------------------------------------------------


def test_anvil_process_stops_on_exit_and_leaves_no_process() -> None:
    with AnvilProcess() as node:
        pid = node.pid
        assert pid is not None and node.running()
        assert node.rpc_url.startswith("http://127.0.0.1:")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"anvil pid {pid} still alive after the with block")
    with pytest.raises(AnvilError, match="not running"):
        _ = node.rpc_url


def test_missing_anvil_binary_gives_a_clear_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(anvil_module.ANVIL_ENV, str(tmp_path / "no-such-anvil"))
    with pytest.raises(AnvilError, match="MEDSHARE_ANVIL"):
        AnvilProcess()
    monkeypatch.delenv(anvil_module.ANVIL_ENV)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(anvil_module, "find_project_root", lambda start=None: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AnvilError, match="npm ci"):
        anvil_module.find_anvil()
