"""Tests of the group facade (medshare.crypto.group): encodings, checked decoders, GT, tables."""

from __future__ import annotations

import py_arkworks_bls12381 as backend
import pytest

from medshare.crypto import group
from medshare.crypto.errors import InvalidEncoding
from medshare.crypto.group import (
    G1_BYTES,
    G2_BYTES,
    GT_BYTES,
    ORDER,
    SCALAR_BYTES,
    FixedBase,
    FixedBaseGT,
    decode_g1,
    decode_g2,
    decode_scalar,
    encode_g1,
    encode_g2,
    encode_scalar,
    g1,
    g2,
    gt_one,
    gt_pow,
    gt_to_bytes,
    hash_to_zp,
    identity_g1,
    identity_g2,
    mul,
    multi_pairing,
    multiexp,
    pair,
    pairing_check,
    random_scalar,
)

EDGE_SCALARS = [0, 1, 2, 255, 256, ORDER - 1]

# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_g1():
    return mul(g1(), random_scalar())


@pytest.fixture(scope="module")
def base_g2():
    return mul(g2(), random_scalar())


@pytest.fixture(scope="module")
def base_gt():
    return pair(g1(), g2())


@pytest.fixture(scope="module")
def table_g1(base_g1):
    return FixedBase.build(base_g1)


@pytest.fixture(scope="module")
def table_g2(base_g2):
    return FixedBase.build(base_g2)


@pytest.fixture(scope="module")
def table_gt(base_gt):
    return FixedBaseGT.build(base_gt)


def _off_subgroup(kind, size: int) -> bytes:
    """A compressed encoding of a curve point outside the prime-order subgroup."""
    for x in range(1, 1000):
        data = bytearray(x.to_bytes(size, "big"))
        data[0] |= 0x80  # compression flag; infinity flag clear
        try:
            point = kind.from_compressed_bytes_unchecked(bytes(data))
        except ValueError:
            continue  # x is not the x-coordinate of a curve point
        if not point.is_in_subgroup():
            return bytes(data)
    raise AssertionError("no off-subgroup point found")  # pragma: no cover


@pytest.fixture(scope="module")
def off_subgroup_g1() -> bytes:
    return _off_subgroup(backend.G1Point, G1_BYTES)


@pytest.fixture(scope="module")
def off_subgroup_g2() -> bytes:
    return _off_subgroup(backend.G2Point, G2_BYTES)


# --- GT encoding ---------------------------------------------------------------------------------


def test_gt_to_bytes_is_stable_across_computations(table_gt) -> None:
    a = random_scalar()
    via_g1 = gt_to_bytes(pair(mul(g1(), a), g2()))
    via_g2 = gt_to_bytes(pair(g1(), mul(g2(), a)))
    via_pow = gt_to_bytes(gt_pow(pair(g1(), g2()), a))
    via_table = gt_to_bytes(table_gt.pow(a))
    via_multi = gt_to_bytes(multi_pairing([mul(g1(), a)], [g2()]))
    assert len(via_g1) == GT_BYTES == 576
    assert via_g1 == via_g2 == via_pow == via_table == via_multi


def test_gt_to_bytes_distinguishes_values() -> None:
    base = pair(g1(), g2())
    assert gt_to_bytes(base) != gt_to_bytes(gt_pow(base, 2))
    assert gt_to_bytes(base) != gt_to_bytes(gt_one())


def test_gt_identity_and_inverse_via_negation() -> None:
    a = random_scalar()
    assert gt_to_bytes(gt_pow(pair(g1(), g2()), ORDER)) == gt_to_bytes(gt_one())
    product = multi_pairing([mul(g1(), a), -mul(g1(), a)], [g2(), g2()])
    assert gt_to_bytes(product) == gt_to_bytes(gt_one())
    assert pairing_check([mul(g1(), a), -g1()], [g2(), mul(g2(), a)])
    assert not pairing_check([mul(g1(), a), -g1()], [g2(), mul(g2(), a + 1)])


# --- fixed-base tables ----------------------------------------------------------------------------


@pytest.mark.parametrize("k", [*EDGE_SCALARS, ORDER, ORDER + 5, -1])
def test_fixed_base_edge_scalars(k: int, base_g1, base_g2, table_g1, table_g2) -> None:
    assert table_g1.mul(k) == mul(base_g1, k)
    assert table_g2.mul(k) == mul(base_g2, k)


def test_fixed_base_zero_is_identity(table_g1, table_g2) -> None:
    assert table_g1.mul(0) == identity_g1()
    assert table_g2.mul(0) == identity_g2()
    assert table_g1.mul(ORDER) == identity_g1()


def test_fixed_base_random_scalars(base_g1, base_g2, table_g1, table_g2) -> None:
    for _ in range(8):
        k = random_scalar()
        assert table_g1.mul(k) == mul(base_g1, k)
        assert table_g2.mul(k) == mul(base_g2, k)


@pytest.mark.parametrize("k", [*EDGE_SCALARS, ORDER + 3])
def test_fixed_base_gt_edge_scalars(k: int, base_gt, table_gt) -> None:
    assert gt_to_bytes(table_gt.pow(k)) == gt_to_bytes(gt_pow(base_gt, k))


def test_fixed_base_gt_special_values(base_gt, table_gt) -> None:
    assert gt_to_bytes(table_gt.pow(0)) == gt_to_bytes(gt_one())
    assert gt_to_bytes(table_gt.pow(1)) == gt_to_bytes(base_gt)
    # base^(p-1) · base = 1
    assert gt_to_bytes(table_gt.pow(ORDER - 1) * base_gt) == gt_to_bytes(gt_one())


def test_fixed_base_gt_random_scalars(base_gt, table_gt) -> None:
    for _ in range(4):
        k = random_scalar()
        assert gt_to_bytes(table_gt.pow(k)) == gt_to_bytes(gt_pow(base_gt, k))
        assert gt_to_bytes(table_gt.pow(k)) == gt_to_bytes(pair(mul(g1(), k), g2()))


# --- point decoders -------------------------------------------------------------------------------


def test_point_round_trip() -> None:
    p, q = mul(g1(), random_scalar()), mul(g2(), random_scalar())
    assert len(encode_g1(p)) == G1_BYTES
    assert len(encode_g2(q)) == G2_BYTES
    assert decode_g1(encode_g1(p)) == p
    assert decode_g2(encode_g2(q)) == q
    assert decode_g1(bytearray(encode_g1(p))) == p


@pytest.mark.parametrize("delta", [-1, 1, -G1_BYTES])
def test_decode_g1_rejects_wrong_length(delta: int) -> None:
    data = encode_g1(g1())
    bad = data[:delta] if delta < 0 else data + b"\x00" * delta
    with pytest.raises(InvalidEncoding, match="48 bytes"):
        decode_g1(bad)


@pytest.mark.parametrize("delta", [-1, 1, -48])
def test_decode_g2_rejects_wrong_length(delta: int) -> None:
    data = encode_g2(g2())
    bad = data[:delta] if delta < 0 else data + b"\x00" * delta
    with pytest.raises(InvalidEncoding, match="96 bytes"):
        decode_g2(bad)


def test_decoders_reject_wrong_type() -> None:
    with pytest.raises(InvalidEncoding):
        decode_g1(encode_g1(g1()).hex())  # type: ignore[arg-type]
    with pytest.raises(InvalidEncoding):
        decode_g2(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * G1_BYTES,  # no compression flag
        b"\x80" + b"\xff" * (G1_BYTES - 1),  # x >= field modulus
        b"\x40" + b"\x00" * (G1_BYTES - 1),  # infinity flag without the compression flag
    ],
)
def test_decode_g1_rejects_garbage(garbage: bytes) -> None:
    with pytest.raises(InvalidEncoding, match="malformed G1"):
        decode_g1(garbage)


@pytest.mark.parametrize(
    "garbage",
    [b"\x00" * G2_BYTES, b"\x80" + b"\xff" * (G2_BYTES - 1)],
)
def test_decode_g2_rejects_garbage(garbage: bytes) -> None:
    with pytest.raises(InvalidEncoding, match="malformed G2"):
        decode_g2(garbage)


# The backend reads any encoding with the infinity flag set as the identity, whatever the
# other bits say; the facade must refuse these non-canonical encodings even when the
# identity itself is allowed (otherwise one point has many encodings).
NONCANONICAL_IDENTITY_G1 = [
    b"\xff" * G1_BYTES,
    b"\xc0" + b"\x00" * (G1_BYTES - 2) + b"\x01",
    b"\xe0" + b"\x00" * (G1_BYTES - 1),
]
NONCANONICAL_IDENTITY_G2 = [b"\xff" * G2_BYTES, b"\xc0" + b"\x00" * (G2_BYTES - 2) + b"\x01"]


@pytest.mark.parametrize("garbage", NONCANONICAL_IDENTITY_G1 + NONCANONICAL_IDENTITY_G2)
@pytest.mark.parametrize("allow_identity", [False, True])
def test_decoders_reject_noncanonical_identity(garbage: bytes, allow_identity: bool) -> None:
    decode = decode_g1 if len(garbage) == G1_BYTES else decode_g2
    with pytest.raises(InvalidEncoding):
        decode(garbage, allow_identity=allow_identity)


# --- scalars -------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, ORDER - 1])
def test_scalar_round_trip(k: int) -> None:
    data = encode_scalar(k)
    assert len(data) == SCALAR_BYTES
    assert decode_scalar(data) == k


def test_encode_scalar_reduces() -> None:
    assert encode_scalar(ORDER + 7) == encode_scalar(7)
    assert encode_scalar(-1) == encode_scalar(ORDER - 1)


@pytest.mark.parametrize("k", [ORDER, ORDER + 1, 2**256 - 1])
def test_decode_scalar_rejects_unreduced(k: int) -> None:
    with pytest.raises(InvalidEncoding, match="not reduced"):
        decode_scalar(k.to_bytes(SCALAR_BYTES, "big"))


def test_decode_scalar_rejects_zero_unless_allowed() -> None:
    zero = bytes(SCALAR_BYTES)
    with pytest.raises(InvalidEncoding, match="zero"):
        decode_scalar(zero)
    assert decode_scalar(zero, nonzero=False) == 0


@pytest.mark.parametrize("size", [0, 31, 33])
def test_decode_scalar_rejects_wrong_length(size: int) -> None:
    with pytest.raises(InvalidEncoding, match="32 bytes"):
        decode_scalar(b"\x01" * size)


def test_random_scalar_range_and_inverse() -> None:
    for _ in range(16):
        k = random_scalar()
        assert 0 < k < ORDER
        assert k * group.inverse(k) % ORDER == 1
    with pytest.raises(ZeroDivisionError):
        group.inverse(ORDER)


def test_mul_reduces_scalars() -> None:
    assert mul(g1(), ORDER + 3) == mul(g1(), 3)
    assert mul(g1(), -1) == -g1()
    assert mul(g2(), ORDER) == identity_g2()


# --- multiexp and pairings --------------------------------------------------------------------


def test_multiexp_matches_naive() -> None:
    ks = [random_scalar() for _ in range(3)]
    points = [mul(g1(), random_scalar()) for _ in range(3)]
    expected = mul(points[0], ks[0]) + mul(points[1], ks[1]) + mul(points[2], ks[2])
    assert multiexp(points, ks) == expected
    assert multiexp([g1(), g1()], [-1, 1]) == identity_g1()


def test_multiexp_rejects_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="2 points with 1 scalars"):
        multiexp([g1(), g1()], [1])
    with pytest.raises(ValueError, match="1 points with 2 scalars"):
        multiexp([g2()], [1, 2])
    with pytest.raises(ValueError, match="no points"):
        multiexp([], [])


def test_multi_pairing_rejects_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="2 G1 with 1 G2"):
        multi_pairing([g1(), g1()], [g2()])
    with pytest.raises(ValueError, match="1 G1 with 2 G2"):
        pairing_check([g1()], [g2(), g2()])


def test_multi_pairing_matches_product() -> None:
    a, b = random_scalar(), random_scalar()
    product = pair(mul(g1(), a), g2()) * pair(g1(), mul(g2(), b))
    assert gt_to_bytes(multi_pairing([mul(g1(), a), g1()], [g2(), mul(g2(), b)])) == gt_to_bytes(
        product
    )
    assert gt_to_bytes(product) == gt_to_bytes(pair(g1(), mul(g2(), a + b)))


# --- hashing -------------------------------------------------------------------------------------


def test_hash_to_zp_domain_separation() -> None:
    assert hash_to_zp(b"domain-a", b"msg") != hash_to_zp(b"domain-b", b"msg")
    # The domain is length-prefixed: moving bytes between domain and message changes the hash.
    assert hash_to_zp(b"ab", b"c") != hash_to_zp(b"a", b"bc")
    assert hash_to_zp(b"d", b"m1") != hash_to_zp(b"d", b"m2")


def test_hash_to_zp_is_deterministic_and_reduced() -> None:
    values = {hash_to_zp(b"d", bytes([i])) for i in range(32)}
    assert len(values) == 32
    assert all(0 <= v < ORDER for v in values)
    assert hash_to_zp(b"d", b"x") == hash_to_zp(b"d", b"x")


def test_hashes_require_a_domain() -> None:
    with pytest.raises(ValueError, match="domain"):
        hash_to_zp(b"", b"message")
    with pytest.raises(ValueError, match="domain"):
        group.hash_to_g1(b"", b"message")
    with pytest.raises(ValueError, match="domain"):
        group.hash_to_g2(b"", b"message")


def test_hash_to_curve_domain_separation_and_subgroup() -> None:
    p1 = group.hash_to_g1(b"dst-1", b"m")
    assert p1 == group.hash_to_g1(b"dst-1", b"m")
    assert p1 != group.hash_to_g1(b"dst-2", b"m")
    assert decode_g1(encode_g1(p1)) == p1
    q1 = group.hash_to_g2(b"dst-1", b"m")
    assert q1 != group.hash_to_g2(b"dst-2", b"m")
    assert decode_g2(encode_g2(q1)) == q1
