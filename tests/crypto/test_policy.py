"""Tests for medshare.crypto.policy: parsing, canonical form, and the LSSS guarantees.

The property tests check LSSS correctness (authorised sets reconstruct (1, 0, …, 0)) and
security (unauthorised sets cannot reach it) independently of the module, with a small
Gaussian elimination over GF(p) written here.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medshare.crypto.errors import InvalidPolicy
from medshare.crypto.policy import (
    MAX_DEPTH,
    MAX_LEAVES,
    MAX_THRESHOLD_CHILDREN,
    Attribute,
    Node,
    Threshold,
    canonical,
    compile_lsss,
    parse,
    reconstruct,
    row_labels,
    satisfies,
)

# BLS12-381 scalar field order.
P = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001

A, B, C, D = (Attribute(name) for name in "abcd")


def and_(*children: Node) -> Threshold:
    return Threshold(len(children), children)


def or_(*children: Node) -> Threshold:
    return Threshold(1, children)


# --------------------------------------------------------------------------------------------
# Helpers independent of the module under test
# --------------------------------------------------------------------------------------------


def rank_mod(vectors: list[tuple[int, ...]], p: int) -> int:
    """Rank over GF(p) by Gaussian elimination."""
    matrix = [[x % p for x in v] for v in vectors]
    rank = 0
    width = len(matrix[0]) if matrix else 0
    for col in range(width):
        pivot = next((r for r in range(rank, len(matrix)) if matrix[r][col]), None)
        if pivot is None:
            continue
        matrix[rank], matrix[pivot] = matrix[pivot], matrix[rank]
        inverse = pow(matrix[rank][col], -1, p)
        matrix[rank] = [x * inverse % p for x in matrix[rank]]
        for r in range(len(matrix)):
            if r != rank and matrix[r][col]:
                factor = matrix[r][col]
                matrix[r] = [
                    (x - factor * y) % p for x, y in zip(matrix[r], matrix[rank], strict=True)
                ]
        rank += 1
    return rank


def in_span(vectors: list[tuple[int, ...]], target: tuple[int, ...], p: int) -> bool:
    return rank_mod([*vectors, target], p) == rank_mod(vectors, p)


def target(width: int) -> tuple[int, ...]:
    return (1,) + (0,) * (width - 1)


def combine(rows, omega: dict[int, int], p: int) -> tuple[int, ...]:
    width = len(rows[0])
    return tuple(sum(w * rows[i][col] for i, w in omega.items()) % p for col in range(width))


def leaves(node: Node) -> list[str]:
    if isinstance(node, Attribute):
        return [node.name]
    return [name for child in node.children for name in leaves(child)]


def gate_count_columns(node: Node) -> int:
    if isinstance(node, Attribute):
        return 0
    return node.k - 1 + sum(gate_count_columns(child) for child in node.children)


def error(text: str) -> InvalidPolicy:
    with pytest.raises(InvalidPolicy) as info:
        parse(text)
    return info.value


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def test_parse_single_attribute_with_rich_characters():
    assert parse("hospital:H001") == Attribute("hospital:H001")
    assert parse("  user@x.org/dept-1_a.b  ") == Attribute("user@x.org/dept-1_a.b")


def test_parse_examples():
    assert parse("a and b") == and_(A, B)
    assert parse("a or b") == or_(A, B)
    assert parse("2 of (a, b, c)") == Threshold(2, (A, B, C))
    assert parse("((a))") == A
    assert parse("2 of (a, b or c, c and d)") == Threshold(2, (A, or_(B, C), and_(C, D)))


def test_and_binds_tighter_than_or():
    assert parse("a or b and c") == parse("a or (b and c)") == or_(A, and_(B, C))
    assert parse("a and b or c") == or_(and_(A, B), C)
    assert parse("(a or b) and c") == and_(or_(A, B), C)


def test_chains_flatten_but_explicit_groups_do_not():
    assert parse("a and b and c and d") == and_(A, B, C, D)
    assert parse("a or b or c and d") == or_(A, B, and_(C, D))
    assert parse("(a and b) and c") == and_(and_(A, B), C)


def test_keywords_are_case_insensitive_attributes_are_not():
    assert parse("a AND b Or c") == parse("a and b or c")
    assert parse("2 OF (a, b)") == Threshold(2, (A, B))
    assert parse("Role:X") == Attribute("Role:X") != parse("role:x")
    assert parse("android or order") == or_(Attribute("android"), Attribute("order"))


def test_quoted_attributes():
    assert parse('"Dr. Who" and role:x') == and_(Attribute("Dr. Who"), Attribute("role:x"))
    assert parse(r'"say \"hi\" \\ ok"') == Attribute('say "hi" \\ ok')
    assert parse('"and" or "of"') == or_(Attribute("and"), Attribute("of"))
    assert parse('"(a, b)"') == Attribute("(a, b)")


def test_repeated_attributes_are_separate_leaves():
    node = parse("a and (a or b)")
    assert node == and_(A, or_(A, B))
    lsss = compile_lsss(node, modulus=P)
    assert lsss.labels == ("a", "a", "b")
    assert reconstruct(node, {"a"}, modulus=P) == {0: 1, 1: 1}


def test_numeric_attribute_names_are_not_thresholds():
    assert parse("2 and 3") == and_(Attribute("2"), Attribute("3"))


@pytest.mark.parametrize(
    ("node", "text"),
    [
        (A, "a"),
        (and_(A, B), "(a and b)"),
        (or_(A, B), "(a or b)"),
        (Threshold(2, (A, B, C)), "2 of (a, b, c)"),
        (Threshold(1, (A,)), "1 of (a)"),
        (or_(A, and_(B, C)), "(a or (b and c))"),
        (and_(Attribute("x y"), Attribute("AND")), '("x y" and "AND")'),
        (Attribute('q"\\'), r'"q\"\\"'),
    ],
)
def test_canonical_examples(node, text):
    assert canonical(node) == text
    assert parse(text) == node


def test_canonical_is_insensitive_to_spelling():
    assert canonical(parse("a  AND\tb OR c")) == canonical(parse("(a and b) or c"))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("", 0, "empty policy"),
        ("   ", 0, "empty policy"),
        ("(a and b", 8, "expected ')' but found end of policy"),
        ("a and b)", 7, "unexpected ')'"),
        ("()", 1, "unexpected ')'"),
        ("a and b c", 8, "unexpected attribute 'c'"),
        ("a (b)", 2, "unexpected '('"),
        ("a and", 5, "found end of policy"),
        ("a or", 4, "found end of policy"),
        ("and a", 0, "unexpected 'and'"),
        ("a or OR b", 5, "unexpected 'OR'"),
        ("a and of", 6, "unexpected 'of'"),
        ("0 of (a, b)", 0, "at least 1"),
        ("000 of (a)", 0, "at least 1"),
        ("4 of (a, b, c)", 0, "threshold 4 exceeds the 3 alternatives"),
        ("9" * 5000 + " of (a)", 0, "exceeds the 1 alternative"),
        ("2 of a", 5, "expected '(' after 'of' but found attribute 'a'"),
        ("2 of", 4, "expected '(' after 'of' but found end of policy"),
        ("2 of (a, b", 10, "expected ',' or ')' but found end of policy"),
        ("2 of (a, b,)", 11, "unexpected ')'"),
        ("x of (a, b)", 0, "threshold count"),
        ('a and "b c', 6, "unterminated quoted attribute"),
        ('"abc\\', 0, "unterminated quoted attribute"),
        ('""', 0, "empty quoted attribute"),
        ('"a\\nb"', 2, "invalid escape"),
        ("a & b", 2, "unexpected character '&'"),
    ],
)
def test_parse_errors_name_position_and_problem(text, position, fragment):
    err = error(text)
    assert err.position == position
    assert fragment in str(err)
    assert f"at position {position}" in str(err)


def test_too_many_leaves():
    assert parse(" or ".join(["x"] * MAX_LEAVES)).leaf_count == MAX_LEAVES
    err = error(" or ".join(["x"] * (MAX_LEAVES + 1)))
    assert err.position == len("x or ") * MAX_LEAVES
    assert str(MAX_LEAVES) in str(err)


def nested_and(levels: int) -> str:
    text = "a"
    for _ in range(levels):
        text = f"a and ({text})"
    return text


def test_nesting_depth_limit_on_groups():
    assert parse(nested_and(MAX_DEPTH)).depth == MAX_DEPTH
    err = error(nested_and(MAX_DEPTH + 1))
    assert str(MAX_DEPTH) in str(err)
    err = error("(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1))
    assert err.position == MAX_DEPTH


def test_nesting_depth_limit_on_gates():
    text = "a"
    for _ in range(MAX_DEPTH // 2 + 1):  # two gates per group level
        text = f"a or b and ({text})"
    err = error(text)
    assert "nesting depth" in str(err)
    assert str(MAX_DEPTH) in str(err)


@pytest.mark.parametrize("text", ["(" * 100_000, "(" * 100_000 + "a" + ")" * 100_000])
def test_deep_input_never_escapes_as_recursion_error(text):
    assert error(text).position == MAX_DEPTH


def test_constructors_enforce_gate_rules_and_limits():
    with pytest.raises(InvalidPolicy):
        Threshold(0, (A, B))
    with pytest.raises(InvalidPolicy):
        Threshold(3, (A, B))
    with pytest.raises(InvalidPolicy):
        Threshold(1, ())
    with pytest.raises(InvalidPolicy):
        Attribute("")
    with pytest.raises(TypeError):
        Threshold(1, ("a",))  # type: ignore[arg-type]
    node: Node = A
    for _ in range(MAX_DEPTH):
        node = or_(node, B)
    with pytest.raises(InvalidPolicy, match="nesting depth"):
        or_(node, B)
    wide = or_(*[A] * MAX_LEAVES)
    with pytest.raises(InvalidPolicy, match=str(MAX_LEAVES)):
        or_(wide, B)


def names(n: int, prefix: str = "x") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def threshold_text(k: int, n: int, prefix: str = "x") -> str:
    return f"{k} of ({', '.join(names(n, prefix))})"


@pytest.mark.parametrize(
    ("text", "position"),
    [
        (threshold_text(MAX_LEAVES - 1, MAX_LEAVES), 0),  # the reported 1023 of 1024
        (threshold_text(2, MAX_THRESHOLD_CHILDREN + 1), 0),
        ("a and " + threshold_text(MAX_THRESHOLD_CHILDREN, MAX_THRESHOLD_CHILDREN + 1), 6),
        (f"(a or {threshold_text(3, MAX_THRESHOLD_CHILDREN + 10)})", 6),
    ],
)
def test_threshold_gate_over_the_limit_is_refused(text, position):
    err = error(text)
    assert err.position == position
    assert f"limit of {MAX_THRESHOLD_CHILDREN} alternatives" in str(err)


def test_threshold_limit_holds_for_constructed_trees_too():
    children = tuple(Attribute(name) for name in names(MAX_THRESHOLD_CHILDREN + 1))
    with pytest.raises(InvalidPolicy, match=f"limit of {MAX_THRESHOLD_CHILDREN} alternatives"):
        Threshold(MAX_THRESHOLD_CHILDREN, children)


def test_threshold_limit_spares_and_or_and_gates_at_the_limit():
    """Only genuine k-of-n gates cost n·(k-1) entries; AND and OR keep the leaf limit."""
    n = MAX_THRESHOLD_CHILDREN + 1
    assert parse(threshold_text(n, n)) == Threshold(n, tuple(map(Attribute, names(n))))
    assert parse(threshold_text(1, n)).k == 1
    assert parse(" and ".join(names(MAX_LEAVES))).leaf_count == MAX_LEAVES
    widest = parse(threshold_text(MAX_THRESHOLD_CHILDREN - 1, MAX_THRESHOLD_CHILDREN))
    lsss = compile_lsss(widest, modulus=P)
    assert len(lsss.rows) == MAX_THRESHOLD_CHILDREN
    assert lsss.rows[-1][-1] == pow(MAX_THRESHOLD_CHILDREN, MAX_THRESHOLD_CHILDREN - 2, P)


def test_policies_at_every_limit_at_once_compile_and_reconstruct():
    """1024 leaves in 63-of-64 gates under one AND: the most Shamir rows the limits allow."""
    gates = MAX_LEAVES // MAX_THRESHOLD_CHILDREN
    k = MAX_THRESHOLD_CHILDREN - 1
    node = parse(
        " and ".join(
            f"({threshold_text(k, MAX_THRESHOLD_CHILDREN, f'g{j}_')})" for j in range(gates)
        )
    )
    lsss = compile_lsss(node, modulus=P)
    width = gates + gates * (k - 1)
    assert len(lsss.rows) == MAX_LEAVES
    assert {len(row) for row in lsss.rows} == {width}
    held = set(lsss.labels[1:])  # gate 0 keeps exactly k of its n children, the others all n
    omega = reconstruct(node, held, modulus=P)
    assert combine(lsss.rows, omega, P) == target(width)
    assert reconstruct(node, held - {lsss.labels[1]}, modulus=P) is None


def test_compile_numbers_columns_as_the_recursive_definition():
    """Pre-order column numbering, pinned from the recursive compiler it replaced."""
    lsss = compile_lsss(
        parse("(a and b and c) or 2 of (d, e and f, 3 of (g, h, i, j))"), modulus=101
    )
    assert lsss.rows == (
        (1, 1, 1, 0, 0, 0, 0),
        (0, 100, 0, 0, 0, 0, 0),
        (0, 0, 100, 0, 0, 0, 0),
        (1, 0, 0, 1, 0, 0, 0),
        (1, 0, 0, 2, 1, 0, 0),
        (0, 0, 0, 0, 100, 0, 0),
        (1, 0, 0, 3, 0, 1, 1),
        (1, 0, 0, 3, 0, 2, 4),
        (1, 0, 0, 3, 0, 3, 9),
        (1, 0, 0, 3, 0, 4, 16),
    )
    assert lsss.labels == tuple("abcdefghij")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet='ab2 0()," \\&OoRrAaNnDdFf', max_size=30))
def test_parse_fuzz_only_raises_invalid_policy(text):
    try:
        node = parse(text)
    except InvalidPolicy as err:
        assert err.position is not None
        assert 0 <= err.position <= len(text)
    else:
        assert parse(canonical(node)) == node


# --------------------------------------------------------------------------------------------
# Evaluation and LSSS: examples
# --------------------------------------------------------------------------------------------


def test_satisfies():
    node = parse("hospital:H001 and (role:physician or 2 of (a, b, c))")
    assert satisfies(node, {"hospital:H001", "role:physician"})
    assert satisfies(node, frozenset({"hospital:H001", "a", "c"}))
    assert not satisfies(node, {"hospital:H001", "a"})
    assert not satisfies(node, {"role:physician", "a", "b", "c"})


def test_lsss_matrices_for_each_gate():
    m = P - 1
    assert compile_lsss(parse("a or b"), modulus=P).rows == ((1,), (1,))
    assert compile_lsss(parse("a and b and c"), modulus=P).rows == (
        (1, 1, 1),
        (0, m, 0),
        (0, 0, m),
    )
    lsss = compile_lsss(parse("2 of (a, b, c)"), modulus=P)
    assert lsss.rows == ((1, 1), (1, 2), (1, 3))
    assert lsss.labels == ("a", "b", "c")
    assert lsss.modulus == P


def test_threshold_uses_lagrange_coefficients():
    node = parse("2 of (a, b, c)")
    omega = reconstruct(node, {"b", "c"}, modulus=P)
    assert omega == {1: 3, 2: P - 2}
    assert combine(compile_lsss(node, modulus=P).rows, omega, P) == (1, 0)


@pytest.mark.parametrize("n", [5, 20])
def test_and_policy_reconstructs_with_all_ones(n):
    names = [f"attr{i}" for i in range(n)]
    node = parse(" and ".join(names))
    omega = reconstruct(node, set(names), modulus=P)
    assert omega == dict.fromkeys(range(n), 1)
    assert combine(compile_lsss(node, modulus=P).rows, omega, P) == target(n)
    assert reconstruct(node, set(names[1:]), modulus=P) is None


def test_nested_and_or_also_uses_only_ones():
    node = parse("a and (b or (c and d)) and (a or d)")
    omega = reconstruct(node, {"a", "c", "d"}, modulus=P)
    assert set(omega.values()) == {1}


def test_fewest_rows_prefers_the_cheaper_branch():
    node = parse("(a and b) or c")
    assert reconstruct(node, {"a", "b", "c"}, modulus=P) == {2: 1}
    assert reconstruct(node, {"a", "b"}, modulus=P) == {0: 1, 1: 1}
    node = parse("2 of (a and b, c, d and a, b)")
    assert sorted(reconstruct(node, {"a", "b", "c", "d"}, modulus=P)) == [2, 5]


def test_reconstruct_unsatisfied_is_none():
    assert reconstruct(parse("a and b"), {"a"}, modulus=P) is None
    assert reconstruct(parse("2 of (a, b, c)"), frozenset({"c"}), modulus=P) is None


def test_modulus_validation():
    with pytest.raises(ValueError):
        compile_lsss(A, modulus=1)
    with pytest.raises(ValueError):
        compile_lsss(parse("2 of (a, b, c)"), modulus=3)
    assert compile_lsss(parse("2 of (a, b, c)"), modulus=5).rows == ((1, 1), (1, 2), (1, 3))


# --------------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------------

ALPHABET = ("a", "b", "c", "d", "role:x", "two words")
attribute_sets = st.frozensets(st.sampled_from(ALPHABET))


@st.composite
def policies(draw, depth: int = 4, budget: int = 12) -> Node:
    """Random trees: at most ``depth`` gates deep and ``budget`` leaves, with repeats."""
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        return Attribute(draw(st.sampled_from(ALPHABET)))
    n = draw(st.integers(1, min(4, budget)))
    children: list[Node] = []
    remaining = budget
    for i in range(n):
        share = draw(st.integers(1, remaining - (n - i - 1)))
        child = draw(policies(depth - 1, share))
        children.append(child)
        remaining -= len(leaves(child))
    return Threshold(draw(st.integers(1, n)), tuple(children))


@settings(max_examples=200, deadline=None)
@given(policies())
def test_canonical_round_trip(node):
    text = canonical(node)
    assert parse(text) == node
    assert canonical(parse(text)) == text


@settings(max_examples=200, deadline=None)
@given(policies(), attribute_sets)
def test_lsss_correctness_and_security(node, attributes):
    lsss = compile_lsss(node, modulus=P)
    width = 1 + gate_count_columns(node)
    assert lsss.labels == tuple(leaves(node))
    assert all(len(row) == width for row in lsss.rows)
    assert all(0 <= x < P for row in lsss.rows for x in row)
    assert row_labels(node) == lsss.labels

    omega = reconstruct(node, attributes, modulus=P)
    assert (omega is not None) == satisfies(node, attributes)
    if omega is not None:
        assert all(lsss.labels[i] in attributes for i in omega)
        assert all(0 <= w < P for w in omega.values())
        assert combine(lsss.rows, omega, P) == target(width)
    else:
        authorised = [lsss.rows[i] for i, label in enumerate(lsss.labels) if label in attributes]
        assert not in_span(authorised, target(width), P)


@settings(max_examples=200, deadline=None)
@given(policies(budget=8), attribute_sets)
def test_reconstruct_uses_fewest_rows(node, attributes):
    omega = reconstruct(node, attributes, modulus=P)
    if omega is None:
        return
    lsss = compile_lsss(node, modulus=P)
    goal = target(len(lsss.rows[0]))
    usable = [i for i, label in enumerate(lsss.labels) if label in attributes]
    for size in range(len(omega)):
        for subset in itertools.combinations(usable, size):
            assert not in_span([lsss.rows[i] for i in subset], goal, P)


@st.composite
def wide_gates(draw) -> tuple[Threshold, frozenset[str]]:
    """One genuine k-of-n gate of up to the limit's width, and a random set of its leaves."""
    n = draw(st.integers(3, MAX_THRESHOLD_CHILDREN))
    k = draw(st.integers(2, n - 1))
    gate = Threshold(k, tuple(Attribute(name) for name in names(n)))
    held = draw(st.frozensets(st.sampled_from(names(n)), max_size=n))
    return gate, held


@settings(max_examples=30, deadline=None)
@given(wide_gates())
def test_wide_threshold_gates_reconstruct_iff_k_children_held(case):
    gate, held = case
    lsss = compile_lsss(gate, modulus=P)
    omega = reconstruct(gate, held, modulus=P)
    assert (omega is not None) == (len(held) >= gate.k)
    if omega is not None:
        assert len(omega) == gate.k
        assert combine(lsss.rows, omega, P) == target(gate.k)
