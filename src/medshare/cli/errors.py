"""One place that turns domain errors into a clear message and an exit code.

Users never see a stack trace: every expected failure (bad input file, wrong key,
unsatisfied policy, missing file) becomes one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from medshare.crypto.errors import (
    CryptoError,
    DecryptionFailed,
    InvalidEncoding,
    PolicyNotSatisfied,
)
from medshare.fileio import UnsafeFileError

EXIT_DENIED = 1
EXIT_BAD_INPUT = 2

_stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print ``error: message`` as one line and return the exit to raise.

    Messages quote user input (a policy, a class list, a file name), so the message is
    escaped before it reaches Rich (a ``[/x]`` in it was read as a closing tag: a
    MarkupError traceback, and ``[bold]`` vanished) and line breaks become spaces."""
    flat = " ".join(message.splitlines())
    _stderr.print(f"[bold red]error:[/] {escape(flat)}", markup=True)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Map expected failures to messages; anything else is a bug and keeps its traceback."""
    try:
        yield
    except PolicyNotSatisfied as exc:
        raise fail(f"not allowed: {exc}", EXIT_DENIED) from None
    except DecryptionFailed as exc:
        raise fail(f"not allowed: {exc}", EXIT_DENIED) from None
    except InvalidEncoding as exc:
        raise fail(f"invalid input: {exc}") from None
    except (CryptoError, ValueError) as exc:
        raise fail(str(exc)) from None
    except UnsafeFileError as exc:
        raise fail(str(exc)) from None
    except FileNotFoundError as exc:
        raise fail(f"no such file: {exc.filename}") from None
    except IsADirectoryError as exc:
        raise fail(f"is a directory: {exc.filename}") from None
    except PermissionError as exc:
        raise fail(f"permission denied: {exc.filename}") from None
    except FileExistsError as exc:
        raise fail(f"refusing to overwrite existing {exc.filename} (use --force)") from None
