"""Tests of the key-aggregate cryptosystem (medshare.crypto.kac)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medshare.crypto import encoding, kac
from medshare.crypto.errors import DecryptionFailed, InvalidEncoding, InvalidKey, PolicyNotSatisfied
from medshare.crypto.group import (
    ORDER,
    encode_g1,
    encode_g2,
    g1,
    g2,
    gt_pow,
    gt_to_bytes,
    mul,
    pair,
    pairing_check,
    random_scalar,
)
from medshare.crypto.hybrid import derive_key, open_sealed
from medshare.crypto.kac import (
    AggregateKey,
    KacCiphertext,
    KacParams,
    KacPatientPublic,
    KacPatientSecret,
    decrypt,
    encrypt,
    extract,
    keygen,
    setup,
)

N = 16
MESSAGE = b"record 42: blood pressure 120/80"

# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def params() -> KacParams:
    return setup(N)


@pytest.fixture(scope="module")
def other_params() -> KacParams:
    return setup(N)


@pytest.fixture(scope="module")
def params64() -> KacParams:
    return setup(64)


@pytest.fixture(scope="module")
def alice(params: KacParams) -> KacPatientSecret:
    return keygen(params)


@pytest.fixture(scope="module")
def bob(params: KacParams) -> KacPatientSecret:
    return keygen(params)


S = frozenset({2, 5, 9, 16})


@pytest.fixture(scope="module")
def key(params: KacParams, alice: KacPatientSecret) -> AggregateKey:
    return extract(params, alice, S)


@pytest.fixture(scope="module")
def ct(params: KacParams, alice: KacPatientSecret) -> KacCiphertext:
    return encrypt(params, alice.public, 5, MESSAGE)


@pytest.fixture(scope="module")
def ciphertexts(params: KacParams, alice: KacPatientSecret) -> dict[int, KacCiphertext]:
    return {i: encrypt(params, alice.public, i, b"class %d" % i) for i in range(1, N + 1)}


# --- helpers: points on the curve but outside the subgroup, and points off the curve --------

P = int(  # the BLS12-381 base field prime
    "1A0111EA397FE69A4B1BA7B6434BACD764774B84F38512BF"
    "6730D2A0F6B0F6241EABFFFEB153FFFFB9FEFFFFFFFFAAAB",
    16,
)


def _is_square(a: int) -> bool:
    return pow(a % P, (P - 1) // 2, P) == 1


def _g1_bytes(x: int) -> bytes:
    raw = bytearray(x.to_bytes(48, "big"))
    raw[0] |= 0x80  # compressed flag
    return bytes(raw)


def g1_off_subgroup() -> bytes:
    """A compressed G1 point on y² = x³ + 4 (x³ + 4 is a square) that is not in the subgroup."""
    x = 7
    while not _is_square(x**3 + 4):
        x += 1
    return _g1_bytes(x)


def g1_off_curve() -> bytes:
    x = 7
    while _is_square(x**3 + 4):
        x += 1
    return _g1_bytes(x)


def _fp2_mul(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return (a[0] * b[0] - a[1] * b[1]) % P, (a[0] * b[1] + a[1] * b[0]) % P


def _g2_rhs_is_square(x0: int) -> bool:
    x = (x0, 0)
    c0, c1 = _fp2_mul(_fp2_mul(x, x), x)
    r = (c0 + 4, c1 + 4)  # x³ + 4(1 + u)
    return _is_square(r[0] ** 2 + r[1] ** 2)  # a square in Fp2 iff its norm is a square in Fp


def _g2_bytes(x0: int) -> bytes:
    raw = bytearray((0).to_bytes(48, "big") + x0.to_bytes(48, "big"))  # c1 ‖ c0
    raw[0] |= 0x80
    return bytes(raw)


def g2_off_subgroup() -> bytes:
    x0 = 1
    while not _g2_rhs_is_square(x0):
        x0 += 1
    return _g2_bytes(x0)


def g2_off_curve() -> bytes:
    x0 = 1
    while _g2_rhs_is_square(x0):
        x0 += 1
    return _g2_bytes(x0)


def doc_of(data: bytes) -> dict:
    return json.loads(data)


def redump(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def flip_b64(text: str, position: int) -> str:
    c = text[position]
    return text[:position] + ("A" if c != "A" else "B") + text[position + 1 :]


def random_g1():
    return mul(g1(), random_scalar())


def random_g2():
    return mul(g2(), random_scalar())


# --- correctness and access control --------------------------------------------------------


def test_every_member_of_the_set_decrypts(params, alice, key, ciphertexts):
    for i in sorted(S):
        assert decrypt(params, key, ciphertexts[i]) == b"class %d" % i


def test_all_classes_with_the_whole_set(params, alice, ciphertexts):
    everything = extract(params, alice, range(1, N + 1))
    for i in range(1, N + 1):
        assert decrypt(params, everything, ciphertexts[i]) == b"class %d" % i


def test_single_class_parameters():
    p = setup(1)
    patient = keygen(p)
    c = encrypt(p, patient.public, 1, b"only")
    assert decrypt(p, extract(p, patient, {1}), c) == b"only"
    p.verify()


def test_non_member_class_is_refused_before_any_pairing(params, key, ciphertexts, monkeypatch):
    def no_pairing(*args, **kwargs):
        raise AssertionError("a pairing was computed")

    monkeypatch.setattr(kac, "multi_pairing", no_pairing)
    with pytest.raises(PolicyNotSatisfied, match=r"class 3\b"):
        decrypt(params, key, ciphertexts[3])


def test_kem_secret_matches_only_for_members(params, alice):
    t = random_scalar()
    c1, c2, secret = kac._encapsulate(params, alice.public, 7, t)
    assert secret == gt_pow(pair(params.g1_power(1), params.g2_power(N)), t)
    good = extract(params, alice, {3, 7, 11})
    assert kac._decapsulate(params, good, 7, c1, c2) == secret
    # bypassing the policy check: a key without class 7 does not yield the KEM secret
    bad = extract(params, alice, {3, 8, 11})
    assert kac._decapsulate(params, bad, 7, c1, c2) != secret


def test_key_of_another_patient_fails(params, bob, ct):
    bobs = extract(params, bob, S)
    with pytest.raises(DecryptionFailed, match="patient"):
        decrypt(params, bobs, ct)
    # with the label forged, the pairing yields a different secret and the AEAD refuses
    forged = dataclasses.replace(bobs, patient_id=ct.patient_id)
    with pytest.raises(DecryptionFailed):
        decrypt(params, forged, ct)


def test_key_from_other_params_fails(params, other_params, alice, ct):
    foreign = extract(other_params, alice, S)
    with pytest.raises(DecryptionFailed, match="different KAC parameters"):
        decrypt(params, foreign, ct)
    forged = dataclasses.replace(foreign, params_fingerprint=params.fingerprint)
    with pytest.raises(DecryptionFailed):
        decrypt(params, forged, ct)


def test_key_classes_outside_the_params_are_rejected(params, key, ct):
    bad = dataclasses.replace(key, classes=frozenset({5, N + 1}))
    with pytest.raises(InvalidKey, match=r"1\.\.16"):
        decrypt(params, bad, ct)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda c: dataclasses.replace(c, c1=c.c1 + g1()), id="c1"),
        pytest.param(lambda c: dataclasses.replace(c, c2=c.c2 + g1()), id="c2"),
        pytest.param(lambda c: dataclasses.replace(c, c1=c.c2, c2=c.c1), id="swap-c1-c2"),
        pytest.param(
            lambda c: dataclasses.replace(c, sealed=c.sealed[:-1] + bytes([c.sealed[-1] ^ 1])),
            id="sealed-tag",
        ),
        pytest.param(
            lambda c: dataclasses.replace(
                c, sealed=c.sealed[:20] + bytes([c.sealed[20] ^ 1]) + c.sealed[21:]
            ),
            id="sealed-body",
        ),
        pytest.param(lambda c: dataclasses.replace(c, sealed=c.sealed[:10]), id="sealed-short"),
        pytest.param(lambda c: dataclasses.replace(c, class_index=9), id="class-index"),
    ],
)
def test_tampered_ciphertext_fails(params, key, ct, tamper):
    assert decrypt(params, key, ct) == MESSAGE
    with pytest.raises(DecryptionFailed):
        decrypt(params, key, tamper(ct))


def test_tampered_patient_id_fails(params, key, ct):
    other_id = "0" * 32
    with pytest.raises(DecryptionFailed):
        decrypt(params, key, dataclasses.replace(ct, patient_id=other_id))
    # also relabel the key, so only the AEAD's associated data can catch it
    relabelled = dataclasses.replace(key, patient_id=other_id)
    with pytest.raises(DecryptionFailed):
        decrypt(params, relabelled, dataclasses.replace(ct, patient_id=other_id))


def test_associated_data_binds_every_field(params, other_params, key, ct):
    """With the right KEM secret, any change to class, c1, c2, patient or params still fails."""
    secret = kac._decapsulate(params, key, ct.class_index, ct.c1, ct.c2)
    aead_key = derive_key(gt_to_bytes(secret), info=kac.KDF_INFO)
    fields = (params, ct.class_index, ct.c1, ct.c2, ct.patient_id)
    assert open_sealed(aead_key, ct.sealed, aad=kac._aad(*fields)) == MESSAGE
    variants = [
        (other_params, *fields[1:]),
        (params, 9, *fields[2:]),
        (params, ct.class_index, ct.c1 + g1(), ct.c2, ct.patient_id),
        (params, ct.class_index, ct.c1, ct.c2 + g1(), ct.patient_id),
        (*fields[:4], "0" * 32),
    ]
    for variant in variants:
        with pytest.raises(DecryptionFailed):
            open_sealed(aead_key, ct.sealed, aad=kac._aad(*variant))


def test_encryption_is_randomised(params, alice):
    a = encrypt(params, alice.public, 4, MESSAGE)
    b = encrypt(params, alice.public, 4, MESSAGE)
    assert a.header_bytes() != b.header_bytes()
    assert a.sealed != b.sealed


def test_extract_is_deterministic_in_the_set(params, alice):
    k1 = extract(params, alice, [4, 1, 9])
    k2 = extract(params, alice, {9, 4, 1})
    assert k1 == k2
    assert k1.classes == frozenset({1, 4, 9})
    assert k1.patient_id == alice.public.patient_id
    assert k1.params_fingerprint == params.fingerprint
    assert extract(params, alice, {1, 4}).key_bytes() != k1.key_bytes()


@settings(max_examples=40, deadline=None)
@given(
    classes=st.sets(st.integers(min_value=1, max_value=N), min_size=1, max_size=N),
    i=st.integers(min_value=1, max_value=N),
)
def test_decrypt_succeeds_iff_class_in_set(params, alice, ciphertexts, classes, i):
    k = extract(params, alice, classes)
    if i in classes:
        assert decrypt(params, k, ciphertexts[i]) == b"class %d" % i
    else:
        with pytest.raises(PolicyNotSatisfied):
            decrypt(params, k, ciphertexts[i])
        # and the underlying pairing does not recover the secret either
        c = ciphertexts[i]
        wrong = kac._decapsulate(params, k, i, c.c1, c.c2)
        right = kac._decapsulate(params, extract(params, alice, {i}), i, c.c1, c.c2)
        assert wrong != right


# --- argument checking -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -1, 65537, True, "16", 2.0])
def test_setup_rejects_bad_n(n):
    with pytest.raises(ValueError, match="number of classes"):
        setup(n)


@pytest.mark.parametrize("i", [0, N + 1, -3, True, "3"])
def test_encrypt_rejects_bad_class(params, alice, i):
    with pytest.raises(ValueError, match="class index"):
        encrypt(params, alice.public, i, b"x")


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (set(), "empty"),
        ({1, N + 1}, "out of range"),
        ({0}, "out of range"),
        (3, "not a single int"),
        ({1, "2"}, "must be an int"),
    ],
)
def test_extract_rejects_bad_sets(params, alice, classes, message):
    with pytest.raises(ValueError, match=message):
        extract(params, alice, classes)


def test_g2_power_never_exposes_g_n_plus_1(params):
    with pytest.raises(ValueError, match="never published"):
        params.g2_power(N + 1)
    for k in (0, 2 * N + 1):
        with pytest.raises(ValueError):
            params.g2_power(k)
    with pytest.raises(ValueError):
        params.g1_power(N + 1)
    assert len(params.g2_powers) == 2 * N - 1


# --- sizes, identities, repr ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 8, 64])
def test_aggregate_key_is_96_bytes(params64, size):
    patient = keygen(params64)
    k = extract(params64, patient, range(1, size + 1))
    assert len(k.classes) == size
    assert len(k.key_bytes()) == 96


def test_header_is_96_bytes(ct):
    assert len(ct.header_bytes()) == 96
    assert ct.header_bytes() == encode_g1(ct.c1) + encode_g1(ct.c2)


def test_patient_id(alice, bob):
    pid = alice.public.patient_id
    assert len(pid) == 32 and int(pid, 16) >= 0
    assert pid == KacPatientPublic(alice.public.v).patient_id
    assert pid != bob.public.patient_id


def test_secret_repr_hides_gamma(alice):
    assert str(alice.gamma) not in repr(alice)
    assert hex(alice.gamma)[2:] not in repr(alice)


def test_params_fingerprint(params, other_params):
    assert len(params.fingerprint) == 32
    assert params.fingerprint != other_params.fingerprint
    assert KacParams(N, params.g1_powers, params.g2_powers).fingerprint == params.fingerprint
    changed = list(params.g2_powers)
    changed[-1] = changed[-1] + g2()
    assert KacParams(N, params.g1_powers, tuple(changed)).fingerprint != params.fingerprint


# --- serialisation -------------------------------------------------------------------------------


def test_round_trips(params, alice, key, ct):
    p2 = KacParams.from_bytes(params.to_bytes())
    assert p2 == params and p2.fingerprint == params.fingerprint

    pub = KacPatientPublic.from_bytes(alice.public.to_bytes())
    assert pub == alice.public and pub.patient_id == alice.public.patient_id

    sec = KacPatientSecret.from_bytes(alice.to_bytes())
    assert sec.gamma == alice.gamma and sec.public == alice.public

    k2 = AggregateKey.from_bytes(key.to_bytes())
    assert k2 == key

    c2 = KacCiphertext.from_bytes(ct.to_bytes())
    assert c2 == ct
    assert decrypt(p2, k2, c2) == MESSAGE


def test_key_classes_are_stored_as_ranges(params, alice):
    k = extract(params, alice, {1, 2, 3, 7, 9, 10, 16})
    doc = doc_of(k.to_bytes())
    assert doc["classes"] == [[1, 3], [7, 7], [9, 10], [16, 16]]
    assert AggregateKey.from_bytes(k.to_bytes()).classes == k.classes


def _all_blobs(params, alice, key, ct) -> dict[str, tuple[type, bytes]]:
    return {
        "kac-params": (KacParams, params.to_bytes()),
        "kac-patient-public": (KacPatientPublic, alice.public.to_bytes()),
        "kac-patient-secret": (KacPatientSecret, alice.to_bytes()),
        "kac-aggregate-key": (AggregateKey, key.to_bytes()),
        "kac-ciphertext": (KacCiphertext, ct.to_bytes()),
    }


def test_from_bytes_of_the_wrong_type(params, alice, key, ct):
    blobs = _all_blobs(params, alice, key, ct)
    for kind, (cls, _) in blobs.items():
        for other, (_, data) in blobs.items():
            if other != kind:
                with pytest.raises(InvalidEncoding, match=f"expected a {kind} file"):
                    cls.from_bytes(data)


def test_unknown_version_and_truncation(params, alice, key, ct):
    for cls, data in _all_blobs(params, alice, key, ct).values():
        doc = doc_of(data)
        doc["version"] = 2
        with pytest.raises(InvalidEncoding, match="unsupported version"):
            cls.from_bytes(redump(doc))
        for cut in (0, 1, len(data) // 2, len(data) - 3):
            with pytest.raises(InvalidEncoding):
                cls.from_bytes(data[:cut])
        with pytest.raises(InvalidEncoding):
            cls.from_bytes(b"\xff\xfe not json")
        with pytest.raises(InvalidEncoding):
            cls.from_bytes(b"[1, 2, 3]")
        with pytest.raises(InvalidEncoding):
            cls.from_bytes(None)


def test_missing_fields(params, alice, key, ct):
    for cls, data in _all_blobs(params, alice, key, ct).values():
        doc = doc_of(data)
        for name in [k for k in doc if k not in ("format", "type", "version")]:
            broken = dict(doc)
            del broken[name]
            with pytest.raises(InvalidEncoding, match=f"missing field '{name}'"):
                cls.from_bytes(redump(broken))


@pytest.mark.parametrize(
    ("kind", "name", "value"),
    [
        ("kac-ciphertext", "class", "5"),
        ("kac-ciphertext", "class", True),
        ("kac-ciphertext", "class", 0),
        ("kac-ciphertext", "class", 65537),
        ("kac-ciphertext", "c1", 12),
        ("kac-ciphertext", "c1", "!!!"),
        ("kac-ciphertext", "c1", encoding.b64e(bytes(48))),
        ("kac-ciphertext", "c2", encoding.b64e(encode_g2(g2()))),
        ("kac-ciphertext", "patient", "ABCDEF" * 5 + "00"),
        ("kac-ciphertext", "patient", "00"),
        ("kac-ciphertext", "patient", None),
        ("kac-ciphertext", "sealed", encoding.b64e(bytes(27))),
        ("kac-ciphertext", "sealed", ["x"]),
        ("kac-aggregate-key", "classes", []),
        ("kac-aggregate-key", "classes", [[3, 1]]),
        ("kac-aggregate-key", "classes", [[1, 2], [3, 4]]),
        ("kac-aggregate-key", "classes", [[5, 6], [1, 2]]),
        ("kac-aggregate-key", "classes", [[0, 2]]),
        ("kac-aggregate-key", "classes", [[1, 2, 3]]),
        ("kac-aggregate-key", "classes", [1, 2]),
        ("kac-aggregate-key", "classes", {"a": 1}),
        ("kac-aggregate-key", "key", encoding.b64e(encode_g1(g1()))),
        ("kac-aggregate-key", "params", encoding.b64e(bytes(31))),
        ("kac-aggregate-key", "patient", 7),
        ("kac-patient-secret", "gamma", encoding.b64e(bytes(32))),
        ("kac-patient-secret", "gamma", encoding.b64e(ORDER.to_bytes(32, "big"))),
        ("kac-patient-secret", "gamma", encoding.b64e(bytes(31) + b"\x01")[:-2]),
        ("kac-patient-public", "v", encoding.b64e(encode_g1(g1()) + b"\x00")),
        ("kac-params", "n", 0),
        ("kac-params", "n", 15),
        ("kac-params", "n", 1.5),
        ("kac-params", "g1_powers", "A"),
        ("kac-params", "g2_powers", 3),
    ],
)
def test_malformed_fields(params, alice, key, ct, kind, name, value):
    cls, data = _all_blobs(params, alice, key, ct)[kind]
    doc = doc_of(data)
    doc[name] = value
    with pytest.raises(InvalidEncoding):
        cls.from_bytes(redump(doc))


def test_truncated_point_lists(params):
    doc = doc_of(params.to_bytes())
    for name in ("g1_powers", "g2_powers"):
        broken = dict(doc)
        raw = encoding.b64d(doc[name], field=name)
        broken[name] = encoding.b64e(raw[:-1])
        with pytest.raises(InvalidEncoding, match=name):
            KacParams.from_bytes(redump(broken))
        broken[name] = encoding.b64e(raw + raw[:48])
        with pytest.raises(InvalidEncoding, match=name):
            KacParams.from_bytes(redump(broken))


@pytest.mark.parametrize(
    ("kind", "name", "position"),
    [
        ("kac-ciphertext", "c1", 20),
        ("kac-ciphertext", "c2", 40),
        ("kac-aggregate-key", "key", 30),
        ("kac-aggregate-key", "key", 100),
        ("kac-patient-public", "v", 33),
        ("kac-params", "g1_powers", 64 * 5 + 10),  # inside G1 power 6
        ("kac-params", "g2_powers", 128 * 17 + 50),  # inside G2 power 19 (past the gap)
    ],
)
def test_flipped_base64_char_in_a_point(params, alice, key, ct, kind, name, position):
    cls, data = _all_blobs(params, alice, key, ct)[kind]
    doc = doc_of(data)
    doc[name] = flip_b64(doc[name], position)
    with pytest.raises(InvalidEncoding, match=name):
        cls.from_bytes(redump(doc))


def _substitute_point(doc: dict, name: str, point: bytes, index: int = 0) -> dict:
    size = len(point)
    raw = bytearray(encoding.b64d(doc[name], field=name))
    raw[index * size : (index + 1) * size] = point
    out = dict(doc)
    out[name] = encoding.b64e(bytes(raw))
    return out


@pytest.mark.parametrize("where", ["off-subgroup", "off-curve"])
@pytest.mark.parametrize(
    ("kind", "name", "group", "index"),
    [
        ("kac-ciphertext", "c1", 1, 0),
        ("kac-ciphertext", "c2", 1, 0),
        ("kac-patient-public", "v", 1, 0),
        ("kac-aggregate-key", "key", 2, 0),
        ("kac-params", "g1_powers", 1, 3),
        ("kac-params", "g2_powers", 2, 2 * N - 2),
    ],
)
def test_bad_points_are_refused(params, alice, key, ct, kind, name, group, index, where):
    makers = {
        (1, "off-subgroup"): g1_off_subgroup,
        (1, "off-curve"): g1_off_curve,
        (2, "off-subgroup"): g2_off_subgroup,
        (2, "off-curve"): g2_off_curve,
    }
    point = makers[group, where]()
    cls, data = _all_blobs(params, alice, key, ct)[kind]
    broken = _substitute_point(doc_of(data), name, point, index)
    with pytest.raises(InvalidEncoding, match=name):
        cls.from_bytes(redump(broken))


def test_identity_point_is_refused(ct):
    doc = doc_of(ct.to_bytes())
    identity = bytes([0xC0]) + bytes(47)
    with pytest.raises(InvalidEncoding, match="c1"):
        KacCiphertext.from_bytes(redump(_substitute_point(doc, "c1", identity)))


# --- parameter verification ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, N])
def test_verify_accepts_honest_params(n, params):
    (params if n == N else setup(n)).verify()


@pytest.mark.parametrize(
    ("group", "k"),
    [
        (1, 1),
        (1, 2),
        (1, 8),
        (1, N),
        (2, 1),
        (2, 2),
        (2, 9),
        (2, N),
        (2, N + 2),
        (2, N + 5),
        (2, 2 * N),
    ],
)
def test_verify_rejects_one_swapped_point(params, group, k):
    g1s, g2s = list(params.g1_powers), list(params.g2_powers)
    if group == 1:
        g1s[k - 1] = random_g1()
    else:
        g2s[k - 1 if k <= N else k - 2] = random_g2()
    bad = KacParams(N, tuple(g1s), tuple(g2s))
    with pytest.raises(InvalidKey):
        bad.verify()


def test_verify_rejects_two_exchanged_points(params):
    g1s = list(params.g1_powers)
    g1s[3], g1s[4] = g1s[4], g1s[3]
    with pytest.raises(InvalidKey):
        KacParams(N, tuple(g1s), params.g2_powers).verify()


def test_verify_checks_the_gap_at_n_plus_1():
    """Upper G2 block internally consistent but shifted by one power: only the gap check sees it."""
    n, alpha = 8, random_scalar()
    honest = kac._powers(n, alpha)
    upper = tuple(mul(g2(), pow(alpha, k + 1, ORDER)) for k in range(n + 2, 2 * n + 1))
    bad = KacParams(n, honest.g1_powers, honest.g2_powers[:n] + upper)
    with pytest.raises(InvalidKey):
        bad.verify()


def test_verify_ties_g1_and_g2_to_one_alpha():
    n = 8
    a, b = kac._powers(n, random_scalar()), kac._powers(n, random_scalar())
    with pytest.raises(InvalidKey):
        KacParams(n, a.g1_powers, b.g2_powers).verify()


@pytest.mark.parametrize("alpha", [1, ORDER - 1])
def test_verify_rejects_small_order_alpha(alpha):
    with pytest.raises(InvalidKey, match="small order"):
        kac._powers(8, alpha).verify()


def test_verify_rejects_wrong_lengths_and_types(params):
    with pytest.raises(InvalidKey):
        KacParams(N, params.g1_powers[:-1], params.g2_powers).verify()
    with pytest.raises(InvalidKey):
        KacParams(N, params.g1_powers, (*params.g2_powers, g2())).verify()
    with pytest.raises(InvalidKey):
        KacParams(0, (), ()).verify()
    with pytest.raises(InvalidKey, match="not a G2 point"):
        KacParams(N, params.g1_powers, (g1(), *params.g2_powers[1:])).verify()


# --- n = 1024 ----------------------------------------------------------------------------------


def test_setup_1024_powers():
    n = 1024
    alpha = random_scalar()
    known = kac._powers(n, alpha)
    for k in (1, 2, 513, n):
        assert known.g1_power(k) == mul(g1(), pow(alpha, k, ORDER))
    for k in (1, n, n + 2, 1500, 2 * n):
        assert known.g2_power(k) == mul(g2(), pow(alpha, k, ORDER))
    hidden = mul(g2(), pow(alpha, n + 1, ORDER))
    assert hidden not in known.g2_powers

    p = setup(n)
    assert len(p.g1_powers) == n and len(p.g2_powers) == 2 * n - 1
    # e(g_a, g_b) depends only on a + b: spot checks across the gap, with no α in hand
    for (a, b), (c, d) in [((1, n), (n, 1)), ((3, n), (1, n + 2)), ((n, n), (1, 2 * n - 1))]:
        assert pairing_check([p.g1_power(a), -p.g1_power(c)], [p.g2_power(b), p.g2_power(d)])
    patient = keygen(p)
    k = extract(p, patient, {1, 512, n})
    for i in (1, 512, n):
        assert decrypt(p, k, encrypt(p, patient.public, i, b"big")) == b"big"


def test_context_is_bound_into_the_associated_data(params, alice, key):
    """A ciphertext sealed with a context opens only with exactly that context."""
    ct = encrypt(params, alice.public, 5, MESSAGE, context=b"record-1")
    assert decrypt(params, key, ct, context=b"record-1") == MESSAGE
    for wrong in (b"", b"record-2", b"record-1\x00"):
        with pytest.raises(DecryptionFailed):
            decrypt(params, key, ct, context=wrong)
    plain = encrypt(params, alice.public, 5, MESSAGE)
    assert decrypt(params, key, plain) == MESSAGE  # the empty context is the plain scheme
    with pytest.raises(DecryptionFailed):
        decrypt(params, key, plain, context=b"record-1")
    with pytest.raises(TypeError):
        encrypt(params, alice.public, 5, MESSAGE, context="record-1")  # type: ignore[arg-type]
