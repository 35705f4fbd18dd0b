"""FHIR ingest: the only module that imports ``fhir.resources`` (release pinned here: R4B).

``fhir.resources`` ≥ 7 defaults to R5 and keeps R4-era models in ``fhir.resources.R4B``
(FHIR 4.3.0, wire-compatible with R4 4.0.1 for every resource we use). Upgrading or
switching the release is a change to the import below and nothing else.

Everything untrusted enters through :func:`parse_resource` (one dispatcher, by
``resourceType``) and the loaders built on it — :func:`iter_bundle`, :func:`iter_ndjson`,
:func:`load_any`. Each returns :class:`Resource` objects that keep the resource's JSON
exactly as it came in (:attr:`Resource.original`) and its RFC 8785 bytes
(:attr:`Resource.canonical`); the FHIR model is validated *from those bytes*, so
validation can never alter what is stored, hashed or exported.

Problems raise :class:`FhirError` naming where they are (``Bundle.entry[3].resource.status``,
NDJSON line numbers) — never a pydantic traceback.

``fhir.resources`` checks structure, cardinality and primitive formats only. It does not
enforce value sets, it accepts ``"true"`` for a boolean and ``"1.5"`` for a decimal, and
invariants are not checked: rules beyond structure are ours to write, as code.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

from fhir.resources.R4B import __fhir_version__, get_fhir_model_class
from fhir.resources.R4B.resource import Resource as _FhirResourceModel
from pydantic import ValidationError

from medshare.records.canonical import (
    CanonicalizationError,
    canonical_bytes,
    no_constants,
    object_without_duplicates,
)
from medshare.records.references import (
    Reference,
    encounter_reference,
    patient_reference,
    unresolved_urns,
)

FHIR_RELEASE = "R4B"
FHIR_VERSION: str = __fhir_version__
BUNDLE_TYPES = frozenset({"transaction", "batch", "collection", "searchset"})
# JSON nesting of one document; real resources (extensions of extensions, nested
# questionnaire items) stay far below it
MAX_DEPTH = 100
# Bad NDJSON lines reported one by one before a file is refused whole
MAX_BAD_LINES = 100
_MAX_REPORTED = 3


class FhirError(ValueError):
    """Input that is not a valid FHIR resource, with where the problem is.

    ``path`` is a FHIRPath-like location (``Observation.component[0].code``); ``line`` is
    the 1-based NDJSON/JSON line when known; ``source`` names the file or stream.
    """

    def __init__(
        self, message: str, *, path: str = "", line: int | None = None, source: str = ""
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.source = source
        super().__init__(message)

    def at(self, *, line: int | None = None, source: str | None = None) -> FhirError:
        """The same error located at an NDJSON line / in a named source."""
        return FhirError(
            self.message,
            path=self.path,
            line=self.line if line is None else line,
            source=self.source if source is None else source,
        )

    def __str__(self) -> str:
        where = " ".join(
            part
            for part in (self.source, f"line {self.line}" if self.line is not None else "")
            if part
        )
        head = ": ".join(part for part in (where, self.path) if part)
        return f"{head}: {self.message}" if head else self.message


@dataclass(frozen=True, eq=False)
class Resource:
    """A validated FHIR resource plus the JSON it came from.

    ``original`` is a private deep copy of the input (treat it as read-only); ``canonical``
    is its RFC 8785 form — what is hashed; ``source`` the exact text it was submitted as
    (an NDJSON line, a file, a Bundle entry's resource) — what is encrypted and exported.
    ``model`` is the ``fhir.resources`` R4B object, built from ``canonical``.
    ``patient``/``encounter`` are the keys (``Patient/<id>``, or the ``fullUrl`` of an
    entry without an id) of the patient and encounter the resource belongs to, with
    bundle ``urn:uuid:`` references resolved; an unresolved reference is kept as written.
    ``location`` says where in the input it was found (``Bundle.entry[3]``, ``line 7``).
    """

    resource_type: str
    id: str | None
    original: dict[str, Any] = field(repr=False)
    canonical: bytes = field(repr=False)
    model: _FhirResourceModel = field(repr=False)
    full_url: str | None = None
    location: str = ""
    patient: str | None = None
    encounter: str | None = None
    source: bytes = field(default=b"", repr=False)

    @property
    def submitted(self) -> bytes:
        """The resource's JSON text exactly as submitted (UTF-8): what is encrypted, stored
        and given back, so a decimal ``0.0`` stays ``0.0``. A resource handed in as a
        parsed object has no text; its canonical bytes stand in."""
        return self.source or self.canonical

    @property
    def key(self) -> str | None:
        """``Type/id``, or the ``fullUrl`` when the resource has no id."""
        return f"{self.resource_type}/{self.id}" if self.id else self.full_url


@dataclass(frozen=True)
class Loaded:
    """What :func:`load_any` found: its ``kind``, the resources, and skipped NDJSON lines."""

    kind: Literal["bundle", "resource", "ndjson"]
    resources: tuple[Resource, ...]
    errors: tuple[FhirError, ...] = ()
    bundle_type: str | None = None


# -- JSON ---------------------------------------------------------------------------------


def loads(text: str | bytes) -> Any:
    """Strict JSON: no duplicate keys, no NaN/Infinity. Raises :class:`FhirError`."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise FhirError(f"not UTF-8 (byte {exc.start})") from None
    try:
        doc = json.loads(
            text, object_pairs_hook=object_without_duplicates, parse_constant=no_constants
        )
    except json.JSONDecodeError as exc:
        raise FhirError(f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    except (ValueError, RecursionError) as exc:
        raise FhirError(f"invalid JSON: {exc}") from None
    _check_depth(doc)
    return doc


def _check_depth(doc: Any) -> None:
    """Refuse JSON nested deeper than :data:`MAX_DEPTH` (an iterative walk).

    The parser takes nesting up to the recursion limit, but copying, canonicalising and
    validating a resource recurse deeper per level: a resource nested a few hundred levels
    deep parsed, then failed with a RecursionError in ``copy.deepcopy`` (issue 12, fuzzing).
    """
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > MAX_DEPTH:
            raise FhirError(f"invalid JSON: nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


# -- one dispatcher -----------------------------------------------------------------------


@cache
def _model_class(resource_type: str) -> type[_FhirResourceModel] | None:
    try:
        cls = get_fhir_model_class(resource_type)
    except (ValueError, KeyError, AttributeError):
        return None
    return cls if issubclass(cls, _FhirResourceModel) else None


def _format_loc(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += "." + ("resourceType" if part == "resource_type" else str(part))
    return out


def _clean(msg: str) -> str:
    msg = re.sub(r"\s+", " ", msg).strip()
    return msg.removeprefix("Value error, ")


def _check_type(obj: Any, path: str) -> str:
    """The ``resourceType`` of a JSON object, or a :class:`FhirError` at ``path``."""
    if not isinstance(obj, Mapping):
        raise FhirError(f"expected a JSON object, got {type(obj).__name__}", path=path)
    rtype = obj.get("resourceType")
    if rtype is None:
        raise FhirError("missing resourceType", path=f"{path}.resourceType" if path else "")
    if not isinstance(rtype, str) or _model_class(rtype) is None:
        raise FhirError(
            f"unknown resourceType {rtype!r} (FHIR {FHIR_VERSION})",
            path=f"{path}.resourceType" if path else "resourceType",
        )
    return rtype


def _canonical(obj: Mapping[str, Any], path: str) -> bytes:
    try:
        return canonical_bytes(obj)
    except CanonicalizationError as exc:
        raise FhirError(str(exc), path=path) from None


def _validate(rtype: str, canonical: bytes, root: str) -> _FhirResourceModel:
    cls = _model_class(rtype)
    assert cls is not None  # checked by _check_type
    try:
        return cls.model_validate_json(canonical)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        shown = "; ".join(
            f"{root}{_format_loc(e['loc'])}: {_clean(e['msg'])}" for e in errors[1:_MAX_REPORTED]
        )
        message = _clean(first["msg"]) + (f"{more}: {shown}" if shown else more)
        raise FhirError(message, path=root + _format_loc(first["loc"])) from None
    except Exception as exc:  # fhir-core raises KeyError/TypeError on some malformed input
        raise FhirError(f"invalid {rtype}: {type(exc).__name__}: {exc}", path=root) from None


def parse_resource(
    obj: Mapping[str, Any] | str | bytes, *, path: str = "", source: str | None = None
) -> Resource:
    """Validate one resource (a JSON object, or its JSON text) and keep its original JSON.

    ``path`` is where the object sits in a larger document (``Bundle.entry[3].resource``);
    error paths start there, or at the resource type for a standalone resource. The
    result's ``patient``/``encounter`` are the references as written (see
    :func:`iter_bundle` for resolution). ``source`` is the object's JSON text as
    submitted, when it was parsed from a larger text (JSON text given as ``obj`` is its
    own source).
    """
    if isinstance(obj, str | bytes | bytearray):
        text = obj if isinstance(obj, str) else bytes(obj).decode("utf-8-sig", "replace")
        obj = loads(obj)
        source = text.removeprefix("\ufeff").strip(" \t\r\n") if source is None else source
    rtype = _check_type(obj, path)
    root = path or rtype
    for i, inner in enumerate(obj.get("contained") or ()):
        _check_type(inner, f"{root}.contained[{i}]")
    original = copy.deepcopy(dict(obj))
    canonical = _canonical(original, root)
    model = _validate(rtype, canonical, root)
    rid = original.get("id")
    return Resource(
        resource_type=rtype,
        id=rid if isinstance(rid, str) else None,
        original=original,
        canonical=canonical,
        model=model,
        location=path,
        patient=patient_reference(original),
        encounter=encounter_reference(original),
        source=source.encode("utf-8") if source is not None else b"",
    )


# -- reference resolution -----------------------------------------------------------------


class _Index:
    """Resolves references among the resources of one bundle."""

    def __init__(self, resources: Iterable[Resource]) -> None:
        self.by_full_url: dict[str, Resource] = {}
        self.by_relative: dict[str, Resource] = {}
        self.by_identifier: dict[tuple[str, str | None, str], Resource] = {}
        for res in resources:
            if res.full_url:
                self.by_full_url[res.full_url] = res
            if res.id:
                self.by_relative.setdefault(f"{res.resource_type}/{res.id}", res)
            for ident in res.original.get("identifier") or ():
                if isinstance(ident, Mapping) and isinstance(ident.get("value"), str):
                    system = ident.get("system") if isinstance(ident.get("system"), str) else None
                    key = (res.resource_type, system, ident["value"])
                    self.by_identifier.setdefault(key, res)

    def resolve(self, ref: Reference) -> Resource | None:
        if ref.raw in self.by_full_url:
            return self.by_full_url[ref.raw]
        if ref.kind in ("relative", "absolute") and ref.relative:
            return self.by_relative.get(ref.relative)
        if ref.kind == "conditional" and ref.type and (ident := ref.identifier):
            return self.by_identifier.get((ref.type, *ident))
        return None


def _link(res: Resource, index: _Index, *, strict_urns: bool) -> Resource:
    """``res`` with ``patient``/``encounter`` resolved through ``index``."""

    def resolve(ref: Reference) -> tuple[str, str] | None:
        target = index.resolve(ref)
        return None if target is None or target.key is None else (target.resource_type, target.key)

    if strict_urns and (missing := unresolved_urns(res.original, resolve)):
        fld, urn = missing[0]
        raise FhirError(f"{urn} matches no fullUrl in this bundle", path=f"{res.location}.{fld}")
    if res.resource_type == "Patient":
        patient = res.key
    else:
        patient = patient_reference(res.original, resolve)
    encounter = encounter_reference(res.original, resolve)
    return replace(res, patient=patient, encounter=encounter)


# -- where each entry's resource stands in a bundle's text --------------------------------

_SCANNER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's four whitespace characters


def entry_resource_texts(text: str) -> list[str | None]:
    """The JSON text of ``entry[i].resource`` for each entry of the bundle in ``text``
    (None where an entry has none), exactly as it stands there.

    ``text`` must have parsed already (:func:`loads`): this only finds where values are,
    skipping each one with the standard library's own JSON scanner, so no value is
    re-interpreted here."""
    found: list[str | None] = []
    resource: list[str | None] = [None]

    def ws(i: int) -> int:
        return _WHITESPACE.match(text, i).end()

    def skip(i: int) -> int:
        return _SCANNER.raw_decode(text, i)[1]

    def members(i: int, on_value: Callable[[str, int], int]) -> int:
        """Walk the object at ``text[i]``; ``on_value(key, start)`` returns each value's end."""
        i = ws(i + 1)
        if text[i] == "}":
            return i + 1
        while True:
            key, i = _SCANNER.raw_decode(text, i)
            i = ws(on_value(key, ws(ws(i) + 1)))  # past the ':' to the value, then past it
            if text[i] == "}":
                return i + 1
            i = ws(i + 1)  # past the ','

    def elements(i: int, on_value: Callable[[int], int]) -> int:
        i = ws(i + 1)
        if text[i] == "]":
            return i + 1
        while True:
            i = ws(on_value(i))
            if text[i] == "]":
                return i + 1
            i = ws(i + 1)

    def entry_member(key: str, i: int) -> int:
        end = skip(i)
        if key == "resource":
            resource[0] = text[i:end]
        return end

    def entry(i: int) -> int:
        resource[0] = None
        end = members(i, entry_member) if text[i] == "{" else skip(i)
        found.append(resource[0])
        return end

    def top_member(key: str, i: int) -> int:
        if key == "entry" and text[i] == "[":
            return elements(i, entry)
        return skip(i)

    start = ws(0)
    if text[start] == "{":
        members(start, top_member)
    return found


# -- loaders ------------------------------------------------------------------------------


def _bundle_dict(bundle: Mapping[str, Any] | str | bytes) -> Mapping[str, Any]:
    if isinstance(bundle, str | bytes | bytearray):
        bundle = loads(bundle)
    if _check_type(bundle, "") != "Bundle":
        raise FhirError(f"expected a Bundle, got {bundle['resourceType']}", path="resourceType")
    return bundle


def iter_bundle(
    bundle: Mapping[str, Any] | str | bytes, *, text: str | None = None
) -> Iterator[Resource]:
    """The resources of a transaction, batch, collection or searchset Bundle.

    The envelope (type, fullUrl, request, search) and every entry are validated before the
    first resource is returned: one bad entry rejects the bundle, as a FHIR server would
    reject a transaction. Entries without a resource (``GET``/``DELETE`` requests) and
    searchset ``outcome`` entries are skipped. ``urn:uuid:`` fullUrls are resolved, so a
    resource's :attr:`Resource.patient` is the Patient entry's key (``Patient/<id>``); a
    ``urn:uuid:`` in a patient field that matches no entry is an error. Conditional
    references (``Organization?identifier=…``) are accepted and resolved by identifier
    when the bundle holds the target. Each resource keeps its JSON text as it stands in
    the bundle (``text``: the bundle's JSON text, when ``bundle`` is already parsed).
    """
    if isinstance(bundle, str | bytes | bytearray):
        text = bundle if isinstance(bundle, str) else bytes(bundle).decode("utf-8-sig")
    doc = _bundle_dict(bundle)
    btype = doc.get("type")
    # a str first: a list or object is unhashable (was a TypeError in the set lookup)
    if not isinstance(btype, str) or btype not in BUNDLE_TYPES:
        raise FhirError(
            f"unsupported Bundle type {btype!r}; expected one of {sorted(BUNDLE_TYPES)}",
            path="Bundle.type",
        )
    entries = doc.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError("entry must be an array", path="Bundle.entry")
    shell = {
        **doc,
        "entry": [
            {k: v for k, v in e.items() if k != "resource"} if isinstance(e, Mapping) else e
            for e in entries
        ],
    }
    if not shell["entry"]:
        del shell["entry"]
    _validate("Bundle", _canonical(shell, "Bundle"), "Bundle")
    sources = entry_resource_texts(text) if text is not None else [None] * len(entries)

    parsed: list[Resource] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        resource = entry.get("resource")
        method = (entry.get("request") or {}).get("method")
        if resource is None:
            if method in ("GET", "HEAD", "DELETE") or btype == "searchset":
                continue
            raise FhirError("entry has no resource", path=where)
        if (entry.get("search") or {}).get("mode") == "outcome":
            continue
        res = parse_resource(resource, path=f"{where}.resource", source=sources[i])
        full_url = entry.get("fullUrl")
        if full_url is not None:
            if full_url in seen:
                raise FhirError(
                    f"fullUrl {full_url} repeats Bundle.entry[{seen[full_url]}]",
                    path=f"{where}.fullUrl",
                )
            seen[full_url] = i
            res = replace(res, full_url=full_url)
        parsed.append(res)
    index = _Index(parsed)
    strict = btype != "searchset"
    linked = [_link(res, index, strict_urns=strict) for res in parsed]
    return iter(linked)


def iter_ndjson(
    lines: Iterable[str | bytes],
    *,
    errors: list[FhirError] | None = None,
    source: str = "",
) -> Iterator[Resource]:
    """Resources from newline-delimited JSON (FHIR Bulk Data / Synthea export), one per line.

    ``lines`` are ``str`` or ``bytes`` (UTF-8), e.g. ``text.split("\\n")`` or an open file;
    ``str.splitlines`` is the wrong splitter, since it also breaks at U+2028 inside strings.

    Blank lines are skipped. A bad line raises :class:`FhirError` with its ``line`` number;
    if an ``errors`` list is given, the error is appended there instead and the remaining
    lines are still read. References are taken as written (bulk exports use relative
    ``Patient/<id>`` references, which are already keys).
    """
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if number == 1 and isinstance(raw, str):
            raw = raw.removeprefix("\ufeff")  # bytes lose their BOM in loads()
        line = raw if isinstance(raw, str) else bytes(raw).decode("utf-8", "replace")
        try:
            res = parse_resource(loads(raw), source=line.strip(" \t\r\n"))
        except FhirError as exc:
            located = exc.at(line=number, source=source)
            if errors is None:
                raise located from None
            if len(errors) >= MAX_BAD_LINES:
                # one report line per bad line, but not without end: past this many the
                # source is refused whole (and nothing of it is stored)
                raise FhirError(
                    f"more than {MAX_BAD_LINES} lines are not valid FHIR; the file is refused "
                    f"(first: {errors[0]})",
                    source=source,
                ) from None
            errors.append(located)
        else:
            yield replace(res, location=f"{source} line {number}".lstrip())


def _looks_like_ndjson(text: str) -> bool:
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) < 2:
        return False
    try:
        return isinstance(loads(lines[0]), Mapping)
    except FhirError:
        return False


def load_any(data: bytes | str | os.PathLike[str]) -> Loaded:
    """Load a Bundle, a single resource, or NDJSON from bytes or a file path.

    Detection: a document that parses as one JSON object is a Bundle (``resourceType``
    ``Bundle``) or a single resource; otherwise, if its first line is a JSON object on its
    own, it is NDJSON, read leniently (bad lines go to :attr:`Loaded.errors`). Anything
    else raises :class:`FhirError`. A ``str`` is a path, never JSON text.
    """
    source = ""
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        source = path.name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FhirError(f"cannot read {path}: {exc.strerror}", source=source) from None
    try:
        text = bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FhirError(f"not UTF-8 (byte {exc.start})", source=source) from None
    if not text.strip():
        raise FhirError("empty input", source=source)
    try:
        doc = loads(text)
    except FhirError as exc:
        if not _looks_like_ndjson(text):
            raise exc.at(source=source) from None
        errors: list[FhirError] = []
        found = tuple(iter_ndjson(text.split("\n"), errors=errors, source=source))
        return Loaded("ndjson", found, tuple(errors))
    try:
        if isinstance(doc, Mapping) and doc.get("resourceType") == "Bundle":
            found = tuple(iter_bundle(doc, text=text))
            return Loaded("bundle", found, bundle_type=doc.get("type"))
        return Loaded("resource", (parse_resource(doc, source=text.strip(" \t\r\n")),))
    except FhirError as exc:
        raise exc.at(source=source) from None


def to_ndjson(resources: Iterable[Resource]) -> bytes:
    """NDJSON export: each resource's canonical bytes on its own line."""
    return b"".join(res.canonical + b"\n" for res in resources)
