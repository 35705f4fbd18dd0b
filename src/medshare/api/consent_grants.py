"""A patient's research consent as a ledger grant: the one body both the patient's wallet
signs and the study's hospital checks.

Why a module of its own: the consent is the patient's act, so the patient's device signs its
``grant`` transaction; the hospital that runs the study makes the de-identified copies and
puts the transaction on the ledger only if it is exactly the consent it would have
written. Both sides build the body and the grant's id here, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

RESEARCH_AREA = "research"


def consent_base(study: str, patient_id: str) -> str:
    """The id a patient's first consent to ``study`` gets; later ones (after a withdrawal)
    get ``<base>/2``, ``<base>/3``, …"""
    return f"consent/{study}/{patient_id}"


def next_consent_id(study: str, patient_id: str, taken: Iterable[str]) -> str:
    """The id of the patient's next consent to ``study``, given the grant ids they have
    (their Consents list them): the first of the sequence not taken."""
    used = set(taken)
    base = consent_base(study, patient_id)
    n = 1
    while (grant := base if n == 1 else f"{base}/{n}") in used:
        n += 1
    return grant


def consent_body(grant_id: str, patient_id: str, study: str, hospital: str) -> dict[str, Any]:
    """The GRANT transaction body of a research consent: the patient lets ``study`` (run at
    ``hospital``) read de-identified copies of their records there."""
    return {
        "grant": grant_id,
        "patient": patient_id,
        "grantee": study,
        "area": RESEARCH_AREA,
        "scope": {"study": study, "hospital": hospital},
    }
