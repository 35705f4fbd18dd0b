"""Signed requests (medshare.api.signed_requests): what a server accepts and refuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medshare.api import signed_requests as sr
from medshare.crypto.signing import SigningKey

NOW = 1_800_000_000_000
ALICE = SigningKey(b"\x01" * 32)
MALLORY = SigningKey(b"\x02" * 32)
ENROLLED = {ALICE.public: "patient:P1", MALLORY.public: "mallory@H001"}
AUDIENCE = "0a1b2c3d/H001"


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def _verifier(clock=None, **kwargs) -> sr.RequestVerifier:
    return sr.RequestVerifier(AUDIENCE, ENROLLED.get, clock or Clock(NOW), **kwargs)


def _signed(method="GET", target="/v1/records/r1?area=personal", body=b"", **kwargs):
    kwargs.setdefault("now_ms", NOW)
    kwargs.setdefault("audience", AUDIENCE)
    headers = sr.sign(ALICE, "patient:P1", method, target, body, **kwargs)
    return method, target, body, headers


def test_a_signed_request_names_its_caller():
    verifier = _verifier()
    caller = verifier.verify(*_signed(body=b'{"x": 1}', method="POST"))
    assert caller == sr.Caller("patient:P1", ALICE.public)
    # headers arrive lower-cased from HTTP frameworks: that is what sign() produces (and
    # the body's digest, so a server can verify before it reads a large body)
    assert set(_signed()[3]) == {*sr.HEADERS, sr.BODY_DIGEST}


def test_a_request_is_verified_before_its_body_from_the_digest_it_signs():
    """verify_before_body: the signature covers the digest header; a changed digest or
    a missing one is refused before any body is read; what it returns is what the body
    must hash to."""
    verifier = _verifier()
    method, target, body, headers = _signed(body=b'{"x": 1}', method="POST")
    caller, digest = verifier.verify_before_body(method, target, headers)
    assert caller.identity == "patient:P1" and digest == sr.body_digest(body)
    method, target, body, headers = _signed(body=b'{"x": 2}', method="POST")
    other = sr.body_digest(b'{"x": 3}')
    with pytest.raises(sr.RequestRefused, match="signature"):
        verifier.verify_before_body(method, target, {**headers, sr.BODY_DIGEST: other})
    missing = {k: v for k, v in headers.items() if k != sr.BODY_DIGEST}
    with pytest.raises(sr.RequestRefused, match="SHA-256"):
        verifier.verify_before_body(method, target, missing)


@pytest.mark.parametrize(
    "change",
    [
        lambda m, t, b, h: ("POST", t, b, h),  # another method
        lambda m, t, b, h: (m, "/v1/records/r2?area=personal", b, h),  # another record
        lambda m, t, b, h: (m, t + "&x=1", b, h),  # another query
        lambda m, t, b, h: (m, t, b"{}", h),  # another body
        lambda m, t, b, h: (m, t, b, {**h, sr.IDENTITY: "mallory@H001"}),  # another name
        lambda m, t, b, h: (m, t, b, {**h, sr.TIMESTAMP: str(NOW + 1)}),
        lambda m, t, b, h: (m, t, b, {**h, sr.NONCE: "0" * 32}),
        lambda m, t, b, h: (m, t, b, {**h, sr.KEY: MALLORY.public.hex()}),
        lambda m, t, b, h: (m, t, b, {**h, sr.SIGNATURE: "00" * 64}),
    ],
)
def test_any_change_to_a_signed_request_is_refused(change):
    with pytest.raises(sr.RequestRefused):
        _verifier().verify(*change(*_signed()))


def test_a_replayed_request_is_refused_and_a_stale_one_too():
    clock = Clock(NOW)
    verifier = _verifier(clock)
    request = _signed()
    verifier.verify(*request)
    with pytest.raises(sr.Replayed):
        verifier.verify(*request)
    clock.now = NOW + sr.MAX_SKEW_MS + 1  # the nonce is forgotten, the request is stale
    with pytest.raises(sr.RequestRefused, match="off the server's clock"):
        verifier.verify(*request)
    with pytest.raises(sr.RequestRefused, match="off the server's clock"):
        verifier.verify(*_signed(now_ms=clock.now + sr.MAX_SKEW_MS + 1))  # from the future
    assert verifier.verify(*_signed(now_ms=clock.now)).identity == "patient:P1"


def test_a_key_not_enrolled_under_the_name_is_refused():
    """Mallory signs correctly with her own key but claims Alice's name; a stranger's key
    is enrolled as nobody."""
    verifier = _verifier()
    claimed = sr.sign(MALLORY, "patient:P1", "GET", "/v1/x", b"", audience=AUDIENCE, now_ms=NOW)
    with pytest.raises(sr.RequestRefused, match="not the one enrolled as 'patient:P1'"):
        verifier.verify("GET", "/v1/x", b"", claimed)
    stranger = SigningKey.generate()
    headers = sr.sign(stranger, "someone", "GET", "/v1/x", b"", audience=AUDIENCE, now_ms=NOW)
    with pytest.raises(sr.RequestRefused, match="not the one enrolled"):
        verifier.verify("GET", "/v1/x", b"", headers)


def test_the_replay_window_is_bounded_per_key_and_in_all():
    verifier = _verifier(max_remembered=3, max_per_key=2)
    verifier.verify(*_signed())
    verifier.verify(*_signed())
    with pytest.raises(sr.Busy, match="from this key"):
        verifier.verify(*_signed())
    mallory = sr.sign(MALLORY, "mallory@H001", "GET", "/v1/x", b"", audience=AUDIENCE, now_ms=NOW)
    verifier.verify("GET", "/v1/x", b"", mallory)  # her own share of the table
    again = sr.sign(MALLORY, "mallory@H001", "GET", "/v1/x", b"", audience=AUDIENCE, now_ms=NOW)
    with pytest.raises(sr.Busy, match="in the replay window"):
        verifier.verify("GET", "/v1/x", b"", again)


def test_unenrolled_keys_leave_no_nonce_behind():
    """A made-up key's correctly signed requests are refused before their nonce is kept:
    they cannot fill the table and lock enrolled callers out."""
    verifier = _verifier(max_remembered=1)
    for _ in range(5):
        stranger = SigningKey.generate()
        headers = sr.sign(stranger, "x", "GET", "/v1/x", b"", audience=AUDIENCE, now_ms=NOW)
        with pytest.raises(sr.RequestRefused, match="not the one enrolled"):
            verifier.verify("GET", "/v1/x", b"", headers)
    assert verifier.verify(*_signed()).identity == "patient:P1"


def test_a_request_for_another_server_or_from_before_a_restart_is_refused():
    elsewhere = _signed(audience="0a1b2c3d/H002")
    with pytest.raises(sr.RequestRefused, match="does not verify"):
        _verifier().verify(*elsewhere)
    clock = Clock(NOW)
    request = _signed()
    first = _verifier(clock)
    first.verify(*request)
    clock.now = NOW + 5_000  # the server restarts, its nonces forgotten
    with pytest.raises(sr.RequestRefused, match="before this server started"):
        _verifier(clock).verify(*request)


@pytest.mark.parametrize("missing", sr.HEADERS)
def test_an_unsigned_or_partly_signed_request_is_refused(missing):
    method, target, body, headers = _signed()
    del headers[missing]
    with pytest.raises(sr.RequestRefused, match=f"missing {missing}"):
        _verifier().verify(method, target, body, headers)


@given(
    field=st.sampled_from(sr.HEADERS),
    value=st.text(max_size=300) | st.binary(max_size=80).map(bytes.hex),
)
def test_malformed_headers_are_refused_with_a_reason(field, value):
    method, target, body, headers = _signed()
    if headers[field] == value:
        return
    with pytest.raises(sr.RequestRefused):
        _verifier().verify(method, target, body, {**headers, field: value})


def test_a_target_with_a_newline_cannot_be_signed_nor_verified():
    with pytest.raises(ValueError):
        sr.sign(ALICE, "patient:P1", "GET", "/v1/x\nPOST", b"", audience=AUDIENCE, now_ms=NOW)
    method, _, body, headers = _signed()
    with pytest.raises(sr.RequestRefused, match="malformed request target"):
        _verifier().verify(method, "/v1/x\n", body, headers)
