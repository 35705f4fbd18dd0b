"""Public anchoring of consortium-ledger checkpoints on an EVM chain (DESIGN.md §4).

Every K blocks the consortium writes the checkpoint ``(height, block hash, state root)``
of a committed block to the ``CheckpointRegistry`` contract, and publishes the elected
committee in the ``ValidatorRegistry`` contract (whose ``getValidators()`` is the
interface a Hyperledger Besu QBFT network in validator-contract mode reads). Anyone with a
copy of the ledger can then call :func:`verify_against_chain` to check that the copy
agrees with every anchored checkpoint, i.e. that history was not rewritten.

What a checkpoint and the registry's ``epoch`` mean depends on the ledger it comes from:
for a CometBFT chain (:mod:`medshare.ledger.cometbft.checkpoints`, ``medshare anchor
… --node``) the state root is the ``app_hash`` of header h+1 and the registry's epoch is
the height whose validator set is registered; for the retired engine's database
(:mod:`medshare.ledger.checkpoints`, ``--db``) they are the block's own state root and the
election epoch.

Contracts live in ``medshare/ledger/contracts/*.sol``; their ABI and bytecode are
committed as ``contracts/artifacts.json`` so that running medshare needs no compiler.
:func:`compile_contracts` rebuilds them with the npm ``solc`` package (solc-js, pinned in
``package.json``) and ``python -m medshare.ledger.contracts.build`` rewrites the file;
a test checks that the committed artifact equals a fresh compile.

Conventions: hashes are 32 bytes, passed as lower-case hex with or without ``0x`` (or as
``bytes``) and returned as bare lower-case hex, like the rest of ``medshare.ledger``.
Addresses are returned EIP-55 checksummed. Contract rejections raise :class:`AnchorRevert`
carrying the contract's custom error name and arguments.

This module is independent of the ledger store: it takes and returns plain values.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from eth_abi import decode as abi_decode
from eth_account import Account
from eth_utils import function_signature_to_4byte_selector, keccak, to_checksum_address
from web3 import HTTPProvider, Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception

from medshare.ledger.anvil import find_project_root

CONTRACTS_PACKAGE = "medshare.ledger.contracts"
ARTIFACT_FILE = "artifacts.json"
CONTRACT_NAMES = ("CheckpointRegistry", "ValidatorRegistry")
SOURCE_FILES = ("Owned.sol", "CheckpointRegistry.sol", "ValidatorRegistry.sol")
SOLCJS_ENV = "MEDSHARE_SOLCJS"
#: Compiler settings recorded in the artifact. ``paris`` (no PUSH0) keeps the bytecode
#: deployable on consortium chains that have not enabled Shanghai; anvil runs it too.
SOLC_SETTINGS: dict[str, Any] = {
    "evmVersion": "paris",
    "optimizer": {"enabled": True, "runs": 200},
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}
PAGE_SIZE = 256
DEFAULT_TIMEOUT = 30.0


# --- errors -------------------------------------------------------------------------------------


class AnchorError(Exception):
    """Anchoring failed: no node, no contract at the address, bad input, a failed tx."""


class ArtifactError(AnchorError):
    """The committed contract artifact is missing or malformed, or solc-js failed."""


class AnchorRevert(AnchorError):
    """A contract rejected a call; ``error`` is its custom error name (e.g.
    ``"HeightNotIncreasing"``, ``"NotOwner"``) and ``args`` the decoded arguments."""

    def __init__(self, operation: str, error: str, args: dict[str, Any]) -> None:
        self.operation = operation
        self.error = error
        self.args_by_name = args
        shown = ", ".join(f"{k}={_show(v)}" for k, v in args.items())
        super().__init__(f"{operation} reverted: {error}({shown})")


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


# --- values -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """One anchored checkpoint; hashes as bare lower-case hex."""

    height: int
    block_hash: str
    state_root: str


@dataclass(frozen=True)
class Deployment:
    """Addresses of the two contracts (EIP-55 checksummed)."""

    checkpoint_registry: str
    validator_registry: str


@dataclass(frozen=True)
class ValidatorSet:
    """The published committee: its epoch and the members' EVM identifiers, in order."""

    epoch: int
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class AnchorReport:
    """Result of :func:`verify_against_chain`.

    ``checked`` counts the anchored checkpoints that were compared with a local block;
    ``missing`` lists anchored heights the local chain lacks; ``mismatches`` has one line
    per difference (``"height H: …"``), lowest height first, and ``first_mismatch`` is
    the lowest height with a difference (None if there is none). ``anchored`` is the
    number of checkpoints in the registry and ``latest_anchored`` the highest one.
    """

    ok: bool
    checked: int
    mismatches: list[str] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    anchored: int = 0
    latest_anchored: int | None = None
    first_mismatch: int | None = None

    def summary(self) -> str:
        if self.anchored == 0:
            return "no checkpoints anchored yet; nothing to verify"
        head = (
            f"{'OK' if self.ok else 'FAILED'}: {self.checked} of {self.anchored} anchored "
            f"checkpoints match the local chain (latest anchored height {self.latest_anchored})"
        )
        lines = [head, *(f"  mismatch: {m}" for m in self.mismatches)]
        if self.missing:
            lines.append("  missing locally: heights " + ", ".join(map(str, self.missing)))
        return "\n".join(lines)


def to_bytes32(value: str | bytes, name: str = "hash") -> bytes:
    """32 bytes from ``bytes`` or hex (with or without ``0x``); ValueError otherwise."""
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
    elif isinstance(value, str):
        text = value[2:] if value[:2] in ("0x", "0X") else value
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"{name} is not hex: {value!r}") from None
    else:
        raise TypeError(f"{name} must be bytes or a hex string, not {type(value).__name__}")
    if len(raw) != 32:
        raise ValueError(f"{name} must be 32 bytes, got {len(raw)}")
    return raw


def _height(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise ValueError(f"height must be an integer in [0, 2^64), got {value!r}")
    return value


def validator_address(ed25519_public: bytes) -> str:
    """The EVM identifier of a committee member: the last 20 bytes of
    keccak256(32-byte Ed25519 public key), EIP-55 checksummed.

    Deterministic, so anyone can recompute it from the ledger's committee. It is an
    identifier only: no secp256k1 key exists for it, so it can never sign on the EVM chain.
    """
    if not isinstance(ed25519_public, bytes | bytearray) or len(ed25519_public) != 32:
        raise ValueError("an Ed25519 public key is 32 raw bytes")
    return to_checksum_address(keccak(bytes(ed25519_public))[-20:])


T = TypeVar("T", bound=Sequence[Any])


def checkpoints_due(
    heights_and_hashes: Iterable[T], every_k: int, *, after: int | None = None
) -> list[T]:
    """The rows whose height (first element) is a multiple of ``every_k``, in input order.

    Rows are passed through unchanged, so ``(height, block_hash, state_root)`` tuples come
    out ready for :meth:`Anchorer.anchor_checkpoint`. Height 0 (genesis) counts as due.
    With ``after``, only heights strictly above it are returned (pass the registry's
    latest anchored height to get what still needs anchoring).
    """
    if isinstance(every_k, bool) or not isinstance(every_k, int) or every_k < 1:
        raise ValueError(f"every_k must be a positive integer, got {every_k!r}")
    due = []
    for row in heights_and_hashes:
        height = _height(row[0])
        if height % every_k == 0 and (after is None or height > after):
            due.append(row)
    return due


# --- artifacts and compilation ------------------------------------------------------------------


def _contracts_dir() -> resources.abc.Traversable:
    return resources.files(CONTRACTS_PACKAGE)


def read_sources() -> dict[str, str]:
    """The Solidity sources shipped with the package, by source unit name."""
    root = _contracts_dir()
    return {name: root.joinpath(name).read_text(encoding="utf-8") for name in SOURCE_FILES}


def source_digests(sources: dict[str, str] | None = None) -> dict[str, str]:
    """sha256 of each source (recorded in the artifact, so staleness is visible without solc)."""
    sources = read_sources() if sources is None else sources
    return {name: hashlib.sha256(text.encode()).hexdigest() for name, text in sources.items()}


def load_artifacts() -> dict[str, Any]:
    """The committed artifact: ``{"compiler": …, "sources": {name: sha256}, "contracts":
    {name: {"abi": […], "bytecode": "0x…", "deployedBytecode": "0x…"}}}``."""
    try:
        text = _contracts_dir().joinpath(ARTIFACT_FILE).read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {CONTRACTS_PACKAGE}/{ARTIFACT_FILE}: {exc}") from None
    contracts = data.get("contracts") if isinstance(data, dict) else None
    if not isinstance(contracts, dict) or any(
        not isinstance(contracts.get(name), dict)
        or not {"abi", "bytecode"} <= contracts[name].keys()
        for name in CONTRACT_NAMES
    ):
        raise ArtifactError(f"{ARTIFACT_FILE} lacks ABI/bytecode for {', '.join(CONTRACT_NAMES)}")
    return data


def find_solcjs(solc_js_path: str | os.PathLike[str] | None = None) -> Path:
    """The npm ``solc`` package's ``solc.js`` (``node_modules/solc/solc.js`` of the project,
    or the given path, or ``$MEDSHARE_SOLCJS``)."""
    explicit = solc_js_path if solc_js_path is not None else os.environ.get(SOLCJS_ENV)
    if explicit:
        path = Path(explicit)
    else:
        root = find_project_root()
        if root is None:
            raise ArtifactError(
                "solc-js not found: no package.json + node_modules above the current "
                f"directory; run `npm ci` in the project root or set ${SOLCJS_ENV}"
            )
        path = root / "node_modules" / "solc" / "solc.js"
    if not path.is_file():
        raise ArtifactError(f"solc-js not found at {path}: run `npm ci` in the project root")
    return path


# Drives the solc package's JS API (the package's own `solcjs --standard-json` CLI prints a
# non-JSON notice about SMT solvers on stdout first). Reads standard JSON on stdin and
# writes {"version": ..., "output": <standard JSON output>}.
_SOLCJS_DRIVER = """
const path = require('path');
const solc = require(path.dirname(process.argv[1]));
let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const output = JSON.parse(solc.compile(input));
  process.stdout.write(JSON.stringify({ version: solc.version(), output }));
});
"""


def compile_contracts(solc_js_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Compile the shipped sources with solc-js (standard JSON, settings
    :data:`SOLC_SETTINGS`) and return a dict of the same shape as :func:`load_artifacts`."""
    solcjs = find_solcjs(solc_js_path)
    node = shutil.which("node")
    if node is None:
        raise ArtifactError("`node` is not on PATH (needed to run solc-js)")
    sources = read_sources()
    standard_input = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sources.items()},
        "settings": SOLC_SETTINGS,
    }
    run = subprocess.run(
        [node, "-e", _SOLCJS_DRIVER, str(solcjs.resolve())],
        input=json.dumps(standard_input),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        reply = json.loads(run.stdout)
        version, output = reply["version"], reply["output"]
    except (ValueError, KeyError, TypeError):
        raise ArtifactError(
            f"solc-js produced no result (exit {run.returncode}): {run.stderr.strip()[-2000:]}"
        ) from None
    problems = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if problems:
        raise ArtifactError(
            "solc-js failed:\n" + "\n".join(e.get("formattedMessage", str(e)) for e in problems)
        )
    contracts: dict[str, Any] = {}
    for name in CONTRACT_NAMES:
        compiled = output["contracts"][f"{name}.sol"][name]
        contracts[name] = {
            "abi": compiled["abi"],
            "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
            "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
        }
    warnings = [
        e.get("formattedMessage", str(e))
        for e in output.get("errors", [])
        if e.get("severity") != "error"
    ]
    return {
        "compiler": {
            "name": "solc-js",
            "version": version,
            "settings": SOLC_SETTINGS,
        },
        "sources": source_digests(sources),
        "contracts": contracts,
        "warnings": warnings,
    }


def dump_artifacts(artifacts: dict[str, Any]) -> str:
    """The canonical text of ``artifacts.json`` (sorted keys, 2-space indent, final newline)."""
    return json.dumps(artifacts, indent=2, sort_keys=True) + "\n"


# --- talking to the chain -----------------------------------------------------------------------


def _error_table(abi: list[dict[str, Any]]) -> dict[bytes, tuple[str, list[str], list[str]]]:
    table = {}
    for entry in abi:
        if entry.get("type") == "error":
            types = [i["type"] for i in entry["inputs"]]
            names = [i["name"] or f"arg{n}" for n, i in enumerate(entry["inputs"])]
            selector = function_signature_to_4byte_selector(f"{entry['name']}({','.join(types)})")
            table[selector] = (entry["name"], types, names)
    return table


def _revert(operation: str, exc: ContractLogicError, abi: list[dict[str, Any]]) -> AnchorError:
    """Turn a web3 revert into :class:`AnchorRevert` with the decoded custom error."""
    data = exc.data if isinstance(exc.data, str) else None
    if data and data.startswith("0x") and len(data) >= 10:
        raw = bytes.fromhex(data[2:])
        known = _error_table(abi).get(raw[:4])
        if known is not None:
            name, types, names = known
            values = abi_decode(types, raw[4:])
            values = [
                to_checksum_address(v) if t == "address" else v
                for t, v in zip(types, values, strict=True)
            ]
            return AnchorRevert(operation, name, dict(zip(names, values, strict=True)))
    return AnchorRevert(operation, "Reverted", {"reason": str(exc)})


def _connect(rpc_url: str, timeout: float) -> Web3:
    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
    try:
        w3.eth.chain_id  # noqa: B018 - a cheap liveness check with a clear error
    except (OSError, Web3Exception) as exc:
        raise AnchorError(f"no EVM node answering at {rpc_url}: {exc}") from None
    return w3


def _contract(w3: Web3, name: str, address: str) -> Any:
    try:
        checksum = to_checksum_address(address)
    except (ValueError, TypeError):
        raise AnchorError(f"not an EVM address: {address!r}") from None
    if not w3.eth.get_code(checksum):
        raise AnchorError(f"no contract code at {checksum}: wrong address or chain?")
    return w3.eth.contract(address=checksum, abi=load_artifacts()["contracts"][name]["abi"])


def _read_checkpoints(registry: Any) -> list[Checkpoint]:
    try:
        total = registry.functions.count().call()
        out: list[Checkpoint] = []
        while len(out) < total:
            for height, block_hash, state_root in registry.functions.page(
                len(out), PAGE_SIZE
            ).call():
                out.append(Checkpoint(height, bytes(block_hash).hex(), bytes(state_root).hex()))
    except ContractLogicError as exc:
        raise _revert("reading checkpoints", exc, registry.abi) from None
    return out


class Anchorer:
    """Writes checkpoints and committees to the two contracts over JSON-RPC.

    ``private_key`` (hex) signs transactions locally. Without it, the node's first
    unlocked account is used (``eth_accounts[0]``; anvil's default dev account), which is
    only for development nodes. Pass ``deployment`` to use contracts deployed earlier, or
    call :meth:`deploy`. ``checkpoint_contract`` and ``validator_contract`` are the web3
    contract objects (e.g. for reading events).
    """

    def __init__(
        self,
        rpc_url: str,
        *,
        private_key: str | None = None,
        deployment: Deployment | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.rpc_url = rpc_url
        self.timeout = timeout
        self.w3 = _connect(rpc_url, timeout)
        self._artifacts = load_artifacts()["contracts"]
        if private_key is not None:
            self._signer = Account.from_key(private_key)
            self.account = self._signer.address
        else:
            self._signer = None
            accounts = self.w3.eth.accounts
            if not accounts:
                raise AnchorError(
                    f"the node at {rpc_url} has no unlocked account; pass private_key"
                )
            self.account = to_checksum_address(accounts[0])
        self.deployment: Deployment | None = None
        self.checkpoint_contract: Any = None
        self.validator_contract: Any = None
        if deployment is not None:
            self.use(deployment)

    def use(self, deployment: Deployment) -> None:
        """Point at already deployed contracts (checks that code exists at both)."""
        self.checkpoint_contract = _contract(
            self.w3, "CheckpointRegistry", deployment.checkpoint_registry
        )
        self.validator_contract = _contract(
            self.w3, "ValidatorRegistry", deployment.validator_registry
        )
        self.deployment = Deployment(
            self.checkpoint_contract.address, self.validator_contract.address
        )

    # -- transactions

    def _send(self, operation: str, call: Any, abi: list[dict[str, Any]]) -> dict[str, Any]:
        try:
            tx = call.build_transaction(
                {
                    "from": self.account,
                    "nonce": self.w3.eth.get_transaction_count(self.account, "pending"),
                    "chainId": self.w3.eth.chain_id,
                }
            )
        except ContractLogicError as exc:  # gas estimation replays the call: reverts land here
            raise _revert(operation, exc, abi) from None
        except (OSError, Web3Exception) as exc:  # e.g. insufficient funds, node gone
            raise AnchorError(f"{operation}: {exc}") from exc
        try:
            if self._signer is not None:
                signed = self._signer.sign_transaction(tx)
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            else:
                tx_hash = self.w3.eth.send_transaction(tx)
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.timeout)
        except ContractLogicError as exc:
            raise _revert(operation, exc, abi) from None
        except TimeExhausted:
            raise AnchorError(f"{operation}: not mined within {self.timeout:g} s") from None
        except (OSError, Web3Exception) as exc:
            raise AnchorError(f"{operation}: {exc}") from exc
        if receipt["status"] != 1:
            raise AnchorError(f"{operation}: transaction {tx_hash.hex()} failed on chain")
        return dict(receipt)

    def deploy(self) -> Deployment:
        """Deploy both contracts, owned by this account; returns and remembers the addresses."""
        addresses = []
        for name in CONTRACT_NAMES:
            spec = self._artifacts[name]
            factory = self.w3.eth.contract(abi=spec["abi"], bytecode=spec["bytecode"])
            receipt = self._send(f"deploy {name}", factory.constructor(), spec["abi"])
            addresses.append(receipt["contractAddress"])
        self.use(Deployment(*addresses))
        assert self.deployment is not None
        return self.deployment

    def _need(self) -> None:
        if self.checkpoint_contract is None:
            raise AnchorError("no contracts: call deploy() or pass deployment=")

    def anchor_checkpoint(
        self, height: int, block_hash_hex: str | bytes, state_root_hex: str | bytes
    ) -> str:
        """Anchor one checkpoint; returns the transaction hash (``0x…``). Raises
        :class:`AnchorRevert` with ``error == "HeightNotIncreasing"`` for a height at or
        below the latest anchored one, ``"NotOwner"`` if this account is not the owner."""
        self._need()
        call = self.checkpoint_contract.functions.anchor(
            _height(height),
            to_bytes32(block_hash_hex, "block hash"),
            to_bytes32(state_root_hex, "state root"),
        )
        receipt = self._send(f"anchor height {height}", call, self.checkpoint_contract.abi)
        return "0x" + bytes(receipt["transactionHash"]).hex()

    def set_validators(self, epoch: int, ed25519_publics: Sequence[bytes]) -> str:
        """Publish the committee of ``epoch`` (must exceed the current epoch); members are
        mapped with :func:`validator_address`. Returns the transaction hash."""
        self._need()
        addresses = [validator_address(pk) for pk in ed25519_publics]
        call = self.validator_contract.functions.setValidators(_height(epoch), addresses)
        receipt = self._send(f"setValidators epoch {epoch}", call, self.validator_contract.abi)
        return "0x" + bytes(receipt["transactionHash"]).hex()

    # -- reads

    def checkpoints(self) -> list[Checkpoint]:
        """Every anchored checkpoint, oldest first."""
        self._need()
        return _read_checkpoints(self.checkpoint_contract)

    def latest(self) -> Checkpoint | None:
        """The most recent checkpoint, or None if nothing is anchored yet."""
        self._need()
        if self.checkpoint_contract.functions.count().call() == 0:
            return None
        height, block_hash, state_root = self.checkpoint_contract.functions.latest().call()
        return Checkpoint(height, bytes(block_hash).hex(), bytes(state_root).hex())

    def get(self, height: int) -> Checkpoint:
        """The checkpoint at ``height``; :class:`AnchorRevert` (``UnknownHeight``) if none."""
        self._need()
        try:
            block_hash, state_root = self.checkpoint_contract.functions.get(_height(height)).call()
        except ContractLogicError as exc:
            raise _revert(f"get height {height}", exc, self.checkpoint_contract.abi) from None
        return Checkpoint(height, bytes(block_hash).hex(), bytes(state_root).hex())

    def validators(self) -> ValidatorSet:
        """The published committee (epoch 0 and no members if none was published)."""
        self._need()
        members = self.validator_contract.functions.getValidators().call()
        epoch = self.validator_contract.functions.epoch().call()
        return ValidatorSet(epoch, tuple(to_checksum_address(a) for a in members))


# --- verification -------------------------------------------------------------------------------


def read_anchored(
    rpc_url: str, contract_address: str, *, timeout: float = DEFAULT_TIMEOUT
) -> list[Checkpoint]:
    """Every checkpoint anchored in the ``CheckpointRegistry`` at ``contract_address``,
    oldest first. Reads only: no account is needed."""
    registry = _contract(_connect(rpc_url, timeout), "CheckpointRegistry", contract_address)
    return _read_checkpoints(registry)


def read_validator_registry(
    rpc_url: str, contract_address: str, *, timeout: float = DEFAULT_TIMEOUT
) -> ValidatorSet | None:
    """The committee published in the ``ValidatorRegistry`` at ``contract_address``, or
    None if none was published yet. Reads only."""
    registry = _contract(_connect(rpc_url, timeout), "ValidatorRegistry", contract_address)
    if not registry.functions.initialized().call():
        return None
    members = registry.functions.getValidators().call()
    epoch = registry.functions.epoch().call()
    return ValidatorSet(epoch, tuple(to_checksum_address(a) for a in members))


def compare(
    anchored: Sequence[Checkpoint],
    local: Mapping[int, tuple[str, str]],
    problems: Iterable[tuple[int, str]] = (),
) -> AnchorReport:
    """Compare anchored checkpoints with what a local chain has at those heights.

    ``local`` maps a height to its ``(block hash, state root)`` as bare lower-case hex (a
    height absent from it is reported missing); ``problems`` are further differences the
    caller found itself, as ``(height, text)`` (e.g. a node whose answers contradict each
    other). ``ok`` is true when nothing is missing and nothing differs.
    """
    found: list[tuple[int, str]] = list(problems)
    missing: list[int] = []
    checked = 0
    for cp in anchored:
        mine = local.get(cp.height)
        if mine is None:
            missing.append(cp.height)
            continue
        checked += 1
        for what, mine_hex, theirs in (
            ("block hash", mine[0], cp.block_hash),
            ("state root", mine[1], cp.state_root),
        ):
            if mine_hex != theirs:
                found.append(
                    (
                        cp.height,
                        f"{what} differs (local {mine_hex}, anchored {theirs})",
                    )
                )
    found.sort(key=lambda item: item[0])
    return AnchorReport(
        ok=not found and not missing,
        checked=checked,
        mismatches=[f"height {height}: {text}" for height, text in found],
        missing=missing,
        anchored=len(anchored),
        latest_anchored=anchored[-1].height if anchored else None,
        first_mismatch=found[0][0] if found else None,
    )


def verify_against_chain(
    local_checkpoints: Iterable[tuple[int, str | bytes, str | bytes]],
    rpc_url: str,
    contract_address: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> AnchorReport:
    """Check a local chain against every checkpoint anchored in the ``CheckpointRegistry``
    at ``contract_address``.

    ``local_checkpoints`` are ``(height, block_hash, state_root)`` of the local chain:
    every block, or at least every anchored height. Each anchored height must be present
    locally with the same block hash and state root. Local heights that were not anchored
    are ignored. ``ok`` is true when nothing is missing and nothing differs. Raises
    :class:`AnchorError` if the node does not answer or there is no contract at the address,
    and ValueError if the local input is malformed (including two different blocks at one
    height).
    """
    local: dict[int, tuple[str, str]] = {}
    for row in local_checkpoints:
        height, block_hash, state_root = row
        entry = (
            to_bytes32(block_hash, "block hash").hex(),
            to_bytes32(state_root, "state root").hex(),
        )
        height = _height(height)
        if local.setdefault(height, entry) != entry:
            raise ValueError(f"local chain lists two different blocks at height {height}")
    return compare(read_anchored(rpc_url, contract_address, timeout=timeout), local)
