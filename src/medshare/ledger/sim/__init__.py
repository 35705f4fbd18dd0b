"""A model of CometBFT (v0.38) for N beyond what one machine can run: heights, gossip and
CPU (:mod:`~medshare.ledger.sim.cometbft_model`), with costs fitted from real runs on
this machine (:mod:`~medshare.ledger.sim.calibration`). It moves bytes and charges CPU;
the protocol rules it follows are CometBFT's, not an engine of ours."""

from medshare.ledger.sim.cometbft_model import (
    INSTITUTIONS,
    LOOPBACK,
    ClosedLoop,
    Costs,
    Cpu,
    Links,
    PerHeight,
    Report,
    Scenario,
    Timing,
    simulate,
)

__all__ = [
    "INSTITUTIONS",
    "LOOPBACK",
    "ClosedLoop",
    "Costs",
    "Cpu",
    "Links",
    "PerHeight",
    "Report",
    "Scenario",
    "Timing",
    "simulate",
]
