"""One verification per distinct block for many copies of one chain (embedded ledger opens).

An :class:`~medshare.ledger.embedded.EmbeddedLedger` boots its validator nodes in one
process, each from its own SQLite file; the files are copies of one chain (only the
blocks' own commit certificates differ: any 2f+1 precommits make one), so re-verifying
every file from genesis repeats the same work once per node. :class:`ReplayCache` lets
those replays share it while every node's rows are still checked (see its docstring for
why that is sound). ``medshare ledger verify`` (:func:`medshare.ledger.audit.verify_chain`)
never uses it: an audit trusts nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from medshare.ledger import audit, chain
from medshare.ledger.store import SQLiteStore
from medshare.ledger.types import CommitCertificate, canonical, digest_hex

# A block's canonical bytes begin with its own commit certificate (keys sort "certificate"
# < "header" < "last_commit" < "txs"): the one part of a block that differs between nodes
# that committed the same block (any 2f+1 precommits make a certificate).
_CERTIFICATE_MEMBER = b'{"certificate":'


def _split(raw: bytes) -> tuple[Any, bytes, bytes] | None:
    """``raw`` as (certificate JSON value, its bytes, the bytes after it: header,
    transactions and last commit), or None when it does not start like a canonical block
    (such a row is then verified in full, which names what is wrong with it)."""
    if not raw.startswith(_CERTIFICATE_MEMBER):
        return None
    try:
        text = raw.decode("utf-8")
        value, end = json.JSONDecoder().raw_decode(text, len(_CERTIFICATE_MEMBER))
    except ValueError:  # also UnicodeDecodeError, JSONDecodeError
        return None
    cut = len(text[:end].encode("utf-8"))
    return value, raw[len(_CERTIFICATE_MEMBER) : cut], raw[cut:]


def _sha256(*parts: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.digest()


_TOKEN_DOMAIN = b"medshare/replay-token/v1\x00"


@dataclass(frozen=True)
class _Verified:
    """What applying one block body to one state established: the token of the state after
    it, its hash, and the committee whose 2f+1 precommits (signed on ``chain_id``) its own
    certificate needs."""

    token: bytes
    block_hash: str
    committee: tuple[bytes, ...]
    chain_id: str

    def certificate_key(self, height: int, digest: str) -> _CertificateKey:
        return (height, self.block_hash, self.committee, self.chain_id, digest)


# What a certificate check depends on: height, block hash, committee, chain id, and the
# SHA-256 (hex) of the certificate's canonical bytes.
_CertificateKey = tuple[int, str, tuple[bytes, ...], str, str]


@dataclass(frozen=True)
class _OwnCertificate:
    """A fully applied block's own certificate, not checked yet (``digest``: SHA-256 of its
    stored bytes, which ``_verify`` found to be its canonical encoding)."""

    height: int
    block: _Verified
    certificate: CommitCertificate | None
    digest: str


class _Unverified(Exception):
    """The cached path cannot vouch for a store; it is then replayed without the cache."""


class ReplayCache:
    """Verified chain prefixes shared by the replays of one process, e.g. the nodes of one
    :class:`~medshare.ledger.embedded.EmbeddedLedger` open, which hold copies of one chain:
    each distinct block is applied through :func:`chain.apply_block` once, not once per node.

    Why it is sound. A *token* names a verified state: the genesis state's is a hash of the
    stored chain configuration (the state depends on nothing else), the state after block
    ``h`` has ``H(token before, SHA-256 of the block's stored bytes after its
    certificate)``. That part (header, transactions, last commit) and the state before
    determine the state after; the block's own certificate only has to verify. A row is
    accepted from the cache only when its height, the token of this store's state before
    it and the SHA-256 of those bytes equal those of a block that was verified in full
    (decoded, its stored bytes its canonical encoding, applied by :func:`chain.apply_block`);
    and when its own certificate bytes are the canonical encoding of a certificate with
    2f+1 valid signatures of that block's committee for that block (checked here, or
    already checked for the same bytes, e.g. as the next block's ``last_commit``). Such a
    row is the canonical encoding of a block that full verification accepts (RFC 8785
    encodes each member on its own), with the same resulting state. Any other row, a
    changed byte anywhere in it, is verified in full on this store's own state; if it or
    anything else fails, the whole store is replayed from genesis without the cache, so a
    bad database fails with exactly the error :func:`replay` gives.

    States are never handed out: a replay returns a clone (``ChainState`` is mutable) and
    keeps at most about ``max_states`` states per chain (plus each replay's head) to
    restart from after a block the cache does not know; more means less re-application
    for a store that stops or differs mid-chain, fewer means less memory.

    ``applied`` counts blocks applied through :func:`chain.apply_block` here and ``reused``
    rows accepted from the cache. Not thread-safe: one caller drives it (as it does the
    in-process cluster). :func:`verify_chain` never uses it: an audit trusts nothing."""

    def __init__(self, *, max_states: int = 64) -> None:
        if max_states < 1:
            raise ValueError("max_states must be at least 1")
        self.max_states = max_states
        self.applied = 0
        self.reused = 0
        self._genesis: dict[bytes, tuple[bytes, bytes, chain.ChainState]] = {}
        self._bodies: dict[tuple[int, bytes, bytes], _Verified] = {}
        self._certificates: set[_CertificateKey] = set()
        self._states: dict[bytes, chain.ChainState] = {}

    def replay(self, store: SQLiteStore) -> chain.ChainState:
        """:func:`replay` of ``store``, reusing and extending what this cache verified."""
        try:
            return self._replay(store)
        except Exception:  # whatever went wrong on the cached path, the plain replay names it
            pass
        return audit.replay(store)  # no cache: a bad store fails exactly as it always did

    def _replay(self, store: SQLiteStore) -> chain.ChainState:
        token, genesis_bytes = self._genesis_of(store.get_meta(audit.CONFIG_KEY))
        top = store.height()
        if top < 0:
            return self._states[token].clone()
        if store.raw(0) != genesis_bytes:
            raise _Unverified("genesis")
        every = -(-top // self.max_states)  # keep the states of every ``every``-th height
        tokens = [token]  # tokens[h]: the token of this store's state after block h
        state: chain.ChainState | None = self._states[token]  # after tokens[-1], if at hand
        unchecked: _OwnCertificate | None = None  # of the block applied last, if any
        for height in range(1, top + 1):
            raw = store.raw(height)
            if raw is None:
                raise _Unverified(f"block {height} is missing")
            parts = _split(raw)
            own = None
            if parts is not None and self._known(height, tokens, parts):
                self.reused += 1
                state = None
            else:
                if state is None:
                    state = self._rebuild(store, tokens)
                state, own = self._apply(store, height, raw, parts, state, tokens)
                if height % every == 0:
                    self._states.setdefault(tokens[-1], state)
            # Checked one block late: the next block's last commit is usually the same bytes,
            # whose signatures applying that block checks anyway.
            if unchecked is not None:
                self._check(unchecked)
            unchecked = own
        if unchecked is not None:
            self._check(unchecked)
        if state is None:
            state = self._rebuild(store, tokens)
        self._states.setdefault(tokens[-1], state)
        return state.clone()

    def _genesis_of(self, raw_config: bytes | None) -> tuple[bytes, bytes]:
        """The token of the genesis state of this configuration and block 0's bytes."""
        if raw_config is None:
            raise _Unverified("no chain configuration")
        found = self._genesis.get(raw_config)
        if found is None:
            block, state = chain.genesis(audit.parse_config(raw_config))
            found = (_sha256(_TOKEN_DOMAIN, raw_config), block.encode(), state)
            self._genesis[raw_config] = found
            self._states.setdefault(found[0], state)
        return found[0], found[1]

    def _known(self, height: int, tokens: list[bytes], parts: tuple[Any, bytes, bytes]) -> bool:
        """Whether the row at ``height`` (split into ``parts``) can be accepted from the
        cache on the state named by ``tokens[-1]``; if so, appends the token after it."""
        known = self._bodies.get((height, tokens[-1], _sha256(parts[2])))
        if known is None or not self._certified(height, known, parts[0], parts[1]):
            return False
        tokens.append(known.token)
        return True

    def _certified(self, height: int, known: _Verified, value: Any, raw: bytes) -> bool:
        """Whether ``raw`` is the canonical encoding of a certificate of the known block by
        2f+1 of its committee."""
        key = known.certificate_key(height, digest_hex(raw))
        if key in self._certificates:
            return True
        try:
            cert = CommitCertificate.from_json(value)
            if canonical(cert.to_json()) != raw:
                return False
            chain.check_certificate(cert, known.committee, known.block_hash, height, known.chain_id)
        except (ValueError, TypeError, chain.InvalidBlock):
            return False
        self._certificates.add(key)
        return True

    def _apply(
        self,
        store: SQLiteStore,
        height: int,
        raw: bytes,
        parts: tuple[Any, bytes, bytes] | None,
        before: chain.ChainState,
        tokens: list[bytes],
    ) -> tuple[chain.ChainState, _OwnCertificate | None]:
        """Verify block ``height`` in full on ``before`` (what ``audit.verify_chain`` does for
        one height), remember what that established, and append the token of the state after.
        Returns the state after and the block's own certificate, which the caller must
        :meth:`_check` before it vouches for the store."""
        block = store.get(height)
        if block is None or raw != block.encode():
            raise _Unverified(f"block {height} is not stored canonically")
        if parts is None:  # valid or not, not shaped as the cache expects: never reused
            after = chain.apply_block(before, block)
            self.applied += 1
            tokens.append(_sha256(_TOKEN_DOMAIN, tokens[-1], b"row", _sha256(raw)))
            return after, None
        after = chain.apply_block(before, block, require_certificate=False)
        self.applied += 1
        body = _sha256(parts[2])
        token = _sha256(_TOKEN_DOMAIN, tokens[-1], body)
        known = _Verified(token, block.hash, after.head_committee, after.config.chain_id)
        self._bodies[(height, tokens[-1], body)] = known
        own = _OwnCertificate(height, known, block.certificate, digest_hex(parts[1]))
        due = chain.certificate_due(before)
        if block.last_commit is not None and due is not None:
            # apply_block checked it as the certificate of the block ``due`` names (height
            # - 1 with the default lag; the header commits to its canonical bytes' hash):
            # another node storing the same bytes as that block's own certificate needs no
            # second signature check.
            self._certificates.add(
                (
                    due.height,
                    due.block_hash,
                    due.committee,
                    known.chain_id,
                    block.header.last_commit_hash,
                )
            )
        tokens.append(token)
        return after, own

    def _check(self, own: _OwnCertificate) -> None:
        """Raise :class:`chain.InvalidBlock` unless ``own`` has 2f+1 valid signatures (or the
        same bytes were checked for the same block and committee already)."""
        known = own.block
        key = known.certificate_key(own.height, own.digest)
        if key not in self._certificates:
            chain.check_certificate(
                own.certificate, known.committee, known.block_hash, own.height, known.chain_id
            )
            self._certificates.add(key)

    def _rebuild(self, store: SQLiteStore, tokens: list[bytes]) -> chain.ChainState:
        """The state after block ``len(tokens) - 1`` of ``store``, from the nearest kept
        state below it by re-applying this store's rows above that (rows accepted from the
        cache, so they apply; their own certificates were checked on acceptance)."""
        start = len(tokens) - 1
        while tokens[start] not in self._states:
            start -= 1  # tokens[0], the genesis state, is always kept
        state = self._states[tokens[start]]
        for height in range(start + 1, len(tokens)):
            block = store.get(height)
            if block is None:
                raise _Unverified(f"block {height} is missing")
            state = chain.apply_block(state, block, require_certificate=False)
            self.applied += 1
        return state
