"""Public anchoring of a CometBFT chain of the ledger (DESIGN.md §4): which checkpoints a
node's chain has, publishing them once verified, and checking a node against them.

A **checkpoint** of height h (h = K, 2K, 3K, … — CometBFT has no block 0) is

* ``block_hash``: the hash of header h (``Header.Hash``, recomputed from the header's
  fields, which is also the ``block_id`` hash the validators signed);
* ``state_root``: the ``app_hash`` of header h+1, i.e. the application's state after
  executing block h (CometBFT puts the result of block h in the next header). So h is
  anchorable once block h+1 exists;
* the **validator set** of height h (the set whose > 2/3 of power signed block h, with
  its powers), published in the ``ValidatorRegistry`` when it differs from the one
  published last, with ``epoch`` = h: "the committee that holds at height h".

**Publishing** (:func:`publish`) re-verifies the node's chain from its genesis with
:class:`medshare.ledger.cometbft.verify.ChainVerifier` up to the last due height + 1
before it sends anything: every header's hash and chain link, every commit's Ed25519
signatures by > 2/3 of that height's validator power (so header h is proven decided by
its commit, and header h+1, which carries the state root, by its own), every validator
set against the committee the rules elected, and the application replayed for every app
hash. It also refuses a node whose verified chain differs from a checkpoint anchored
earlier. Nothing is anchored unless all of that holds.

**Verifying** (:func:`verify_node`) reads, for every anchored height h, blocks h and
h+1 from the node and compares: the hash of header h as recomputed here (and the block
id hash the node states, which must equal it), the ``app_hash`` of header h+1, and that
header h+1 links to block h. With the validator registry's address it also checks that
the node's validator set at the registry's epoch height is the one registered. A node
that serves any other block at an anchored height, or doctors one of these answers, is
reported at that height. Heights between checkpoints are not read: ``medshare ledger
verify --rpc`` re-verifies a whole chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from medshare.ledger import anchor
from medshare.ledger.cometbft import verify
from medshare.ledger.cometbft.client import LedgerClient

DEFAULT_EVERY = 10
BATCH = 10  # calls per JSON-RPC batch (CometBFT's default max_request_batch_size)


class Unverified(anchor.AnchorError):
    """The node's chain does not verify (or disagrees with the anchor) at ``height``;
    nothing was anchored."""

    def __init__(self, height: int, problem: str) -> None:
        super().__init__(
            f"refusing to anchor: the node's chain fails at height {height}: {problem}"
        )
        self.height = height
        self.problem = problem


@dataclass(frozen=True)
class NodeCheckpoint:
    """A verified checkpoint of a CometBFT chain; hashes as bare lower-case hex."""

    height: int
    block_hash: str
    state_root: str
    validators: verify.ValidatorSet  # CometBFT's order: power descending, then address

    def evm_validators(self) -> tuple[str, ...]:
        """The set's members as the validator registry holds them."""
        return tuple(anchor.validator_address(m.public) for m in self.validators)


@dataclass(frozen=True)
class PublishResult:
    anchored: list[int]
    #: heights at which a validator set was registered (the registry's epoch)
    committee_epochs: list[int] = field(default_factory=list)
    #: the last height the chain was verified to (0: nothing was due, nothing verified)
    verified_to: int = 0
    #: the validator set of the highest anchored height (None if nothing was anchored)
    validators: verify.ValidatorSet | None = None


def due_heights(every: int, node_latest: int, *, after: int | None = None) -> list[int]:
    """Multiples of ``every`` that are anchorable on a chain at ``node_latest`` (h+1
    must exist: h ≤ latest - 1), above ``after`` (the latest anchored height)."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive integer, got {every!r}")
    first = every if after is None else (after // every + 1) * every
    return list(range(max(first, every), node_latest, every))


class _Recorder(verify.ChainVerifier):
    """A chain verifier that keeps what checkpoints need from the heights it verified."""

    def __init__(self, genesis: dict, heights: Iterable[int]) -> None:
        super().__init__(genesis)
        self.wanted = set(heights)
        self.headers: dict[int, tuple[str, verify.ValidatorSet]] = {}
        self.app_hashes: dict[int, str] = {}  # height → app_hash of its header

    def check(self, served: verify.Served, commit: dict) -> None:
        super().check(served, commit)  # raises verify.Bad; only verified heights are kept
        h = served.height
        header = served.block["block"]["header"]
        if h in self.wanted:
            block_hash = verify.header_hash(verify.header_pb(header)).hex()
            self.headers[h] = (block_hash, verify.served_members(h, served.validators))
        if h - 1 in self.wanted:
            self.app_hashes[h] = verify.hex_bytes(header["app_hash"]).hex()

    def checkpoint(self, h: int) -> NodeCheckpoint:
        block_hash, members = self.headers[h]
        return NodeCheckpoint(h, block_hash, self.app_hashes[h + 1], members)


def read_verified(url: str, heights: Sequence[int], *, window: int = 16) -> list[NodeCheckpoint]:
    """The checkpoints at ``heights`` of the chain the node at ``url`` serves, after
    re-verifying that chain from its genesis up to ``max(heights) + 1``. Raises
    :class:`Unverified` naming the first height that fails, and ``LedgerUnavailable`` /
    ``ValueError`` when the node cannot be read or its genesis is not ours."""
    if not heights:
        return []
    stop = max(heights) + 1
    if min(heights) < 1:
        raise ValueError("CometBFT checkpoints start at height 1")
    source = verify.NodeSource(url, window=window)
    try:
        recorder = _Recorder(source.genesis(), heights)
        latest = source.latest()
        if stop > latest:
            raise ValueError(f"the node is at height {latest}; height {stop - 1} needs {stop}")
        report = verify.run(recorder, source, stop, latest)
    finally:
        source.close()
    if not report.ok:
        assert report.first_bad_height is not None and report.problem is not None
        raise Unverified(report.first_bad_height, report.problem)
    return [recorder.checkpoint(h) for h in heights]


def publish(
    url: str, anchorer: anchor.Anchorer, *, every: int = DEFAULT_EVERY, window: int = 16
) -> PublishResult:
    """Anchor every checkpoint due (heights multiple of ``every``, above the latest
    anchored one and below the node's latest height) of the chain the node at ``url``
    serves, each after the validator set of its height if that set is not the one
    registered last. See the module docstring for what is verified first."""
    anchored = anchorer.checkpoints()
    latest_anchored = anchored[-1].height if anchored else None
    with LedgerClient([url]) as client:
        node_latest = client.height()
    due = due_heights(every, node_latest, after=latest_anchored)
    if not due:
        return PublishResult([])
    earlier = [cp.height for cp in anchored if cp.height >= 1]
    verified = {cp.height: cp for cp in read_verified(url, sorted({*earlier, *due}), window=window)}
    for cp in anchored:  # the node must agree with what is anchored already
        mine = verified.get(cp.height)
        if mine is not None and (mine.block_hash, mine.state_root) != (
            cp.block_hash,
            cp.state_root,
        ):
            raise Unverified(
                cp.height,
                f"the node's checkpoint ({mine.block_hash}, {mine.state_root}) is not the "
                f"anchored one ({cp.block_hash}, {cp.state_root})",
            )
    published = anchorer.validators()
    registered = published.addresses
    epochs: list[int] = []
    for h in due:
        checkpoint = verified[h]
        members = checkpoint.evm_validators()
        if members != registered:
            anchorer.set_validators(h, [m.public for m in checkpoint.validators])
            registered = members
            epochs.append(h)
        anchorer.anchor_checkpoint(h, checkpoint.block_hash, checkpoint.state_root)
    return PublishResult(list(due), epochs, due[-1] + 1, verified[due[-1]].validators)


# --- checking a node against the anchor ----------------------------------------------------


def _answers(client: LedgerClient, calls: Sequence[tuple[str, dict]]) -> list[dict]:
    out: list[dict] = []
    for i in range(0, len(calls), BATCH):
        out.extend(client.batch(calls[i : i + BATCH], errors=True))
    return out


def _node_view(
    h: int, block: dict, following: dict
) -> tuple[tuple[str, str] | None, list[tuple[int, str]]]:
    """What the node says at checkpoint height ``h`` — (header hash, state root) — and
    the ways its answers contradict themselves."""
    problems: list[tuple[int, str]] = []
    try:
        header = verify.header_pb(block["block"]["header"])
        header_hash = verify.header_hash(header)
        stated = verify.hex_bytes(block["block_id"]["hash"])
        after = verify.header_pb(following["block"]["header"])
    except (KeyError, TypeError, ValueError) as exc:
        return None, [(h, f"malformed answer for block {h} or {h + 1}: {exc}")]
    if header.height != h or after.height != h + 1:
        problems.append(
            (h, f"asked for blocks {h} and {h + 1}, got {header.height}, {after.height}")
        )
    if stated != header_hash:
        problems.append(
            (h, f"the node's block id {stated.hex()} is not its header's hash {header_hash.hex()}")
        )
    if after.last_block_id.hash != header_hash:
        problems.append((h, f"the node's header {h + 1} does not follow its block {h}"))
    return (header_hash.hex(), after.app_hash.hex()), problems


def verify_node(
    url: str,
    rpc_url: str,
    contract_address: str,
    *,
    validator_registry: str | None = None,
    timeout: float = anchor.DEFAULT_TIMEOUT,
) -> anchor.AnchorReport:
    """Compare the chain the CometBFT node at ``url`` serves with every checkpoint
    anchored in the ``CheckpointRegistry`` at ``contract_address`` (EVM node at
    ``rpc_url``), and, with ``validator_registry``, the registered validator set with the
    node's set at the registry's epoch height. An anchored height the node does not serve
    (behind, pruned) is reported missing. Raises :class:`anchor.AnchorError` when the EVM
    side cannot be read and ``LedgerUnavailable`` when the node does not answer."""
    anchored = anchor.read_anchored(rpc_url, contract_address, timeout=timeout)
    registered = (
        anchor.read_validator_registry(rpc_url, validator_registry, timeout=timeout)
        if validator_registry
        else None
    )
    local: dict[int, tuple[str, str]] = {}
    problems: list[tuple[int, str]] = []
    with LedgerClient([url], timeout=timeout) as client:
        client.height()  # a node that does not answer at all is an error, not "missing"
        calls: list[tuple[str, dict]] = []
        for cp in anchored:
            calls.append(("block", {"height": str(cp.height)}))
            calls.append(("block", {"height": str(cp.height + 1)}))
        if registered is not None:
            calls.append(
                (
                    "validators",
                    {"height": str(registered.epoch), "per_page": str(verify.PER_PAGE)},
                )
            )
        answers = _answers(client, calls)
    for i, cp in enumerate(anchored):
        block, following = answers[2 * i], answers[2 * i + 1]
        if "error" in block or "error" in following:
            continue  # missing
        view, found = _node_view(cp.height, block, following)
        problems.extend(found)
        if view is not None:
            local[cp.height] = view
    if registered is not None:
        problems.extend(_registry_problems(registered, answers[-1]))
    return anchor.compare(anchored, local, problems)


def _registry_problems(registered: anchor.ValidatorSet, answer: dict) -> list[tuple[int, str]]:
    h = registered.epoch
    if "error" in answer:
        return [(h, f"the validator registry names height {h}, which the node does not serve")]
    try:
        members = verify.served_members(h, answer.get("validators") or [])
        if int(answer.get("total") or len(members)) != len(members):
            return [(h, "the node's validator set there has more than one page")]
    except (verify.Bad, KeyError, TypeError, ValueError) as exc:
        return [(h, f"malformed validator set from the node: {exc}")]
    node = tuple(anchor.validator_address(m.public) for m in members)
    if node != registered.addresses:
        return [
            (
                h,
                f"the validator set registered for this height {list(registered.addresses)} "
                f"is not the node's {list(node)}",
            )
        ]
    return []
