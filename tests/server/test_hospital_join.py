"""A fourth hospital joins a running consortium of three, as separate processes: `hospital
init --join` makes its node, authority and database in its own folder from the members'
public facts; it is not a member (nothing of it goes on the ledger) until more than 2/3
of the active nodes approved it with `hospital admit`; then its server activates,
ingests, replicates to the old members and serves its patient. A join request for
another chain, a taken code and a second admission are refused."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from medshare.ledger.cometbft import network
from medshare.records import synthetic
from medshare.server import consortium, join
from medshare.server.process import medshare_command
from medshare.service.api import MedShare
from server.commands import ok as _ok
from server.commands import run as _run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    root = tmp_path_factory.mktemp("join")
    directory, newcomer = root / "c", root / "H004"
    try:
        summary = _ok("consortium", "up", "--dir", directory, "--precompute", 0)
        member = summary["hospitals"][0]["api"]
        (port,) = network.free_ports(1)
        made = _ok("hospital", "init", "--dir", newcomer, "--code", "H004", "--join", member,
                   "--chain-id", summary["chain_id"], "--port", port)  # fmt: skip
        yield {"root": root, "dir": directory, "newcomer": newcomer, "made": made,
               "summary": summary, "port": port}  # fmt: skip
    finally:
        if (directory / consortium.CONSORTIUM_FILE).exists():
            _run("consortium", "down", "--dir", directory)
        if (newcomer / "ledger" / network.NET_FILE).exists():
            network.down(network.Network.load(newcomer / "ledger"))


def test_a_newcomer_is_nothing_on_the_ledger_until_admitted(joined):
    made, newcomer = joined["made"], joined["newcomer"]
    request = json.loads((newcomer / "join-request.json").read_text())
    assert "officer_code" not in request  # the members get public facts only
    assert request["name"] == "H004-a" and made["officer_code"].startswith("officer@H004/")
    authorities = sorted(p.name for p in (newcomer / "wallets" / "authorities").iterdir())
    assert all("H004" in name for name in authorities)
    with (
        MedShare.open(newcomer) as service,
        pytest.raises(join.JoinError, match="not a member of the chain yet"),
    ):
        join.activate(service, timeout_s=2.0)
    # refused requests, at a member (server stopped for the admission)
    h1 = joined["dir"] / "H001"
    consortium.stop_server(joined["dir"], "H001")
    try:
        other_chain = {**request, "chain_id": "0" * 32}
        (joined["root"] / "other.json").write_text(json.dumps(other_chain))
        refused = _run("hospital", "admit", "--dir", h1, joined["root"] / "other.json")
        assert refused.returncode == 2 and "another chain" in refused.stderr
        taken = {**request, "code": "H001", "name": "H001-a"}
        (joined["root"] / "taken.json").write_text(json.dumps(taken))
        refused = _run("hospital", "admit", "--dir", h1, joined["root"] / "taken.json")
        assert refused.returncode == 2 and "cannot join" in refused.stderr
    finally:
        consortium.start_server(joined["dir"], "H001")


def test_admitted_by_the_members_it_serves_and_replicates(joined):
    directory, newcomer, port = joined["dir"], joined["newcomer"], joined["port"]
    request = newcomer / "join-request.json"
    for code in ("H001", "H002", "H003"):
        consortium.stop_server(directory, code)
        try:
            admitted = _ok("hospital", "admit", "--dir", directory / code, request)
            assert admitted["admitted"] == "H004"
            if code == "H001":  # one approval more from the same node is refused
                again = _run("hospital", "admit", "--dir", directory / code, request)
                assert again.returncode != 0
        finally:
            consortium.start_server(directory, code)
    log = (joined["root"] / "h4.log").open("wb")
    server = subprocess.Popen(
        medshare_command("hospital", "serve", "--dir", newcomer, "--port", port,
                         "--precompute", 0),
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(api, server)
        root = joined["root"]
        _ok("wallet", "new", "--dir", root / "off4", "--hospital", api, "--code",
            joined["made"]["officer_code"])  # fmt: skip
        bundle = synthetic.generate_bundle(404, 0, 8)
        (root / "b.json").write_text(json.dumps(bundle))
        code = _ok("wallet", "enrol", "--dir", root / "off4", "--patient",
                   synthetic.patient_id(bundle))["code"]  # fmt: skip
        report = _ok("wallet", "ingest", "--dir", root / "off4", root / "b.json")
        made = _ok("wallet", "new", "--dir", root / "p4", "--hospital", api, "--code", code)
        assert made["sealed"] == report["records"] > 5
        exported = _ok("wallet", "export", "--dir", root / "p4", "--out", root / "p4.ndjson")
        assert exported["records"] == report["records"]
        folders = [newcomer / "blobs", *(directory / c / "blobs" for c in ("H001", "H002", "H003"))]
        copies = sum(1 for folder in folders for p in folder.rglob("*") if p.is_file())
        assert copies == 2 * report["records"]  # the old members took the newcomer's copies
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _wait_healthy(api: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240  # it waits for its node to catch up and activates
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert server.poll() is None, "the newcomer's server stopped"
        time.sleep(0.5)
    raise AssertionError("the newcomer's server did not come up")
