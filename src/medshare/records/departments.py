"""The clinical department tree: hospital → department → specialty → programme.

The default tree is the mainland-China catalogue of clinical departments,
《医疗机构诊疗科目名录》 (Ministry of Health 1994, 卫医发〔1994〕27号, Annex 1) with the later
top-level additions 27 疼痛科 (pain medicine) and 28 重症医学科 (critical care medicine):
172 codes, shipped as ``data/departments.csv`` (code, parent, name_zh, name_en). The codes
and Chinese names are transcribed from the regulation; the English labels are ours.

Codes are *prefix codes*: a child's code extends its parent's (``0304`` cardiology under
``03`` internal medicine, ``040101`` liver transplantation under ``0401`` general
surgery), so sorted order is pre-order and every subtree is a contiguous run of codes —
the property the KAC slot allocation relies on (DESIGN §3.3). Hospitals add their own
sub-departments with :meth:`Taxonomy.add`, which keeps that invariant, and save them with
:meth:`Taxonomy.to_rows` (``exclude=Taxonomy.default()`` gives only their additions).

The tree is also published as a FHIR R4 CodeSystem (:func:`codesystem`) whose canonical
URL is :data:`CODESYSTEM_URL`. That URL is a placeholder under the reserved ``.example``
domain: it names *our* code system (the official codes plus our English designations and
any hospital extensions), not the regulation itself, and never needs to resolve. If the
project acquires a domain, change :data:`CODESYSTEM_URL`, bump :data:`CODESYSTEM_VERSION`
and regenerate ``data/departments-codesystem.json`` with
``python -m medshare.records.departments``.

Everything here is pure: a :class:`Taxonomy` never changes; :meth:`Taxonomy.add` returns a
new one.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

CODESYSTEM_URL = "https://medshare.example/fhir/CodeSystem/departments"
CODESYSTEM_VERSION = "1.0.0"
CSV_COLUMNS = ("code", "parent", "name_zh", "name_en")
DATA_PACKAGE = "medshare.records"
CATALOGUE_FILE = "departments.csv"
CODESYSTEM_FILE = "departments-codesystem.json"

_CODE_RE = re.compile(r"[0-9A-Za-z]+")
_DESIGNATION_USE = {
    "system": "http://terminology.hl7.org/CodeSystem/designation-usage",
    "code": "display",
}


class TaxonomyError(ValueError):
    """A department row or addition that would break the tree (the message says which rule)."""


class UnknownDepartment(KeyError):
    """A department code that is not in the taxonomy."""

    def __str__(self) -> str:
        return f"unknown department code {self.args[0]!r}"


@dataclass(frozen=True, slots=True)
class Department:
    """One node of the tree. ``parent`` is ``None`` for a top-level department."""

    code: str
    parent: str | None
    name_zh: str
    name_en: str

    @property
    def is_root(self) -> bool:
        return self.parent is None


class Taxonomy:
    """An immutable, validated department tree.

    ``ancestors`` are nearest-first (parent, grandparent, …); ``path`` is root → code;
    ``subtree`` is the code followed by all its descendants in pre-order (= code order).
    """

    __slots__ = ("_by_code", "_children", "_order")

    def __init__(self, departments: Iterable[Department]) -> None:
        by_code: dict[str, Department] = {}
        # Parents before children: with prefix codes, sorting by (length, code) guarantees it.
        for dept in sorted(departments, key=lambda d: (len(d.code), d.code)):
            _check_new(by_code, dept)
            by_code[dept.code] = dept
        order = tuple(sorted(by_code))
        children: dict[str | None, list[str]] = {}
        for code in order:
            children.setdefault(by_code[code].parent, []).append(code)
        self._by_code: Mapping[str, Department] = by_code
        self._order: tuple[str, ...] = order
        self._children: Mapping[str | None, tuple[str, ...]] = {
            k: tuple(v) for k, v in children.items()
        }

    # -- construction -------------------------------------------------------------------

    @classmethod
    def default(cls) -> Taxonomy:
        """The packaged catalogue (172 departments), loaded once per process."""
        return _default_taxonomy()

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, str | None]]) -> Taxonomy:
        """Build a whole tree from rows with keys ``code, parent, name_zh, name_en``."""
        return cls(_department_from_row(i, row) for i, row in enumerate(rows, start=1))

    @classmethod
    def from_csv(cls, text: str) -> Taxonomy:
        """Build a whole tree from CSV text with the header ``code,parent,name_zh,name_en``."""
        return cls.from_rows(_read_csv(text))

    def extend(self, rows: Iterable[Mapping[str, str | None]]) -> Taxonomy:
        """This tree plus a hospital's saved extension rows (in any order)."""
        added = [_department_from_row(i, row) for i, row in enumerate(rows, start=1)]
        return Taxonomy([*self, *added])

    def add(self, code: str, parent: str | None, name_zh: str, name_en: str) -> Taxonomy:
        """A new tree with one more department.

        Rules: ``parent`` must exist (``None`` adds a top-level department); ``code`` must be
        ASCII letters/digits, unique, and extend the parent's code (``030401`` under
        ``0304``); no other existing code may be a prefix of it or start with it; both names
        must be non-empty.
        """
        dept = _make_department(code, parent, name_zh, name_en)
        _check_new(self._by_code, dept)
        return Taxonomy([*self, dept])

    # -- export ---------------------------------------------------------------------------

    def to_rows(self, *, exclude: Taxonomy | None = None) -> list[dict[str, str]]:
        """Rows in code order; with ``exclude``, only departments absent from it (or changed)."""
        return [
            {
                "code": d.code,
                "parent": d.parent or "",
                "name_zh": d.name_zh,
                "name_en": d.name_en,
            }
            for d in self
            if exclude is None or exclude._by_code.get(d.code) != d
        ]

    def to_csv(self, *, exclude: Taxonomy | None = None) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.to_rows(exclude=exclude))
        return out.getvalue()

    # -- queries --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[Department]:
        return (self._by_code[c] for c in self._order)

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Taxonomy) and dict(self._by_code) == dict(other._by_code)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Taxonomy({len(self)} departments)"

    def get(self, code: str) -> Department:
        try:
            return self._by_code[code]
        except KeyError:
            raise UnknownDepartment(code) from None

    def roots(self) -> tuple[Department, ...]:
        return tuple(self._by_code[c] for c in self._children.get(None, ()))

    def children(self, code: str) -> tuple[Department, ...]:
        self.get(code)
        return tuple(self._by_code[c] for c in self._children.get(code, ()))

    def ancestors(self, code: str) -> tuple[Department, ...]:
        """Parent, grandparent, … up to the top-level department (empty for a root)."""
        out: list[Department] = []
        parent = self.get(code).parent
        while parent is not None:
            dept = self._by_code[parent]
            out.append(dept)
            parent = dept.parent
        return tuple(out)

    def path(self, code: str) -> tuple[Department, ...]:
        """Top-level department → … → ``code`` (inclusive)."""
        return (*reversed(self.ancestors(code)), self.get(code))

    def subtree(self, code: str) -> tuple[Department, ...]:
        """``code`` and all its descendants, in pre-order."""
        out: list[Department] = []
        stack = [code]
        self.get(code)
        while stack:
            current = stack.pop()
            out.append(self._by_code[current])
            stack.extend(reversed(self._children.get(current, ())))
        return tuple(out)

    def is_within(self, code: str, ancestor: str) -> bool:
        """True if ``code`` is ``ancestor`` or lies below it."""
        return ancestor == code or any(d.code == ancestor for d in self.ancestors(code))


def _make_department(
    code: object, parent: object, name_zh: object, name_en: object, *, where: str = ""
) -> Department:
    prefix = f"{where}: " if where else ""
    if not isinstance(code, str) or not _CODE_RE.fullmatch(code):
        raise TaxonomyError(f"{prefix}code {code!r} must be ASCII letters and digits")
    if parent is not None and (not isinstance(parent, str) or not _CODE_RE.fullmatch(parent)):
        raise TaxonomyError(f"{prefix}parent {parent!r} of {code} is not a department code")
    for field, name in (("name_zh", name_zh), ("name_en", name_en)):
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise TaxonomyError(
                f"{prefix}{field} of {code} must be a non-empty string without outer spaces"
            )
    return Department(code, parent, name_zh, name_en)  # type: ignore[arg-type]


def _department_from_row(index: int, row: Mapping[str, str | None]) -> Department:
    missing = [c for c in CSV_COLUMNS if c not in row]
    if missing:
        raise TaxonomyError(f"row {index}: missing column(s) {', '.join(missing)}")
    return _make_department(
        row["code"], row["parent"] or None, row["name_zh"], row["name_en"], where=f"row {index}"
    )


def _check_new(existing: Mapping[str, Department], dept: Department) -> None:
    """The tree rules for adding ``dept`` to ``existing`` (parents already present)."""
    code, parent = dept.code, dept.parent
    if code in existing:
        raise TaxonomyError(f"department code {code} already exists ({existing[code].name_en})")
    if parent is not None:
        if parent not in existing:
            raise TaxonomyError(f"parent {parent} of {code} does not exist")
        if not (code.startswith(parent) and len(code) > len(parent)):
            raise TaxonomyError(f"code {code} must extend its parent's code {parent}")
    # Prefix codes: the longest existing prefix of `code` must be its parent, and no existing
    # code may lie "below" the new one, or ancestry by prefix would be ambiguous.
    prefixes = [code[:n] for n in range(len(code) - 1, 0, -1) if code[:n] in existing]
    if (prefixes[0] if prefixes else None) != parent:
        raise TaxonomyError(
            f"code {code} extends {prefixes[0]}, so its parent must be {prefixes[0]}, not {parent}"
        )
    below = next((c for c in existing if c.startswith(code)), None)
    if below is not None:
        raise TaxonomyError(f"code {code} is a prefix of the existing code {below}")


def _read_csv(text: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
        raise TaxonomyError(f"CSV header must be {','.join(CSV_COLUMNS)}, got {reader.fieldnames}")
    return list(reader)


def _data_file(name: str) -> Any:
    return resources.files(DATA_PACKAGE).joinpath("data", name)


@cache
def _default_taxonomy() -> Taxonomy:
    return Taxonomy.from_csv(_data_file(CATALOGUE_FILE).read_text(encoding="utf-8"))


# -- FHIR CodeSystem ----------------------------------------------------------------------


def codesystem(
    taxonomy: Taxonomy | None = None,
    *,
    url: str = CODESYSTEM_URL,
    version: str = CODESYSTEM_VERSION,
) -> dict[str, Any]:
    """The tree as a FHIR R4 CodeSystem (JSON dict): nested ``concept``, ``is-a`` hierarchy,
    ``display`` in Chinese (the official name) and ``designation`` in zh-CN and en.

    A hospital publishing its extended tree should pass its own ``url`` (or ``version``).
    """
    tax = taxonomy if taxonomy is not None else Taxonomy.default()

    def concept(dept: Department) -> dict[str, Any]:
        node: dict[str, Any] = {
            "code": dept.code,
            "display": dept.name_zh,
            "designation": [
                {"language": "zh-CN", "use": _DESIGNATION_USE, "value": dept.name_zh},
                {"language": "en", "use": _DESIGNATION_USE, "value": dept.name_en},
            ],
        }
        kids = tax.children(dept.code)
        if kids:
            node["concept"] = [concept(k) for k in kids]
        return node

    return {
        "resourceType": "CodeSystem",
        "id": "medshare-departments",
        "language": "zh-CN",
        "url": url,
        "version": version,
        "name": "MedshareDepartments",
        "title": "Clinical departments (医疗机构诊疗科目名录)",
        "status": "active",
        "experimental": False,
        "publisher": "medshare",
        "description": (
            "Clinical departments of medical institutions in mainland China: 医疗机构诊疗科目名录 "
            "(Ministry of Health 1994, 卫医发〔1994〕27号, Annex 1) with the later additions 27 "
            "疼痛科 and 28 重症医学科. Codes and Chinese names as in the regulation; English "
            "designations by the medshare project. A child's code extends its parent's code."
        ),
        "caseSensitive": True,
        "hierarchyMeaning": "is-a",
        "content": "complete",
        "count": len(tax),
        "concept": [concept(root) for root in tax.roots()],
    }


def render_codesystem_json(cs: Mapping[str, Any]) -> str:
    """The committed file's exact text: 2-space indent, UTF-8 names kept, trailing newline."""
    return json.dumps(cs, ensure_ascii=False, indent=2) + "\n"


def packaged_codesystem_json() -> str:
    """The text of the packaged ``data/departments-codesystem.json``."""
    return _data_file(CODESYSTEM_FILE).read_text(encoding="utf-8")


def main() -> None:
    """Regenerate ``data/departments-codesystem.json`` beside this module (run from a checkout)."""
    target = Path(__file__).with_name("data") / CODESYSTEM_FILE
    target.write_text(render_codesystem_json(codesystem()), encoding="utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
