"""The attack tests that drive a hospital server in-process run as the server tests do,
at the server process's recursion limit (see ``server/conftest.py``)."""

from server.conftest import as_in_the_server_process  # noqa: F401  (an autouse fixture)
