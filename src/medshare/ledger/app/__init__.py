"""The consortium ledger's state machine, run by CometBFT as an ABCI 2.0 application.

``genesis`` (what every node agrees on before block 1), ``state`` (the replicated state and
its app hash), ``rules`` (pure: which transactions are valid, how a block changes the
state, reputation and the committee election), ``store`` (the state on disk, one SQLite
transaction per block) and ``abci`` (the adapter between CometBFT's protobuf requests and
the rules). Nothing here runs consensus: CometBFT does.
"""
