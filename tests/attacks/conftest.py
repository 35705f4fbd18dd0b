"""Tests that drive a hospital server in-process run at the recursion limit its own
process has (``hospital serve`` pins it): another test module of the same worker may have
imported ``py_ecc`` (through web3), which raises the limit to 100,000 on import, and a
deeply nested JSON body would then overflow a request thread's C stack instead of being
refused with a RecursionError."""

from __future__ import annotations

import sys

import pytest

from medshare.server.app import SERVER_RECURSION_LIMIT


@pytest.fixture(autouse=True)
def as_in_the_server_process():
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(SERVER_RECURSION_LIMIT)
    yield
    sys.setrecursionlimit(before)
