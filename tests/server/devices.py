"""Wallet folders made the way a person makes theirs (``wallet new`` with a one-time code),
against a hospital app running in-process (FastAPI's test client)."""

from __future__ import annotations

from pathlib import Path

from medshare.wallet import device

BASE = "http://testserver"


def device_wallet(root: Path, http, clock, name: str, code: str) -> device.PersonalWallet:
    """``name``'s wallet in ``root/devices``, enrolled with ``code`` (keys made there)."""
    made = device.PersonalWallet(root / "devices" / name)
    device.enrol(made.directory, BASE, code, http=http, clock_ms=clock)
    return made


def staff_wallet(
    service, root: Path, http, clock, who: str, role: str, *, hospital: str = "H001"
) -> device.PersonalWallet:
    """A staff member of ``hospital`` (department 69: no clinical department) enrolled by
    the hospital and given their wallet."""
    code = service.enrol(hospital, who, kind="clinician", role=role, dept="69").code
    return device_wallet(root, http, clock, who, code)
