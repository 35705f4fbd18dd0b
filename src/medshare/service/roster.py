"""The people a new consortium starts with: each hospital's staff and a researcher.

A real hospital loads its staff from its HR directory; ``medshare init`` needs a few named
people so that every access area has someone to try it. Names are fixed so that the demo
and the documentation can refer to them (``dr.wang@H001`` reads H001's cardiology records).
"""

from __future__ import annotations

from dataclasses import dataclass

_FAMILIES = ("wang", "chen", "zhao", "li", "liu", "yang", "huang", "zhou", "wu", "xu", "sun")


@dataclass(frozen=True)
class StaffMember:
    """A clinician: ``role`` is physician, nurse or emergency; ``dept`` a catalogue code."""

    id: str
    hospital: str
    dept: str
    role: str


RESEARCHER = "researcher@uni"


def default_roster(hospitals: tuple[str, ...]) -> tuple[StaffMember, ...]:
    """Per hospital: an internal-medicine physician and nurse, a surgeon, an ER physician."""
    staff: list[StaffMember] = []
    for i, code in enumerate(hospitals):
        names = [_FAMILIES[(4 * i + k) % len(_FAMILIES)] for k in range(4)]
        staff += [
            StaffMember(f"dr.{names[0]}@{code}", code, "03", "physician"),
            StaffMember(f"nurse.{names[1]}@{code}", code, "03", "nurse"),
            StaffMember(f"dr.{names[2]}@{code}", code, "04", "physician"),
            StaffMember(f"er.{names[3]}@{code}", code, "20", "emergency"),
        ]
    return tuple(staff)
