"""The department taxonomy, its packaged catalogue and its FHIR CodeSystem."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import pytest

from medshare.records import fhir
from medshare.records.departments import (
    CODESYSTEM_URL,
    Department,
    Taxonomy,
    TaxonomyError,
    UnknownDepartment,
    codesystem,
    packaged_codesystem_json,
    render_codesystem_json,
)

# CI lays shared/ beside the clone: <root>/../shared/data/departments-zh.csv
SOURCE_CSV = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "departments-zh.csv"
CJK = re.compile(r"[\u3000-\u9fff\uff00-\uffef]")


@pytest.fixture(scope="module")
def tax() -> Taxonomy:
    return Taxonomy.default()


def codes(departments: tuple[Department, ...]) -> list[str]:
    return [d.code for d in departments]


# -- the catalogue ------------------------------------------------------------------------


def test_catalogue_has_172_rows_each_with_an_english_label(tax: Taxonomy) -> None:
    assert len(tax) == 172
    for dept in tax:
        assert dept.name_en and dept.name_en == dept.name_en.strip(), dept
        assert not CJK.search(dept.name_en), f"{dept.code}: English label has CJK text"
        assert dept.name_zh and CJK.search(dept.name_zh), dept
    # "其他" (other) appears under many parents; its English labels must still be distinct.
    others = [d.name_en for d in tax if d.name_zh == "其他"]
    assert len(others) == len(set(others)) > 10


@pytest.mark.parametrize(
    ("code", "label"),
    [
        ("03", "Internal medicine"),
        ("0304", "Cardiology (cardiovascular medicine)"),
        ("040101", "Liver transplantation programme"),
        ("50", "Traditional Chinese Medicine"),
        ("5013", "Acupuncture and moxibustion"),
        ("28", "Critical care medicine"),
    ],
)
def test_english_labels(tax: Taxonomy, code: str, label: str) -> None:
    assert tax.get(code).name_en == label


# SHA-256 of json.dumps([(code, parent, name_zh), …], ensure_ascii=False) over the 172 rows
# of shared/data/departments-zh.csv, so the check runs even where shared/ is absent.
SOURCE_DIGEST = "8b0401bc24c2e5d9a6c46363ebe31f2e005f7ee306a0676388a86c69b616054f"


def test_codes_and_chinese_names_match_the_shared_source(tax: Taxonomy) -> None:
    ours = [(r["code"], r["parent"], r["name_zh"]) for r in tax.to_rows()]
    digest = hashlib.sha256(json.dumps(ours, ensure_ascii=False).encode()).hexdigest()
    assert len(ours) == 172 and digest == SOURCE_DIGEST
    if SOURCE_CSV.exists():  # and, beside the shared folder, row by row
        with SOURCE_CSV.open(encoding="utf-8", newline="") as f:
            source = [(r["code"], r["parent"], r["name_zh"]) for r in csv.DictReader(f)]
        assert ours == source


def test_packaged_csv_is_the_code_ordered_round_trip(tax: Taxonomy) -> None:
    packaged = resources.files("medshare.records").joinpath("data", "departments.csv")
    assert tax.to_csv() == packaged.read_text(encoding="utf-8")
    assert Taxonomy.from_csv(tax.to_csv()) == tax


# -- navigation ---------------------------------------------------------------------------


def test_ancestors_path_children_subtree(tax: Taxonomy) -> None:
    assert codes(tax.ancestors("040101")) == ["0401", "04"]
    assert codes(tax.ancestors("03")) == []
    assert codes(tax.path("040101")) == ["04", "0401", "040101"]
    assert codes(tax.path("20")) == ["20"]
    assert codes(tax.children("0401")) == ["040101", "040102", "040103"]
    assert codes(tax.children("17")) == []
    assert len(tax.children("03")) == 11
    sub = codes(tax.subtree("04"))
    assert sub[:3] == ["04", "0401", "040101"] and "040601" in sub and len(sub) == 16
    assert codes(tax.subtree("0304")) == ["0304"]
    assert tax.is_within("040601", "04") and not tax.is_within("0304", "04")
    assert len(tax.roots()) == sum(1 for d in tax if d.is_root) == 35


def test_every_subtree_is_a_contiguous_run_of_codes(tax: Taxonomy) -> None:
    order = [d.code for d in tax]
    for dept in tax:
        sub = codes(tax.subtree(dept.code))
        start = order.index(dept.code)
        assert order[start : start + len(sub)] == sub


def test_unknown_code(tax: Taxonomy) -> None:
    with pytest.raises(UnknownDepartment, match="unknown department code '9999'"):
        tax.ancestors("9999")
    assert "9999" not in tax and "0304" in tax


# -- hospital extensions ------------------------------------------------------------------


def test_add_returns_a_new_taxonomy(tax: Taxonomy) -> None:
    ext = tax.add("030401", "0304", "心律失常亚专科", "Arrhythmia service")
    assert len(ext) == 173 and len(tax) == 172 and "030401" not in tax
    assert codes(ext.path("030401")) == ["03", "0304", "030401"]
    assert codes(ext.subtree("0304")) == ["0304", "030401"]
    deeper = ext.add("03040101", "030401", "房颤中心", "Atrial fibrillation centre")
    assert codes(deeper.ancestors("03040101")) == ["030401", "0304", "03"]


@pytest.mark.parametrize(
    ("code", "parent", "message"),
    [
        ("999901", "9999", "parent 9999 of 999901 does not exist"),
        ("050199", "0304", "code 050199 must extend its parent's code 0304"),
        ("0304", "03", "department code 0304 already exists"),
        ("0399", None, "its parent must be 03, not None"),
        ("040101X", "0401", "its parent must be 040101, not 0401"),
        ("03-01", "03", "must be ASCII letters and digits"),
        ("", "03", "must be ASCII letters and digits"),
    ],
)
def test_add_validates(tax: Taxonomy, code: str, parent: str | None, message: str) -> None:
    with pytest.raises(TaxonomyError, match=re.escape(message)):
        tax.add(code, parent, "名称", "Name")


def test_add_rejects_codes_that_would_make_ancestry_ambiguous(tax: Taxonomy) -> None:
    ext = tax.add("030412", "0304", "甲", "A")
    with pytest.raises(TaxonomyError, match="03041 is a prefix of the existing code 030412"):
        ext.add("03041", "0304", "乙", "B")


def test_add_rejects_empty_names(tax: Taxonomy) -> None:
    with pytest.raises(TaxonomyError, match="name_en of 030401 must be a non-empty string"):
        tax.add("030401", "0304", "心律失常", " ")
    with pytest.raises(TaxonomyError, match="name_zh of 030401"):
        tax.add("030401", "0304", "", "Arrhythmia")


def test_extension_rows_save_and_restore(tax: Taxonomy) -> None:
    ext = tax.add("030401", "0304", "心律失常亚专科", "Arrhythmia service").add(
        "60", None, "互联网医院", "Internet hospital"
    )
    rows = ext.to_rows(exclude=tax)
    assert [r["code"] for r in rows] == ["030401", "60"]
    assert rows[0] == {
        "code": "030401",
        "parent": "0304",
        "name_zh": "心律失常亚专科",
        "name_en": "Arrhythmia service",
    }
    assert tax.extend(reversed(rows)) == ext
    assert Taxonomy.from_rows(ext.to_rows()) == ext
    with pytest.raises(TaxonomyError, match="row 1: missing column"):
        tax.extend([{"code": "030401", "parent": "0304"}])


def test_from_rows_rejects_orphans() -> None:
    rows = [{"code": "0304", "parent": "03", "name_zh": "心", "name_en": "Cardiology"}]
    with pytest.raises(TaxonomyError, match="parent 03 of 0304 does not exist"):
        Taxonomy.from_rows(rows)


# -- CodeSystem ---------------------------------------------------------------------------


def _walk(concepts: list[dict], parent: str | None = None):
    for c in concepts:
        yield parent, c
        yield from _walk(c.get("concept", []), c["code"])


def test_committed_codesystem_equals_the_generated_one() -> None:
    generated = codesystem()
    assert packaged_codesystem_json() == render_codesystem_json(generated)
    assert json.loads(packaged_codesystem_json()) == generated


def test_codesystem_is_valid_fhir_and_hierarchical(tax: Taxonomy) -> None:
    cs = codesystem()
    res = fhir.parse_resource(cs)
    assert res.resource_type == "CodeSystem" and res.model.hierarchyMeaning == "is-a"
    assert cs["url"] == CODESYSTEM_URL and cs["count"] == 172
    nodes = list(_walk(cs["concept"]))
    assert len(nodes) == 172
    for parent, concept in nodes:
        dept = tax.get(concept["code"])
        assert dept.parent == parent
        by_lang = {d["language"]: d["value"] for d in concept["designation"]}
        assert by_lang == {"zh-CN": dept.name_zh, "en": dept.name_en}
        assert concept["display"] == dept.name_zh


def test_codesystem_of_an_extended_taxonomy(tax: Taxonomy) -> None:
    ext = tax.add("030401", "0304", "心律失常亚专科", "Arrhythmia service")
    cs = codesystem(ext, url="https://hospital.example/fhir/CodeSystem/departments")
    fhir.parse_resource(cs)
    assert cs["count"] == 173
    cardiology = next(c for _, c in _walk(cs["concept"]) if c["code"] == "0304")
    assert [c["code"] for c in cardiology["concept"]] == ["030401"]
