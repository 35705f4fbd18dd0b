"""The pinned CometBFT engine: where its binary lives and how it is built.

Why v0.38.x: it is the release line that introduced ABCI 2.0 (``PrepareProposal``,
``ProcessProposal``, ``FinalizeBlock``, vote extensions) and is the one in production
under the Cosmos SDK 0.50 networks, so its behaviour under faults is the best known; v1.0
changes the protobuf package names (``cometbft.abci.v1``) and the storage layout without
anything this application needs. The binary is built from source with ``go install`` from
the Go module proxy (no prebuilt downloads) into a folder named after the version, so two
checkouts pinned to different releases never share a binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

COMETBFT_MODULE = "github.com/cometbft/cometbft"
COMETBFT_VERSION = "v0.38.26"
# The gogoproto release CometBFT v0.38.26's go.mod requires: its gogo.proto is imported by
# CometBFT's .proto files (tools/gen_cometbft_proto.py).
GOGOPROTO_VERSION = "v1.7.0"


class EngineMissing(RuntimeError):
    """The CometBFT binary is not built; the message says how to build it."""


def _go_env(name: str) -> str:
    go = shutil.which("go")
    if go is None:
        raise EngineMissing("Go is not installed: CometBFT is built with `go install`")
    return subprocess.run(
        [go, "env", name], check=True, capture_output=True, text=True
    ).stdout.strip()


def bin_dir() -> Path:
    """Where the pinned binary is installed (``MEDSHARE_COMETBFT_HOME`` overrides)."""
    base = os.environ.get("MEDSHARE_COMETBFT_HOME") or str(Path.home() / ".cache" / "medshare")
    return Path(base) / f"cometbft-{COMETBFT_VERSION}"


def binary() -> Path:
    """The path of the pinned ``cometbft`` binary, or :class:`EngineMissing`."""
    path = bin_dir() / "cometbft"
    if not path.is_file():
        raise EngineMissing(f"CometBFT {COMETBFT_VERSION} is not built: run `medshare net install`")
    return path


def install(*, quiet: bool = True) -> Path:
    """Build the pinned CometBFT with ``go install`` (a no-op when it is already built)."""
    path = bin_dir() / "cometbft"
    if path.is_file():
        return path
    go = shutil.which("go")
    if go is None:
        raise EngineMissing("Go is not installed: CometBFT is built with `go install`")
    path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(path.parent), "GOFLAGS": "-mod=mod"}
    result = subprocess.run(
        [go, "install", f"{COMETBFT_MODULE}/cmd/cometbft@{COMETBFT_VERSION}"],
        env=env,
        capture_output=quiet,
        text=True,
    )
    if result.returncode != 0 or not path.is_file():
        raise EngineMissing(f"go install of CometBFT {COMETBFT_VERSION} failed: {result.stderr}")
    # go install downloads only what the binary needs; the .proto files' gogoproto import
    # comes with it, but make sure it is in the module cache for the proto generator.
    return path


def module_dir(module: str, version: str) -> Path:
    """A module's source folder in the Go module cache (filled by :func:`install`)."""
    escaped = "".join(f"!{c.lower()}" if c.isupper() else c for c in module)
    return Path(_go_env("GOMODCACHE")) / f"{escaped}@{version}"
