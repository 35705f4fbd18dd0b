"""The documented limit of white-box traceability: a reshaped decryption box.

Tracing reads ``K'`` off a leaked key in the standard format and finds its registered tag
``g1^{K'}``. A holder who leaks instead a *box* — the key reshaped as
``(A, B, M) = (K^{K'}·L'^{-t}, K·L^t, L^{K'}·L')`` for a random ``t``, plus the attribute
components — leaks something that decrypts every ciphertext the key does, yet carries
no ``K'`` to read and passes the natural tag test for no registered user. Black-box
tracing (querying the box on crafted ciphertexts) would be needed to name its source;
the README's trust section says so. These tests show the limit is real, so the claim
stays honest.
"""

from __future__ import annotations

from medshare.crypto import abe, group, hybrid, policy

POLICY = "hospital:H001 and role:physician"
ATTRS = ("hospital:H001", "role:physician")


def _box(key: abe.AbeUserKey, t: int) -> tuple:
    a = group.mul(key.K, key.k_prime) + group.mul(key.L_prime, group.ORDER - t)
    b = key.K + group.mul(key.L, t)
    return a, b, key.l_combined, dict(key.components)


def _decrypt_with_box(box: tuple, ct: abe.AbeCiphertext, context: bytes) -> bytes:
    """``e(C0, A)·e(C0', B) = e(C0^{K'} C0', K)``: the ``t`` terms cancel, since
    ``e(g1^s, g2^{ar})^{-t}·e(g1^{as}, g2^r)^{t} = 1``; the rest is ``abe.decrypt``."""
    a, b, m, components = box
    node = policy.parse(ct.policy)
    omega = policy.reconstruct(node, frozenset(components), modulus=group.ORDER)
    labels = policy.row_labels(node)
    g1s = [ct.c0, ct.c0_prime]
    g2s = [a, b]
    c1 = group.multiexp([ct.rows[i][0] for i in omega], [group.ORDER - omega[i] for i in omega])
    g1s.append(c1)
    g2s.append(m)
    for i in omega:
        _, c2, c3 = ct.rows[i]
        k1, k2 = components[labels[i]]
        g1s += [group.mul(c2, group.ORDER - omega[i]), group.mul(c3, group.ORDER - omega[i])]
        g2s += [k1, k2]
    secret = group.multi_pairing(g1s, g2s)
    aead = hybrid.derive_key(group.gt_to_bytes(secret), info=abe.KEM_INFO)
    return hybrid.open_sealed(aead, ct.sealed, aad=abe._aad(ct.policy, ct.header_bytes(), context))


def test_a_reshaped_box_decrypts_and_matches_no_registered_tag() -> None:
    master = abe.setup()
    public = master.public
    holders = {name: group.random_scalar() for name in ("alice", "bob", "carol")}
    keys = {name: abe.keygen(master, k, ATTRS) for name, k in holders.items()}
    ct = abe.encrypt(public, POLICY, b"discharge letter", context=b"r1")

    box = _box(keys["alice"], group.random_scalar())
    assert _decrypt_with_box(box, ct, b"r1") == b"discharge letter"

    a, b, _, _ = box
    for name, k_prime in holders.items():
        tag = group.mul(group.g1(), k_prime)  # what the ledger holds for each holder
        # the test that would name the holder of an un-randomised box (A = K^{K'}, B = K)
        assert group.pair(tag, b) != group.pair(group.g1(), a), name
    # Without randomisation (t = 0) the same test does name alice: the limit is the
    # reshaping, not the tag test.
    a0, b0, _, _ = _box(keys["alice"], 0)
    alice_tag = group.mul(group.g1(), holders["alice"])
    assert group.pair(alice_tag, b0) == group.pair(group.g1(), a0)
