"""Entry point of one node's application process (``python -m …cometbft.appmain HOME``).

Opens ``HOME/app.db`` and serves ABCI on ``HOME/abci.sock`` until SIGTERM. CometBFT (the
other process of the node) connects to that socket.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from medshare.ledger.app.abci import LedgerApplication
from medshare.ledger.app.store import StateStore
from medshare.ledger.cometbft import server

APP_DB = "app.db"
SOCKET = "abci.sock"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m medshare.ledger.cometbft.appmain HOME", file=sys.stderr)
        return 2
    home = Path(argv[0]).resolve()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    store = StateStore(home / APP_DB)
    try:
        server.run(LedgerApplication(store), home / SOCKET)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
