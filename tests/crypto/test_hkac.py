"""Tests of hierarchical key-aggregate sharing (medshare.crypto.hkac)."""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medshare.crypto import hkac
from medshare.crypto.errors import DecryptionFailed, InvalidEncoding, PolicyNotSatisfied
from medshare.crypto.group import G2_BYTES, ORDER, encode_g1, g1, mul
from medshare.crypto.hkac import (
    Directory,
    PatientSeed,
    Share,
    Slab,
    Slot,
    UnknownRecord,
    assign,
    block_gamma,
    block_public,
    block_publics,
    block_secret,
    extend_share,
    key_overhead,
    move_records,
    open_record,
    overhead_table,
    retire_slabs,
    rewrap_plan,
    seal_record,
    share_all,
    share_department,
    share_record,
    share_records,
)
from medshare.crypto.kac import KacParams, setup

N = 64
SLAB = 8
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
FIXED_SEED = bytes(range(32))


@pytest.fixture(scope="module")
def params() -> KacParams:
    return setup(N)


@pytest.fixture(scope="module")
def seed() -> PatientSeed:
    return PatientSeed.generate()


def _subtree(codes):
    """A sub-tree function over prefix codes, like Taxonomy.subtree but on plain strings."""
    return lambda dept: [c for c in codes if c.startswith(dept)]


def _dek(rid: str) -> bytes:
    return hashlib.sha256(rid.encode()).digest()


class Patient:
    """A patient's seed, directory and sealed records (what the service would hold)."""

    def __init__(self, params: KacParams, seed: PatientSeed, slab: int = SLAB) -> None:
        self.params = params
        self.seed = seed
        self.directory = Directory.for_params(params, slab)
        self.sealed: dict[str, object] = {}

    def add(self, dept: str, rid: str) -> Slot:
        self.directory, slot = assign(self.directory, dept, rid)
        self.seal(rid)
        return slot

    def seal(self, rid: str) -> None:
        slot = self.directory.slot_of(rid)
        publics = block_publics(self.seed, self.directory)
        self.sealed[rid] = seal_record(self.params, publics, slot, _dek(rid), rid)

    def opens(self, share: Share, rid: str) -> bool:
        try:
            plain = open_record(self.params, share, self.sealed[rid], rid)
        except (PolicyNotSatisfied, DecryptionFailed):
            return False
        assert plain == _dek(rid)
        return True

    def readable(self, share: Share) -> set[str]:
        return {rid for rid in self.sealed if self.opens(share, rid)}


@pytest.fixture()
def patient(params, seed) -> Patient:
    """Departments 03 > {0304, 0305} and 04; 2-3 records each, all in block 0."""
    p = Patient(params, seed)
    for dept, count in (("03", 2), ("0304", 3), ("0305", 2), ("04", 2)):
        for k in range(count):
            p.add(dept, f"{dept}-r{k}")
    return p


# --- derivation ----------------------------------------------------------------------------------


def _hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    out, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
    return out[:length]


def test_gamma_matches_an_independent_hkdf():
    seed = PatientSeed(FIXED_SEED)
    for block in (0, 1, 7):
        okm = _hkdf_sha256(FIXED_SEED, f"medshare/hkac/v1/block/{block}".encode(), 64)
        assert block_gamma(seed, block) == 1 + int.from_bytes(okm, "big") % (ORDER - 1)


def test_derivation_is_deterministic_and_seed_specific(seed):
    again = PatientSeed(seed.secret_bytes())
    other = PatientSeed.generate()
    for block in (0, 1, 5):
        assert block_gamma(seed, block) == block_gamma(again, block)
        assert block_gamma(seed, block) != block_gamma(other, block)
        pub = block_public(seed, block)
        assert encode_g1(pub.v) == encode_g1(block_public(again, block).v)
        assert encode_g1(pub.v) == encode_g1(mul(g1(), block_gamma(seed, block)))
        assert pub.patient_id != block_public(other, block).patient_id
    assert block_gamma(seed, 0) != block_gamma(seed, 1)
    assert block_secret(seed, 3).gamma == block_gamma(seed, 3)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(min_value=0, max_value=1000))
def test_gamma_is_a_non_zero_scalar(raw, block):
    assert 1 <= block_gamma(PatientSeed(raw), block) < ORDER


def test_gamma_is_non_zero_even_for_extreme_kdf_output(monkeypatch):
    """KDF outputs ≡ 0 mod p-1 (which a plain ``mod p`` could turn into γ = 0) give γ = 1."""
    outputs = [bytes(64), (ORDER - 1).to_bytes(64, "big"), (2 * ORDER - 2).to_bytes(64, "big")]

    class FakeHKDF:
        def __init__(self, **_):
            pass

        def derive(self, _ikm):
            return outputs.pop()

    monkeypatch.setattr(hkac, "HKDF", FakeHKDF)
    while outputs:
        assert block_gamma(PatientSeed(FIXED_SEED), 0) == 1


def test_seed_is_hidden_and_checked(seed):
    assert seed.secret_bytes().hex() not in repr(seed)
    assert seed.secret_bytes().hex() not in str(seed)
    assert seed == PatientSeed(seed.secret_bytes())
    assert seed != PatientSeed.generate()
    with pytest.raises(TypeError):
        hash(seed)
    with pytest.raises(TypeError):
        pickle.dumps(seed)
    for bad in (b"", bytes(31), bytes(33), "x" * 32):
        with pytest.raises(ValueError):
            PatientSeed(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        block_gamma(seed, -1)


# --- slab allocation -----------------------------------------------------------------------------


def test_first_record_reserves_a_slab_and_the_33rd_a_second():
    d = Directory(N)  # default slab of 32
    assert d.slab_size == 32 and d.slabs_of("0304") == ()
    d, slot = assign(d, "0304", "r1")
    assert slot == Slot(0, 1)
    assert d.slabs_of("0304") == (Slab(0, 1, 32, used=1),)
    for k in range(2, 33):
        d, slot = assign(d, "0304", f"r{k}")
    assert slot == Slot(0, 32) and len(d.slabs_of("0304")) == 1
    d, slot = assign(d, "0304", "r33")
    assert len(d.slabs_of("0304")) == 2
    assert slot == Slot(0, 33) and d.slabs_of("0304")[1] == Slab(0, 33, 64, used=1)
    d, slot = assign(d, "04", "x1")  # block 0 is full (64 classes): a new block
    assert slot == Slot(1, 1) and d.blocks == (0, 1)


def test_departments_never_share_slots():
    d = Directory(N, SLAB)
    depts = ["03", "0304", "04", "05"]
    for k in range(60):
        d, _ = assign(d, depts[(k * 7) % 4 if k % 3 else 0], f"r{k}")
    slots = list(d.records.values())
    assert len(set(slots)) == len(slots) == 60
    owned = {}
    for dept in d.departments:
        for slab in d.slabs_of(dept):
            for index in slab.classes():
                assert (slab.block, index) not in owned
                owned[(slab.block, index)] = dept
    for rid, slot in d.records.items():
        assert owned[(slot.block, slot.index)] == d.department_of(rid)
        assert slot in next(s for s in d.slabs_of(d.department_of(rid)) if slot in s)


def test_assign_is_pure_and_refuses_duplicates():
    d0 = Directory(N, SLAB)
    d1, _ = assign(d0, "03", "a")
    assert len(d0) == 0 and d0.next_free == 0 and len(d1) == 1 and d1.next_free == SLAB
    with pytest.raises(ValueError, match="already"):
        assign(d1, "04", "a")
    with pytest.raises(ValueError):
        assign(d1, "", "b")
    with pytest.raises(UnknownRecord):
        d1.slot_of("zzz")


def test_slab_size_must_divide_n():
    with pytest.raises(ValueError):
        Directory(N, 7)
    with pytest.raises(ValueError):
        Directory(N, 128)


def test_directory_round_trips(patient):
    d = patient.directory
    d2 = Directory.from_bytes(d.to_bytes())
    assert d2 == d and d2.to_bytes() == d.to_bytes()
    assert d2.department_of("0304-r1") == "0304"
    doc = json.loads(d.to_bytes())
    assert doc["type"] == "hkac-directory" and doc["version"] == 1
    assert Directory.from_bytes(d.without_records().to_bytes()).departments == d.departments


def _tampered(d: Directory, change) -> bytes:
    doc = json.loads(d.to_bytes())
    change(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "change",
    [
        lambda doc: doc["records"].update({"dup": doc["records"]["03-r0"]}),  # shared slot
        lambda doc: doc["records"].update({"out": [0, 60]}),  # outside every slab
        lambda doc: doc["departments"][1][1][0].__setitem__(1, 1),  # overlapping slabs
        lambda doc: doc["departments"][0][1][0].__setitem__(2, 5),  # wrong slab size
        lambda doc: doc.__setitem__("next_free", 8),  # slabs beyond next_free
        lambda doc: doc["departments"][0][1][0].__setitem__(3, 99),  # fill count
        lambda doc: doc.__setitem__("slab_size", 7),
        lambda doc: doc.pop("records"),
    ],
)
def test_inconsistent_directories_are_refused(patient, change):
    with pytest.raises(InvalidEncoding):
        Directory.from_bytes(_tampered(patient.directory, change))


# --- shares --------------------------------------------------------------------------------------


def test_record_and_set_shares(patient, params, seed):
    one = share_record(seed, params, patient.directory, "0304-r1", grantee="dr-a", now=NOW)
    assert patient.readable(one) == {"0304-r1"}
    assert len(one.keys) == 1 and len(one.keys[0].key_bytes()) == G2_BYTES == 96
    assert one.size_bytes == 96 and one.scope == ("0304-r1",)
    chosen = {"03-r0", "0305-r1", "04-r1"}
    some = share_records(seed, params, patient.directory, sorted(chosen), grantee="dr-b", now=NOW)
    assert patient.readable(some) == chosen
    assert len(some.keys) == 1  # one block, one 96-B key whatever the set
    with pytest.raises(UnknownRecord):
        share_records(seed, params, patient.directory, ["nope"], grantee="x")
    with pytest.raises(ValueError):
        share_records(seed, params, patient.directory, [], grantee="x")


def test_department_and_subtree_shares(patient, params, seed):
    d = patient.directory
    cardio = share_department(seed, params, d, "0304", grantee="dr-c", now=NOW)
    assert patient.readable(cardio) == {"0304-r0", "0304-r1", "0304-r2"}
    internal = share_department(
        seed, params, d, "03", _subtree(d.departments), grantee="dr-d", now=NOW
    )
    assert internal.scope == ("03", "0304", "0305")
    assert patient.readable(internal) == {r for r in patient.sealed if r.startswith("03")}
    only_03 = share_department(seed, params, d, "03", grantee="dr-e", now=NOW)
    assert patient.readable(only_03) == {"03-r0", "03-r1"}
    everything = share_all(seed, params, d, grantee="family", now=NOW)
    assert patient.readable(everything) == set(patient.sealed)
    for share in (cardio, internal, everything):
        assert [len(k.key_bytes()) for k in share.keys] == [96]


def test_subtree_from_the_real_taxonomy(params, seed):
    from medshare.records.departments import Taxonomy  # tests may use records; hkac may not

    tax = Taxonomy.default()
    p = Patient(params, seed)
    p.add("0304", "cardio")
    p.add("0305", "resp")
    p.add("04", "surgery")
    share = share_department(seed, params, p.directory, "03", tax.subtree, grantee="dr")
    assert "0304" in share.scope and "04" not in share.scope
    assert p.readable(share) == {"cardio", "resp"}


def test_department_share_opens_records_added_later_in_the_slab(patient, params, seed):
    share = share_department(seed, params, patient.directory, "04", grantee="dr", now=NOW)
    assert patient.readable(share) == {"04-r0", "04-r1"}
    for k in range(2, SLAB):  # fill the rest of the reserved slab after the share was given
        patient.add("04", f"04-r{k}")
    assert len(patient.directory.slabs_of("04")) == 1
    assert patient.readable(share) == {f"04-r{k}" for k in range(SLAB)}


def test_new_slab_needs_extend_share(patient, params, seed):
    share = share_department(seed, params, patient.directory, "04", grantee="dr", now=NOW)
    assert extend_share(seed, params, patient.directory, share) == (share, ())
    for k in range(2, SLAB + 1):
        patient.add("04", f"04-r{k}")
    assert len(patient.directory.slabs_of("04")) == 2  # the 9th record reserved a new slab
    assert not patient.opens(share, f"04-r{SLAB}")
    with pytest.raises(PolicyNotSatisfied):
        open_record(params, share, patient.sealed[f"04-r{SLAB}"], f"04-r{SLAB}")
    extended, added = extend_share(seed, params, patient.directory, share)
    assert len(added) == 1 and len(added[0].key_bytes()) == 96
    assert added[0].key.classes == frozenset(patient.directory.slabs_of("04")[1].classes())
    assert extended.share_id == share.share_id and extended.grantee == share.grantee
    assert patient.opens(extended, f"04-r{SLAB}")
    assert patient.readable(extended) == {f"04-r{k}" for k in range(SLAB + 1)}
    assert extend_share(seed, params, patient.directory, extended)[1] == ()


def test_shares_across_two_blocks(params, seed):
    p = Patient(params, seed)
    for k in range(N // SLAB):  # 8 departments fill block 0 with one slab each
        p.add(f"1{k}", f"d{k}")
    fill = {f"d0-{k}" for k in range(1, SLAB)}
    for rid in sorted(fill):
        p.add("10", rid)
    assert p.directory.blocks == (0,)
    p.add("10", "late")  # department 10's second slab lands in block 1
    assert p.directory.slot_of("late") == Slot(1, 1) and p.directory.blocks == (0, 1)
    assert block_public(seed, 0).patient_id != block_public(seed, 1).patient_id
    dept = share_department(seed, params, p.directory, "10", grantee="dr")
    assert [k.block for k in dept.keys] == [0, 1] and dept.size_bytes == 2 * 96
    assert p.readable(dept) == {"d0", "late", *fill}
    both = share_records(seed, params, p.directory, ["d3", "late"], grantee="dr")
    assert len(both.keys) == 2 and p.readable(both) == {"d3", "late"}
    assert p.readable(share_all(seed, params, p.directory, grantee="me")) == set(p.sealed)


def test_new_block_via_extend_share(params, seed):
    p = Patient(params, seed)
    for k in range(N // SLAB):
        p.add(f"1{k}", f"d{k}")
    share = share_all(seed, params, p.directory, grantee="me")
    assert share.blocks == (0,)
    p.add("99", "new-dept")  # a new department in block 1
    assert not p.opens(share, "new-dept")
    share, added = extend_share(seed, params, p.directory, share)
    assert [k.block for k in added] == [1] and p.opens(share, "new-dept")


def test_department_share_before_the_first_record(params, seed):
    p = Patient(params, seed)
    p.add("03", "a")
    share = share_department(seed, params, p.directory, "0304", grantee="dr")
    assert share.keys == ()
    p.add("0304", "b")
    share, added = extend_share(seed, params, p.directory, share)
    assert len(added) == 1 and p.readable(share) == {"b"}


def test_record_id_is_bound(patient, params, seed):
    share = share_all(seed, params, patient.directory, grantee="me")
    swapped = patient.sealed["0304-r0"]
    with pytest.raises(DecryptionFailed):
        open_record(params, share, swapped, "0304-r1")  # storage swapped two covered records
    assert open_record(params, share, swapped, "0304-r0") == _dek("0304-r0")


def test_another_patients_share_fails(patient, params):
    stranger = Patient(params, PatientSeed.generate())
    stranger.add("04", "04-r0")
    share = share_all(stranger.seed, params, stranger.directory, grantee="x")
    with pytest.raises(PolicyNotSatisfied):
        open_record(params, share, patient.sealed["04-r0"], "04-r0")


def test_params_must_match_the_directory(patient, seed):
    with pytest.raises(ValueError):
        share_all(seed, setup(16), patient.directory, grantee="x")


# --- expiry and revocation -----------------------------------------------------------------------


def test_expiry_flag(patient, params, seed):
    until = NOW + timedelta(hours=1)
    share = share_record(
        seed, params, patient.directory, "04-r0", grantee="x", until=until, now=NOW
    )
    assert share.is_valid_at(NOW) and share.is_valid_at(until - timedelta(seconds=1))
    assert not share.is_valid_at(until) and not share.is_valid_at(until + timedelta(days=1))
    forever = share_record(seed, params, patient.directory, "04-r0", grantee="x", now=NOW)
    assert forever.until is None and forever.is_valid_at(NOW + timedelta(days=36500))
    with pytest.raises(ValueError):
        share.is_valid_at(datetime(2026, 1, 1))  # naive
    with pytest.raises(ValueError):
        share_record(seed, params, patient.directory, "04-r0", grantee="x", until=NOW, now=NOW)


def test_revoking_a_department_share(patient, params, seed):
    d = patient.directory
    revoked = share_department(seed, params, d, "0304", grantee="dr-gone", now=NOW)
    keeper = share_department(seed, params, d, "0304", grantee="dr-stays", now=NOW)
    family = share_all(seed, params, d, grantee="family", now=NOW)
    plan = rewrap_plan(d, revoked)
    assert set(plan) == {"0304-r0", "0304-r1", "0304-r2"} == patient.readable(revoked)
    patient.directory = move_records(d, plan)
    for rid in plan:
        assert patient.directory.slot_of(rid) != d.slot_of(rid)
        assert not revoked.covers(patient.directory.slot_of(rid))
        patient.seal(rid)  # the service re-wraps the DEK to the new slot
    assert patient.readable(revoked) == set()
    fresh = share_department(seed, params, patient.directory, "0304", grantee="dr-new")
    assert patient.readable(fresh) == set(plan)
    # later records of the department land outside the revoked share too
    patient.add("0304", "0304-later")
    assert not patient.opens(revoked, "0304-later")
    # the remaining live shares catch up through extend_share
    assert patient.readable(keeper) == set()
    keeper, _ = extend_share(seed, params, patient.directory, keeper)
    assert patient.readable(keeper) == {*plan, "0304-later"}
    family, _ = extend_share(seed, params, patient.directory, family)
    assert patient.readable(family) == set(patient.sealed)
    # untouched records keep their slots
    assert patient.directory.slot_of("0305-r0") == d.slot_of("0305-r0")


def test_revoking_a_record_share(patient, params, seed):
    d = patient.directory
    revoked = share_records(seed, params, d, ["0305-r1"], grantee="x")
    other = share_records(seed, params, d, ["0305-r1", "04-r0"], grantee="y")
    assert rewrap_plan(d, revoked) == ["0305-r1"]
    patient.directory = move_records(d, ["0305-r1"])
    patient.seal("0305-r1")
    assert patient.readable(revoked) == set()
    other, added = extend_share(seed, params, patient.directory, other)
    assert len(added) == 1 and patient.readable(other) == {"0305-r1", "04-r0"}
    with pytest.raises(UnknownRecord):
        move_records(patient.directory, ["nope"])


def test_retiring_the_slabs_a_revoked_share_held(patient, params, seed):
    """A department share holds its slabs' unused slots: with nothing left to move (say the
    department's records were all deleted), its current slab must still be retired, or the
    next record lands in a class the revoked key opens (issue 12, finding 4)."""
    d = patient.directory
    revoked = share_department(
        seed, params, d, "03", _subtree(["03", "0304", "0305"]), now=NOW, grantee="gone"
    )
    one = share_records(seed, params, d, ["04-r0"], grantee="x")
    assert retire_slabs(d, one.classes()) == (d, ())  # a record share holds no unused slot
    retired, depts = retire_slabs(d, revoked.classes())
    assert set(depts) == {"03", "0304", "0305"}
    assert all(retired.slabs_of(c)[-1].is_full for c in depts)
    assert retired.slabs_of("04") == d.slabs_of("04") and retired.records == d.records
    assert Directory.from_bytes(retired.to_bytes()) == retired  # still a valid directory
    patient.directory = retired
    for dept in ("03", "0304", "0305"):
        patient.add(dept, f"{dept}-after")
        assert not patient.opens(revoked, f"{dept}-after")
    patient.add("04", "04-after")
    assert patient.directory.slot_of("04-after").index == d.slabs_of("04")[-1].first + 2


# --- encoding ------------------------------------------------------------------------------------


def test_share_round_trips(patient, params, seed):
    share = share_department(
        seed, params, patient.directory, "03", _subtree(patient.directory.departments),
        grantee="dr", until=NOW + timedelta(days=30), now=NOW,
    )  # fmt: skip
    data = share.to_bytes()
    back = Share.from_bytes(data)
    assert back.to_bytes() == data
    assert (back.share_id, back.grantee, back.scope, back.created, back.until) == (
        share.share_id, share.grantee, share.scope, share.created, share.until,
    )  # fmt: skip
    assert patient.readable(back) == patient.readable(share)
    doc = json.loads(data)
    assert doc["type"] == "hkac-share" and doc["version"] == 1
    with pytest.raises(InvalidEncoding):
        Share.from_bytes(patient.directory.to_bytes())
    doc["scope_kind"] = "everything"
    with pytest.raises(InvalidEncoding):
        Share.from_bytes(json.dumps(doc).encode())
    doc = json.loads(data)
    doc["keys"][0]["key"]["key"] = doc["keys"][0]["key"]["key"][:-2] + "AA"
    with pytest.raises(InvalidEncoding):
        Share.from_bytes(json.dumps(doc).encode())


# --- overhead ------------------------------------------------------------------------------------


def test_key_overhead():
    result = key_overhead((10, 100, 1000))
    rows = {r["n_records"]: r for r in result["rows"]}
    assert set(rows) == {10, 100, 1000}
    big = rows[1000]
    assert big["patient_seed_bytes"] == 32 and big["per_record_32B_bytes"] == 32_000
    per_dept = big["shares"]["every department, one share each"]
    assert per_dept["shares"] == 10 and per_dept["records_covered"] == 1000
    assert 10 <= per_dept["keys"] <= 20 and per_dept["bytes"] == 96 * per_dept["keys"]
    assert per_dept["per_record_96B_bytes"] == 96_000
    assert big["shares"]["one department"]["keys"] == 1
    assert big["shares"]["one department"]["records_covered"] == 100
    assert big["shares"]["whole record (all)"]["keys"] == big["blocks"] == 2
    assert rows[10]["shares"]["10 records (set)"]["keys"] == 1
    assert "| 1,000 |" in overhead_table(result)
