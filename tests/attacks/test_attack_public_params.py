"""Are the public parameters checked on every use?

* ``AbePublicKey.check`` tests only that the G2 copies of w, v, u, h match their G1
  copies; it cannot see ``g1^α`` (nor ``g1^a``) replaced, and a KEK sealed under such a
  key opens with α' alone: ``e(C0, g2)^α' = e(g1^α', g2)^s``. Fixed in the service: every
  authority key is checked against the digest its authority published on the ledger
  (``MedShare.authority_public``; the edited row is refused in
  tests/attacks/test_attack_published_keys.py).
* Fixed: the ``medshare crypto`` commands check what they load before using it. Every
  ABE public key (``abe-encrypt``, ``abe-decrypt``, ``abe-trace``, and the one inside
  ``master.json`` for ``abe-keygen``) goes through ``AbePublicKey.check`` and all KAC
  parameters (``kac-keygen``, ``kac-encrypt``, ``kac-extract``, ``kac-decrypt``) through
  ``KacParams.verify``; a bad file is a one-line error with exit code 2.
"""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from medshare.cli.main import app
from medshare.crypto import abe, group, hybrid, kac
from medshare.ledger.app import published


def test_check_alone_cannot_see_a_substituted_alpha_which_is_why_keys_are_on_the_ledger():
    """``AbePublicKey.check`` passes a key whose ``g1^α`` was replaced by ``g1^α'``, and a
    KEK sealed under it opens with ``α'`` alone. The service therefore checks each
    authority key against the digest its authority published on the ledger
    (tests/attacks/test_attack_published_keys.py shows the edited row refused)."""
    real = abe.setup().public
    alpha_prime = group.random_scalar()  # the row editor's own α'
    tampered = dataclasses.replace(real, alpha1=group.mul(group.g1(), alpha_prime))
    tampered.check()  # passes: only the G1/G2 copies are checkable
    # What _new_area_key would do with it: seal a fresh KEK under the scope's policy.
    kek, key_id = b"k" * 32, b"area-key-id"
    ct = abe.encrypt(tampered, "hospital:H001 and dept:03 and epoch:0", kek, context=key_id)
    secret = group.pair(group.mul(ct.c0, alpha_prime), group.g2())
    aead = hybrid.derive_key(group.gt_to_bytes(secret), info=abe.KEM_INFO)
    opened = hybrid.open_sealed(aead, ct.sealed, aad=abe._aad(ct.policy, ct.header_bytes(), key_id))
    assert opened == kek
    assert published.digest(tampered.to_bytes()) != published.digest(real.to_bytes())


def _crypto(*args: str):
    return CliRunner().invoke(app, ["crypto", *map(str, args)], catch_exceptions=False)


def test_resisted_cli_abe_encrypt_refuses_an_unchecked_public_key(tmp_path):
    """Fixed: abe-encrypt runs AbePublicKey.check and refuses before sealing anything."""
    real = abe.setup().public
    broken = tmp_path / "public.json"
    broken.write_bytes(dataclasses.replace(real, w2=real.v2).to_bytes())  # service refuses
    (tmp_path / "in.txt").write_bytes(b"record")
    result = _crypto(
        "abe-encrypt",
        "--public",
        broken,
        "--policy",
        "role:physician",
        "--in",
        tmp_path / "in.txt",
        "--out",
        tmp_path / "out.ct",
    )
    assert result.exit_code == 2, (
        "abe-encrypt should refuse a public key AbePublicKey.check refuses "
        f"(exit {result.exit_code}): {result.output}"
    )
    assert "not a well-formed ABE public key" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.ct").exists()


def test_resisted_cli_kac_commands_refuse_unverified_parameters(tmp_path):
    """Fixed: kac-keygen and kac-encrypt run KacParams.verify and refuse swapped powers."""
    params = kac.setup(8)
    swapped = (params.g2_powers[1], params.g2_powers[0], *params.g2_powers[2:])
    bad = dataclasses.replace(params, g2_powers=swapped)
    with pytest.raises(Exception):  # noqa: B017 - KacParams.verify refuses it (the service does)
        bad.verify()
    path = tmp_path / "params.json"
    path.write_bytes(bad.to_bytes())
    (tmp_path / "in.txt").write_bytes(b"record")
    keygen = _crypto("kac-keygen", "--params", path, "--out", tmp_path / "patient.json")
    encrypt = _crypto(
        "kac-encrypt",
        "--params",
        path,
        "--patient",
        tmp_path / "patient.pub.json",
        "--class",
        "1",
        "--in",
        tmp_path / "in.txt",
        "--out",
        tmp_path / "out.ct",
    )
    assert (keygen.exit_code, encrypt.exit_code) == (2, 2), (
        "kac-keygen and kac-encrypt should refuse parameters KacParams.verify refuses: "
        f"{keygen.output} {encrypt.output}"
    )
    for result in (keygen, encrypt):
        assert "not well-formed KAC parameters" in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "patient.json").exists()
    assert not (tmp_path / "out.ct").exists()
