"""The five access areas of DESIGN §5 and their strategies, as policy templates.

* **personal** (patient, family, chosen doctors): H-KAC aggregate keys; the patient shares
  one record, a set, a department or everything, with an expiry.
* **institution** (the treating hospital's staff): CP-ABE,
  ``hospital ∧ dept ∧ (physician ∨ nurse)``.
* **collaboration** (a partner hospital on referral): CP-ABE,
  ``referral ∧ partner hospital ∧ physician``, until the referral expires.
* **research** (approved studies): CP-ABE on de-identified copies,
  ``ethics approval ∧ researcher``, only for patients who consented.
* **emergency** (on-duty emergency staff): CP-ABE wraps released only after a committed
  break-glass (reason, time limit), always logged and shown to the patient.

Every CP-ABE policy also carries the authority's key epoch (``epoch:<n>``), and every key
the authority issues carries the same attribute: revoking a key bumps the epoch, so the
revoked key satisfies no live policy while the others are re-issued.

Departments enter institution policies at their top level (``03`` for ``0304``): staff
belong to a clinical department, and a sub-specialty record is read by its department.
Templates are data: a hospital may pass its own (``AreaTemplates(institution=…)``), as
long as the placeholders stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from medshare.crypto import policy
from medshare.records.departments import Taxonomy


class Area(StrEnum):
    PERSONAL = "personal"
    INSTITUTION = "institution"
    COLLABORATION = "collaboration"
    RESEARCH = "research"
    EMERGENCY = "emergency"


def parse_area(value: str) -> Area:
    try:
        return Area(value)
    except ValueError:
        names = ", ".join(a.value for a in Area)
        raise ValueError(f"unknown area {value!r}; the areas are {names}") from None


@dataclass(frozen=True)
class AreaTemplates:
    """Policy templates, one per CP-ABE area; ``{placeholders}`` are filled per scope."""

    institution: str = (
        "hospital:{hospital} and dept:{dept} and (role:physician or role:nurse) and epoch:{epoch}"
    )
    collaboration: str = (
        "referral:{referral} and hospital:{partner} and role:physician and epoch:{epoch}"
    )
    research: str = "ethics:{study} and role:researcher and epoch:{epoch}"
    emergency: str = "area:emergency and role:emergency and epoch:{epoch}"

    @classmethod
    def from_config(cls, overrides: dict[str, str]) -> AreaTemplates:
        """The defaults with a data directory's overrides; each override must parse and keep
        the epoch placeholder (revocation depends on it)."""
        unknown = set(overrides) - {"institution", "collaboration", "research", "emergency"}
        if unknown:
            raise ValueError(f"unknown policy template area(s): {sorted(unknown)}")
        for area, text in overrides.items():
            if "{epoch}" not in text:
                raise ValueError(f"the {area} policy template must contain epoch:{{epoch}}")
        templates = cls(**overrides)
        for area in overrides:
            templates.policy(Area(area), **_SAMPLE_VALUES)  # parses, placeholders known
        return templates

    def policy(self, area: Area, **values: str | int) -> str:
        """The canonical policy text of ``area`` for these values (validated by parsing)."""
        template = getattr(self, area.value, None)
        if template is None:
            raise ValueError(f"the {area.value} area is not enforced by CP-ABE")
        try:
            text = template.format(**values)
        except KeyError as exc:
            raise ValueError(f"the {area.value} policy needs a value for {exc}") from None
        return policy.canonical(policy.parse(text))


_SAMPLE_VALUES = {
    "hospital": "H001",
    "dept": "03",
    "referral": "R1",
    "partner": "H002",
    "study": "S1",
    "epoch": 0,
}


def top_department(dept: str, taxonomy: Taxonomy) -> str:
    """The top-level ancestor of ``dept`` in the consortium's catalogue (``0304`` → ``03``;
    a hospital-added top-level ``60A`` is its own). It names the institution scope a
    record is wrapped in and the ``dept:`` attribute its staff hold. Cutting the code to
    two characters, as this once did, put hospital-added codes ``60A`` and ``60B`` in one
    scope, so 60A's staff read 60B's records (issue 12, finding 9). Raises
    :class:`~medshare.records.departments.UnknownDepartment` for a code not in it."""
    return taxonomy.path(dept)[0].code


def staff_attributes(
    hospital: str, dept: str, role: str, epoch: int, taxonomy: Taxonomy
) -> tuple[str, ...]:
    """Attributes a hospital's authority issues to its own staff member."""
    return (
        f"hospital:{hospital}",
        f"dept:{top_department(dept, taxonomy)}",
        f"role:{role}",
        f"epoch:{epoch}",
    )


CLINICAL_ROLES = ("physician", "nurse")


def staff_entitlement(
    role: str, home: str | None, dept: str | None, authority: str, epoch: int, taxonomy: Taxonomy
) -> tuple[str, ...] | None:
    """What ``authority`` issues to a staff member with ``role`` of hospital ``home`` (in
    department ``dept``), or None for nothing: emergency staff of the consortium get an
    emergency key of every authority; everyone else their own hospital's institution key
    for their department only."""
    if role == "emergency":
        return emergency_attributes(epoch)
    if role not in CLINICAL_ROLES or home != authority or not dept:
        return None  # a records officer ingests; they read nothing through an area
    return staff_attributes(authority, dept, role, epoch, taxonomy)


def partner_attributes(referral: str, partner: str, epoch: int) -> tuple[str, ...]:
    """Attributes for a partner hospital's physician named in a referral."""
    return (f"referral:{referral}", f"hospital:{partner}", "role:physician", f"epoch:{epoch}")


def researcher_attributes(study: str, epoch: int) -> tuple[str, ...]:
    return (f"ethics:{study}", "role:researcher", f"epoch:{epoch}")


def emergency_attributes(epoch: int) -> tuple[str, ...]:
    return ("area:emergency", "role:emergency", f"epoch:{epoch}")


def with_epoch(attributes: tuple[str, ...], epoch: int) -> tuple[str, ...]:
    """The same attributes at another key epoch (for re-issuing after a revocation)."""
    kept = tuple(a for a in attributes if not a.startswith("epoch:"))
    return (*kept, f"epoch:{epoch}")


def satisfied_by(policy_text: str, attributes: tuple[str, ...] | list[str]) -> bool:
    return policy.satisfies(policy.parse(policy_text), frozenset(attributes))


def could_open(policy_text: str, attributes: tuple[str, ...] | list[str]) -> bool:
    """Whether a key with ``attributes`` opens a scope of ``policy_text`` at the key's own
    epoch. A superseded key (an older epoch) no longer satisfies the current policy, but
    it still opens the scope's ciphertext of its epoch, which anyone may have kept, and so
    the KEK in it for as long as that KEK is not rotated (issue 12, finding 3)."""
    epochs = key_epochs(attributes)
    if not epochs:
        return satisfied_by(policy_text, attributes)
    return any(satisfied_by(set_epoch(policy_text, epoch), attributes) for epoch in epochs)


def key_epochs(attributes) -> list[int]:
    """The key epochs a set of attributes names (``epoch:<n>``; malformed ones skipped)."""
    epochs = []
    for attribute in attributes:
        if attribute.startswith("epoch:"):
            try:
                epochs.append(int(attribute.removeprefix("epoch:")))
            except ValueError:
                continue
    return epochs


def set_epoch(policy_text: str, epoch: int) -> str:
    """The same policy at another key epoch: every ``epoch:*`` leaf becomes ``epoch:<n>``."""
    node = policy.parse(policy_text)
    if not _has_epoch(node):
        raise ValueError(f"policy {policy_text!r} carries no epoch attribute")
    return policy.canonical(_replace_epoch(node, f"epoch:{epoch}"))


def _has_epoch(node: policy.Node) -> bool:
    if isinstance(node, policy.Attribute):
        return node.name.startswith("epoch:")
    return any(_has_epoch(child) for child in node.children)


def _replace_epoch(node: policy.Node, name: str) -> policy.Node:
    if isinstance(node, policy.Attribute):
        return policy.Attribute(name) if node.name.startswith("epoch:") else node
    return policy.Threshold(node.k, tuple(_replace_epoch(c, name) for c in node.children))
