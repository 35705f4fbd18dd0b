"""One CometBFT node's home folder: keys, ``config.toml`` and ``genesis.json``.

``cometbft init`` makes the keys (validator key ``priv_validator_key.json``, p2p node key
``node_key.json``, both mode 0600); everything else is written here so that every node of
a consortium gets the same genesis and a config that points at its own application socket
and peers.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from medshare.ledger.app.genesis import MEMBER_POWER, Genesis
from medshare.ledger.app.rules import address
from medshare.ledger.cometbft import install

# Consensus timing for a consortium on one site or a metro network: blocks follow each
# other 100 ms after a commit (CometBFT's default is 1 s), rounds give up on a silent
# proposer after 1 s. An idle chain makes an empty block every second: a block that
# changes nothing keeps the app hash (reputation credited from each commit enters it at
# the epoch's end, ``rules.finalize``), so CometBFT needs no "proof block" after it. An
# idle 4-node consortium then costs ≈ 1 block/s instead of the ≈ 6/s (0.6 of a core
# here) a changing app hash forced. A transaction still waits at most one block
# interval: its arrival in the mempool starts the next height at once.
#
# The gossip timers are what a height waits for most (docs/ledger-throughput.md): a
# per-peer gossip routine sleeps ``peer_gossip_sleep_duration`` when it has nothing to
# send, and a connection's writes wait up to ``flush_throttle_timeout`` (CometBFT's
# defaults: 100 ms each). At 20 ms and 10 ms, 4 nodes under load commit about 1.3× the
# transactions at 0.75× the median latency (measured: 841 → 1,075 tx/s, 1.04 → 0.77 s),
# for more, smaller writes.
CONSENSUS = {
    "timeout_propose": "1s",
    "timeout_propose_delta": "500ms",
    "timeout_prevote": "500ms",
    "timeout_precommit": "500ms",
    "timeout_commit": "100ms",
    "peer_gossip_sleep_duration": "20ms",
    "create_empty_blocks": True,
    "create_empty_blocks_interval": "1s",
}
P2P_FLUSH_THROTTLE = "10ms"


def milliseconds(duration: str) -> float:
    """A CometBFT duration such as ``"100ms"`` or ``"1s"``, in milliseconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", duration)
    if match is None:
        raise ValueError(f"not a duration in ms or s: {duration!r}")
    value = float(match.group(1))
    return value if match.group(2) == "ms" else 1000.0 * value


@dataclass(frozen=True)
class Ports:
    p2p: int
    rpc: int
    metrics: int  # Prometheus, on the RPC host


def init(home: Path, moniker: str) -> None:
    """Create keys and a default config in ``home`` (refuses an existing one)."""
    if (home / "config" / "priv_validator_key.json").exists():
        raise FileExistsError(f"{home} already holds a CometBFT node")
    result = subprocess.run(
        [str(install.binary()), "init", "--home", str(home)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"cometbft init failed: {result.stderr.strip()}")
    set_config(home, {("", "moniker"): moniker})


def validator_public(home: Path) -> bytes:
    """The node's Ed25519 validator public key (32 bytes)."""
    doc = json.loads((home / "config" / "priv_validator_key.json").read_text())
    return base64.b64decode(doc["pub_key"]["value"])


def validator_seed(home: Path) -> bytes:
    """The node's validator private key seed (first 32 bytes of CometBFT's 64-byte form):
    the node signs its ledger transactions with the same key it votes with."""
    doc = json.loads((home / "config" / "priv_validator_key.json").read_text())
    return base64.b64decode(doc["priv_key"]["value"])[:32]


def node_id(home: Path) -> str:
    result = subprocess.run(
        [str(install.binary()), "show-node-id", "--home", str(home)],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def cometbft_chain_id(genesis: Genesis) -> str:
    return f"medshare-{genesis.chain_id}"


def write_genesis(home: Path, genesis: Genesis, genesis_time: str) -> None:
    """CometBFT's genesis: our app state (launched at ``genesis_time``, which enters the
    chain id), and the first elected committee as validators (the app's ``InitChain``
    elects the same committee and returns it)."""
    if genesis.launched != genesis_time:
        genesis = replace(genesis, launched=genesis_time)
    names = {v.public: v.name for v in genesis.nodes}
    doc = {
        "genesis_time": genesis_time,
        "chain_id": cometbft_chain_id(genesis),
        "initial_height": "1",
        "consensus_params": {
            "block": {"max_bytes": str(4 * 1024 * 1024), "max_gas": "-1"},
            "evidence": {
                "max_age_num_blocks": "100000",
                "max_age_duration": "172800000000000",
                "max_bytes": "1048576",
            },
            "validator": {"pub_key_types": ["ed25519"]},
            "version": {"app": "1"},
            "abci": {"vote_extensions_enable_height": "0"},
        },
        "validators": [
            {
                "address": address(member).hex().upper(),
                "pub_key": {
                    "type": "tendermint/PubKeyEd25519",
                    "value": base64.b64encode(member).decode(),
                },
                "power": str(MEMBER_POWER),
                "name": names[member],
            }
            for member in genesis.first_committee()
        ],
        "app_hash": "",
        "app_state": genesis.to_json(),
    }
    (home / "config" / "genesis.json").write_text(json.dumps(doc, indent=2))


def configure(
    home: Path,
    *,
    ports: Ports,
    p2p_host: str,
    rpc_host: str,
    peers: Sequence[str],
    socket: Path,
) -> None:
    """Point the node at its app socket, its ports and its peers."""
    set_config(
        home,
        {
            ("", "proxy_app"): f"unix://{socket}",
            ("", "abci"): "socket",
            ("", "log_level"): "main:info,state:info,consensus:error,p2p:error,*:error",
            ("rpc", "laddr"): f"tcp://{rpc_host}:{ports.rpc}",
            ("rpc", "max_request_batch_size"): 256,
            ("rpc", "max_body_bytes"): 4 * 1024 * 1024,
            ("rpc", "timeout_broadcast_tx_commit"): "10s",
            ("p2p", "laddr"): f"tcp://{p2p_host}:{ports.p2p}",
            ("p2p", "persistent_peers"): ",".join(peers),
            ("p2p", "addr_book_strict"): p2p_host not in ("127.0.0.1", "localhost", "0.0.0.0"),
            ("p2p", "allow_duplicate_ip"): True,
            ("p2p", "send_rate"): 20_480_000,
            ("p2p", "recv_rate"): 20_480_000,
            ("p2p", "flush_throttle_timeout"): P2P_FLUSH_THROTTLE,
            ("mempool", "recheck"): True,  # see medshare.ledger.app.abci
            ("mempool", "size"): 20_000,
            ("mempool", "cache_size"): 100_000,
            ("tx_index", "indexer"): "kv",
            ("instrumentation", "prometheus"): True,
            ("instrumentation", "prometheus_listen_addr"): f"{rpc_host}:{ports.metrics}",
            **{("consensus", key): value for key, value in CONSENSUS.items()},
        },
    )


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def set_config(home: Path, values: Mapping[tuple[str, str], object]) -> None:
    """Replace ``key = value`` lines of ``config.toml`` by (section, key); every key must
    exist already (a typo must fail here, not be ignored by CometBFT)."""
    path = home / "config" / "config.toml"
    lines = path.read_text().splitlines()
    section = ""
    pending = dict(values)
    for i, line in enumerate(lines):
        header = re.match(r"^\[([\w.]+)\]\s*$", line)
        if header:
            section = header.group(1)
            continue
        assignment = re.match(r"^(\w+)\s*=", line)
        if assignment and (section, assignment.group(1)) in pending:
            key = assignment.group(1)
            lines[i] = f"{key} = {_toml_value(pending.pop((section, key)))}"
    if pending:
        raise KeyError(f"not in config.toml: {sorted(pending)}")
    path.write_text("\n".join(lines) + "\n")
