"""Solidity sources of medshare's anchoring contracts and their compiled artifact.

``CheckpointRegistry.sol`` and ``ValidatorRegistry.sol`` (both on ``Owned.sol``) are
compiled by the npm ``solc`` package (solc-js, version pinned in the project's
``package.json``) into ``artifacts.json``, which is committed so that runtime needs no
compiler. Rebuild after editing a source with ``python -m medshare.ledger.contracts.build``;
``tests/ledger/test_anchor.py`` fails while the artifact differs from a fresh compile.
"""
