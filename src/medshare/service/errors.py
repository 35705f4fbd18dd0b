"""Errors the service reports to its users: each carries a message fit to print."""

from __future__ import annotations


class ServiceError(Exception):
    """Something the user can fix or must know; never a bug (those stay exceptions)."""


class NotFound(ServiceError):
    """An unknown patient, record, principal or grant."""


class AccessDenied(ServiceError):
    """The request was refused (and, when the requester is known, logged on the ledger)."""


class InvalidInput(ServiceError):
    """Malformed input: a bad key file, share file, date or option."""


class IntegrityError(ServiceError):
    """Stored data does not match the ledger: tampering or corruption."""
