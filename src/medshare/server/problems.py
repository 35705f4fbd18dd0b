"""Errors over HTTP as RFC 9457 problem details, never as stack traces.

Why one table: every route raises the service's own errors (and the signed-request
verifier's); mapping them here, once, keeps each route's code about its job and makes
sure an unforeseen exception still answers a plain 500 with no internals.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from medshare.api.signed_requests import RequestRefused
from medshare.crypto.errors import CryptoError
from medshare.crypto.issuance import SessionsExhausted
from medshare.ledger.port import LedgerUnavailable, TxRejected
from medshare.service.errors import AccessDenied, IntegrityError, InvalidInput, NotFound

MEDIA_TYPE = "application/problem+json"

# service error -> (HTTP status, title)
STATUS: dict[type[Exception], tuple[int, str]] = {
    InvalidInput: (400, "invalid input"),
    CryptoError: (400, "invalid cryptographic input"),
    SessionsExhausted: (429, "too many issuance sessions"),
    AccessDenied: (403, "access denied"),
    NotFound: (404, "not found"),
    TxRejected: (409, "refused by the ledger"),
    IntegrityError: (502, "stored data fails its integrity check"),
    LedgerUnavailable: (503, "ledger unavailable"),
}


def problem(status: int, title: str, detail: str) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE)


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` as a problem document."""

    @app.exception_handler(RequestRefused)
    async def refused(_: Request, exc: RequestRefused) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(
            f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()[:5]
        )
        return problem(422, "invalid request", where or "the request does not validate")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), str(exc.detail))

    for kind, (status, title) in STATUS.items():
        app.add_exception_handler(kind, _handler(status, title))

    @app.exception_handler(Exception)
    async def anything(_: Request, exc: Exception) -> JSONResponse:
        return problem(500, "internal error", "the server could not handle this request")


def _handler(status: int, title: str):
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return problem(status, title, str(exc))

    return handle
