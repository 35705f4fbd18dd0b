"""Hypothesis strategies that turn valid encodings into malformed ones, for :mod:`.fuzz`.

Random bytes alone rarely get past a decoder's first check (``not JSON``, ``wrong type``),
so most inputs start from a *valid* encoding and change a little of it: bytes (bit flips,
truncation, extension, splices), JSON structure (a field deleted, swapped with another,
given another type, a huge number, deep nesting, a lone surrogate, a duplicate key) or
text (policy and mnemonic tokens). A few mutations of a valid document reach the checks
deep inside a decoder; random bytes and random text still make up part of every run.

Every strategy draws small integers and choices, never large buffers, so Hypothesis can
generate tens of thousands of examples per target quickly; the seeds carry the size.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "RAW_LITERALS",
    "bytes_mutations",
    "fuzz_bytes",
    "fuzz_doc",
    "fuzz_json",
    "fuzz_text",
    "json_mutations",
    "text_mutations",
]

# JSON text that ``json.dumps`` cannot write (or would write differently): substituted
# verbatim for a placeholder value. Huge integers hit int()'s 4300-digit limit, deep
# nesting the parser's recursion limit, Infinity/NaN the float domain.
RAW_LITERALS: tuple[str, ...] = (
    "1" * 5000,
    "-" + "9" * 400,
    "1" * 400,
    "1e400",
    "-1e400",
    "Infinity",
    "-Infinity",
    "NaN",
    "-0",
    "1.0",
    "1e-400",
    "0x10",
    "[" * 40 + "]" * 40,
    "[" * 1200 + "]" * 1200,
    "[" * 50000 + "]" * 50000,
    '{"a":' * 1200 + "1" + "}" * 1200,
    '"\\ud800"',
    '"\\udfff\\ud800"',
    '"\\u0000"',
    '{"a": 1, "a": 2}',
    "[1, [2, [3]], {}]",
)

# Python values a field may be replaced by: every JSON type, boundaries of common ranges,
# and strings that trip encoders (lone surrogate, line separator, NUL, long text).
INTERESTING_VALUES: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1,
    2,
    255,
    256,
    65536,
    65537,
    2**31 - 1,
    2**31,
    2**32,
    2**53 - 1,
    2**53,
    2**53 + 1,
    2**63,
    2**64,
    -(2**63),
    2**255,
    2**256,
    10**80,
    0.5,
    -0.0,
    1e308,
    "",
    " ",
    "a",
    "0",
    "00",
    "-1",
    "1e3",
    "ff",
    "FF",
    "0x",
    "\ud800",
    "é",
    "\u2028",
    "\x00",
    "[/]",
    "[bold]x",
    "x" * 257,
    "A" * 4000,
    "2024-01-01T00:00:00",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "2024-01-01T00:00:00+00:00",
    [],
    {},
    [None],
    {"": None},
    ["", ""],
    [1, 2],
    [[1, 1]],
    [[0, 65536]],
    [["a", []]],
    {"a": []},
)

# Bytes worth inserting or appending: JSON punctuation, escapes, invalid UTF-8, a varint.
INTERESTING_BYTES: tuple[bytes, ...] = (
    b"\x00",
    b"\xff",
    b"\x80",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    b'"',
    b"\\",
    b"\\u",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"=",
    b"==",
    b"\n",
    b"\r\n",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x80\x80\x80\x80\x10",
)

# Tokens for policy-like and word-list text.
TEXT_TOKENS: tuple[str, ...] = (
    " and ",
    " or ",
    " of ",
    " AND ",
    "(",
    ")",
    ",",
    '"',
    '\\"',
    "\\",
    "2 of (a, b, c)",
    "1 of (",
    "0 of (a)",
    "65 of (",
    "9" * 5000,
    "0" * 50 + "1",
    "a",
    "hospital:H001",
    "dept:0304",
    "role:physician",
    "é",
    "\u2028",
    "\u00a0",
    "\ud800",
    "\x00",
    "\t",
    "\n",
    "[/]",
    "[bold]",
    "(" * 70,
    ")" * 70,
    "(" * 2000,
    " and ".join(["x"] * 1100),
    "abandon",
    "zoo",
    "academic",
    "  ",
)


def _fresh(value: Any) -> Any:
    """A private copy of a shared constant: a later mutation of the document must not
    change the constant (Hypothesis replays draws and requires the same data each time)."""
    return copy.deepcopy(value)


def _paths(doc: Any, limit: int = 4000) -> list[tuple[Any, ...]]:
    """Every path (keys and indices) into ``doc``, breadth-first, at most ``limit``."""
    out: list[tuple[Any, ...]] = [()]
    queue: deque[tuple[tuple[Any, ...], Any]] = deque([((), doc)])
    while queue and len(out) < limit:
        path, node = queue.popleft()
        items: Sequence[tuple[Any, Any]]
        if isinstance(node, dict):
            items = list(node.items())
        elif isinstance(node, list):
            items = list(enumerate(node))
        else:
            continue
        for key, value in items:
            out.append((*path, key))
            queue.append(((*path, key), value))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``doc`` with the value at ``path`` replaced (the root itself when ``path`` is empty)."""
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


def _delete(doc: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return doc
    parent = _get(doc, path[:-1])
    del parent[path[-1]]
    return doc


class _Raw:
    """Placeholders for raw JSON literals, substituted after serialisation."""

    def __init__(self) -> None:
        self.literals: list[str] = []

    def add(self, literal: str) -> str:
        self.literals.append(literal)
        return f"\x00RAW{len(self.literals) - 1}\x00"

    def substitute(self, text: str) -> str:
        for i, literal in enumerate(self.literals):
            text = text.replace(f'"\\u0000RAW{i}\\u0000"', literal)
        return text


def _mutate_string(draw: Callable[[Any], Any], text: str) -> str:
    op = draw(st.integers(0, 8))
    n = len(text)
    i = draw(st.integers(0, max(n - 1, 0)))
    if op == 0 and n:  # change one character
        return text[:i] + draw(st.sampled_from('A/-_+=0aZ"\\é\ud800 .:')) + text[i + 1 :]
    if op == 1:  # truncate
        return text[:i]
    if op == 2 and n:  # drop a character
        return text[:i] + text[i + 1 :]
    if op == 3:  # insert a token
        return text[:i] + draw(st.sampled_from(TEXT_TOKENS)) + text[i:]
    if op == 4:
        return text.upper() if text != text.upper() else text.lower()
    if op == 5:
        return text + text
    if op == 6:
        return text + draw(st.sampled_from(("=", "==", "A", "00", " ", "\n", "é")))
    if op == 7:
        return " " + text + " "
    return text[::-1]


def _mutate_int(draw: Callable[[Any], Any], value: int) -> Any:
    return draw(
        st.sampled_from(
            (
                value + 1,
                value - 1,
                -value,
                value * 2**32,
                value + 2**53,
                str(value),
                float(value),
                [value],
                value + 10**30,
            )
        )
    )


def _json_mutation(draw: Callable[[Any], Any], doc: Any, raw: _Raw, depth: int = 0) -> Any:
    paths = _paths(doc)
    path = paths[draw(st.integers(0, len(paths) - 1))]
    current = _get(doc, path)
    op = draw(st.integers(0, 11))
    if op == 0 and path:  # delete a field or element
        return _delete(doc, path)
    if op == 1:  # another type or a boundary value
        return _set(doc, path, _fresh(draw(st.sampled_from(INTERESTING_VALUES))))
    if op == 2:  # raw literal: huge number, deep nesting, Infinity, lone surrogate
        return _set(doc, path, raw.add(draw(st.sampled_from(RAW_LITERALS))))
    if op == 3:  # the value of another field (same shape, wrong place)
        other = paths[draw(st.integers(0, len(paths) - 1))]
        return _set(doc, path, json.loads(json.dumps(_get(doc, other))))
    if op == 4 and len(paths) > 2:  # swap two values
        other = paths[draw(st.integers(1, len(paths) - 1))]
        if other[: len(path)] == path or path[: len(other)] == other:
            return doc
        a, b = _get(doc, path), _get(doc, other)
        _set(doc, path, b)
        return _set(doc, other, a)
    if op == 5 and isinstance(current, dict):  # an unknown field
        key = draw(st.sampled_from(("extra", "", "format", "type", "version", "\ud800", "0")))
        current[key] = _fresh(draw(st.sampled_from(INTERESTING_VALUES)))
        return doc
    if op == 6 and isinstance(current, str):
        # a string that holds a document of its own (a key inside a key file) is mutated
        # as JSON first, one level down
        if depth == 0 and current.lstrip().startswith("{") and draw(st.booleans()):
            try:
                inner = json.loads(current)
            except ValueError:
                inner = None
            if isinstance(inner, dict):
                inner_raw = _Raw()
                inner = _json_mutation(draw, inner, inner_raw, depth + 1)
                return _set(doc, path, inner_raw.substitute(json.dumps(inner)))
        return _set(doc, path, _mutate_string(draw, current))
    if op == 7 and isinstance(current, int) and not isinstance(current, bool):
        return _set(doc, path, _mutate_int(draw, current))
    if op == 8 and isinstance(current, list) and current:  # duplicate or reorder elements
        if draw(st.booleans()):
            current.append(json.loads(json.dumps(current[draw(st.integers(0, len(current) - 1))])))
        else:
            current.reverse()
        return doc
    if op == 9:  # wrap the value
        return _set(doc, path, draw(st.sampled_from(([current], {"value": current}))))
    if op == 10 and path and isinstance(path[-1], str):  # rename a key
        parent = _get(doc, path[:-1])
        value = parent.pop(path[-1])
        parent[_mutate_string(draw, path[-1])] = value
        return doc
    # default: a fresh small value of any JSON type
    return _set(doc, path, draw(_json_values))


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=8,
)


def _dump(draw: Callable[[Any], Any], doc: Any, raw: _Raw) -> bytes:
    compact = draw(st.booleans())
    text = json.dumps(
        doc,
        sort_keys=draw(st.booleans()),
        indent=None if compact else 1,
        separators=(",", ":") if compact else None,
        ensure_ascii=draw(st.booleans()),
    )
    # surrogatepass: a lone surrogate becomes the invalid UTF-8 a hostile file can hold
    return raw.substitute(text).encode("utf-8", "surrogatepass")


@st.composite
def json_mutations(draw: Callable[[Any], Any], seeds: Sequence[bytes]) -> bytes:
    """One to three structural changes to a seed that parses as JSON, re-serialised."""
    seed = draw(st.sampled_from(seeds))
    try:
        doc = json.loads(seed)
    except ValueError:
        return seed
    raw = _Raw()
    for _ in range(draw(st.integers(1, 3))):
        doc = _json_mutation(draw, doc, raw)
    return _dump(draw, doc, raw)


@st.composite
def bytes_mutations(draw: Callable[[Any], Any], seeds: Sequence[bytes]) -> bytes:
    """One to four byte-level changes: flips, truncation, extension, insertion, splices."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        op = draw(st.integers(0, 8))
        i = draw(st.integers(0, max(n - 1, 0)))
        if op == 0 and n:  # flip a bit
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and n:  # set a byte
            data[i] = draw(st.sampled_from((0, 0x20, 0x22, 0x30, 0x41, 0x5C, 0x7F, 0x80, 0xFF)))
        elif op == 2:  # truncate
            del data[i:]
        elif op == 3:  # extend
            data += draw(st.sampled_from(INTERESTING_BYTES) | st.binary(max_size=16))
        elif op == 4:  # insert
            data[i:i] = draw(st.sampled_from(INTERESTING_BYTES) | st.binary(max_size=8))
        elif op == 5 and n:  # delete a range
            del data[i : i + draw(st.integers(1, 64))]
        elif op == 6 and n:  # duplicate a range
            data[i:i] = data[i : i + draw(st.integers(1, 256))]
        elif op == 7:  # splice with another seed
            other = draw(st.sampled_from(seeds))
            j = draw(st.integers(0, len(other)))
            data = data[:i] + other[j:]
        else:  # swap two bytes
            if n > 1:
                j = draw(st.integers(0, n - 1))
                data[i], data[j] = data[j], data[i]
    return bytes(data)


@st.composite
def text_mutations(draw: Callable[[Any], Any], seeds: Sequence[str]) -> str:
    """One to four token-level changes to a text seed (a policy, a word list)."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 4))):
        words = text.split(" ")
        op = draw(st.integers(0, 4))
        if op == 0 and len(words) > 1:  # drop a word
            del words[draw(st.integers(0, len(words) - 1))]
            text = " ".join(words)
        elif op == 1 and len(words) > 1:  # swap two words
            i, j = (draw(st.integers(0, len(words) - 1)) for _ in range(2))
            words[i], words[j] = words[j], words[i]
            text = " ".join(words)
        elif op == 2:  # a word from another seed
            other = draw(st.sampled_from(seeds)).split(" ")
            words[draw(st.integers(0, len(words) - 1))] = draw(st.sampled_from(other))
            text = " ".join(words)
        else:
            text = _mutate_string(draw, text)
    return text


def fuzz_bytes(seeds: Sequence[bytes], *, structured: bool = True) -> st.SearchStrategy[bytes]:
    """Malformed bytes from ``seeds``: mostly mutations, sometimes random or a seed as is.

    ``structured`` adds JSON mutations (for documents); without it only bytes change.
    """
    parts = [bytes_mutations(seeds), bytes_mutations(seeds), st.binary(max_size=512)]
    if structured:
        parts += [json_mutations(seeds)] * 4
        parts.append(json_mutations(seeds).flatmap(lambda b: bytes_mutations([b])))
    parts.append(st.sampled_from(seeds))
    return st.one_of(*parts)


def fuzz_json(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """Like :func:`fuzz_bytes`, weighted further towards structural changes."""
    return fuzz_bytes(seeds, structured=True)


def fuzz_doc(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """For entry points that take a parsed document: mostly structural changes, which
    keep the text parseable, so few examples are spent on the parser in front."""
    return st.one_of(*[json_mutations(seeds)] * 6, bytes_mutations(seeds), st.sampled_from(seeds))


def fuzz_text(seeds: Sequence[str]) -> st.SearchStrategy[str]:
    """Malformed text from ``seeds``: token mutations, random text, huge inputs."""
    return st.one_of(
        text_mutations(seeds),
        text_mutations(seeds),
        text_mutations(seeds),
        st.text(max_size=64),
        st.text(alphabet=st.sampled_from('ab1 ,()"\\:'), max_size=64),
        st.sampled_from(TEXT_TOKENS),
        st.sampled_from(seeds),
    )
