"""The consortium ledger: signed transactions, blocks with commit certificates, elected
committees, BFT commit, SQLite storage, a deterministic simulator and EVM anchoring."""
