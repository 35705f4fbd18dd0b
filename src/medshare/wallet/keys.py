"""The holder's side of key issuance over HTTP: ``k`` is drawn here and never sent.

Why on the wallet: the accountable-issuance protocol
(:mod:`medshare.crypto.issuance`) keeps the user's secret ``k`` from the authority, so a
key whose ``K' = c + k`` matches the holder's registered tag can only have come from the
holder. That guarantee holds only if ``k`` — and the finished key — stay on the holder's
device: the wallet runs :class:`~medshare.crypto.issuance.IssuanceUser`, checks the
authority's public key and its Paillier modulus against what the authority published on
the ledger (as the server relays it), and registers the key's tag on the ledger with a
transaction it signs itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote

from medshare.crypto import abe, group, issuance
from medshare.crypto.signing import SigningKey
from medshare.ledger.types import Tx, TxKind
from medshare.service.errors import IntegrityError
from medshare.wallet.client import HospitalClient


@dataclass(frozen=True)
class ObtainedKey:
    key: abe.AbeUserKey
    authority: str
    tag_txid: str


def obtain_key(
    client: HospitalClient,
    identity: str,
    identity_key: SigningKey,
    authority: str,
    *,
    verified_moduli: set[tuple[bytes, int]] | None = None,
) -> ObtainedKey:
    """Run issuance with ``authority`` through its hospital server and register the key's
    tag on the ledger; the key is returned to be kept in the holder's wallet."""
    public = client.authority_public(authority)
    doc = client.get(f"/v1/authorities/{quote(authority, safe='')}")
    digest = doc.get("paillier_digest") if isinstance(doc, dict) else None
    if not isinstance(digest, str) or len(digest) != 64:
        raise IntegrityError(f"authority {authority} has no Paillier modulus on the ledger")
    user = issuance.IssuanceUser(
        public,
        identity,
        identity_key,
        verified_moduli=verified_moduli,
        published_modulus=bytes.fromhex(digest),
    )
    base = f"/v1/issuance/{quote(authority, safe='')}"
    challenge = issuance.IssuanceChallenge.from_bytes(client.post_message(f"{base}/challenge"))
    request = user.registration(challenge)
    offer = issuance.IssuanceOffer.from_bytes(
        client.post_message(f"{base}/offer", request.to_bytes())
    )
    asked = user.range_challenge(offer)
    answer = issuance.RangeAnswer.from_bytes(client.post_message(f"{base}/range", asked.to_bytes()))
    response = user.respond(answer)
    # The key's tag goes on the ledger with step 4, before the authority releases the key.
    nonce = client.get("/v1/ledger/next-nonce")
    tag, proof = user.key_tag(nonce["chain_id"], identity_key.public)
    body = {
        "identity": identity,
        "tag": tag,
        "R": group.encode_g1(request.R).hex(),
        "authority": authority,
        "attributes": sorted(offer.attributes),
        "proof": proof,
    }
    tx = Tx.create(
        TxKind.REGISTER_KEY_TAG, body, int(nonce["next_nonce"]), identity_key,
        chain=nonce["chain_id"],
    )  # fmt: skip
    step4 = {"response": response.to_bytes().decode(), "tag_tx": tx.encode().hex()}
    issued = issuance.IssuedKey.from_bytes(
        client.post_message(f"{base}/issue", json.dumps(step4).encode())
    )
    key = user.finish(issued)
    if key.tag().hex() != tag:
        raise IntegrityError("the issued key is not the one whose tag was registered")
    return ObtainedKey(key, authority, tx.txid)
