"""The wire contract: a JWS compact serialisation (EdDSA, ``typ: sg+jwt``, ``kid``) whose
claims are the envelope, with the payload HPKE-sealed to one recipient; and the one reader of it.

The HPKE ``info`` binds each ciphertext to the message id, sender, type, version and
recipient, so a payload cannot be lifted into another envelope.

Every signed token of the wire and the audit log goes through :func:`parse`: messages in the
broker's pipeline, deliveries in the SDK and the adapters, the audit chain's blocks and
checkpoints and its export manifests. (An API bearer token is another kind, an RFC 7519 access
token whose expiry, audience and issuer must be checked: :mod:`broker.http.tokens` reads those.)
It is strict: three segments, each base64url in its one canonical spelling (no padding, no stray
characters, no unused bits set), so one message has one byte form; the header and the claims are
strict JSON (:mod:`broker.wire.strictjson`: a duplicate member name, NaN or nesting past 32
levels is refused); only EdDSA, verified with ``cryptography`` directly. ``tests/test_wire.py``
checks that this reader, as the pipeline and the SDK use it, accepts and refuses exactly what
PyJWT does, plus the canonical spelling and the strict JSON, which PyJWT does not check. (PyJWT
2.15 also checks a token's alphabet in a per-character Python loop that costs more than the
signature on a 5 KB message.)

:func:`sign` is the one signer, written here rather than PyJWT's ``jwt.encode`` because the
broker signs two or three tokens per message and PyJWT's ``json.dumps`` and base64 steps cost
about as much as the Ed25519 signature: the claims are serialised once with orjson (UTF-8, not
escaped; members in the order given), the header segment is made once per key id and
``typ``. The tokens are the same JWS: ``tests/test_wire.py`` checks that PyJWT verifies what this
signs and that this reader reads what PyJWT signs.
"""

from __future__ import annotations

import binascii
import functools
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson

from broker.errors import BadSignature, InvalidEnvelope, Malformed
from broker.timestamps import at_of
from broker.wire import _crypto, strictjson

ALGORITHM: Final = "EdDSA"
JWS_TYP: Final = "sg+jwt"
REQUIRED_CLAIMS: Final = ("jti", "iss", "iat", "typ", "ver", "to", "sharing", "enc", "payload")
_HEADER_PARAMETERS: Final = frozenset({"alg", "typ", "kid"})
_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_STANDARD: Final = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
# a segment 2 (or 3) characters into its last group of 4 leaves 4 (or 2) bits of its last character unused
_LAST_WITHOUT_UNUSED_BITS: Final = {2: frozenset(_ALPHABET[::16]), 3: frozenset(_ALPHABET[::4])}

KeyLookup = Callable[[str, float], "_crypto.VerifyKey | None"]


def canonical_b64u(text: Any) -> bool:
    """Whether ``text`` is base64url in its one canonical spelling (no padding, no unused bits set),
    as every segment of a token must be."""
    if not isinstance(text, str) or not text.isascii():
        return False
    try:
        _segment(text.encode("ascii"))
    except Malformed:
        return False
    return True


def sign(claims: Mapping[str, Any], key: _crypto.SigningKey, kid: str, typ: str = JWS_TYP) -> bytes:
    """A compact JWS of ``claims`` (a wire message; or, with its ``typ``, one of the broker's own
    tokens). The claims must be JSON: string member names, integers within 64 bits (else
    ``TypeError``)."""
    return sign_serialised(orjson.dumps(claims if type(claims) is dict else dict(claims)), key, kid, typ)


def sign_serialised(body: bytes, key: _crypto.SigningKey, kid: str, typ: str) -> bytes:
    """:func:`sign` for claims already serialised: ``body`` must be the UTF-8 JSON of one object
    (the audit chain assembles a block's from the bytes it hashed each record by)."""
    signing_input = _header_segment(kid, typ) + b"." + _b64u(body)
    return signing_input + b"." + _b64u(_crypto.sign_bytes(key, signing_input))


@functools.lru_cache(maxsize=64)
def _header_segment(kid: str, typ: str) -> bytes:
    """The protected header, as PyJWT writes it (members sorted): the same for every token of one key."""
    return _b64u(orjson.dumps({"alg": ALGORITHM, "kid": kid, "typ": typ}))


def _b64u(data: bytes) -> bytes:
    """base64url without padding (RFC 7515 §2), the one spelling :func:`parse` accepts."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=")


def digest(token: bytes) -> str:
    """The digest a delivery's ``origin`` carries to trace it to the signed original."""
    return "sha256:" + _crypto.sha256_b64u(token)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


class Signed:
    """A compact JWS read strictly (:func:`parse`); nothing in it is trusted yet. :meth:`expect`
    checks its header, :meth:`verify` its signature, returning the claims. Errors are the wire's:
    :class:`Malformed` or :class:`BadSignature`, naming a place, never a value."""

    __slots__ = ("_body", "_signature", "header", "signing_input")

    def __init__(self, header: dict[str, Any], signing_input: bytes, body: bytes, signature: bytes) -> None:
        self.header = header
        self.signing_input = signing_input
        self._body = body
        self._signature = signature

    @property
    def kid(self) -> str:
        """The signer's key id, to look the key up by (untrusted until :meth:`verify`)."""
        return str(self.header.get("kid"))

    def expect(self, typ: str = JWS_TYP) -> Signed:
        """Check the header: EdDSA only (else :class:`BadSignature`), ``typ``, a ``kid``, nothing else."""
        header = self.header
        if header.get("alg") != ALGORITHM:
            raise BadSignature("only EdDSA signatures are accepted", field="/header/alg", rule="alg-pinned")
        if header.get("typ") != typ:
            raise Malformed(f"header typ must be {typ}", field="/header/typ")
        if not isinstance(header.get("kid"), str):
            raise Malformed("header kid is missing", field="/header/kid")
        if header.keys() - _HEADER_PARAMETERS:
            raise Malformed("unexpected header parameters", field="/header", rule="no-extra-header")
        return self

    def claims(self) -> dict[str, Any]:
        """The claims, read strictly but not verified (to list, or to say what was changed)."""
        return _claims(self._body)

    def check_signature(self, key: _crypto.VerifyKey) -> None:
        """The Ed25519 signature over the header and claims as sent (whatever the header says:
        :meth:`expect` pins EdDSA first)."""
        try:
            _crypto.verify_signature(key, self._signature, self.signing_input)
        except InvalidEnvelope as exc:
            raise BadSignature("the signature does not verify", field="/signature") from exc

    def verify(self, key: _crypto.VerifyKey, *, typ: str = JWS_TYP,
               required: tuple[str, ...] = REQUIRED_CLAIMS) -> dict[str, Any]:
        """The claims, once the header passes :meth:`expect`, the signature verifies with ``key``
        and every ``required`` claim is present and not null (as PyJWT's ``require``, which reads
        the claims after the signature)."""
        self.expect(typ)
        self.check_signature(key)
        claims = _claims(self._body)
        for claim in required:
            if claims.get(claim) is None:
                raise Malformed("a required envelope claim is missing", field=f"/{claim}")
        return claims

    def verified_by(self, keys: KeyLookup, when: float, typ: str) -> None:
        """For the broker's own tokens (audit blocks, checkpoints, export manifests): a ``typ``
        token signed with the key ``keys`` gives for its ``kid`` at ``when``; else :class:`InvalidEnvelope`."""
        try:
            self.expect(typ)
        except (Malformed, BadSignature) as exc:
            raise InvalidEnvelope(f"not an {typ} token") from exc
        key = keys(self.kid, when)
        if key is None:
            raise InvalidEnvelope("signed with a key that is not the broker's")
        try:
            self.check_signature(key)
        except BadSignature as exc:
            raise InvalidEnvelope("signature does not verify") from exc


def parse(token: bytes) -> Signed:
    """The one reader: three segments, each canonical base64url (all checked before anything is
    trusted, as PyJWT decodes all three before it looks at the key), the header a strict JSON
    object. Its values are checked by :meth:`Signed.expect`, the rest by :meth:`Signed.verify`."""
    head, dot, rest = token.partition(b".")
    body, dot2, signature = rest.partition(b".")
    if not (dot and dot2 and head and body) or b"." in signature:
        raise Malformed("not a JWS compact serialisation", field="/")
    try:
        header = strictjson.loads(_segment(head))
    except Malformed as exc:
        raise Malformed("the JWS header cannot be read", field="/header") from exc
    except strictjson.StrictJSONError as exc:
        raise Malformed(f"the JWS header is not strict JSON: {exc.reason}", field=f"/header{exc.where}",
                        rule="strict-json") from exc
    if not isinstance(header, dict):
        raise Malformed("the JWS header is not a JSON object", field="/header")
    return Signed(header, token[: len(head) + 1 + len(body)], _segment(body), _segment(signature))


def read(token: bytes, typ: str = JWS_TYP) -> Signed:
    """:func:`parse` and :meth:`Signed.expect`: a token whose key can now be looked up by ``kid``."""
    return parse(token).expect(typ)


def read_header(token: bytes) -> dict[str, Any]:
    """The protected header of a wire message, checked but not trusted (see :func:`read`)."""
    return read(token).header


def unverified(token: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, strictly read, without checking the signature (to list stored messages,
    or to say *what* was changed); anything unreadable is :class:`InvalidEnvelope`."""
    try:
        signed = parse(token)
        return signed.header, signed.claims()
    except Malformed as exc:
        raise InvalidEnvelope("not a readable JWS") from exc


def verify_typed(token: bytes, typ: str, keys: KeyLookup, when: float | None = None) -> dict[str, Any]:
    """The claims of one of the broker's own ``typ`` tokens (see :meth:`Signed.verified_by`), its key
    valid ``when`` (None: at the time the token says it was signed, its ``at`` claim)."""
    try:
        signed = parse(token)
        claims = signed.claims()
    except Malformed as exc:
        raise InvalidEnvelope("not a readable JWS") from exc
    signed.verified_by(keys, at_of(claims) if when is None else when, typ)
    return claims


def _segment(part: bytes) -> bytes:
    """Strict base64url in its one canonical spelling: the alphabet alone (no padding, white space,
    ``+`` or ``/``, nothing else: the decoder's strict mode), and no unused bits set in the last
    character (the same bytes spelled otherwise). As fast as a lenient decode on an audit block."""
    if b"=" in part or b"+" in part or b"/" in part:
        raise Malformed("a JWS segment is not canonical base64url", field="/")
    try:
        raw = binascii.a2b_base64(part.translate(_TO_STANDARD) + b"=" * (-len(part) % 4), strict_mode=True)
    except binascii.Error as exc:
        raise Malformed("a JWS segment is not base64url", field="/") from exc
    tail = len(part) % 4
    if tail and part[-1] not in _LAST_WITHOUT_UNUSED_BITS[tail]:
        raise Malformed("a JWS segment is not canonical base64url", field="/")
    return raw


def _claims(raw: bytes) -> dict[str, Any]:
    try:
        claims = strictjson.loads(raw)
    except strictjson.StrictJSONError as exc:
        raise Malformed(f"the envelope is not strict JSON: {exc.reason}", field=exc.where or "/",
                        rule="strict-json") from exc
    if not isinstance(claims, dict):
        raise Malformed("the envelope is not a JSON object", field="/")
    return claims
