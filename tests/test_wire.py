"""Property tests of the wire contract: seal/open and sign/verify round trips, and that any
mutation of a signed message is refused."""

from __future__ import annotations

import base64
import uuid

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.errors import BadSignature, InvalidEnvelope, Malformed
from broker.identity.keys import Identity
from broker.wire import _crypto, hpke, jws

SUITES = st.sampled_from(_crypto.SUITES)
IDS = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
_KEYS = {s: _crypto.new_kem_key(s) for s in _crypto.SUITES}
_SK = _crypto.new_signing_key()


def _public(kp: _crypto.KemKeyPair) -> _crypto.KemPublicKey:
    return _crypto.kem_public_from_bytes(kp.suite, kp.x_public, kp.pq_public)


@settings(max_examples=60, deadline=None)
@given(suite=SUITES, plaintext=st.binary(max_size=4096), sender=IDS, recipient=IDS, typ=IDS,
       ver=st.integers(1, 9))
def test_seal_open_round_trip(suite: _crypto.SuiteName, plaintext: bytes, sender: str, recipient: str,
                              typ: str, ver: int) -> None:
    kp = _KEYS[suite]
    jti = str(uuid.uuid4())
    sealed = hpke.seal_payload(plaintext, jti=jti, iss=sender, typ=typ, ver=ver, recipient=recipient,
                               kid="k", suite=suite, public_key=_public(kp))
    claims = {"jti": jti, "iss": sender, "typ": typ, "ver": ver, "payload": sealed.payload}
    assert hpke.open_payload(claims, recipient, kp) == plaintext


@settings(max_examples=40, deadline=None)
@given(suite=SUITES, field=st.sampled_from(["jti", "iss", "typ", "ver", "recipient"]))
def test_info_binds_ciphertext_to_its_context(suite: _crypto.SuiteName, field: str) -> None:
    kp = _KEYS[suite]
    ctx = {"jti": str(uuid.uuid4()), "iss": "police-met", "typ": "referral", "ver": 1}
    sealed = hpke.seal_payload(b"secret", **ctx, recipient="la-camden", kid="k", suite=suite,
                               public_key=_public(kp))
    claims = dict(ctx, payload=sealed.payload)
    recipient = "la-camden"
    if field == "recipient":
        recipient = "school-hillside"
    elif field == "ver":
        claims["ver"] = 2
    else:
        claims[field] = claims[field] + "x"
    with pytest.raises(InvalidEnvelope):
        hpke.open_payload(claims, recipient, kp)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(claims=st.dictionaries(st.sampled_from(["jti", "iss", "typ", "thread", "x"]),
                              st.text(max_size=40), min_size=1))
def test_sign_verify_round_trip(claims: dict[str, str]) -> None:
    token = jws.sign(claims, _SK, "kid-1")
    assert jws.read_header(token) == {"alg": "EdDSA", "typ": "sg+jwt", "kid": "kid-1"}
    with pytest.raises(Malformed):  # required claims are enforced on verify
        jws.verify(token, _SK.public_key())


def _full_claims() -> dict[str, object]:
    return {"jti": str(uuid.uuid4()), "iss": "police-met", "iat": 1, "typ": "referral", "ver": 1,
            "to": ["la-camden"], "sharing": {}, "enc": {}, "payload": "AA"}


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_mutation_of_a_signed_message_is_refused(data: st.DataObject) -> None:
    token = bytearray(jws.sign(_full_claims(), _SK, "kid-1"))
    i = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=!"))
    if token[i] == replacement:
        return
    original = bytes(token)
    token[i] = replacement
    if _segments(bytes(token)) == _segments(original):
        return  # a non-canonical spelling of the same bytes (unused trailing base64 bits)
    with pytest.raises((Malformed, BadSignature)):
        _read_and_verify(bytes(token))


def _read_and_verify(token: bytes) -> None:
    jws.read_header(token)
    jws.verify(token, _SK.public_key())


def _segments(token: bytes) -> list[bytes] | None:
    try:
        return [base64.urlsafe_b64decode(p + b"=" * (-len(p) % 4)) for p in token.split(b".")]
    except ValueError:
        return None


def test_valid_token_verifies() -> None:
    claims = _full_claims()
    assert jws.verify(jws.sign(claims, _SK, "kid-1"), _SK.public_key()) == claims


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_algorithm_tricks_are_refused(alg: str) -> None:
    claims = _full_claims()
    if alg == "none":
        header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"sg+jwt","kid":"kid-1"}').rstrip(b"=")
        body = base64.urlsafe_b64encode(jws.dumps(claims)).rstrip(b"=")
        token = header + b"." + body + b"."
    else:
        pem = _SK.public_key().public_bytes_raw()
        token = jwt.encode(claims, pem.hex(), algorithm="HS256", headers={"kid": "kid-1", "typ": "sg+jwt"}).encode()
    with pytest.raises(BadSignature):
        jws.read_header(token)


def test_wrong_key_is_refused() -> None:
    token = jws.sign(_full_claims(), _SK, "kid-1")
    with pytest.raises(BadSignature):
        jws.verify(token, _crypto.new_signing_key().public_key())


def test_identity_kem_lookup() -> None:
    kp = _KEYS[_crypto.X25519_SUITE]
    ident = Identity("a", "k", _SK, {"enc-1": kp})
    assert ident.kem_key("enc-1") is kp
    assert ident.kem_key("enc-2") is None


def _outcome(fn: object, token: bytes) -> str:
    try:
        jws.read_header(token)
        fn(token, _SK.public_key())  # type: ignore[operator]
    except (Malformed, BadSignature) as exc:
        return type(exc).__name__
    return "ok"


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_fast_verify_agrees_with_pyjwt(data: st.DataObject) -> None:
    """The broker's hot-path verifier accepts and refuses exactly what PyJWT does."""
    claims = _full_claims()
    if data.draw(st.booleans()):
        del claims[data.draw(st.sampled_from(sorted(claims)))]
    token = bytearray(jws.sign(claims, _SK, "kid-1"))
    for _ in range(data.draw(st.integers(0, 2))):
        i = data.draw(st.integers(0, len(token) - 1))
        token[i] = data.draw(st.sampled_from(b"ABCabc019-_.=!"))
    assert _outcome(jws.verify_fast, bytes(token)) == _outcome(jws.verify, bytes(token))
