"""Which ledger a data directory uses, and how it is created, opened and stopped.

``ServiceConfig.ledger`` names the kind, chosen at ``medshare init`` and kept in the
data directory's configuration:

* ``cometbft`` (what ``medshare init`` makes by default): a consortium of CometBFT nodes
  with our application, started on 127.0.0.1 in ``<data-dir>/ledger`` by
  :func:`medshare.ledger.cometbft.network.up`. The nodes keep running after ``init``
  returns; every later command connects to them over RPC
  (:class:`~medshare.ledger.comet_port.CometLedger`) and starts them again when none is
  running. ``medshare net down --dir <data-dir>/ledger`` stops them.
* ``inprocess``: the same application driven in the command's own process without
  consensus (:class:`~medshare.ledger.inprocess.InProcessLedger`), for tests and offline
  use.

Nodes and hospitals: node ``i`` is run by hospital ``i mod H`` (so hospital ``k``'s first
node is node ``k``), the last one by a regulator when there are more nodes than
hospitals; :func:`node_labels` names them so (``H001-a``, …, ``regulator``), in genesis
too: the chain lets only a hospital's own nodes enrol identities named ``…@<hospital>``.
A hospital's records service signs with its first node's key, which registers that
hospital's people.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from medshare.ledger.port import LedgerPort, LedgerUnavailable
from medshare.service.config import ServiceConfig

Notice = Callable[[str], None]
SOCKET_ROOM = 107 - len("/node-00/abci.sock.new")  # AF_UNIX path limit for the node sockets


def node_labels(config: ServiceConfig) -> list[str]:
    """Ledger nodes by who runs them (``H001-a``…), the last one a regulator's when there
    are more nodes than hospitals."""
    names = []
    count = len(config.hospitals)
    for i in range(config.nodes):
        if i == config.nodes - 1 and config.nodes > count:
            names.append("regulator")
        else:
            names.append(f"{config.hospitals[i % count]}-{chr(ord('a') + i // count)}")
    return names


def check(config: ServiceConfig) -> None:
    """Refuse early what would stop :func:`create` (the CometBFT binary not built)."""
    if config.ledger == "cometbft":
        from medshare.ledger.cometbft import install

        try:
            install.binary()
        except install.EngineMissing as exc:
            raise LedgerUnavailable(f"{exc} (or choose --ledger inprocess)") from None


def create(config: ServiceConfig, notice: Notice | None = None) -> LedgerPort:
    """Create the data directory's ledger (and, for CometBFT, start its nodes)."""
    if config.ledger == "inprocess":
        from medshare.ledger.inprocess import InProcessLedger

        return InProcessLedger.create(
            config.ledger_dir,
            nodes=config.nodes,
            committee=config.committee,
            names=node_labels(config),
        )
    from medshare.ledger.comet_port import CometLedger
    from medshare.ledger.cometbft import install, network

    directory = _network_dir(config, notice)
    try:
        network.up(
            directory, nodes=config.nodes, committee=config.committee, names=node_labels(config)
        )
    except (network.NetworkError, install.EngineMissing) as exc:
        raise LedgerUnavailable(f"the ledger network does not start: {exc}") from None
    return CometLedger.open(config.ledger_dir, notice=notice)


def open_ledger(config: ServiceConfig, notice: Notice | None = None) -> LedgerPort:
    if (config.ledger_dir / "ledger.json").exists():
        raise LedgerUnavailable(
            f"{config.data_dir} was made by an earlier medshare whose ledger was the embedded "
            "engine (removed); create a new data directory with `medshare init`"
        )
    if config.ledger == "inprocess":
        from medshare.ledger.inprocess import InProcessLedger

        return InProcessLedger.open(config.ledger_dir)
    from medshare.ledger.comet_port import CometLedger

    return CometLedger.open(config.ledger_dir, notice=notice)


def stop(config: ServiceConfig) -> bool:
    """Stop the data directory's ledger nodes (CometBFT); True if there was a network."""
    if config.ledger != "cometbft":
        return False
    from medshare.ledger.cometbft import network

    try:
        net = network.Network.load(config.ledger_dir)
    except network.NetworkError:
        return False
    network.down(net)
    return True


def _network_dir(config: ServiceConfig, notice: Notice | None) -> Path:
    """``<data-dir>/ledger``, or, when that path is too long for the nodes' Unix sockets,
    a symbolic link there to a short folder under ``$XDG_STATE_HOME/medshare/ledgers``."""
    directory = config.ledger_dir
    if len(str(directory.resolve())) <= SOCKET_ROOM:
        return directory
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    parent = (state / "medshare" / "ledgers").resolve()
    if len(str(parent)) + 9 > SOCKET_ROOM:
        raise LedgerUnavailable(
            f"{directory} is too long a path for the ledger nodes' sockets; "
            "choose a shorter --data-dir"
        )
    parent.mkdir(parents=True, exist_ok=True)
    target = Path(tempfile.mkdtemp(prefix="", dir=parent))
    directory.symlink_to(target, target_is_directory=True)
    if notice is not None:
        notice(f"ledger nodes in {target} (linked from {directory}: the path is too long)")
    return directory
