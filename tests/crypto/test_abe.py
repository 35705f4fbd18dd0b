"""Tests of the traceable, accountable CP-ABE scheme (medshare.crypto.abe)."""

from __future__ import annotations

import dataclasses
import json

import py_arkworks_bls12381 as backend
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medshare.crypto import abe, encoding
from medshare.crypto.abe import (
    AbeCiphertext,
    AbeMasterKey,
    AbePublicKey,
    AbeUserKey,
    AuditResult,
    Registration,
    Verdict,
    audit,
    check_key,
    decrypt,
    encrypt,
    keygen,
    registry_from_bytes,
    registry_to_bytes,
)
from medshare.crypto.errors import (
    DecryptionFailed,
    InvalidEncoding,
    InvalidKey,
    InvalidPolicy,
    PolicyNotSatisfied,
)
from medshare.crypto.group import (
    G1_BYTES,
    G2_BYTES,
    ORDER,
    encode_g1,
    g1,
    g2,
    mul,
    random_scalar,
)
from medshare.crypto.issuance import AuthorityKeys, IssuanceAuthority, issue_key
from medshare.crypto.policy import (
    MAX_LEAVES,
    MAX_THRESHOLD_CHILDREN,
    Attribute,
    Node,
    Threshold,
    canonical,
    parse,
    row_labels,
    satisfies,
)

MESSAGE = b"record 7: HbA1c 6.1 %, follow-up in 3 months"
ALPHABET = ("a", "b", "c", "d", "e")

# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def master() -> AbeMasterKey:
    return abe.setup()


@pytest.fixture(scope="module")
def public(master: AbeMasterKey) -> AbePublicKey:
    return master.public


@pytest.fixture(scope="module")
def other_master() -> AbeMasterKey:
    return abe.setup()


@pytest.fixture(scope="module")
def key_cache(master: AbeMasterKey) -> dict[frozenset[str], AbeUserKey]:
    return {}


@pytest.fixture(scope="module")
def key_for(master: AbeMasterKey, key_cache: dict[frozenset[str], AbeUserKey]):
    """A (cached) plain-keygen key for an attribute set under ``master``."""

    def get(*attrs: str) -> AbeUserKey:
        wanted = frozenset(attrs)
        if wanted not in key_cache:
            key_cache[wanted] = keygen(master, random_scalar(), wanted)
        return key_cache[wanted]

    return get


@pytest.fixture(scope="module")
def key_abc(key_for) -> AbeUserKey:
    return key_for("a", "b", "c")


@pytest.fixture(scope="module")
def authority_keys() -> AuthorityKeys:
    return AuthorityKeys.generate()


@pytest.fixture(scope="module")
def authority_public(authority_keys: AuthorityKeys) -> AbePublicKey:
    return authority_keys.master.public


@pytest.fixture(scope="module")
def issued(authority_keys: AuthorityKeys) -> dict[str, tuple[AbeUserKey, Registration]]:
    """Keys of three registered users, issued with the accountable protocol."""
    authority = IssuanceAuthority(authority_keys)
    public = authority_keys.master.public
    return {
        name: issue_key(authority, public, name, ["role:physician", "hospital:H001"])
        for name in ("alice", "bob", "carol")
    }


@pytest.fixture(scope="module")
def registry(issued) -> list[Registration]:
    return [reg for _, reg in issued.values()]


def _off_subgroup_g1() -> bytes:
    """A compressed G1 encoding of a curve point outside the prime-order subgroup."""
    for x in range(1, 1000):
        data = bytearray(x.to_bytes(G1_BYTES, "big"))
        data[0] |= 0x80
        try:
            point = backend.G1Point.from_compressed_bytes_unchecked(bytes(data))
        except ValueError:
            continue
        if not point.is_in_subgroup():
            return bytes(data)
    raise AssertionError("no off-subgroup point found")  # pragma: no cover


def _random_g1():
    return mul(g1(), random_scalar())


def _random_g2():
    return mul(g2(), random_scalar())


def _doc(data: bytes) -> dict:
    return json.loads(data)


def _dump(doc: dict) -> bytes:
    return json.dumps(doc).encode()


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "attrs"),
    [
        ("a and b", ("a", "b")),
        ("a and b", ("a", "b", "c")),
        ("a or b", ("b",)),
        ("a or b", ("a", "b")),
        ("2 of (a, b, c)", ("a", "c")),
        ("2 of (a, b, c)", ("b", "c")),
        ("2 of (a, b, c)", ("a", "b", "c")),
        ("a and (b or 2 of (c, d, e))", ("a", "d", "e")),
        ("a and (b or 2 of (c, d, e))", ("a", "b")),
        ("(a and b) or (c and (d or e))", ("c", "e")),
        ("(a and b) or (a and c)", ("a", "c")),
        ("2 of (a, a, b)", ("a",)),
        ("a and a", ("a",)),
        ("3 of (a, b, a, c)", ("a", "c")),
    ],
)
def test_round_trip(public, key_for, policy: str, attrs: tuple[str, ...]) -> None:
    ct = encrypt(public, policy, MESSAGE)
    assert decrypt(public, key_for(*attrs), ct) == MESSAGE
    # ... also after both travel through their byte encodings
    ct2 = AbeCiphertext.from_bytes(ct.to_bytes())
    key2 = AbeUserKey.from_bytes(key_for(*attrs).to_bytes())
    assert decrypt(public, key2, ct2) == MESSAGE


def test_round_trip_realistic_attributes(master, public) -> None:
    attrs = {"hospital:H001", "dept:0304", "role:physician", "area:research", "dept 03 (old)"}
    key = keygen(master, random_scalar(), attrs)
    policy = (
        'hospital:H001 and (role:physician or 2 of (consent:research, dept:0304, "dept 03 (old)"))'
    )
    ct = encrypt(public, policy, MESSAGE, context=b"record-17")
    assert decrypt(public, key, ct, context=b"record-17") == MESSAGE


def test_empty_and_large_plaintext(public, key_abc) -> None:
    for message in (b"", bytes(range(256)) * 64):
        ct = encrypt(public, "a and c", message)
        assert decrypt(public, key_abc, ct) == message


def test_context_mismatch_fails(public, key_abc) -> None:
    ct = encrypt(public, "a and b", MESSAGE, context=b"record-1")
    assert decrypt(public, key_abc, ct, context=b"record-1") == MESSAGE
    with pytest.raises(DecryptionFailed):
        decrypt(public, key_abc, ct, context=b"record-2")
    with pytest.raises(DecryptionFailed):
        decrypt(public, key_abc, ct)


def test_missing_context_fails(public, key_abc) -> None:
    ct = encrypt(public, "a", MESSAGE)
    with pytest.raises(DecryptionFailed):
        decrypt(public, key_abc, ct, context=b"x")


@pytest.mark.parametrize(
    ("policy", "attrs"),
    [
        ("a and d", ("a", "b", "c")),
        ("d or e", ("a", "b", "c")),
        ("3 of (a, b, d)", ("a", "b", "c")),
        ("a and (d or 2 of (b, e, f))", ("a", "b", "c")),
        ("2 of (a, a, d)", ("b", "c")),
    ],
)
def test_unsatisfied_policy(public, key_for, policy: str, attrs: tuple[str, ...]) -> None:
    ct = encrypt(public, policy, MESSAGE)
    with pytest.raises(PolicyNotSatisfied):
        decrypt(public, key_for(*attrs), ct)


# --- collusion ---------------------------------------------------------------------------------


def test_collusion_resistance(public, key_for) -> None:
    key_x, key_y = key_for("x"), key_for("y")
    ct = encrypt(public, "x and y", MESSAGE)
    for key in (key_x, key_y):
        with pytest.raises(PolicyNotSatisfied):
            decrypt(public, key, ct)
    for base, other, mine, theirs in ((key_x, key_y, "x", "y"), (key_y, key_x, "y", "x")):
        merged = dataclasses.replace(
            base,
            components={mine: base.components[mine], theirs: other.components[theirs]},
        )
        assert merged.attributes == frozenset({"x", "y"})
        with pytest.raises(DecryptionFailed):
            decrypt(public, merged, ct)
        with pytest.raises(InvalidKey):
            check_key(public, merged)


# --- tampering ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_ab(public) -> AbeCiphertext:
    return encrypt(public, "a and b", MESSAGE)


def test_untampered_ciphertext_decrypts(public, key_abc, ct_ab) -> None:
    assert decrypt(public, key_abc, ct_ab) == MESSAGE


@pytest.mark.parametrize("index", [0, 12, -1])
def test_flipped_sealed_byte(public, key_abc, ct_ab, index: int) -> None:
    sealed = bytearray(ct_ab.sealed)
    sealed[index] ^= 0x01
    with pytest.raises(DecryptionFailed):
        decrypt(public, key_abc, dataclasses.replace(ct_ab, sealed=bytes(sealed)))


def test_truncated_sealed(public, key_abc, ct_ab) -> None:
    for sealed in (ct_ab.sealed[:-1], ct_ab.sealed[:27], b""):
        with pytest.raises(DecryptionFailed):
            decrypt(public, key_abc, dataclasses.replace(ct_ab, sealed=sealed))


def test_swapped_row_points(public, key_abc, ct_ab) -> None:
    (c11, c12, c13), (c21, c22, c23) = ct_ab.rows
    variants = [
        ((c21, c12, c13), (c11, c22, c23)),  # swap C_{i,1}
        ((c11, c22, c13), (c21, c12, c23)),  # swap C_{i,2}
        ((c11, c12, c23), (c21, c22, c13)),  # swap C_{i,3}
        ((c21, c22, c23), (c11, c12, c13)),  # swap whole rows
        ((_random_g1(), c12, c13), (c21, c22, c23)),
    ]
    for rows in variants:
        with pytest.raises(DecryptionFailed):
            decrypt(public, key_abc, dataclasses.replace(ct_ab, rows=rows))


def test_replaced_c0(public, key_abc, ct_ab) -> None:
    for change in ({"c0": _random_g1()}, {"c0_prime": _random_g1()}, {"c0": ct_ab.c0_prime}):
        with pytest.raises(DecryptionFailed):
            decrypt(public, key_abc, dataclasses.replace(ct_ab, **change))


@pytest.mark.parametrize(
    ("original", "changed"),
    [
        ("a and b", "(a and c)"),
        ("a and b", "(b and a)"),
        ("a or b", "(a or c)"),  # same row for "a": only the AEAD binding catches this
        ("a or b", "(b or a)"),
        ("2 of (a, b, c)", "2 of (a, c, b)"),
    ],
)
def test_changed_policy_text(public, key_abc, original: str, changed: str) -> None:
    ct = encrypt(public, original, MESSAGE)
    assert satisfies(parse(changed), key_abc.attributes)
    with pytest.raises(DecryptionFailed):
        decrypt(public, key_abc, dataclasses.replace(ct, policy=changed))


def test_key_from_other_authority(public, other_master) -> None:
    foreign = keygen(other_master, random_scalar(), ["a", "b"])
    ct = encrypt(public, "a and b", MESSAGE)
    with pytest.raises(DecryptionFailed):
        decrypt(public, foreign, ct)
    with pytest.raises(InvalidKey):
        check_key(public, foreign)


# --- ciphertext serialisation ----------------------------------------------------------------


def test_ciphertext_serialisation_round_trip(ct_ab) -> None:
    back = AbeCiphertext.from_bytes(ct_ab.to_bytes())
    assert back == ct_ab
    assert AbeCiphertext.from_bytes(ct_ab.to_bytes().decode()) == ct_ab


def _ct_doc(ct: AbeCiphertext) -> dict:
    return _doc(ct.to_bytes())


def test_ciphertext_truncated_header(ct_ab) -> None:
    header = ct_ab.header_bytes()
    for cut in (header[:-G1_BYTES], header[:-1], header[: 2 * G1_BYTES], header + header[:48]):
        doc = _ct_doc(ct_ab)
        doc["header"] = encoding.b64e(cut)
        with pytest.raises(InvalidEncoding, match="header"):
            AbeCiphertext.from_bytes(_dump(doc))


def test_ciphertext_truncated_file(ct_ab) -> None:
    data = ct_ab.to_bytes()
    with pytest.raises(InvalidEncoding):
        AbeCiphertext.from_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidEncoding):
        AbeCiphertext.from_bytes(b"")


@pytest.mark.parametrize(
    "change",
    [
        {"type": "abe-user-key"},
        {"type": None},
        {"format": "other"},
        {"version": 2},
        {"version": "1"},
        {"header": "A"},  # impossible base64 length
        {"sealed": "A"},
        {"header": 17},
        {"policy": "a and"},
        {"policy": 5},
    ],
)
def test_ciphertext_bad_documents(ct_ab, change: dict) -> None:
    doc = {**_ct_doc(ct_ab), **change}
    with pytest.raises(InvalidEncoding):
        AbeCiphertext.from_bytes(_dump(doc))


@pytest.mark.parametrize("name", ["policy", "header", "sealed"])
def test_ciphertext_missing_field(ct_ab, name: str) -> None:
    doc = _ct_doc(ct_ab)
    del doc[name]
    with pytest.raises(InvalidEncoding, match=name):
        AbeCiphertext.from_bytes(_dump(doc))


def test_ciphertext_other_object_type(public, ct_ab) -> None:
    with pytest.raises(InvalidEncoding):
        AbeCiphertext.from_bytes(public.to_bytes())


@pytest.mark.parametrize("position", [0, 1, 2, 7])
def test_ciphertext_non_subgroup_point(ct_ab, position: int) -> None:
    header = bytearray(ct_ab.header_bytes())
    header[position * G1_BYTES : (position + 1) * G1_BYTES] = _off_subgroup_g1()
    doc = _ct_doc(ct_ab)
    doc["header"] = encoding.b64e(bytes(header))
    with pytest.raises(InvalidEncoding, match=r"malformed G1|subgroup"):
        AbeCiphertext.from_bytes(_dump(doc))


def test_ciphertext_identity_point(ct_ab) -> None:
    header = bytearray(ct_ab.header_bytes())
    header[:G1_BYTES] = b"\xc0" + bytes(G1_BYTES - 1)
    doc = _ct_doc(ct_ab)
    doc["header"] = encoding.b64e(bytes(header))
    with pytest.raises(InvalidEncoding):
        AbeCiphertext.from_bytes(_dump(doc))


# --- key sanity check ---------------------------------------------------------------------------


def test_check_key_accepts_honest_keys(public, key_abc, authority_public, issued) -> None:
    check_key(public, key_abc)
    for key, _ in issued.values():
        check_key(authority_public, key)


def _scale(point, factor: int = 2):
    return mul(point, factor)


def _tampered_keys(key: AbeUserKey, other: AbeUserKey) -> dict[str, AbeUserKey]:
    comps = dict(key.components)
    (k1a, k2a), (k1b, k2b) = comps["a"], comps["b"]
    return {
        "k_prime+1": dataclasses.replace(key, k_prime=(key.k_prime + 1) % ORDER),
        "k_prime-1": dataclasses.replace(key, k_prime=(key.k_prime - 1) % ORDER),
        "scaled K": dataclasses.replace(key, K=_scale(key.K)),
        "scaled L": dataclasses.replace(key, L=_scale(key.L)),
        "scaled L'": dataclasses.replace(key, L_prime=_scale(key.L_prime)),
        "scaled K_a1": dataclasses.replace(key, components={**comps, "a": (_scale(k1a), k2a)}),
        "scaled K_a2": dataclasses.replace(key, components={**comps, "a": (k1a, _scale(k2a))}),
        "swapped K_2": dataclasses.replace(
            key, components={**comps, "a": (k1a, k2b), "b": (k1b, k2a)}
        ),
        "swapped K_1, K_2": dataclasses.replace(key, components={**comps, "a": (k2a, k1a)}),
        "renamed attr": dataclasses.replace(
            key, components={**{n: c for n, c in comps.items() if n != "a"}, "z": comps["a"]}
        ),
        "L, L' of another key": dataclasses.replace(key, L=other.L, L_prime=other.L_prime),
        "K of another key": dataclasses.replace(key, K=other.K),
        "component of another key": dataclasses.replace(
            key, components={**comps, "a": other.components["a"]}
        ),
    }


TAMPER_VARIANTS = [
    "k_prime+1",
    "k_prime-1",
    "scaled K",
    "scaled L",
    "scaled L'",
    "scaled K_a1",
    "scaled K_a2",
    "swapped K_2",
    "swapped K_1, K_2",
    "renamed attr",
    "L, L' of another key",
    "K of another key",
    "component of another key",
]


def test_tamper_variants_are_all_listed(key_abc, key_for) -> None:
    assert sorted(_tampered_keys(key_abc, key_for("a", "b"))) == sorted(TAMPER_VARIANTS)


@pytest.mark.parametrize("variant", TAMPER_VARIANTS)
def test_check_key_rejects(public, key_abc, key_for, variant: str) -> None:
    bad = _tampered_keys(key_abc, key_for("a", "b"))[variant]
    with pytest.raises(InvalidKey):
        check_key(public, bad)


@pytest.mark.parametrize("k_prime", [0, ORDER, ORDER + 1, -1])
def test_check_key_rejects_out_of_range_k_prime(public, key_abc, k_prime: int) -> None:
    with pytest.raises(InvalidKey, match="range"):
        check_key(public, dataclasses.replace(key_abc, k_prime=k_prime))


def test_check_key_rejects_key_for_other_public_key(other_master, key_abc) -> None:
    with pytest.raises(InvalidKey):
        check_key(other_master.public, key_abc)


# --- audit --------------------------------------------------------------------------------------


def test_audit_names_the_right_user(authority_public, issued, registry) -> None:
    for name, (key, _) in issued.items():
        for regs in (registry, list(reversed(registry))):
            result = audit(authority_public, key, regs)
            assert result.verdict is Verdict.USER
            assert result.identity == name


def test_audit_registration_matches_key_tag(issued) -> None:
    for key, reg in issued.values():
        assert reg.tag() == key.tag()
        assert key.tag() == encode_g1(mul(g1(), key.k_prime))
    tags = {reg.tag() for _, reg in issued.values()}
    assert len(tags) == 3


def _rerandomise(public: AbePublicKey, key: AbeUserKey) -> AbeUserKey:
    """What any holder can do with public values: fresh r_τ for every attribute."""
    comps = {}
    for name, (k1, k2) in key.components.items():
        r = random_scalar()
        point = mul(public.u2, abe.attribute_scalar(name)) + public.h2
        comps[name] = (k1 + mul(g2(), r), k2 + mul(point, r))
    return dataclasses.replace(key, components=comps)


def test_rerandomised_key_still_traces_to_same_user(authority_public, issued, registry) -> None:
    key, _ = issued["bob"]
    fresh = _rerandomise(authority_public, key)
    assert fresh.to_bytes() != key.to_bytes()
    ct = encrypt(authority_public, "role:physician and hospital:H001", MESSAGE)
    assert decrypt(authority_public, fresh, ct) == MESSAGE
    result = audit(authority_public, fresh, registry)
    assert result.verdict is Verdict.USER
    assert result.identity == "bob"


def test_audit_changed_k_prime_is_malformed(authority_public, issued, registry) -> None:
    key, _ = issued["alice"]
    for delta in (1, -1, 2):
        bad = dataclasses.replace(key, k_prime=(key.k_prime + delta) % ORDER)
        result = audit(authority_public, bad, registry)
        assert result.verdict is Verdict.MALFORMED
        assert result.identity is None


def test_audit_laundering_to_another_users_k_prime(authority_public, issued, registry) -> None:
    alice_key, _ = issued["alice"]
    for victim in ("bob", "carol"):
        victim_key, _ = issued[victim]
        laundered = dataclasses.replace(alice_key, k_prime=victim_key.k_prime)
        assert laundered.tag() == victim_key.tag()
        result = audit(authority_public, laundered, registry)
        assert result.verdict is Verdict.MALFORMED
        assert result.identity is None
        # also after re-randomising the attribute components
        result = audit(authority_public, _rerandomise(authority_public, laundered), registry)
        assert result.verdict is Verdict.MALFORMED


def test_audit_authority_forged_key(authority_keys, authority_public, registry) -> None:
    forged = keygen(authority_keys.master, random_scalar(), ["role:physician"])
    result = audit(authority_public, forged, registry)
    assert result.verdict is Verdict.AUTHORITY
    assert result.identity is None
    assert audit(authority_public, forged, []).verdict is Verdict.AUTHORITY


def test_audit_key_from_other_authority_is_malformed(other_master, authority_public, registry):
    foreign = keygen(other_master, random_scalar(), ["role:physician"])
    result = audit(authority_public, foreign, registry)
    assert result.verdict is Verdict.MALFORMED
    assert result.identity is None


def test_audit_result_as_dict(authority_public, issued, registry) -> None:
    result = audit(authority_public, issued["carol"][0], registry)
    assert isinstance(result, AuditResult)
    doc = result.as_dict()
    assert set(doc) == {"verdict", "identity", "reason"}
    assert doc["verdict"] == "user"
    assert doc["identity"] == "carol"
    assert isinstance(doc["reason"], str) and doc["reason"]
    json.dumps(doc)  # serialisable as-is


def test_audit_result_as_dict_malformed(authority_public, issued, registry) -> None:
    key, _ = issued["carol"]
    bad = dataclasses.replace(key, K=_scale(key.K))
    doc = audit(authority_public, bad, registry).as_dict()
    assert set(doc) == {"verdict", "identity", "reason"}
    assert doc["verdict"] == "malformed"
    assert doc["identity"] is None


# --- property: decrypt succeeds iff the policy is satisfied ------------------------------------


@st.composite
def policy_trees(draw, max_depth: int = 3, max_leaves: int = 6) -> Node:
    def build(depth: int, budget: int) -> tuple[Node, int]:
        if depth == 0 or budget == 1 or draw(st.integers(0, 3)) == 0:
            return Attribute(draw(st.sampled_from(ALPHABET))), 1
        n = draw(st.integers(1, min(3, budget)))
        children, used = [], 0
        for i in range(n):
            child, leaves = build(depth - 1, budget - used - (n - 1 - i))
            children.append(child)
            used += leaves
        return Threshold(draw(st.integers(1, n)), tuple(children)), used

    node, _ = build(max_depth, max_leaves)
    return node


@settings(max_examples=25, deadline=None, database=None)
@given(
    node=policy_trees(),
    attrs=st.frozensets(st.sampled_from(ALPHABET), min_size=1),
)
def test_decrypt_iff_satisfied(public, key_for, node: Node, attrs: frozenset[str]) -> None:
    key = key_for(*attrs)
    ct = encrypt(public, canonical(node), MESSAGE)
    assert len(ct.rows) == (1 if isinstance(node, Attribute) else node.leaf_count)
    if satisfies(node, attrs):
        assert decrypt(public, key, ct) == MESSAGE
    else:
        with pytest.raises(PolicyNotSatisfied):
            decrypt(public, key, ct)


# --- public, master and user keys ---------------------------------------------------------------


def test_public_key_check_accepts_real(public, authority_public) -> None:
    public.check()
    authority_public.check()


@pytest.mark.parametrize("name", ["w2", "v2", "u2", "h2"])
def test_public_key_check_rejects_replaced_g2_copy(public, name: str) -> None:
    bad = dataclasses.replace(public, **{name: _random_g2()})
    with pytest.raises(InvalidKey):
        bad.check()


@pytest.mark.parametrize("name", ["w1", "v1", "u1", "h1"])
def test_public_key_check_rejects_replaced_g1_copy(public, name: str) -> None:
    bad = dataclasses.replace(public, **{name: _random_g1()})
    with pytest.raises(InvalidKey):
        bad.check()


def test_public_key_check_rejects_swapped_g2_copies(public) -> None:
    with pytest.raises(InvalidKey):
        dataclasses.replace(public, u2=public.h2, h2=public.u2).check()


def test_public_key_round_trip(public) -> None:
    back = AbePublicKey.from_bytes(public.to_bytes())
    assert back == public
    assert back.fingerprint() == public.fingerprint()
    back.check()


def test_public_key_fingerprint_differs(public, other_master) -> None:
    assert public.fingerprint() != other_master.public.fingerprint()


def test_public_key_rejects_non_subgroup_point(public) -> None:
    doc = _doc(public.to_bytes())
    doc["u1"] = encoding.b64e(_off_subgroup_g1())
    with pytest.raises(InvalidEncoding, match="u1"):
        AbePublicKey.from_bytes(_dump(doc))


def test_public_key_rejects_g1_point_in_g2_field(public) -> None:
    doc = _doc(public.to_bytes())
    doc["w2"] = doc["w1"]
    with pytest.raises(InvalidEncoding, match="w2"):
        AbePublicKey.from_bytes(_dump(doc))


def test_master_key_round_trip(master) -> None:
    back = AbeMasterKey.from_bytes(master.to_bytes())
    assert back == master
    assert (back.alpha, back.a) == (master.alpha, master.a)


def test_master_key_rejects_foreign_public_key(master, other_master) -> None:
    doc = _doc(master.to_bytes())
    doc["public"] = other_master.public.to_bytes().decode()
    with pytest.raises(InvalidEncoding, match="does not match"):
        AbeMasterKey.from_bytes(_dump(doc))


@pytest.mark.parametrize("secret", ["alpha", "a"])
def test_master_key_rejects_foreign_secret(master, other_master, secret: str) -> None:
    doc = _doc(master.to_bytes())
    doc[secret] = _doc(other_master.to_bytes())[secret]
    with pytest.raises(InvalidEncoding, match="does not match"):
        AbeMasterKey.from_bytes(_dump(doc))


def test_master_key_rejects_zero_secret(master) -> None:
    doc = _doc(master.to_bytes())
    doc["a"] = encoding.b64e(bytes(32))
    with pytest.raises(InvalidEncoding, match="zero"):
        AbeMasterKey.from_bytes(_dump(doc))


def test_user_key_round_trip(key_abc, issued) -> None:
    for key in (key_abc, issued["alice"][0]):
        back = AbeUserKey.from_bytes(key.to_bytes())
        assert back == key
        assert back.attributes == key.attributes
        assert back.tag() == key.tag()


def test_user_key_rejects_bad_documents(key_abc) -> None:
    doc = _doc(key_abc.to_bytes())
    for change in (
        {"components": {}},
        {"components": {"a": [doc["K"]]}},
        {"components": {"a": [doc["K"], encoding.b64e(_off_subgroup_g1())]}},
        {"K": encoding.b64e(bytes(G2_BYTES))},
        {"k_prime": encoding.b64e(bytes(32))},
        {"k_prime": encoding.b64e(ORDER.to_bytes(32, "big"))},
        {"type": "abe-master-key"},
    ):
        with pytest.raises(InvalidEncoding):
            AbeUserKey.from_bytes(_dump({**doc, **change}))


def test_keygen_rejects_bad_attributes(master) -> None:
    for attrs in ([], [""], [" a"], ["a "]):
        with pytest.raises(ValueError):
            keygen(master, random_scalar(), attrs)


# --- registry -----------------------------------------------------------------------------------


def test_registry_round_trip(registry) -> None:
    back = registry_from_bytes(registry_to_bytes(registry))
    assert back == registry
    assert [r.identity for r in back] == ["alice", "bob", "carol"]
    assert registry_from_bytes(registry_to_bytes([])) == []


def test_registry_rejects_tampered_tag(registry) -> None:
    doc = _doc(registry_to_bytes(registry))
    doc["keys"][1]["tag"] = doc["keys"][0]["tag"]
    with pytest.raises(InvalidEncoding, match="tag"):
        registry_from_bytes(_dump(doc))


def test_registry_rejects_tampered_c(registry) -> None:
    doc = _doc(registry_to_bytes(registry))
    doc["keys"][0]["c"] = doc["keys"][2]["c"]
    with pytest.raises(InvalidEncoding, match="tag"):
        registry_from_bytes(_dump(doc))


def test_registry_rejects_malformed(registry) -> None:
    good = _doc(registry_to_bytes(registry))
    for change in (
        {"keys": {}},
        {"keys": ["row"]},
        {"keys": [{**good["keys"][0], "identity": ""}]},
        {"keys": [{**good["keys"][0], "R": encoding.b64e(_off_subgroup_g1())}]},
        {"type": "abe-user-key"},
    ):
        with pytest.raises(InvalidEncoding):
            registry_from_bytes(_dump({**good, **change}))


def test_registry_audit_after_round_trip(authority_public, issued, registry) -> None:
    regs = registry_from_bytes(registry_to_bytes(registry))
    result = audit(authority_public, issued["bob"][0], regs)
    assert (result.verdict, result.identity) == (Verdict.USER, "bob")


# --- constant sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "rows"),
    [("a", 1), ("a or b", 2), ("2 of (a, b, c)", 3), ("a and (b or 2 of (c, d, e))", 5)],
)
def test_ciphertext_header_size(public, policy: str, rows: int) -> None:
    ct = encrypt(public, policy, MESSAGE)
    assert len(ct.rows) == rows
    assert len(ct.header_bytes()) == G1_BYTES * (2 + 3 * rows)
    assert ct.size() == len(ct.policy.encode()) + G1_BYTES * (2 + 3 * rows) + len(ct.sealed)
    assert len(ct.sealed) == len(MESSAGE) + 12 + 16


@pytest.mark.parametrize("n", [1, 3, 5])
def test_user_key_point_count(key_for, n: int) -> None:
    key = key_for(*ALPHABET[:n])
    doc = _doc(key.to_bytes())
    points = [doc["K"], doc["L"], doc["L_prime"]]
    points += [p for pair in doc["components"].values() for p in pair]
    assert len(points) == 3 + 2 * n
    assert all(len(encoding.b64d(p, field="p")) == G2_BYTES for p in points)
    assert len(encoding.b64d(doc["k_prime"], field="k_prime")) == 32


# --- resource limits: what a hostile ciphertext can cost (issue 12, finding 7) ------------------


def _names(n: int, prefix: str = "x") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def _threshold(k: int, n: int) -> str:
    return f"{k} of ({', '.join(_names(n))})"


def _ct_with(ct: AbeCiphertext, **changes: object) -> bytes:
    return _dump({**_ct_doc(ct), **changes})


def test_ciphertext_with_over_limit_threshold_is_refused(ct_ab) -> None:
    """The reported case: a 1023-of-1024 policy made a small ciphertext cost seconds."""
    data = _ct_with(ct_ab, policy=_threshold(MAX_LEAVES - 1, MAX_LEAVES))
    with pytest.raises(InvalidEncoding, match=f"limit of {MAX_THRESHOLD_CHILDREN} alternatives"):
        AbeCiphertext.from_bytes(data)


def test_ciphertext_policy_claiming_more_rows_than_the_header_holds(ct_ab) -> None:
    data = _ct_with(ct_ab, policy=" or ".join(_names(MAX_LEAVES)))  # within every limit
    with pytest.raises(
        InvalidEncoding, match=f"header holds 2 rows but the policy has {MAX_LEAVES} attributes"
    ):
        AbeCiphertext.from_bytes(data)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (bytes(G1_BYTES * (2 + 3 * (abe.MAX_ROWS + 1))), f"limit of {abe.MAX_ROWS} rows"),
        (bytes(G1_BYTES * 2), "is not 48·"),  # C0 and C0' but no row
        (bytes(G1_BYTES * 6), "is not 48·"),  # not a whole number of rows
        (bytes(G1_BYTES * 5 + 1), "is not 48·"),
    ],
    ids=["over-row-limit", "no-rows", "partial-row", "partial-point"],
)
def test_ciphertext_header_is_checked_before_the_policy(ct_ab, header: bytes, message) -> None:
    """The header's error, not the (also bad) policy's, is reported: no policy work was done."""
    data = _ct_with(ct_ab, header=encoding.b64e(header), policy="a and (")
    with pytest.raises(InvalidEncoding, match=message):
        AbeCiphertext.from_bytes(data)


def test_user_key_components_are_checked_before_any_point_is_decoded(key_abc) -> None:
    """A malformed last entry is reported, not the bad point decoding would have met first."""
    doc = _doc(key_abc.to_bytes())
    doc["components"]["a"] = [encoding.b64e(bytes(G2_BYTES))] * 2  # right size, not a point
    doc["components"]["c"] = [doc["components"]["c"][0], "AAAA"]
    with pytest.raises(InvalidEncoding, match=f"'c': components must be {G2_BYTES}-byte G2"):
        AbeUserKey.from_bytes(_dump(doc))


def test_encrypt_refuses_an_over_limit_threshold(public) -> None:
    with pytest.raises(InvalidPolicy, match=f"limit of {MAX_THRESHOLD_CHILDREN} alternatives"):
        encrypt(public, _threshold(2, MAX_THRESHOLD_CHILDREN + 1), MESSAGE)


def test_threshold_gate_at_the_limit_round_trips(public, key_for) -> None:
    n = MAX_THRESHOLD_CHILDREN
    names = _names(n)
    ct = AbeCiphertext.from_bytes(encrypt(public, _threshold(n - 1, n), MESSAGE).to_bytes())
    assert decrypt(public, key_for(*names[1:]), ct) == MESSAGE
    with pytest.raises(PolicyNotSatisfied):
        decrypt(public, key_for(*names[2:]), ct)


@st.composite
def policies_within_limits(draw) -> tuple[Node, list[str]]:
    """A small tree (genuine k-of-n gates included) and an order to drop its attributes in."""

    def build(depth: int, budget: int) -> Node:
        if depth == 0 or budget == 1 or draw(st.integers(0, 3)) == 0:
            return Attribute(draw(st.sampled_from(ALPHABET)))
        n = draw(st.integers(1, min(5, budget)))
        children = []
        for i in range(n):
            used = sum(len(row_labels(child)) for child in children)
            children.append(build(depth - 1, budget - used - (n - 1 - i)))
        return Threshold(draw(st.integers(1, n)), tuple(children))

    node = build(3, 8)
    return node, draw(st.permutations(sorted(set(row_labels(node)))))


@settings(max_examples=20, deadline=None, database=None)
@given(case=policies_within_limits())
def test_policies_within_limits_decode_and_decrypt(public, key_for, case) -> None:
    """Through the bytes decoder: a near-miss key is refused, one more attribute decrypts."""
    node, drop_order = case
    ct = AbeCiphertext.from_bytes(encrypt(public, canonical(node), MESSAGE).to_bytes())
    assert ct.policy == canonical(node)
    held = set(drop_order)
    for name in drop_order:  # drop attributes until the policy just fails
        held.discard(name)
        if not satisfies(node, held):
            break
    near_miss = frozenset(held | {"outsider"})  # a key needs one attribute; this one is unused
    with pytest.raises(PolicyNotSatisfied):
        decrypt(public, key_for(*near_miss), ct)
    assert decrypt(public, key_for(*near_miss, name), ct) == MESSAGE
