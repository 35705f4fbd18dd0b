"""The vendored protobuf code is exactly what CometBFT's own .proto files generate.

``tools/gen_cometbft_proto.py`` regenerates it from the Go module cache that
``medshare net install`` fills; nothing in ``src/medshare/ledger/cometbft/proto`` may be
edited by hand, so a fresh generation must be byte-identical.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from medshare.ledger.cometbft import install

ROOT = Path(__file__).resolve().parents[2]
VENDORED = ROOT / "src" / "medshare" / "ledger" / "cometbft" / "proto"


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_cometbft_proto", ROOT / "tools" / "gen_cometbft_proto.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_vendored_code_equals_a_fresh_generation(tmp_path: Path) -> None:
    source = install.module_dir(install.COMETBFT_MODULE, install.COMETBFT_VERSION) / "proto"
    if not source.is_dir():
        pytest.fail(f"{source} missing: run `medshare net install` (it fills the Go module cache)")
    out = tmp_path / "proto"
    _generator().generate(out)
    fresh = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    vendored = {
        p.relative_to(VENDORED): p.read_bytes()
        for p in VENDORED.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sorted(fresh) == sorted(vendored)
    changed = [str(name) for name in fresh if fresh[name] != vendored[name]]
    assert not changed, f"vendored files differ from a fresh generation: {changed}"


def test_the_pinned_engine_is_built_and_reports_its_version() -> None:
    import subprocess

    binary = install.binary()
    version = subprocess.run([str(binary), "version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == install.COMETBFT_VERSION.lstrip("v")
