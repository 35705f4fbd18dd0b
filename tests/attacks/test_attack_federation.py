"""Attacks on hospitals as separate parties (commits 50c97cc..HEAD: ``consortium up/down``,
blob replication over signed HTTP, staff attestations), all with real processes: one
consortium of three hospitals per module (``medshare consortium up``), the attacker
acting as a member hospital (with its node key), a staff member, a patient or an
outsider on the network.

Resisted (plain tests): no party's folder holds another party's node, authority or KEK
secret; ``/v1/staff/{identity}`` has no path traversal and a hospital vouches only for
its own staff; forged, re-signed or other-chain attestations are refused; a peer
hospital's records officer cannot ingest or enrol here; a captured replica write is not
replayed nor taken to another hospital; ``up`` refuses a non-empty folder.

Open (strict xfail; each raises :class:`Vulnerable` only after its evidence is checked,
so a broken setup fails the test instead of passing as "expected"):

* a member's node writes unanchored garbage blobs (32 MiB each, no quota, no delete
  route) to a peer's disk;
* an outsider who names a member node's *public* key gets 32 MiB bodies buffered before
  the signature is checked (32x the common cap), per connection;
* a peer that trickles its answer holds a request past the 5 s timeout indefinitely, and
  ~40 such requests (a patient's shares to ``…@<peer>`` names) take every worker thread;
* a peer's attestation answer is read whole into memory, whatever its size;
* the staff directory (roles, departments, keys) is open to anyone, unsigned;
* a tampered ``consortium.json`` makes ``down`` signal a foreign process;
* ``up`` refused on a non-empty folder still stops every ``*/ledger`` node under it.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from medshare import processes
from medshare.api import signed_requests, staff_attestation
from medshare.crypto.signing import SigningKey
from medshare.ledger.cometbft import home as node_home
from medshare.ledger.cometbft import network
from medshare.ledger.types import Tx, TxKind
from medshare.server import consortium
from medshare.server.process import medshare_command
from medshare.service.common import wall_clock_ms
from medshare.wallet.device import PersonalWallet

pytestmark = pytest.mark.slow

MiB = 1 << 20


class Vulnerable(Exception):
    """Raised by a test once it has shown the attack works (its xfail expects this)."""


def open_finding(reason: str):
    return pytest.mark.xfail(strict=True, raises=Vulnerable, reason=reason)


def _run(*args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(medshare_command(*args), capture_output=True, text=True, timeout=timeout)


def _ok(*args: object) -> dict:
    done = _run(*args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _ok_all(*commands: tuple) -> list[dict]:
    """Several CLI commands at once (each mostly waits for a block)."""
    procs = [
        subprocess.Popen(medshare_command(*c), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for c in commands
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr.decode()
        out.append(json.loads(stdout))
    return out


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    root = tmp_path_factory.mktemp("fedattack")
    directory = root / "c"
    summary = _ok("consortium", "up", "--dir", directory, "--hospitals", 3)
    try:
        hs = {h["code"]: h for h in summary["hospitals"]}
        h1, h2 = hs["H001"], hs["H002"]
        _ok_all(
            ("wallet", "new", "--dir", root / "off1", "--hospital", h1["api"], "--code",
             h1["officer_code"]),
            ("wallet", "new", "--dir", root / "off2", "--hospital", h2["api"], "--code",
             h2["officer_code"]),
        )  # fmt: skip
        pat, aud, rec = _ok_all(
            ("wallet", "enrol", "--dir", root / "off1", "--patient", "PX1"),
            ("wallet", "enrol", "--dir", root / "off2", "--staff", "aud@H002", "--role",
             "auditor", "--dept", "03"),
            ("wallet", "enrol", "--dir", root / "off2", "--staff", "rec@H002", "--role",
             "records", "--dept", "03"),
        )  # fmt: skip
        _ok_all(
            ("wallet", "new", "--dir", root / "patient", "--hospital", h1["api"], "--code",
             pat["code"]),
            ("wallet", "new", "--dir", root / "aud", "--hospital", h2["api"], "--code",
             aud["code"]),
            ("wallet", "new", "--dir", root / "rec", "--hospital", h2["api"], "--code",
             rec["code"]),
        )  # fmt: skip
        yield {
            "root": root,
            "dir": directory,
            "chain": summary["chain_id"],
            "h1": h1,
            "h2": h2,
            "h3": hs["H003"],
        }
    finally:
        _run("consortium", "down", "--dir", directory)


# --- helpers --------------------------------------------------------------------------------


def _node_key(directory: Path, code: str) -> SigningKey:
    net = network.Network.load(directory / code / "ledger")
    return SigningKey(node_home.validator_seed(net.node_dir(net.local_nodes()[0])))


def _node_publics(directory: Path, code: str) -> list[bytes]:
    net = network.Network.load(directory / "H001" / "ledger")
    return [bytes.fromhex(n.public) for n in net.nodes if n.name.startswith(f"{code}-")]


def _signed(key, identity, method, url, audience, body=b"", timeout=30.0):
    target = "/" + url.split("/", 3)[3]
    headers = signed_requests.sign(
        key, identity, method, target, body, audience=audience, now_ms=wall_clock_ms()
    )
    return httpx.request(method, url, content=body, headers=headers, timeout=timeout)


def _server_pid(directory: Path, code: str) -> int:
    return json.loads((directory / code / consortium.SERVER_FILE).read_text())["pid"]


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


def _peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _share_request(fed, grantee: str) -> tuple[str, bytes, SigningKey]:
    """A patient's share request naming ``grantee`` (the server asks the grantee's
    hospital about them before anything else is checked)."""
    key = PersonalWallet(fed["root"] / "patient").identity_key()
    body = {
        "grant": os.urandom(16).hex(),
        "patient": "PX1",
        "grantee": grantee,
        "area": "personal",
        "scope": {"kind": "records", "items": ["x"]},
        "until": None,
    }
    tx = Tx.create(TxKind.GRANT, body, 0, key, chain=fed["chain"])
    doc = json.dumps({"tx": tx.encode().hex(), "classes": {}}).encode()
    return f"{fed['h1']['api']}/v1/patients/PX1/shares", doc, key


class FakePeer:
    """What answers on a peer hospital's port when that hospital turns hostile: ``stall``
    trickles header lines (one a second, for ``seconds``), ``bomb`` sends ``size`` bytes
    of JSON whitespace."""

    def __init__(self, port: int, mode: str, *, seconds: float = 0.0, size: int = 0) -> None:
        self.mode, self.seconds, self.size = mode, seconds, size
        self.hits: list[bytes] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            self.hits.append(conn.recv(65536).split(b"\r\n", 1)[0])
            if self.mode == "stall":
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                end = time.monotonic() + self.seconds
                while time.monotonic() < end:
                    conn.sendall(b"X-Slow: 1\r\n")
                    time.sleep(1.0)
                conn.sendall(b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
            else:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (self.size + 2)
                )
                chunk, left = b" " * MiB, self.size
                while left > 0:
                    conn.sendall(chunk[: min(left, MiB)])
                    left -= MiB
                conn.sendall(b"{}")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not)
        self.sock.close()


# --- resisted -------------------------------------------------------------------------------


def test_resisted_no_party_folder_holds_another_partys_secret(fed):
    directory = fed["dir"]
    parties = ["H001", "H002", "H003", "regulator"]
    secrets: dict[tuple[str, str], bytes] = {}
    for party in parties:
        for path in (directory / party).rglob("*"):
            if not path.is_file():
                continue
            if path.name in ("priv_validator_key.json", "node_key.json"):
                raw = base64.b64decode(json.loads(path.read_text())["priv_key"]["value"])
                secrets[(party, path.name)] = raw[:32]
            elif "wallets" in path.parts and path.stat().st_size:
                secrets[(party, path.name)] = path.read_bytes()[:64]
    assert len(secrets) == 17, sorted(secrets)  # 4 nodes x 2 keys, 3 x (authority, KEK, id)
    leaks = []
    for party in parties:
        files = [p for p in (directory / party).rglob("*") if p.is_file() and not p.is_symlink()]
        for path in files:
            data = path.read_bytes()
            for (owner, name), secret in secrets.items():
                forms = (secret, secret.hex().encode(), base64.b64encode(secret)[:40])
                if owner != party and any(f in data for f in forms):
                    leaks.append((owner, name, str(path)))
    assert leaks == []


def test_resisted_staff_route_traversal_and_vouching_for_others(fed):
    h1, h2 = fed["h1"]["api"], fed["h2"]["api"]
    for probe in ("..%2F..%2Fmedshare.json", "%2e%2e", "..%2Fwallets", "officer@H001%00"):
        got = httpx.get(f"{h1}/v1/staff/{probe}", timeout=10)
        assert got.status_code == 404, (probe, got.text)
        assert b"authority" not in got.content and b"priv" not in got.content
    # H002 does not vouch for H001's officer, H001 does (signed by H001's node)
    assert httpx.get(f"{h2}/v1/staff/officer@H001", timeout=10).status_code == 404
    doc = httpx.get(f"{h1}/v1/staff/officer@H001", timeout=10).json()
    staff_attestation.check(doc, chain_id=fed["chain"], identity="officer@H001",
                            node_keys=_node_publics(fed["dir"], "H001"))  # fmt: skip


def test_resisted_attestation_forgery_other_chain_and_other_hospitals_names(fed):
    """H002, holding its own node key, vouches for H001's officer as its own, as H001's,
    and re-issues a true attestation for another chain: each is refused."""
    directory, chain = fed["dir"], fed["chain"]
    h2_key = _node_key(directory, "H002")
    h1_nodes, h2_nodes = _node_publics(directory, "H001"), _node_publics(directory, "H002")
    true = httpx.get(f"{fed['h1']['api']}/v1/staff/officer@H001", timeout=10).json()
    facts = staff_attestation.StaffFacts(
        chain_id=chain, identity="officer@H001", key=bytes.fromhex(true["key"]),
        hospital="H001", roles=("records", "auditor", "emergency"), dept="03", issued_ms=1,
    )  # fmt: skip
    as_h001 = staff_attestation.attest(h2_key, facts)
    as_h002 = staff_attestation.attest(h2_key, staff_attestation.StaffFacts(
        **{**facts.__dict__, "hospital": "H002"}))  # fmt: skip
    other_chain = {**true, "chain_id": "0" * 32}
    # the server checks a name's attestation against that name's hospital's nodes only
    for doc, keys in ((as_h001, h1_nodes), (as_h002, h2_nodes), (other_chain, h1_nodes)):
        with pytest.raises(staff_attestation.AttestationRefused):
            staff_attestation.check(doc, chain_id=chain, identity="officer@H001", node_keys=keys)


def test_resisted_peer_records_officer_cannot_ingest_or_enrol_here(fed):
    """rec@H002 (role records at H002) is learnt at H001 as H002's staff: H001's records
    routes refuse them. aud@H002 may trace at H001 (the rule is "an auditor of a member
    hospital": by design; the trace then runs under H001's lock)."""
    audience = f"{fed['chain']}/H001"
    h1 = fed["h1"]["api"]
    rec = PersonalWallet(fed["root"] / "rec").identity_key()
    me = _signed(rec, "rec@H002", "GET", f"{h1}/v1/me", audience)
    assert me.status_code == 200, me.text  # learnt from H002's attestation
    ingest = _signed(rec, "rec@H002", "POST", f"{h1}/v1/ingest", audience, b"{}")
    assert ingest.status_code == 403, ingest.text
    body = json.dumps({"staff": "mole@H001", "role": "records", "dept": "03"}).encode()
    enrol = _signed(rec, "rec@H002", "POST", f"{h1}/v1/enrolments", audience, body)
    assert enrol.status_code == 403, enrol.text
    aud = PersonalWallet(fed["root"] / "aud").identity_key()
    trace = _signed(aud, "aud@H002", "POST", f"{h1}/v1/trace", audience, b"not a key")
    assert trace.status_code not in (401, 403), trace.text


def test_resisted_replica_write_replay_and_other_audience(fed):
    directory, chain = fed["dir"], fed["chain"]
    h2_node = _node_key(directory, "H002")
    blob = b"replayed ciphertext " + os.urandom(8)
    path = f"/v1/replica/{hashlib.sha256(blob).hexdigest()}"
    headers = signed_requests.sign(h2_node, "records@H002", "PUT", path, blob,
                                   audience=f"{chain}/H001", now_ms=wall_clock_ms())  # fmt: skip
    first = httpx.put(fed["h1"]["api"] + path, content=blob, headers=headers, timeout=10)
    again = httpx.put(fed["h1"]["api"] + path, content=blob, headers=headers, timeout=10)
    elsewhere = httpx.put(fed["h3"]["api"] + path, content=blob, headers=headers, timeout=10)
    assert (first.status_code, again.status_code, elsewhere.status_code) == (204, 401, 401)
    assert "replayed" in again.text and "signature" in elsewhere.text, (again.text, elsewhere.text)


def test_resisted_up_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(consortium.ConsortiumError, match="not empty"):
        consortium.up(tmp_path, hospitals=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# --- open findings --------------------------------------------------------------------------


@open_finding(
    "MEDIUM: a member hospital's node writes any content-addressed bytes (up to 32 MiB a "
    "request, ~33 requests/s per key) into a peer's replica: no check that the blob is "
    "anchored or placed there, no quota, no delete over HTTP, so garbage stays forever"
)
def test_member_node_fills_a_peers_disk_with_unanchored_blobs(fed):
    directory, chain = fed["dir"], fed["chain"]
    h2_node = _node_key(directory, "H002")
    h3_node = _node_key(directory, "H003")
    statuses, ids = [], []
    for _ in range(3):
        blob = os.urandom(32 * MiB)
        blob_id = hashlib.sha256(blob).hexdigest()
        url = f"{fed['h1']['api']}/v1/replica/{blob_id}"
        statuses.append(_signed(h2_node, "records@H002", "PUT", url, f"{chain}/H001", blob,
                                timeout=60).status_code)  # fmt: skip
        ids.append(blob_id)
    stored = [
        (directory / "H001" / "blobs" / "H001" / i[:2] / i[2:4] / i).stat().st_size
        for i in ids
        if statuses == [204] * 3
    ]
    # another member reads those copies too (ciphertext only: the blob store's design)
    got = _signed(h3_node, "records@H003", "GET", f"{fed['h1']['api']}/v1/replica/{ids[0]}",
                  f"{chain}/H001", timeout=60)  # fmt: skip
    assert got.status_code in (200, 404)
    if statuses == [204] * 3 and stored == [32 * MiB] * 3:
        raise Vulnerable(f"96 MiB of random bytes accepted into H001's replica: {statuses}")


@open_finding(
    "MEDIUM: may_send_large lifts the body cap to 32 MiB for any request whose "
    "x-medshare-key header names a member node's PUBLIC key, before the signature is "
    "checked: an outsider makes the server buffer 32 MiB per connection"
)
def test_outsider_gets_32mib_buffered_by_naming_a_public_node_key(fed):
    directory = fed["dir"]
    h2_public = _node_publics(directory, "H002")[0].hex()
    body = b"\0" * (32 * MiB)
    url = f"{fed['h1']['api']}/v1/replica/{hashlib.sha256(body).hexdigest()}"

    def forged(key_hex: str) -> int:
        headers = {
            signed_requests.IDENTITY: "records@H002",
            signed_requests.KEY: key_hex,
            signed_requests.TIMESTAMP: str(wall_clock_ms()),
            signed_requests.NONCE: os.urandom(16).hex(),
            signed_requests.SIGNATURE: "00" * 64,
        }
        return httpx.put(url, content=body, headers=headers, timeout=120).status_code

    assert forged(os.urandom(32).hex()) == 413  # an unknown key: the common 1 MiB cap
    pid = _server_pid(directory, "H001")
    _reset_peak(pid)
    before = _peak_mib(pid)
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _i: forged(h2_public), range(12)))
    grew = _peak_mib(pid) - before
    assert codes == [401] * 12, codes  # read whole, then refused for the signature
    if grew > 150:
        raise Vulnerable(f"12 unsigned requests raised H001's peak memory by {grew:.0f} MiB")


@open_finding(
    "MEDIUM: staff_attestation.fetch has a per-read timeout only: a member hospital that "
    "trickles its answer holds the asking request indefinitely, and a patient's ~40 "
    "shares to made-up '<x>@H002' names take every worker thread of H001's server"
)
def test_trickling_peer_holds_requests_and_starves_the_server(fed):
    directory = fed["dir"]
    members = {m.code: m for m in consortium.load(directory)}
    assert consortium._stop_server(directory / "H002")
    fake = FakePeer(int(fed["h2"]["api"].rsplit(":", 1)[1]), "stall", seconds=16)
    try:
        results: list[tuple[int, float]] = []

        def share(i: int) -> None:
            url, doc, key = _share_request(fed, f"ghost{i}@H002")
            start = time.monotonic()
            got = _signed(key, "patient:PX1", "POST", url, f"{fed['chain']}/H001", doc,
                          timeout=120)  # fmt: skip
            results.append((got.status_code, time.monotonic() - start))

        threads = [threading.Thread(target=share, args=(i,)) for i in range(48)]
        for t in threads:
            t.start()
        time.sleep(3.0)
        start = time.monotonic()
        health = httpx.get(f"{fed['h1']['api']}/v1/health", timeout=120)
        health_s = time.monotonic() - start
        for t in threads:
            t.join(timeout=120)
        assert health.status_code == 200 and len(fake.hits) >= 40, (health, len(fake.hits))
        longest = max(s for _c, s in results)
        assert longest > 3 * staff_attestation.TIMEOUT_S, results  # no overall deadline
        if health_s > 5.0:
            raise Vulnerable(
                f"H001's /v1/health waited {health_s:.1f} s behind {len(fake.hits)} "
                f"stalled attestation fetches (each held up to {longest:.1f} s)"
            )
    finally:
        fake.close()
        time.sleep(0.5)
        consortium._start_server(directory, members["H002"], "127.0.0.1", lambda _m: None)
        assert httpx.get(f"{fed['h2']['api']}/v1/health", timeout=10).status_code == 200


@open_finding(
    "LOW/MEDIUM: staff_attestation.fetch (and PeerReplica.get/ids) read a peer's answer "
    "whole, with no size cap: a hostile member makes the asking server allocate at will"
)
def test_peer_attestation_answer_is_read_whole_whatever_its_size(fed):
    directory = fed["dir"]
    members = {m.code: m for m in consortium.load(directory)}
    assert consortium._stop_server(directory / "H002")
    fake = FakePeer(int(fed["h2"]["api"].rsplit(":", 1)[1]), "bomb", size=256 * MiB)
    try:
        pid = _server_pid(directory, "H001")
        _reset_peak(pid)
        before = _peak_mib(pid)
        url, doc, key = _share_request(fed, "bomb@H002")
        got = _signed(key, "patient:PX1", "POST", url, f"{fed['chain']}/H001", doc, timeout=120)
        grew = _peak_mib(pid) - before
        assert fake.hits and got.status_code in (400, 403, 404), got.text
        if grew > 200:
            raise Vulnerable(f"one attestation answer raised H001's peak memory by {grew:.0f} MiB")
    finally:
        fake.close()
        time.sleep(0.5)
        consortium._start_server(directory, members["H002"], "127.0.0.1", lambda _m: None)
        assert httpx.get(f"{fed['h2']['api']}/v1/health", timeout=10).status_code == 200


@open_finding(
    "LOW (privacy): GET /v1/staff/{identity} is unsigned: anyone who can reach a server "
    "enumerates its staff by name and learns their role, department and identity key"
)
def test_anyone_reads_the_staff_directory(fed):
    got = httpx.get(f"{fed['h2']['api']}/v1/staff/aud@H002", timeout=10)
    assert got.status_code in (200, 401, 403)
    if got.status_code == 200:
        doc = got.json()
        raise Vulnerable(f"outsider learnt {doc['identity']}: {doc['roles']} in dept {doc['dept']}")


@open_finding(
    "LOW: consortium.json's data_dir is used as given (absolute paths too) and "
    "processes.still_ours only checks that the folder's text occurs in the command line: "
    "whoever edits consortium.json makes `down` SIGTERM/SIGKILL a foreign process group"
)
def test_tampered_consortium_file_makes_down_kill_a_foreign_process(tmp_path):
    victim_dir = tmp_path / "unrelated-app"
    victim_dir.mkdir()
    victim = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", str(victim_dir)],
        start_new_session=True,
    )
    try:
        time.sleep(0.3)
        (victim_dir / consortium.SERVER_FILE).write_text(json.dumps(processes.record(victim.pid)))
        fake = tmp_path / "c"
        fake.mkdir()
        member = {"code": "H001", "api": "http://127.0.0.1:9", "data_dir": str(victim_dir),
                  "node_rpc": "http://127.0.0.1:9"}  # fmt: skip
        (fake / consortium.CONSORTIUM_FILE).write_text(json.dumps(
            {"format": consortium.FORMAT, "version": consortium.VERSION, "chain_id": "x",
             "hospitals": [member]}))  # fmt: skip
        assert processes.alive(victim.pid)
        with contextlib.suppress(Exception):
            consortium.down(fake)
        if not processes.alive(victim.pid):
            raise Vulnerable("`consortium down` killed a process that is no hospital server")
    finally:
        with contextlib.suppress(ProcessLookupError):
            victim.kill()
        with contextlib.suppress(ChildProcessError):
            victim.wait(timeout=5)


@open_finding(
    "LOW/MEDIUM: `consortium up` on a non-empty folder without consortium.json is refused, "
    "but the refusal runs _stop_all, which stops every node under <folder>/*/ledger "
    "(here: a consortium whose consortium.json went missing; equally any hospital "
    "folders kept side by side)"
)
def test_refused_up_stops_running_nodes_under_the_folder(fed):
    directory = fed["dir"]
    h3 = network.Network.load(directory / "H003" / "ledger")
    node = h3.local_nodes()[0]
    assert network.running(h3, node)
    kept = directory / (consortium.CONSORTIUM_FILE + ".kept")
    (directory / consortium.CONSORTIUM_FILE).rename(kept)
    try:
        with pytest.raises(consortium.ConsortiumError, match="not empty"):
            consortium.up(directory)
        stopped = not network.running(h3, node)
    finally:
        kept.rename(directory / consortium.CONSORTIUM_FILE)
    if stopped:
        raise Vulnerable("a refused `up` stopped H003's running ledger node")
