"""Property tests of the wire contract: seal/open and sign/verify round trips, that any mutation of
a signed message is refused, and the signer and the reader against PyJWT's."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any, Final

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.errors import BadSignature, InvalidEnvelope, Malformed
from broker.identity.keys import Identity
from broker.wire import _crypto, hpke, jws, strictjson

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
        _as_used(token, _SK.public_key())


def _as_used(token: bytes, key: _crypto.VerifyKey) -> dict[str, Any]:
    """The reader as the pipeline's intake and the SDK use it: read (the key is then looked up by
    ``kid``), then verify."""
    return jws.read(token).verify(key)


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
    _as_used(token, _SK.public_key())


def _segments(token: bytes) -> list[bytes] | None:
    try:
        return [base64.urlsafe_b64decode(p + b"=" * (-len(p) % 4)) for p in token.split(b".")]
    except ValueError:
        return None


def test_valid_token_verifies() -> None:
    claims = _full_claims()
    assert _as_used(jws.sign(claims, _SK, "kid-1"), _SK.public_key()) == claims


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
        _as_used(token, _crypto.new_signing_key().public_key())


def test_identity_kem_lookup() -> None:
    kp = _KEYS[_crypto.X25519_SUITE]
    ident = Identity("a", "k", _SK, {"enc-1": kp})
    assert ident.kem_key("enc-1") is kp
    assert ident.kem_key("enc-2") is None


_ORACLE_OPTIONS: Final[dict[str, Any]] = {
    "verify_signature": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
    "verify_aud": False, "verify_iss": False, "verify_sub": False, "verify_jti": False,
    "require": list(jws.REQUIRED_CLAIMS),
}


def pyjwt_verify(token: bytes, key: _crypto.VerifyKey, typ: str = jws.JWS_TYP,
                 required: tuple[str, ...] = jws.REQUIRED_CLAIMS) -> dict[str, Any]:
    """The oracle: PyJWT's own decode, with what the wire asks beyond it, in the reader's order:
    three segments, each in canonical base64url (PyJWT takes any padding-free spelling); a strict
    JSON header holding EdDSA, ``typ``, a ``kid`` and nothing else; after PyJWT's signature and
    required claims, strict JSON claims (PyJWT keeps the last of a duplicate member)."""
    segments = token.split(b".")
    if len(segments) != 3 or not segments[0] or not segments[1]:
        raise Malformed("not compact")
    raw = []
    for segment in segments:
        try:
            decoded = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
        except ValueError as exc:
            raise Malformed("not base64url") from exc
        if base64.urlsafe_b64encode(decoded).rstrip(b"=") != segment:
            raise Malformed("not canonical")
        raw.append(decoded)
    try:
        header = strictjson.loads(raw[0])
    except strictjson.StrictJSONError as exc:
        raise Malformed("header not strict JSON") from exc
    if not isinstance(header, dict):
        raise Malformed("header not an object")
    if header.get("alg") != "EdDSA":
        raise BadSignature("alg")
    if header.get("typ") != typ or not isinstance(header.get("kid"), str) or set(header) - {"alg", "typ", "kid"}:
        raise Malformed("header")
    try:
        claims = jwt.decode(token, key, algorithms=["EdDSA"],  # type: ignore[arg-type]
                            options=_ORACLE_OPTIONS | {"require": list(required)})
    except jwt.InvalidSignatureError as exc:
        raise BadSignature("signature") from exc
    except jwt.InvalidTokenError as exc:
        raise Malformed("PyJWT cannot read it") from exc
    try:
        strictjson.loads(raw[1])
    except strictjson.StrictJSONError as exc:
        raise Malformed("claims not strict JSON") from exc
    return claims


def _outcome(verify: Callable[[bytes, _crypto.VerifyKey], dict[str, Any]], token: bytes) -> tuple[str, Any]:
    try:
        return "ok", verify(token, _SK.public_key())
    except (Malformed, BadSignature) as exc:
        return type(exc).__name__, None


def _respelled(segment: bytes, last: int) -> bytes:
    """``segment`` with its last character replaced by ``last`` (an alphabet index): often the
    same bytes with unused bits set, the spelling the reader must refuse."""
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return segment[:-1] + alphabet[last : last + 1] if segment else segment


def _mutated(signed: bytes, data: st.DataObject) -> bytes:
    """``signed`` with up to two bytes changed anywhere, and perhaps a segment respelled."""
    token = bytearray(signed)
    for _ in range(data.draw(st.integers(0, 2))):
        i = data.draw(st.integers(0, len(token) - 1))
        token[i] = data.draw(st.sampled_from(b"ABCabc019-_.=!+/ \xff"))
    if data.draw(st.booleans()):
        segments = bytes(token).split(b".")
        i = data.draw(st.integers(0, len(segments) - 1))
        segments[i] = _respelled(segments[i], data.draw(st.integers(0, 63)))
        token = bytearray(b".".join(segments))
    return bytes(token)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_the_reader_agrees_with_pyjwt(data: st.DataObject) -> None:
    """The one reader, as the pipeline and the SDK use it, accepts and refuses exactly what PyJWT
    does with the wire's strictness added, with the same outcome: a required claim dropped, bytes
    changed anywhere, a segment respelled."""
    claims = _full_claims()
    if data.draw(st.booleans()):
        del claims[data.draw(st.sampled_from(sorted(claims)))]
    sign = data.draw(st.sampled_from([jws.sign, _pyjwt_sign]))  # ours, or PyJWT's own jwt.encode
    token = _mutated(sign(claims, _SK, "kid-1"), data)
    assert _outcome(_as_used, token) == _outcome(pyjwt_verify, token)


def _pyjwt_sign(claims: dict[str, Any], key: _crypto.SigningKey, kid: str, typ: str = jws.JWS_TYP) -> bytes:
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": typ}).encode()


_JSON: Final = st.recursive(  # any JSON value the signer takes: non-ASCII text, 64-bit integers
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=16)


@settings(max_examples=300, deadline=None)
@given(claims=st.dictionaries(st.text(max_size=8).map("x".__add__), _JSON, max_size=6), kid=st.text(max_size=9),
       typ=st.sampled_from([jws.JWS_TYP, "sg-audit-block+jwt"]))
def test_what_we_sign_is_what_pyjwt_signs(claims: dict[str, Any], kid: str, typ: str) -> None:
    """The signer against PyJWT's: PyJWT verifies what we sign, we read what PyJWT signs, each to the
    claims given; the same header (EdDSA, ``kid``, ``typ``; for a printable ASCII kid, as key ids
    are, the same bytes: PyJWT escapes what is not) and no padding."""
    ours, theirs = jws.sign(claims, _SK, kid, typ), _pyjwt_sign(claims, _SK, kid, typ)
    assert b"=" not in ours and jws.parse(ours).header == jws.parse(theirs).header == {
        "alg": "EdDSA", "kid": kid, "typ": typ}
    assert ours.split(b".")[0] == theirs.split(b".")[0] or not (kid.isascii() and kid.isprintable())
    for token in (ours, theirs):
        assert jwt.decode(token, _SK.public_key(), algorithms=["EdDSA"], options=_ORACLE_OPTIONS | {"require": []}) \
            == claims == jws.read(token, typ).verify(_SK.public_key(), typ=typ, required=())
    with pytest.raises(TypeError):  # beyond 64 bits: refused, never written some other way
        jws.sign(claims | {"big": 2**64}, _SK, kid, typ)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_reader_of_the_broker_s_own_tokens_agrees_with_pyjwt(data: st.DataObject) -> None:
    """Audit blocks, checkpoints and export manifests (:func:`jws.verify_typed`, the key valid at
    the token's own ``at``): accepted exactly when PyJWT with the wire's strictness accepts them."""
    claims = {"typ": "audit-checkpoint", "iss": "broker", "at": "2026-01-05T09:00:00Z", "count": 3}
    token = _mutated(jws.sign(claims, _SK, "k", "t+jwt"), data)
    signed_at = 1767603600.0
    try:
        ours: Any = jws.verify_typed(token, "t+jwt", lambda kid, when: _SK.public_key() if when == signed_at else None)
    except InvalidEnvelope:
        ours = "refused"
    try:
        theirs: Any = pyjwt_verify(token, _SK.public_key(), typ="t+jwt", required=())
    except (Malformed, BadSignature):
        theirs = "refused"
    assert ours == theirs


def test_a_respelled_segment_is_refused_whatever_the_key() -> None:
    """Unused bits set in the last character: the same bytes, another spelling; one message has one."""
    head, body, sig = jws.sign(_full_claims(), _SK, "kid-1").split(b".")
    for i, segment in enumerate((head, body, sig)):
        for last in range(64):
            spelled = _respelled(segment, last)
            if spelled == segment or _segments(spelled) != _segments(segment):
                continue
            parts = [head, body, sig]
            parts[i] = spelled
            with pytest.raises(Malformed):
                _as_used(b".".join(parts), _SK.public_key())
            break


@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.sampled_from(b"AQgwBRhx09-_+/= \n.\xff"), max_size=11).map(bytes))
def test_the_canonical_spelling_is_the_one_spelling_again(text: bytes) -> None:
    """A segment is read exactly when decoding it and spelling it again gives it back."""
    try:
        again = base64.urlsafe_b64encode(base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))).rstrip(b"=")
    except ValueError:
        again = None
    assert jws.canonical_b64u(text.decode("latin-1")) == (again == text)


def test_the_broker_s_own_tokens_are_read_by_the_same_reader() -> None:
    """Audit blocks and checkpoints: the same strictness, the key chosen by kid at the time signed."""
    key = _SK.public_key()
    token = jwt.encode({"records": [], "n": 1}, _SK, algorithm="EdDSA", headers={"kid": "k", "typ": "t+jwt"}).encode()
    assert jws.verify_typed(token, "t+jwt", lambda kid, when: key if kid == "k" else None, 0.0) == {
        "records": [], "n": 1}
    assert jws.unverified(token) == ({"alg": "EdDSA", "kid": "k", "typ": "t+jwt"}, {"records": [], "n": 1})
    with pytest.raises(InvalidEnvelope, match="not an other"):
        jws.verify_typed(token, "other", lambda kid, when: key, 0.0)
    with pytest.raises(InvalidEnvelope, match="not the broker's"):
        jws.verify_typed(token, "t+jwt", lambda kid, when: None, 0.0)
    head, body, sig = token.split(b".")
    for unreadable in (token + b"\n", head + b"." + body + b"=." + sig, head + b"." + body,
                       head + b"." + base64.urlsafe_b64encode(b'{"n":1,"n":2}').rstrip(b"=") + b"." + sig):
        with pytest.raises(InvalidEnvelope):
            jws.unverified(unreadable)
        with pytest.raises(InvalidEnvelope):
            jws.verify_typed(unreadable, "t+jwt", lambda kid, when: key, 0.0)
