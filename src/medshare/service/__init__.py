"""The records service: one plain-Python API that the CLI (and later the web API) call.

Modules: :mod:`config` (everything configurable, in one file per data directory),
:mod:`db` (SQLAlchemy models, Alembic migrations), :mod:`wallets` (the secret key material
that users and authorities hold), :mod:`areas` (the five access areas as policy templates),
:mod:`consortium` (building a consortium in one data directory), :mod:`ledgers` (which
ledger a data directory uses: CometBFT nodes or the in-process harness) and :mod:`api`
(ingest, share, read, log, verify, trace).
"""
