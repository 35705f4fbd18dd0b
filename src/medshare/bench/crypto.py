"""``medshare bench crypto``: CP-ABE and KAC costs against bare group-operation bounds.

Each scheme operation is timed next to the cheapest computation of the same shape on
the same backend in the same run: ABE decrypt against a bare multi-pairing with the
same number of pairings on distinct random points, KAC decrypt against a bare 2-term
multi-pairing, keygen/encrypt/extract against the same scalar multiplications done
directly. The ratio shows the scheme's overhead; absolute times vary between machines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from medshare.bench.timing import paired
from medshare.crypto import abe, group, issuance, kac, paillier_blum, paillier_range

ABE_ATTRS = (5, 10, 20, 50)
QUICK_ABE_ATTRS = (5, 20)  # a smoke run: the ends of a shorter range
KAC_SET_SIZES = (1, 8, 64)
KAC_CLASSES = 1024
RECORD = b"\x42" * 1024


@dataclass(frozen=True)
class Plan:
    repeats: int
    kac_setup_repeats: int
    abe_attrs: tuple[int, ...] = ABE_ATTRS

    @property
    def online_attrs(self) -> tuple[int, int]:
        """Issuance with precomputed randomness: the ends of the range."""
        return self.abe_attrs[0], self.abe_attrs[-1]

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(repeats=2, kac_setup_repeats=1, abe_attrs=QUICK_ABE_ATTRS)
        return cls(10, 5)


def _random_g1(count: int) -> list:
    return [group.mul(group.g1(), group.random_scalar()) for _ in range(count)]


def _random_g2(count: int) -> list:
    return [group.mul(group.g2(), group.random_scalar()) for _ in range(count)]


def _scalars(count: int) -> list[int]:
    return [group.random_scalar() for _ in range(count)]


def _row(op: str, key: str, size: int, ms: float, bound_ms: float) -> dict:
    return {
        "op": op,
        key: size,
        "ms": round(ms, 3),
        "bound_ms": round(bound_ms, 3),
        "ratio": round(ms / bound_ms, 3),
    }


def _mul_bound(count_g1: int, count_g2: int) -> Callable[[], None]:
    """Bare scalar multiplications: ``count_g1`` in G1 and ``count_g2`` in G2."""
    p1, p2, k = _random_g1(1)[0], _random_g2(1)[0], _scalars(1)[0]

    def run() -> None:
        for _ in range(count_g1):
            group.mul(p1, k)
        for _ in range(count_g2):
            group.mul(p2, k)

    return run


def bench_abe(plan: Plan, progress: Callable[[str], None]) -> tuple[list[dict], dict[str, int]]:
    rows: list[dict] = []
    sizes: dict[str, int] = {}
    authority = issuance.AuthorityKeys.generate()
    master, public = authority.master, authority.master.public
    issuer = issuance.IssuanceAuthority(authority)
    # The user checks an authority's Paillier modulus proof once (a wallet keeps the
    # verdict); the per-key rows are the steady state, the check is its own row.
    verified: set[tuple[bytes, int]] = set()
    modulus = authority.paillier_p * authority.paillier_q
    context = issuance._modulus_context(public.fingerprint())
    proof = authority.modulus_proof
    assert proof is not None
    t = paired(
        lambda: paillier_blum.verify_modulus(modulus, proof, context),
        lambda: [pow(r.z, modulus, modulus) for r in proof.rounds],  # its N-th powers
        max(1, plan.repeats - 1),
    )
    rows.append(_row("paillier-modulus-check", "attrs", 0, t.ms, t.bound_ms))
    for n in plan.abe_attrs:
        progress(f"ABE, {n} attributes")
        attrs = [f"attr:{i:03d}" for i in range(n)]
        policy = " and ".join(attrs)
        key = abe.keygen(master, group.random_scalar(), attrs)
        ct = abe.encrypt(public, policy, RECORD)
        sizes[str(n)] = ct.size()

        # Setup: 6 G1 and 4 G2 scalar multiplications.
        t = paired(abe.setup, _mul_bound(6, 4), plan.repeats)
        rows.append(_row("setup", "attrs", n, t.ms, t.bound_ms))
        # KeyGen: per attribute one G2 mult and one 3-term G2 multiexp; plus K, L, L'.
        t = paired(
            lambda a=attrs: abe.keygen(master, group.random_scalar(), a),
            _keygen_bound(n),
            plan.repeats,
        )
        rows.append(_row("keygen", "attrs", n, t.ms, t.bound_ms))
        t = paired(
            lambda a=attrs: issuance.issue_key(
                issuer, public, "bench", a, verified_moduli=verified
            ),
            _issue_bound(n, authority),
            max(1, plan.repeats - 1),
        )
        rows.append(_row("issue", "attrs", n, t.ms, t.bound_ms))
        if n in plan.online_attrs:
            rows.append(_issue_online_row(n, attrs, authority, verified, plan))
        # Encrypt: per row two 2-term G1 multiexps and one G1 mult; C0, C0' and the KEM.
        t = paired(lambda p=policy: abe.encrypt(public, p, RECORD), _encrypt_bound(n), plan.repeats)
        rows.append(_row("encrypt", "attrs", n, t.ms, t.bound_ms))
        # Decrypt: one multi-pairing of 2n + 2 terms.
        g1s, g2s = _random_g1(2 * n + 2), _random_g2(2 * n + 2)
        t = paired(
            lambda k=key, c=ct: abe.decrypt(public, k, c),
            lambda a=g1s, b=g2s: group.multi_pairing(a, b),
            plan.repeats,
        )
        rows.append(_row("decrypt", "attrs", n, t.ms, t.bound_ms))
    return rows, sizes


def _issue_online_row(
    n: int,
    attrs: list[str],
    authority: issuance.AuthorityKeys,
    verified: set[tuple[bytes, int]],
    plan: Plan,
) -> dict:
    """Issuance with the authority's Paillier randomness precomputed (what a server does
    while idle, ``IssuanceAuthority.precompute``): the online latency of one key."""
    online = issuance.IssuanceAuthority(authority)
    repeats = max(1, plan.repeats - 1)
    online.precompute(repeats + 1)  # the warm-up and every timed run
    public = authority.master.public
    t = paired(
        lambda: issuance.issue_key(online, public, "bench", attrs, verified_moduli=verified),
        _issue_bound(n, authority, precomputed=True),
        repeats,
    )
    return _row("issue-online", "attrs", n, t.ms, t.bound_ms)


def _keygen_bound(n: int) -> Callable[[], None]:
    p2, ks = _random_g2(3), _scalars(3)

    def run() -> None:
        group.multiexp(p2[:2], ks[:2])
        group.mul(p2[0], ks[0])
        group.mul(p2[1], ks[1])
        for _ in range(n):
            group.mul(p2[2], ks[2])
            group.multiexp(p2, ks)

    return run


def _issue_bound(
    n: int, authority: issuance.AuthorityKeys, *, precomputed: bool = False
) -> Callable[[], None]:
    """KeyGen's multiplications plus the Paillier work: two encryptions, one ρ-power, one
    decryption, the five G1 multiplications of the two proofs of knowledge, and the range
    proof: the authority's 2·ROUNDS + 1 encryptions (by CRT; with ``precomputed``
    randomness, one multiplication each) and the user's batched check (one full N-th
    power)."""
    keygen_ops = _keygen_bound(n)
    paillier_public, paillier_private = authority.paillier()
    n_square = paillier_public.nsquare
    p1, ks = _random_g1(1), _scalars(2)
    crt = paillier_range._Encryptor(authority.paillier_p, authority.paillier_q)

    def run() -> None:
        keygen_ops()
        c = paillier_public.raw_encrypt(ks[0])
        c = pow(c, ks[1], n_square) * paillier_public.raw_encrypt(ks[1]) % n_square
        paillier_private.raw_decrypt(c)
        for _ in range(5):
            group.mul(p1[0], ks[0])
        for _ in range(issuance.RANDOMIZERS_PER_OFFER):
            crt.encrypt(ks[0], ks[1], ks[1] if precomputed else None)
        pow(ks[1], paillier_public.n, n_square)

    return run


def _encrypt_bound(n: int) -> Callable[[], None]:
    p1, ks = _random_g1(2), _scalars(2)

    def run() -> None:
        for _ in range(n):
            group.multiexp(p1, ks)
            group.multiexp(p1, ks)
            group.mul(p1[0], ks[0])
        group.mul(p1[0], ks[0])
        group.mul(p1[1], ks[1])
        group.pair(group.mul(p1[0], ks[0]), group.g2())

    return run


def bench_kac(plan: Plan, progress: Callable[[str], None]) -> tuple[list[dict], dict[str, int]]:
    rows: list[dict] = []
    progress(f"KAC setup, n = {KAC_CLASSES}")
    t = paired(lambda: kac.setup(KAC_CLASSES), _setup_bound(KAC_CLASSES), plan.kac_setup_repeats)
    rows.append(_row("setup", "classes", KAC_CLASSES, t.ms, t.bound_ms))
    params = kac.setup(KAC_CLASSES)
    patient = kac.keygen(params)
    header_g1 = _random_g1(1)[0]
    k1, k2, k3, k4 = _scalars(4)
    progress("KAC encrypt, extract, decrypt")
    kac.encrypt(params, patient.public, 1, RECORD)  # builds the cached GT table once
    table = group.FixedBaseGT.build(group.pair(group.g1(), group.g2()))
    t = paired(
        lambda: kac.encrypt(params, patient.public, 7, RECORD),
        lambda: (group.mul(header_g1, k1), group.mul(header_g1, k2), table.pow(k3)),
        plan.repeats * 3,
    )
    rows.append(_row("encrypt", "set_size", 1, t.ms, t.bound_ms))
    g2_point = _random_g2(1)[0]
    g1s, g2s = _random_g1(2), _random_g2(2)
    sizes: dict[str, int] = {}
    for size in KAC_SET_SIZES:
        classes = list(range(1, size + 1))
        t = paired(
            lambda c=classes: kac.extract(params, patient, c),
            lambda: group.mul(g2_point, k4),
            plan.repeats * 3,
        )
        rows.append(_row("extract", "set_size", size, t.ms, t.bound_ms))
        key = kac.extract(params, patient, classes)
        ct = kac.encrypt(params, patient.public, size, RECORD)
        t = paired(
            lambda k=key, c=ct: kac.decrypt(params, k, c),
            lambda: group.multi_pairing(g1s, g2s),
            plan.repeats * 3,
        )
        rows.append(_row("decrypt", "set_size", size, t.ms, t.bound_ms))
        sizes["kac_key_bytes"] = len(key.key_bytes())
        sizes["kac_header_bytes"] = len(ct.header_bytes())
    return rows, sizes


def _setup_bound(n: int) -> Callable[[], None]:
    """The fixed-base multiplications setup needs: n in G1 and 2n - 1 in G2 (the generator
    tables are built once per process, as setup's own are)."""
    ks = _scalars(2 * n)
    t1, t2 = group.FixedBase.build(group.g1()), group.FixedBase.build(group.g2())

    def run() -> None:
        for k in ks[:n]:
            t1.mul(k)
        for k in ks[: 2 * n - 1]:
            t2.mul(k)

    return run


def run(quick: bool, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Run the whole benchmark and return the JSON-ready report."""
    plan = Plan.for_mode(quick)
    abe_rows, abe_sizes = bench_abe(plan, progress)
    kac_rows, kac_sizes = bench_kac(plan, progress)
    return {
        "backend": group.BACKEND,
        "quick": quick,
        "abe": abe_rows,
        "kac": kac_rows,
        "sizes": {**kac_sizes, "abe_ciphertext_bytes": abe_sizes, "record_bytes": len(RECORD)},
    }
