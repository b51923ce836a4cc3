"""The wire contract: a JWS compact serialisation (EdDSA, ``typ: sg+jwt``, ``kid``) whose
claims are the envelope, with the payload HPKE-sealed to one recipient.

The HPKE ``info`` binds each ciphertext to the message id, sender, type, version and
recipient, so a payload cannot be lifted into another envelope.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import jwt
import orjson

from broker.errors import BadSignature, InvalidEnvelope, Malformed
from broker.wire import _crypto, strictjson

ALGORITHM: Final = "EdDSA"
JWS_TYP: Final = "sg+jwt"
REQUIRED_CLAIMS: Final = ("jti", "iss", "iat", "typ", "ver", "to", "sharing", "enc", "payload")
_COMPACT = re.compile(rb"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_DECODE_OPTIONS: Final[dict[str, Any]] = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,  # freshness is judged against the store's timestamp, see intake
    "verify_aud": False,
    "verify_iss": False,
    "require": list(REQUIRED_CLAIMS),
}


def canonical_b64u(text: Any) -> bool:
    """Whether ``text`` is base64url in its one canonical spelling (no padding, no unused bits set)."""
    try:
        return isinstance(text, str) and _crypto.b64u(_crypto.unb64u(text)) == text
    except ValueError:
        return False


def sign(claims: Mapping[str, Any], key: _crypto.SigningKey, kid: str) -> bytes:
    token = jwt.encode(dict(claims), key, algorithm=ALGORITHM, headers={"kid": kid, "typ": JWS_TYP})
    return token.encode("ascii")


def read_header(token: bytes) -> dict[str, Any]:
    """Parse the protected header without trusting it. Raises :class:`Malformed` or
    :class:`BadSignature` (for any algorithm but EdDSA)."""
    if not _COMPACT.match(token):
        raise Malformed("not a JWS compact serialisation", field="/")
    # Only the small header segment is decoded here: PyJWT's own header reader checks the
    # alphabet of the whole token character by character, which costs more than the signature.
    try:
        header = strictjson.loads(_segment(token[: token.index(b".")]))
    except Malformed as exc:
        raise Malformed("the JWS header cannot be read", field="/header") from exc
    except strictjson.StrictJSONError as exc:
        raise Malformed(f"the JWS header is not strict JSON: {exc.reason}", field=f"/header{exc.where}",
                        rule="strict-json") from exc
    if not isinstance(header, dict):
        raise Malformed("the JWS header is not a JSON object", field="/header")
    if header.get("alg") != ALGORITHM:
        raise BadSignature("only EdDSA signatures are accepted", field="/header/alg", rule="alg-pinned")
    if header.get("typ") != JWS_TYP:
        raise Malformed(f"header typ must be {JWS_TYP}", field="/header/typ")
    if not isinstance(header.get("kid"), str):
        raise Malformed("header kid is missing", field="/header/kid")
    if set(header) - {"alg", "typ", "kid"}:
        raise Malformed("unexpected header parameters", field="/header", rule="no-extra-header")
    return header


def verify(token: bytes, key: _crypto.VerifyKey) -> dict[str, Any]:
    """Verify the signature (EdDSA only) and return the claims, with PyJWT. The caller checks the rest."""
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], options=_DECODE_OPTIONS)  # type: ignore[arg-type]
    except jwt.InvalidSignatureError as exc:
        raise BadSignature("the signature does not verify", field="/signature") from exc
    except jwt.InvalidAlgorithmError as exc:
        raise BadSignature("only EdDSA signatures are accepted", field="/header/alg", rule="alg-pinned") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise Malformed("a required envelope claim is missing", field=f"/{exc.claim}") from exc
    except jwt.InvalidTokenError as exc:
        raise Malformed("the envelope cannot be read", field="/") from exc
    if not isinstance(claims, dict):
        raise Malformed("the envelope is not a JSON object", field="/")
    _claims_json(_segment(token.split(b".")[1]))  # PyJWT keeps the last of a duplicate member: refuse it
    return claims


def _claims_json(raw: bytes) -> Any:
    try:
        return strictjson.loads(raw)
    except strictjson.StrictJSONError as exc:
        raise Malformed(f"the envelope is not strict JSON: {exc.reason}", field=exc.where or "/",
                        rule="strict-json") from exc


def _segment(part: bytes) -> bytes:
    """Strict base64url: the alphabet is checked by ``_COMPACT``; here the spelling must be canonical
    (no unused trailing bits), so one message has one byte form."""
    try:
        raw = _crypto.unb64u(part.decode("ascii"))
    except ValueError as exc:
        raise Malformed("a JWS segment is not base64url", field="/") from exc
    if _crypto.b64u(raw).encode("ascii") != part:
        raise Malformed("a JWS segment is not canonical base64url", field="/")
    return raw


def verify_fast(token: bytes, key: _crypto.VerifyKey) -> dict[str, Any]:
    """The broker's hot-path equivalent of :func:`verify`, with the same outcomes.

    PyJWT 2.15 checks the base64url alphabet of a token in a per-character Python loop, which
    costs about 0.4 ms for a 5 KB message: more than the signature itself. Here the alphabet
    is checked by one regex and the signature by ``cryptography`` directly; the header must
    already have passed :func:`read_header` (EdDSA pinned). ``tests/test_wire.py`` checks that
    both functions accept and refuse the same tokens.
    """
    if not _COMPACT.match(token):
        raise Malformed("not a JWS compact serialisation", field="/")
    signing_input, _, sig = token.rpartition(b".")
    body = signing_input.partition(b".")[2]
    raw_body = _segment(body)  # canonical spelling is checked before the signature, as PyJWT does
    signature = _segment(sig)
    try:
        _crypto.verify_signature(key, signature, signing_input)
    except InvalidEnvelope as exc:
        raise BadSignature("the signature does not verify", field="/signature") from exc
    claims = _claims_json(raw_body)
    if not isinstance(claims, dict):
        raise Malformed("the envelope is not a JSON object", field="/")
    for claim in REQUIRED_CLAIMS:
        if claims.get(claim) is None:
            raise Malformed("a required envelope claim is missing", field=f"/{claim}")
    return claims


def digest(token: bytes) -> str:
    """The digest a delivery's ``origin`` carries to trace it to the signed original."""
    return "sha256:" + _crypto.sha256_b64u(token)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def _parts(token: bytes) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Header, claims, signing input and signature of a compact JWS, nothing checked yet."""
    try:
        signing_input, _, sig = token.strip().rpartition(b".")
        head, _, body = signing_input.partition(b".")
        header = orjson.loads(_crypto.unb64u(head.decode("ascii")))
        claims = orjson.loads(_crypto.unb64u(body.decode("ascii")))
        signature = _crypto.unb64u(sig.decode("ascii"))
    except (ValueError, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        raise InvalidEnvelope("not a readable JWS") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidEnvelope("not a readable JWS")
    return header, claims, signing_input, signature


def unverified(token: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims without checking the signature (to say *what* was changed)."""
    header, claims, _, _ = _parts(token)
    return header, claims


KeyLookup = Callable[[str, float], "_crypto.VerifyKey | None"]


def verify_typed(token: bytes, typ: str, keys: KeyLookup, when: float) -> dict[str, Any]:
    """EdDSA only, the key chosen by ``kid`` among the broker's registry keys valid at ``when``.
    (Verified with ``cryptography`` directly, as :func:`verify_fast` does: PyJWT's
    per-character alphabet check costs more than the signature on blocks of hundreds of records.)"""
    header, claims, signing_input, signature = _parts(token)
    if header.get("typ") != typ or header.get("alg") != "EdDSA":
        raise InvalidEnvelope(f"not an {typ} token")
    key = keys(str(header.get("kid")), when)
    if key is None:
        raise InvalidEnvelope("signed with a key that is not the broker's")
    try:
        _crypto.verify_signature(key, signature, signing_input)
    except InvalidEnvelope as exc:
        raise InvalidEnvelope("signature does not verify") from exc
    return claims
