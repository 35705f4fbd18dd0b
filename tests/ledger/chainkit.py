"""Build small certified chains directly from the chain rules (no consensus), for tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from medshare.crypto.signing import SigningKey
from medshare.ledger import chain, election
from medshare.ledger.store import BlockStore
from medshare.ledger.types import Block, CommitCertificate, Tx, TxKind, Vote, VoteKind


@dataclass
class Kit:
    keys: list[SigningKey]
    config: chain.ChainConfig
    state: chain.ChainState
    genesis: Block
    last_commit: CommitCertificate | None = None  # of the newest block
    nonces: dict[bytes, int] = field(default_factory=dict)
    certificates: dict[int, CommitCertificate] = field(default_factory=dict)

    @classmethod
    def new(cls, nodes: int = 4, committee: int = 4, epoch_length: int = 5, lag: int = 1) -> Kit:
        # Fixed keys: elections draw from them, so a test's outcome never depends on luck.
        keys = [SigningKey(hashlib.sha256(f"chainkit/{i}".encode()).digest()) for i in range(nodes)]
        validators = tuple(
            election.Validator(k.public, f"node{i}", 1000) for i, k in enumerate(keys)
        )
        config = chain.ChainConfig(
            "test",
            validators,
            epoch_length=epoch_length,
            committee_size=committee,
            certificate_lag=lag,
        )
        block, state = chain.genesis(config)
        return cls(keys, config, state, block)

    def key(self, public: bytes) -> SigningKey:
        return next(k for k in self.keys if k.public == public)

    def tx(
        self, sender: int = 0, kind: TxKind = TxKind.ANCHOR_RECORD, body: dict | None = None
    ) -> Tx:
        key = self.keys[sender]
        nonce = self.nonces.get(key.public, 0)
        self.nonces[key.public] = nonce + 1
        fields = {"record": f"r{nonce}", "patient": "p1", "dept": "0304", "digest": "ab" * 32}
        return Tx.create(kind, body or fields, nonce, key, chain=self.config.chain_id)

    def next_block(self, txs: list[Tx], signers: int | None = None) -> Block:
        """Build, certify (with ``signers`` committee members, default a quorum) and apply."""
        h = self.state.height + 1
        carried = self.due_certificate()
        base = chain.begin_block(self.state, carried)
        proposer = election.proposer(base.committee, h, 0)
        block, dropped = chain.build_block(
            self.state, txs, proposer, self.state.head_time_ms + 1000, carried
        )
        assert not dropped, dropped
        count = signers if signers is not None else 2 * len(base.committee) // 3 + 1
        votes = [
            Vote.create(
                VoteKind.PRECOMMIT, h, 0, block.hash, self.key(member), chain=self.config.chain_id
            )
            for member in base.committee[:count]
        ]
        block = block.with_certificate(CommitCertificate.from_votes(votes))
        self.state = chain.apply_block(self.state, block)
        self.last_commit = self.certificates[h] = block.certificate
        return block

    def due_certificate(self) -> CommitCertificate | None:
        """The certificate the next block must carry (the chain's certificate lag)."""
        due = chain.certificate_due(self.state)
        return None if due is None else self.certificates[due.height]

    def fill(self, store: BlockStore, blocks: int, txs_per_block: int = 2) -> list[Tx]:
        """Append the genesis (if needed) and ``blocks`` blocks; returns every tx committed."""
        from medshare.ledger import audit

        audit.init_store(store, self.config)
        committed = []
        for _ in range(blocks):
            txs = [self.tx(i % len(self.keys)) for i in range(txs_per_block)]
            store.append(self.next_block(txs))
            committed += txs
        return committed
