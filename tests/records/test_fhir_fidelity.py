"""A record comes back as the hospital submitted it: the text of each resource (a file, an
NDJSON line, a Bundle entry's resource) is what is encrypted and returned, so a FHIR
decimal keeps its precision (``0.0`` stays ``0.0``, ``1.50`` stays ``1.50``); canonical
JSON is for the ledger digest only."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from medshare.records import canonical, fhir

PATIENT = '{"resourceType": "Patient", "id": "p-fid", "name": [{"family": "Lovelace"}]}'
OBSERVATION = (
    '{"resourceType":"Observation","id":"o-fid","status":"final",'
    '"code":{"text":"serum sodium — 钠"},"subject":{"reference":"Patient/p-fid"},'
    '"valueQuantity":{"value":0.0,"unit":"mmol/L"},'
    '"referenceRange":[{"low":{"value":1.50},"high":{"value":145.000}}]}'
)


def _bundle_text() -> str:
    """A pretty-printed transaction bundle, as an EHR might send it."""
    return (
        '{\n  "resourceType": "Bundle",\n  "type": "collection",\n  "entry": [\n'
        f'    {{"fullUrl": "urn:uuid:a", "resource": {PATIENT}}},\n'
        '    {"resource": {\n      "resourceType": "Observation", "id": "o2",\n'
        '      "status": "final", "code": {"text": "x"},\n'
        '      "subject": {"reference": "urn:uuid:a"},\n'
        '      "valueQuantity": {"value": 0.0}\n    }},\n'
        '    {"request": {"method": "DELETE", "url": "Patient/gone"}}\n'
        "  ]\n}\n"
    )


def test_each_loader_keeps_the_resources_text_as_submitted():
    bundle = fhir.load_any(_bundle_text().encode())
    patient, observation = bundle.resources
    assert patient.submitted == PATIENT.encode()
    assert observation.submitted.endswith(b'{"value": 0.0}\n    }')
    assert json.loads(observation.submitted) == observation.original
    ndjson = fhir.load_any(f"{PATIENT}\n{OBSERVATION}\r\n".encode())
    assert [r.submitted for r in ndjson.resources] == [PATIENT.encode(), OBSERVATION.encode()]
    single = fhir.load_any(("\ufeff\n  " + OBSERVATION + "\n").encode())
    assert single.resources[0].submitted == OBSERVATION.encode()
    # a parsed object has no text of its own: its canonical bytes stand in
    parsed = fhir.parse_resource(json.loads(OBSERVATION))
    assert parsed.submitted == parsed.canonical


def test_the_digest_covers_the_canonical_form_and_the_text_verifies_against_it():
    res = fhir.load_any(OBSERVATION.encode()).resources[0]
    salt = canonical.new_salt()
    digest = canonical.salted_digest(res.canonical, salt)
    assert canonical.verify_record(res.submitted, salt, digest)
    assert canonical.verify_record(res.canonical, salt, digest)  # records stored before
    changed = res.submitted.replace(b'"value":0.0', b'"value":0.1')
    assert not canonical.verify_record(changed, salt, digest)
    assert not canonical.verify_record(b"\xff not json", salt, digest)
    assert not canonical.verify_record(b"[1, 2]", salt, digest)
    assert not canonical.verify_record(b'{"a": 1, "a": 2}', salt, digest)


def test_on_one_line_changes_no_value_and_no_number_as_written():
    text = fhir.entry_resource_texts(_bundle_text())[1]
    line = canonical.on_one_line(text.encode())
    assert b"\n" not in line and b"\t" not in line
    assert json.loads(line) == json.loads(text)
    assert b'"value": 0.0' in line


def test_entry_texts_name_entries_without_a_resource_as_none():
    assert fhir.entry_resource_texts(_bundle_text())[2] is None
    assert fhir.entry_resource_texts('{"resourceType": "Bundle", "entry": []}') == []
    assert fhir.entry_resource_texts('{"resourceType": "Bundle"}') == []


_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=8),
)
_VALUE = st.recursive(
    _LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(
    resources=st.lists(st.dictionaries(st.text(max_size=5), _VALUE, max_size=4), max_size=4),
    indent=st.sampled_from([None, 0, 1, 4, "\t"]),
    ensure_ascii=st.booleans(),
)
def test_entry_texts_are_the_entries_exactly(resources, indent, ensure_ascii):
    doc = {"resourceType": "Bundle", "entry": [{"resource": r, "fullUrl": "x"} for r in resources]}
    text = json.dumps(doc, indent=indent, ensure_ascii=ensure_ascii)
    found = fhir.entry_resource_texts(text)
    assert [json.loads(t) for t in found] == resources
    for source in found:
        assert source in text  # a substring of the submitted text, not a re-serialisation
