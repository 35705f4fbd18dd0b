"""Ciphertext policies for CP-ABE: parse a boolean formula and compile it to an LSSS matrix.

A Rouselakis–Waters CP-ABE ciphertext is encrypted under an access structure given as a linear
secret sharing scheme (M, rho). Patients write policies as readable formulas such as
``hospital:H001 and (role:physician or 2 of (consent:research, dept:0304, epoch:3))``; this
module turns them into the matrix the scheme needs and tells a decryptor which rows to combine,
with which coefficients.

Design choices, and why:

* AND gates use the "sum" split (child 1 gets ``v || 1 … 1``, child j gets ``-1`` in new
  column j-1), so every child's reconstruction coefficient equals its parent's. A policy built
  from AND and OR only reconstructs with all coefficients 1, which lets decryption multiply
  pairing results instead of raising them to scalars. Only genuine k-of-n gates (1 < k < n)
  use Shamir rows and Lagrange coefficients.
* Limits (1024 leaves, nesting depth 64, 64 alternatives in a k-of-n gate with 1 < k < n)
  are enforced by the parser, with positions, and by the node constructors, so every node that
  exists can be walked recursively without reaching Python's recursion limit, and a hostile
  policy cannot exhaust memory or time. A ciphertext's policy comes from its sender, so the
  limits bound what a receiver spends before it knows whether the ciphertext is any good: a
  k-of-n gate costs n·(k-1) matrix entries and O(k²) reconstruction, and a 1023-of-1024 gate
  used to take seconds to compile, while AND and OR gates cost one entry per child and keep
  the full leaf limit.
* :func:`compile_lsss` walks the tree with an explicit stack and writes each dense row once;
  :func:`row_labels` gives rho without building the matrix, which is all decoding and
  decryption need.
* :func:`canonical` is the single rendering used as AEAD associated data: deterministic, and it
  re-parses to an equal tree.

Pure Python and standard library only: no group operations happen here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from medshare.crypto.errors import InvalidPolicy

MAX_LEAVES = 1024
MAX_DEPTH = 64
# Alternatives of a genuine threshold gate (1 < k < n). At the limits (16 gates of 63 of 64
# under one AND) compiling takes ~22 ms and reconstructing ~10 ms, against ~1.8 s for one
# unbounded 1023-of-1024 gate; AND and OR gates are bounded by MAX_LEAVES only.
MAX_THRESHOLD_CHILDREN = 64

_KEYWORDS = frozenset({"and", "or", "of"})
_BARE = re.compile(r"[A-Za-z0-9_:.@/-]+")
_DIGITS = re.compile(r"[0-9]+")
_ESCAPABLE = '"\\'
# A count longer than this cannot be <= MAX_LEAVES; checked before int() so huge digit strings
# never reach int()'s conversion limit.
_MAX_COUNT_DIGITS = len(str(MAX_LEAVES))


# --------------------------------------------------------------------------------------------
# Policy trees
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attribute:
    """A leaf: satisfied when the key holds exactly this (case-sensitive) attribute name."""

    name: str

    def __post_init__(self) -> None:
        # An empty name cannot be written in a policy, so it could never round-trip.
        if not isinstance(self.name, str) or not self.name:
            raise InvalidPolicy("an attribute name must be a non-empty string")


@dataclass(frozen=True)
class Threshold:
    """A gate satisfied when at least ``k`` children are: AND is ``k = n``, OR is ``k = 1``.

    ``depth`` (gates on the longest path to a leaf) and ``leaf_count`` are computed once at
    construction, so the limits hold for every tree, however it was built, without re-walking.
    """

    k: int
    children: tuple[Node, ...]
    depth: int = field(init=False, repr=False, compare=False)
    leaf_count: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        children = tuple(self.children)
        _check_gate(self.k, children)
        depth = 1 + max(_depth(child) for child in children)
        leaves = sum(_leaf_count(child) for child in children)
        _check_limits(depth, leaves, position=None)
        object.__setattr__(self, "children", children)
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "leaf_count", leaves)


Node = Attribute | Threshold


def _check_gate(k: int, children: tuple[Node, ...]) -> None:
    """Reject malformed gates early, so compile and reconstruct can trust every Threshold."""
    for child in children:
        if not isinstance(child, Attribute | Threshold):
            raise TypeError(f"policy children must be Attribute or Threshold, not {child!r}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"threshold must be an int, not {k!r}")
    if not children:
        raise InvalidPolicy("a gate needs at least one child")
    if not 1 <= k <= len(children):
        raise InvalidPolicy(f"threshold {k} is outside 1..{len(children)}")
    _check_threshold_width(k, len(children), position=None)


def _check_threshold_width(k: int, n: int, position: int | None) -> None:
    """Bound genuine k-of-n gates, whose Shamir rows cost n·(k-1) entries to build."""
    if 1 < k < n and n > MAX_THRESHOLD_CHILDREN:
        raise InvalidPolicy(
            f"threshold {k} of {n} exceeds the limit of {MAX_THRESHOLD_CHILDREN} alternatives "
            f"for a k-of-n gate (AND and OR may have up to {MAX_LEAVES})",
            position,
        )


def _check_limits(depth: int, leaves: int, position: int | None) -> None:
    """One place for the resource limits, shared by the parser and the constructors."""
    if depth > MAX_DEPTH:
        raise InvalidPolicy(f"nesting depth exceeds the limit of {MAX_DEPTH}", position)
    if leaves > MAX_LEAVES:
        raise InvalidPolicy(f"policy has more than the limit of {MAX_LEAVES} attributes", position)


def _depth(node: Node) -> int:
    return 0 if isinstance(node, Attribute) else node.depth


def _leaf_count(node: Node) -> int:
    return 1 if isinstance(node, Attribute) else node.leaf_count


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    """``kind`` is "word", "quoted", a lower-case keyword, a punctuation char, or "end"."""

    kind: str
    text: str
    pos: int


def _describe(token: _Token) -> str:
    """How a token is named in error messages (keywords in the user's own spelling)."""
    if token.kind == "end":
        return "end of policy"
    if token.kind in ("word", "quoted"):
        return f"attribute {token.text!r}"
    return repr(token.text)


def _tokenize(text: str) -> Iterator[_Token]:
    """Yield tokens lazily, so a huge malformed input fails at its first error, not its end."""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "(),":
            yield _Token(ch, ch, i)
            i += 1
        elif ch == '"':
            token, i = _read_quoted(text, i)
            yield token
        else:
            match = _BARE.match(text, i)
            if match is None:
                raise InvalidPolicy(f"unexpected character {ch!r}", i)
            word = match.group()
            kind = word.lower() if word.lower() in _KEYWORDS else "word"
            yield _Token(kind, word, i)
            i = match.end()
    yield _Token("end", "", len(text))


def _read_quoted(text: str, start: int) -> tuple[_Token, int]:
    """Read a double-quoted attribute at ``start``; only ``\\"`` and ``\\\\`` are escapes."""
    chars: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            if not chars:
                raise InvalidPolicy("empty quoted attribute", start)
            return _Token("quoted", "".join(chars), start), i + 1
        if ch == "\\":
            if i + 1 >= len(text):
                break
            if text[i + 1] not in _ESCAPABLE:
                raise InvalidPolicy('invalid escape (only \\" and \\\\ are allowed)', i)
            i += 1
        chars.append(text[i])
        i += 1
    raise InvalidPolicy("unterminated quoted attribute", start)


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


class _Parser:
    """Recursive descent: ``or`` over ``and`` over primaries (attribute, group, threshold).

    Recursion is bounded because every nested group is counted before it is entered.
    """

    def __init__(self, text: str) -> None:
        self._tokens = _tokenize(text)
        self._current = next(self._tokens)
        self._groups = 0
        self._leaves = 0

    def parse(self) -> Node:
        node = self._or()
        if self._current.kind != "end":
            raise InvalidPolicy(f"unexpected {_describe(self._current)}", self._current.pos)
        return node

    def _advance(self) -> _Token:
        token = self._current
        if token.kind != "end":
            self._current = next(self._tokens)
        return token

    def _expect(self, kind: str, wanted: str) -> _Token:
        token = self._current
        if token.kind != kind:
            raise InvalidPolicy(f"expected {wanted} but found {_describe(token)}", token.pos)
        return self._advance()

    def _or(self) -> Node:
        start = self._current.pos
        children = [self._and()]
        while self._current.kind == "or":
            self._advance()
            children.append(self._and())
        return self._chain(1, children, start)

    def _and(self) -> Node:
        start = self._current.pos
        children = [self._primary()]
        while self._current.kind == "and":
            self._advance()
            children.append(self._primary())
        return self._chain(len(children), children, start)

    def _chain(self, k: int, children: list[Node], start: int) -> Node:
        """A chain of one operand is just that operand; longer chains flatten into one gate."""
        return children[0] if len(children) == 1 else self._gate(k, children, start)

    def _gate(self, k: int, children: list[Node], start: int) -> Threshold:
        depth = 1 + max(_depth(child) for child in children)
        _check_limits(depth, 0, start)
        return Threshold(k, tuple(children))

    def _primary(self) -> Node:
        # Inspect before consuming, so the error names this token rather than a later one.
        token = self._current
        if token.kind == "end":
            raise InvalidPolicy(
                "expected an attribute, '(' or a threshold but found end of policy", token.pos
            )
        if token.kind not in ("(", "word", "quoted"):
            raise InvalidPolicy(f"unexpected {_describe(token)}", token.pos)
        self._advance()
        if token.kind == "(":
            return self._group(token)
        if token.kind == "word" and self._current.kind == "of":
            return self._threshold(token)
        return self._leaf(token)

    def _leaf(self, token: _Token) -> Attribute:
        self._leaves += 1
        _check_limits(0, self._leaves, token.pos)
        return Attribute(token.text)

    def _enter(self, token: _Token) -> None:
        self._groups += 1
        _check_limits(self._groups, 0, token.pos)

    def _group(self, open_token: _Token) -> Node:
        self._enter(open_token)
        node = self._or()
        self._expect(")", "')'")
        self._groups -= 1
        return node

    def _threshold(self, count_token: _Token) -> Threshold:
        k = _threshold_count(count_token)
        self._advance()  # 'of'
        open_token = self._current
        self._expect("(", "'(' after 'of'")
        self._enter(open_token)
        children = [self._or()]
        while self._current.kind == ",":
            self._advance()
            children.append(self._or())
        self._expect(")", "',' or ')'")
        self._groups -= 1
        if k is None or k > len(children):
            digits = count_token.text.lstrip("0")
            noun = "alternative" if len(children) == 1 else "alternatives"
            raise InvalidPolicy(
                f"threshold {digits} exceeds the {len(children)} {noun}", count_token.pos
            )
        _check_threshold_width(k, len(children), count_token.pos)
        return self._gate(k, children, count_token.pos)


def _threshold_count(token: _Token) -> int | None:
    """The k of ``k of (...)``; None when it is too long to be satisfiable by any policy."""
    if _DIGITS.fullmatch(token.text) is None:
        raise InvalidPolicy(
            f"expected a threshold count before 'of' but found {_describe(token)}", token.pos
        )
    digits = token.text.lstrip("0")
    if not digits:
        raise InvalidPolicy("threshold must be at least 1", token.pos)
    return None if len(digits) > _MAX_COUNT_DIGITS else int(digits)


def parse(text: str) -> Node:
    """Parse a policy string; any problem raises InvalidPolicy with its 0-based position."""
    if not isinstance(text, str):
        raise TypeError(f"policy must be a str, not {type(text).__name__}")
    if not text.strip():
        raise InvalidPolicy("empty policy", 0)
    return _Parser(text).parse()


# --------------------------------------------------------------------------------------------
# Rendering and evaluation
# --------------------------------------------------------------------------------------------


def _render_name(name: str) -> str:
    """Bare when the tokenizer would read it back as this attribute, quoted otherwise."""
    if _BARE.fullmatch(name) and name.lower() not in _KEYWORDS:
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def canonical(node: Node) -> str:
    """Deterministic rendering that re-parses to an equal tree; used as AEAD associated data.

    Every gate is bracketed, so nesting survives the round trip exactly (chains are only
    flattened by the parser when they were written as one chain).
    """
    if isinstance(node, Attribute):
        return _render_name(node.name)
    parts = [canonical(child) for child in node.children]
    n = len(parts)
    if n > 1 and node.k == n:
        return "(" + " and ".join(parts) + ")"
    if n > 1 and node.k == 1:
        return "(" + " or ".join(parts) + ")"
    return f"{node.k} of ({', '.join(parts)})"


def satisfies(node: Node, attributes: frozenset[str] | set[str]) -> bool:
    """Plain boolean evaluation; the public check made before any pairing is attempted."""
    if isinstance(node, Attribute):
        return node.name in attributes
    satisfied = sum(1 for child in node.children if satisfies(child, attributes))
    return satisfied >= node.k


# --------------------------------------------------------------------------------------------
# LSSS compilation and reconstruction
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lsss:
    """The share-generating matrix M over Z_modulus and its row labelling rho.

    Row i is the ``i``-th leaf in left-to-right order and belongs to attribute ``labels[i]``.
    """

    rows: tuple[tuple[int, ...], ...]
    labels: tuple[str, ...]
    modulus: int

    @property
    def width(self) -> int:
        """Number of columns (1 + the randomness the shares carry)."""
        return len(self.rows[0])


def _check_modulus(node: Node, modulus: int) -> None:
    """Shamir gates need the x-values 1..n distinct and non-zero, i.e. n < modulus (prime)."""
    if isinstance(modulus, bool) or not isinstance(modulus, int) or modulus < 2:
        raise ValueError(f"modulus must be a prime int, not {modulus!r}")
    largest = max(
        (len(gate.children) for gate in _gates(node) if 1 < gate.k < len(gate.children)),
        default=0,
    )
    if largest >= modulus:
        raise ValueError(f"modulus {modulus} is too small for a threshold over {largest} children")


def _gates(node: Node) -> Iterator[Threshold]:
    """Every gate of the tree, pre-order, with an explicit stack (no recursion)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Threshold):
            yield current
            stack.extend(reversed(current.children))


def row_labels(node: Node) -> tuple[str, ...]:
    """rho alone: the leaves' attribute names left to right, one per LSSS row.

    Decoding a ciphertext and decrypting need only these, so they never pay for the matrix.
    """
    labels: list[str] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Attribute):
            labels.append(current.name)
        else:
            stack.extend(reversed(current.children))
    return tuple(labels)


# A row's vector as the segments its ancestors gave it: (first column, values, rest of chain).
# Siblings share their parent's chain, so a gate costs its own new entries, never a copy of
# the prefix it inherits; each dense row is written once, by _dense.
_Chain = tuple[int, tuple[int, ...], "_Chain"] | None


def _vandermonde(n: int, k: int, modulus: int) -> list[tuple[int, ...]]:
    """Rows (x, x^2, …, x^(k-1)) for x = 1..n: n·(k-1) multiplications, no pow per entry."""
    rows = []
    for x in range(1, n + 1):
        power, row = 1, []
        for _ in range(k - 1):
            power = power * x % modulus
            row.append(power)
        rows.append(tuple(row))
    return rows


def _child_chains(gate: Threshold, chain: _Chain, columns: int, modulus: int) -> list[_Chain]:
    """The vectors of a gate's children, given its own vector and its first new column.

    OR copies the vector; AND gives child 1 ``v || (1, …, 1)`` and child j >= 2 only ``-1`` in
    new column j-1 (shares sum to the parent's); k-of-n gives child x ``v || (x, …, x^(k-1))``
    (the parent's share is the polynomial at 0).
    """
    n, k = len(gate.children), gate.k
    if k == 1:
        return [chain] * n
    if k == n:
        rest: list[_Chain] = [(columns + j, (modulus - 1,), None) for j in range(n - 1)]
        return [(columns, (1,) * (n - 1), chain), *rest]
    return [(columns, row, chain) for row in _vandermonde(n, k, modulus)]


def _dense(chain: _Chain, width: int) -> tuple[int, ...]:
    """One row of M; its ancestors' segments sit in disjoint columns, so order is free."""
    row = [0] * width
    while chain is not None:
        start, values, chain = chain
        row[start : start + len(values)] = values
    return tuple(row)


def compile_lsss(node: Node, *, modulus: int) -> Lsss:
    """Compile a policy tree to (M, rho) with the generalised Lewko–Waters construction.

    The tree is walked pre-order with an explicit stack, so columns are numbered exactly as in
    the recursive definition (a gate takes k-1 new columns before its children do). The work
    is the dense matrix itself plus n·(k-1) entries per k-of-n gate, which the limits bound.
    """
    _check_modulus(node, modulus)
    leaves: list[tuple[str, _Chain]] = []
    stack: list[tuple[Node, _Chain]] = [(node, (0, (1,), None))]
    columns = 1
    while stack:
        current, chain = stack.pop()
        if isinstance(current, Attribute):
            leaves.append((current.name, chain))
            continue
        chains = _child_chains(current, chain, columns, modulus)
        columns += current.k - 1
        stack.extend(zip(reversed(current.children), reversed(chains), strict=True))
    rows = tuple(_dense(chain, columns) for _, chain in leaves)
    return Lsss(rows=rows, labels=tuple(name for name, _ in leaves), modulus=modulus)


def _lagrange_at_zero(xs: Sequence[int], modulus: int) -> list[int]:
    """Coefficients c_j with f(0) = sum c_j f(x_j) for any f of degree < len(xs).

    c_j = prod(x_m) / x_j / prod_{m != j}(x_m - x_j). The x-values are child positions, at
    most MAX_THRESHOLD_CHILDREN, so the products are exact small integers reduced once, and
    the k denominators share one modular inversion (a pow costs as much as ~100 products).
    """
    total = math.prod(xs)
    numerators = [total // xj for xj in xs]
    denominators = [math.prod(xm - xj for xm in xs if xm != xj) % modulus for xj in xs]
    inverses = _batch_inverse(denominators, modulus)
    return [n * inv % modulus for n, inv in zip(numerators, inverses, strict=True)]


def _batch_inverse(values: Sequence[int], modulus: int) -> list[int]:
    """Montgomery's trick: the inverses of non-zero values mod a prime with one pow."""
    prefix = [1]
    for value in values:
        prefix.append(prefix[-1] * value % modulus)
    inverse = pow(prefix[-1], -1, modulus)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inverse * prefix[i] % modulus
        inverse = inverse * values[i] % modulus
    return out


def _gate_coefficients(node: Threshold, xs: Sequence[int], modulus: int) -> list[int]:
    """OR copies the vector and AND sums the shares, so both use 1; only Shamir needs Lagrange."""
    if node.k in (1, len(node.children)):
        return [1] * len(xs)
    return _lagrange_at_zero(xs, modulus)


_Plan = list[tuple[int, int]]  # (row index, coefficient relative to the subtree's share)


def _plan(
    node: Node, attributes: frozenset[str] | set[str], start: int, modulus: int
) -> _Plan | None:
    """The fewest rows reconstructing this subtree's share, or None if it is not satisfied.

    Subtrees own disjoint rows, so the minimum decomposes: an AND needs the sum of its
    children's minima, a k-of-n gate the k cheapest satisfied children (ties: leftmost).
    """
    if isinstance(node, Attribute):
        return [(start, 1)] if node.name in attributes else None
    candidates: list[tuple[int, int, _Plan]] = []
    offset = start
    for x, child in enumerate(node.children, start=1):
        plan = _plan(child, attributes, offset, modulus)
        if plan is not None:
            candidates.append((len(plan), x, plan))
        offset += _leaf_count(child)
    if len(candidates) < node.k:
        return None
    chosen = sorted(candidates, key=lambda c: (c[0], c[1]))[: node.k]
    factors = _gate_coefficients(node, [x for _, x, _ in chosen], modulus)
    return [
        (row, coefficient * factor % modulus)
        for factor, (_, _, plan) in zip(factors, chosen, strict=True)
        for row, coefficient in plan
    ]


def reconstruct(
    node: Node, attributes: frozenset[str] | set[str], *, modulus: int
) -> dict[int, int] | None:
    """Reconstruction coefficients {row: omega} over the fewest satisfying rows, or None.

    ``sum(omega_i * M_i) == (1, 0, …, 0) mod modulus`` for ``M = compile_lsss(node).rows``.
    """
    _check_modulus(node, modulus)
    plan = _plan(node, attributes, 0, modulus)
    return None if plan is None else dict(sorted(plan))
