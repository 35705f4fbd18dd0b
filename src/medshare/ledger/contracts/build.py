"""Recompile the contracts with solc-js and rewrite ``artifacts.json``.

    npm ci                                        # once: installs the pinned solc
    python -m medshare.ledger.contracts.build     # rewrite the artifact in the source tree
    python -m medshare.ledger.contracts.build --check   # exit 1 if the artifact is stale

``--solcjs PATH`` overrides the compiler (default ``node_modules/solc/solc.js`` of the
project, or ``$MEDSHARE_SOLCJS``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medshare.ledger.anchor import ARTIFACT_FILE, ArtifactError, compile_contracts, dump_artifacts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medshare.ledger.contracts.build")
    parser.add_argument("--solcjs", help="path to solc-js's solc.js")
    parser.add_argument("--check", action="store_true", help="only compare, do not write")
    args = parser.parse_args(argv)
    target = Path(__file__).resolve().parent / ARTIFACT_FILE
    try:
        artifacts = compile_contracts(args.solcjs)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in artifacts["warnings"]:
        print(warning, file=sys.stderr)
    text = dump_artifacts(artifacts)
    current = target.read_text(encoding="utf-8") if target.exists() else ""
    if args.check:
        if current != text:
            print(
                f"{target} is stale: run python -m medshare.ledger.contracts.build", file=sys.stderr
            )
            return 1
        print(f"{target} matches {artifacts['compiler']['version']}")
        return 0
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target} ({artifacts['compiler']['version']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
