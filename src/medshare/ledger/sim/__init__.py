"""Deterministic discrete-event simulation of the consortium network: links (latency,
jitter, bandwidth, loss, partitions), per-node CPU charged at this machine's measured
Ed25519/SHA-256 speed, and crashes. No consensus logic lives here."""

from medshare.ledger.sim.costs import CostModel, calibrate
from medshare.ledger.sim.network import Handler, LinkModel, SimStats, Simulator

__all__ = ["CostModel", "Handler", "LinkModel", "SimStats", "Simulator", "calibrate"]
