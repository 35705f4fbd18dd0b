"""Fitting the model's costs from real runs: the fit finds known costs back."""

from __future__ import annotations

import numpy as np
import pytest

from medshare.ledger.sim import calibration as cal
from medshare.ledger.sim.cometbft_model import Costs

KNOWN = Costs.reference()
SHARES = cal.AppShares(checktx=150.0, process=1.0, finalize=8.0, prepare=5.0)
FITTED = cal.GO_FEATURES + cal.APP_FEATURES
PLAN = ((4, 4, 20, 4000), (8, 4, 16, 2000), (8, 8, 16, 1600), (16, 4, 20, 800), (16, 16, 16, 300))


def synthetic_runs(costs: Costs, noise: float = 0.0, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        cal.synthetic_run(
            costs, nodes=n, validators=m, heights=h, txs=t, seconds=10.0, rng=rng, noise=noise
        )
        for n, m, h, t in PLAN
    ]


def test_nnls_solves_a_known_system() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    x = cal.nnls(a, a @ np.array([3.0, 0.5]))
    assert x == pytest.approx([3.0, 0.5])
    assert (cal.nnls(a, np.array([-1.0, -1.0, -1.0])) >= 0).all()


def test_fit_recovers_known_costs_exactly_without_priors() -> None:
    fit = cal.fit(synthetic_runs(KNOWN), SHARES, priors={})
    got = fit.costs.as_dict()
    for name in FITTED:
        assert got[name] == pytest.approx(getattr(KNOWN, name), rel=1e-4), name
    assert fit.go_r2 > 0.9999 and fit.app_r2 > 0.9999
    assert got["client_tx_us"] == pytest.approx(KNOWN.client_tx_us, rel=1e-6)
    assert fit.costs.checktx_share == pytest.approx(150 / 159)


def test_fit_with_priors_and_noise_stays_close() -> None:
    fit = cal.fit(synthetic_runs(KNOWN, noise=0.02), SHARES)
    got = fit.costs.as_dict()
    # the costs that carry most of the CPU come back within a few per cent; two that the
    # runs can only tell apart by their sum (per request, per transaction) as a sum
    for name in ("height_go_us", "app_tx_us", "recheck_app_us", "msg_us", "rpc_tx_us"):
        assert got[name] == pytest.approx(getattr(KNOWN, name), rel=0.15), name
    per_tx = got["abci_request_us"] + got["tx_go_us"]
    assert per_tx == pytest.approx(KNOWN.abci_request_us + KNOWN.tx_go_us, rel=0.15)
    # the others stay within their priors' reach
    for name in FITTED:
        assert got[name] == pytest.approx(getattr(KNOWN, name), rel=0.6), name


def test_fit_finds_other_costs_than_its_priors() -> None:
    doubled = Costs(**{**KNOWN.as_dict(), "msg_us": 25.0, "height_go_us": 20_000.0})
    got = cal.fit(synthetic_runs(doubled), SHARES).costs
    assert got.msg_us == pytest.approx(25.0, rel=0.1)
    assert got.height_go_us == pytest.approx(20_000.0, rel=0.1)


def test_features_of_a_node() -> None:
    run = synthetic_runs(KNOWN)[1]  # 8 nodes, 4 validators
    node = run["window"]["nodes"][0]
    go, app = cal.node_features(node, validators=4, clients=4, client_txs=2000)
    assert go["verify_us"] == pytest.approx(16 * (2 * 4 - 2))  # others' votes, per height
    assert go["sign_us"] == pytest.approx(16 * (2 + 1 / 4))
    assert app["app_height_us"] == 16
    full = run["window"]["nodes"][7]
    go, _ = cal.node_features(full, validators=4, clients=4, client_txs=2000)
    assert go["sign_us"] == 0 and go["verify_us"] == 16 * 8


def test_ratio_helpers() -> None:
    assert cal.relative_error(130.0, 100.0) == pytest.approx(0.3)
    assert cal.within(0.3) and not cal.within(-0.31) and not cal.within(None)
