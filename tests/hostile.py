"""A corpus of hostile wire messages, each labelled with the contract code the broker must answer.

Each case builds its bytes from a valid message of a real agency's keys and breaks exactly one
thing. ``tests/test_hostile.py`` runs them all through one broker; ``bench/fuzz.py`` uses them as
seeds. Builders are pure (no NATS): they take a :class:`Kit` and return ``(message id, bytes)``,
where the message id is both the ``Nats-Msg-Id`` it is published under and what its rejection
names (the ``jti`` once the signature verified, else the NATS id; here they are the same).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

from adapters.sdk import AgencyClient
from broker.wire import _crypto, hpke
from tests.helpers import example, referral, sharing

Wire = tuple[str, bytes]
MiB = 1024 * 1024


@dataclass(frozen=True)
class Kit:
    police: AgencyClient
    la: AgencyClient

    @property
    def registry(self) -> Any:
        return self.police.registry

    def kid(self, agency: str, use: str) -> str:
        return str(next(k.kid for k in self.registry.agencies[agency].keys if k.use == use))


@dataclass(frozen=True)
class Case:
    label: str
    code: str  # the rejection code; "nats" when NATS itself refuses the publish (nothing stored)
    make: Callable[[Kit], Wire]
    field: str | None = None  # the field the rejection must name, where it matters
    publisher: str = "police-met"  # whose connection publishes, onto its own sg.in.<agency>
    subject: str | None = None  # another agency's ingress subject (only without NATS permissions)
    replays: str | None = None  # the label of a case whose very bytes this one sends again (new NATS id)
    rule: str | None = None  # the rule the rejection must name, where it matters


def b64(raw: bytes) -> bytes:
    return _crypto.b64u(raw).encode("ascii")


def claims_of(token: bytes) -> dict[str, Any]:
    return orjson.loads(_crypto.unb64u(token.split(b".")[1].decode()))  # type: ignore[no-any-return]


def header(kit: Kit, **extra: Any) -> bytes:
    return orjson.dumps({"alg": "EdDSA", "typ": "sg+jwt", "kid": kit.police.identity.sig_kid} | extra)


def signed(kit: Kit, head: bytes, body: bytes, *, key: _crypto.SigningKey | None = None,
           encode: Callable[[bytes], bytes] = b64, encode_head: Callable[[bytes], bytes] = b64) -> bytes:
    """A JWS over header and claims given as bytes (so duplicates, bad UTF-8 and odd spellings stay),
    signed with the police key unless another is given."""
    signing_input = encode_head(head) + b"." + encode(body)
    return signing_input + b"." + b64((key or kit.police.identity.signing_key).sign(signing_input))


def valid(kit: Kit, **kw: Any) -> Wire:
    args: dict[str, Any] = {"typ": "referral", "to": ["la-camden"], "payload": referral(), "sharing": sharing()}
    return kit.police.build(**(args | kw))


def claims(kit: Kit, plaintext: bytes | None = None, *, typ: str = "referral", recipient: str = "sg-broker",
           public: Any = None) -> dict[str, Any]:
    """Valid claims with a fresh jti; the payload sealed to the broker (or as given)."""
    jti, token = valid(kit)
    out = claims_of(token)
    if plaintext is not None or public is not None:
        kid, suite, pub = kit.registry.recipient_key("sg-broker", time.time())
        out["payload"] = hpke.seal_payload(plaintext if plaintext is not None else orjson.dumps(referral()),
                                           jti=jti, iss="police-met", typ=typ, ver=1, recipient=recipient,
                                           kid=kid, suite=suite, public_key=public or pub).payload
    out["typ"] = typ
    return out


def resigned(kit: Kit, change: Callable[[dict[str, Any]], None]) -> Wire:
    c = claims(kit)
    jti = c["jti"]
    change(c)
    return jti, signed(kit, header(kit), orjson.dumps(c))


def edited(kit: Kit, edit: Callable[[bytes], bytes], plaintext: bytes | None = None, **kw: Any) -> Wire:
    """Claims edited as bytes (a JSON library would not let these through), then signed."""
    c = claims(kit, plaintext, **kw)
    return c["jti"], signed(kit, header(kit), edit(orjson.dumps(c)))


def with_header(kit: Kit, head: bytes, *, key: _crypto.SigningKey | None = None) -> Wire:
    c = claims(kit)
    return c["jti"], signed(kit, head, orjson.dumps(c), key=key)


def token_edit(kit: Kit, edit: Callable[[bytes], bytes]) -> Wire:
    jti, token = valid(kit)
    return jti, edit(token)


def new_id(w: Wire) -> Wire:
    """The same bytes under a fresh id (the jti is gone or unusable: the rejection names the NATS id)."""
    return str(uuid.uuid4()), w[1]


def noncanonical(raw: bytes) -> bytes:
    """base64url of ``raw`` with a non-zero unused trailing bit: it decodes to the same bytes."""
    text = b64(raw)
    assert len(raw) % 3, "needs unused bits"
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return text[:-1] + alphabet[alphabet.index(text[-1]) + 1: alphabet.index(text[-1]) + 2]


def padded_to_unused_bits(body: bytes) -> bytes:
    """The claims JSON with trailing spaces until its base64 has unused bits."""
    while len(body) % 3 == 0:
        body += b" "
    return body


def nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def payload_with(extra: bytes) -> bytes:
    return orjson.dumps(referral())[:-1] + b"," + extra + b"}"


def fake_sig(kit: Kit, alg: str, size: int) -> Wire:
    c = claims(kit)
    head = orjson.dumps({"alg": alg, "typ": "sg+jwt", "kid": kit.police.identity.sig_kid})
    return c["jti"], b64(head) + b"." + b64(orjson.dumps(c)) + b"." + b64(b"\x01" * size)


def hs256(kit: Kit) -> Wire:
    c = claims(kit)
    secret = kit.registry.agencies["police-met"].keys[0].x  # the public key, as an HMAC secret
    head = {"kid": kit.police.identity.sig_kid, "typ": "sg+jwt"}
    return c["jti"], jwt.encode(c, secret, algorithm="HS256", headers=head).encode()


def lifted(kit: Kit) -> Wire:
    donor = claims(kit)
    c = claims(kit)
    c["payload"] = donor["payload"]  # sealed for another jti: the HPKE info does not match
    return c["jti"], signed(kit, header(kit), orjson.dumps(c))


def sealed_to(kit: Kit, agency: str, *, recipient: str = "sg-broker") -> Wire:
    _, _, public = kit.registry.recipient_key(agency, time.time())
    c = claims(kit, orjson.dumps(referral()), recipient=recipient, public=public)
    return c["jti"], signed(kit, header(kit), orjson.dumps(c))


def noncanonical_ciphertext(kit: Kit) -> Wire:
    """A ciphertext that opens, spelt with unused base64 bits set: one message, two byte forms."""
    plaintext = orjson.dumps(referral())
    while (len(plaintext) + 48) % 3 == 0:  # X25519 HPKE adds 48 bytes
        plaintext += b" "
    c = claims(kit, plaintext)
    c["payload"] = noncanonical(_crypto.unb64u(c["payload"])).decode()
    return c["jti"], signed(kit, header(kit), orjson.dumps(c))


def bare(label: str, data: bytes) -> Wire:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sgb-hostile/{label}/{time.time_ns()}")), data


def _iat(value: bytes) -> Callable[[Kit], Wire]:
    return lambda k: edited(k, lambda b: _replace_value(b, b'"iat":', value))


def _replace_value(body: bytes, key: bytes, value: bytes) -> bytes:
    start = body.index(key) + len(key)
    end = start
    while body[end:end + 1] not in (b",", b"}"):
        end += 1
    return body[:start] + value + body[end:]


def _police_payload(payload: dict[str, Any]) -> Callable[[Kit], Wire]:
    return lambda k: valid(k, payload=payload, validate=False)


def _without_concern(p: dict[str, Any]) -> dict[str, Any]:
    del p["concern"]
    return p


CASES: list[Case] = [
    # -- not a JWS compact serialisation ------------------------------------------------------------
    Case("empty", "malformed", lambda k: bare("empty", b"")),
    Case("random-binary", "malformed", lambda k: bare("bin", bytes(range(256)) * 4)),
    Case("nul-byte-in-token", "malformed", lambda k: token_edit(k, lambda t: t[:40] + b"\x00" + t[40:])),
    Case("invalid-utf8-in-token", "malformed", lambda k: token_edit(k, lambda t: t[:40] + b"\xc3\x28" + t[40:])),
    Case("jws-json-serialisation", "malformed", lambda k: token_edit(k, lambda t: orjson.dumps(
        dict(zip(("protected", "payload", "signature"), t.decode().split("."), strict=True))))),
    Case("five-segments-jwe-shape", "malformed", lambda k: token_edit(k, lambda t: t + b".AAAA.BBBB")),
    Case("padded-base64", "malformed", lambda k: token_edit(k, lambda t: t + b"==")),
    Case("standard-base64-alphabet", "malformed", lambda k: token_edit(k, lambda t: t[:-2] + b"+/")),
    Case("noncanonical-base64-signature", "malformed", lambda k: token_edit(
        k, lambda t: t.rpartition(b".")[0] + b"." + noncanonical(_crypto.unb64u(t.rpartition(b".")[2].decode())))),
    Case("noncanonical-base64-claims-signed", "malformed", lambda k: (lambda c: (c["jti"], signed(
        k, header(k), padded_to_unused_bits(orjson.dumps(c)), encode=noncanonical)))(claims(k))),
    Case("noncanonical-base64-header-signed", "malformed", lambda k: (lambda c: (c["jti"], signed(
        k, padded_to_unused_bits(header(k)), orjson.dumps(c), encode_head=noncanonical)))(claims(k))),
    Case("truncated", "malformed", lambda k: token_edit(k, lambda t: t[: len(t) // 2])),
    # -- the header: algorithm confusion, parameters the contract does not have, key ids ------------
    Case("alg-none", "bad-signature", lambda k: (lambda c: (c["jti"], b64(orjson.dumps(
        {"alg": "none", "typ": "sg+jwt", "kid": k.police.identity.sig_kid})) + b"." + b64(orjson.dumps(c)) + b"."))(
        claims(k)), field="/header/alg"),
    Case("alg-hs256-keyed-with-public-key", "bad-signature", hs256, field="/header/alg"),
    Case("alg-rs256", "bad-signature", lambda k: fake_sig(k, "RS256", 256), field="/header/alg"),
    Case("alg-es256", "bad-signature", lambda k: fake_sig(k, "ES256", 64), field="/header/alg"),
    Case("alg-ed25519-spelling", "bad-signature", lambda k: fake_sig(k, "Ed25519", 64), field="/header/alg"),
    Case("alg-missing", "bad-signature", lambda k: with_header(k, orjson.dumps(
        {"typ": "sg+jwt", "kid": k.police.identity.sig_kid})), field="/header/alg"),
    Case("crit-b64-false", "malformed", lambda k: with_header(k, header(k, crit=["b64"], b64=False)),
         field="/header"),
    Case("crit-unknown", "malformed", lambda k: with_header(k, header(k, crit=["sgb-x"], **{"sgb-x": 1})),
         field="/header"),
    Case("b64-false", "malformed", lambda k: with_header(k, header(k, b64=False)), field="/header"),
    Case("jku-header", "malformed", lambda k: with_header(k, header(k, jku="https://evil.invalid/jwks")),
         field="/header"),
    Case("jwk-embedded-attacker-key", "malformed", lambda k: (lambda sk: with_header(k, header(k, jwk={
        "kty": "OKP", "crv": "Ed25519", "x": _crypto.b64u(_crypto.verify_key_bytes(sk.public_key()))}), key=sk))(
        _crypto.new_signing_key()), field="/header"),
    Case("x5u-header", "malformed", lambda k: with_header(k, header(k, x5u="https://evil.invalid/c.pem")),
         field="/header"),
    Case("typ-jwt", "malformed", lambda k: with_header(k, header(k, typ="JWT")), field="/header/typ"),
    Case("kid-missing", "malformed", lambda k: with_header(k, orjson.dumps({"alg": "EdDSA", "typ": "sg+jwt"})),
         field="/header/kid"),
    Case("kid-traversal", "unknown-key", lambda k: with_header(k, header(k, kid="../../keys/police-met.key.json")),
         field="/header/kid"),
    Case("kid-traversal-prefixing-real-kid", "unknown-key", lambda k: with_header(
        k, header(k, kid="../../" + k.police.identity.sig_kid)), field="/header/kid"),
    Case("kid-with-nul", "unknown-key", lambda k: with_header(k, header(k, kid=k.police.identity.sig_kid + "\x00")),
         field="/header/kid"),
    Case("kid-of-another-agency", "sender-mismatch", lambda k: with_header(k, header(k, kid=k.kid("la-camden", "sig"))),
         field="/header/kid"),
    Case("kid-and-key-of-another-agency", "sender-mismatch", lambda k: with_header(
        k, header(k, kid=k.la.identity.sig_kid), key=k.la.identity.signing_key), field="/header/kid"),
    Case("kid-of-the-broker", "sender-mismatch", lambda k: with_header(k, header(k, kid=k.kid("sg-broker", "sig"))),
         field="/header/kid"),
    Case("kid-of-an-encryption-key", "unknown-key", lambda k: with_header(
        k, header(k, kid=k.kid("sg-broker", "enc"))), field="/header/kid"),
    Case("duplicate-header-kid", "malformed", lambda k: with_header(k, header(k).replace(
        b'"kid":', b'"kid":"%s","kid":' % k.kid("la-camden", "sig").encode())), field="/header/kid"),
    Case("duplicate-then-not-json-header", "malformed", lambda k: with_header(
        k, header(k)[:-1] + b',"x":{"a":1,"a":2} ]'), field="/header", rule="strict-json"),
    Case("header-nested-40", "malformed", lambda k: with_header(k, header(k)[:-1] + b',"x":' + nested(40) + b"}"),
         field="/header"),
    Case("invalid-utf8-header-signed", "malformed", lambda k: with_header(k, header(k)[:-1] + b',"x":"\xff"}'),
         field="/header"),
    # -- the claims ----------------------------------------------------------------------------------
    Case("duplicate-iss", "malformed", lambda k: edited(k, lambda b: b.replace(
        b'"iss":"police-met"', b'"iss":"la-camden","iss":"police-met"')), field="/iss"),
    Case("duplicate-to", "malformed", lambda k: edited(k, lambda b: b.replace(
        b'"to":["la-camden"]', b'"to":["school-hillside"],"to":["la-camden"]')), field="/to"),
    Case("duplicate-sharing-basis", "malformed", lambda k: edited(k, lambda b: b.replace(
        b'"lawfulBasis":"UKGDPR_6_1_E"', b'"lawfulBasis":"UKGDPR_6_1_F","lawfulBasis":"UKGDPR_6_1_E"')),
        field="/sharing/lawfulBasis"),
    Case("duplicate-enc-kid", "malformed", lambda k: edited(k, lambda b: b.replace(
        b'"enc":{', b'"enc":{"kid":"x",')), field="/enc/kid"),
    Case("duplicate-in-payload", "schema-invalid", lambda k: edited(k, lambda b: b, payload_with(
        b'"policeReference":"SECRET-2"')), field="/payload/policeReference"),
    Case("duplicate-then-not-json-claims", "malformed", lambda k: edited(k, lambda b: b.replace(
        b'"enc":{', b'"x":{"a":1,"a":2} ?,"enc":{')), field="/", rule="strict-json"),
    Case("iat-missing", "malformed", lambda k: resigned(k, lambda c: c.pop("iat")), field="/iat"),
    Case("iat-zero", "stale", lambda k: resigned(k, lambda c: c.update(iat=0)), field="/iat"),
    Case("iat-negative", "malformed", lambda k: resigned(k, lambda c: c.update(iat=-1)), field="/iat"),
    Case("iat-2-pow-63", "stale", lambda k: resigned(k, lambda c: c.update(iat=2**63)), field="/iat"),
    Case("iat-400-digits", "stale", _iat(b"1" + b"0" * 399), field="/iat"),
    Case("iat-1e400", "malformed", _iat(b"1e400")),
    Case("iat-nan", "malformed", _iat(b"NaN")),
    Case("iat-infinity", "malformed", _iat(b"Infinity")),
    Case("iat-fraction", "malformed", lambda k: resigned(k, lambda c: c.update(iat=c["iat"] + 0.5)), field="/iat"),
    Case("iat-string", "malformed", lambda k: resigned(k, lambda c: c.update(iat=str(c["iat"]))), field="/iat"),
    Case("jti-missing", "malformed", lambda k: new_id(resigned(
        k, lambda c: c.pop("jti"))), field="/jti"),
    Case("jti-not-uuid", "malformed", lambda k: new_id(resigned(
        k, lambda c: c.update(jti="../../" + "A" * 40))), field="/jti"),
    Case("jti-100k", "malformed", lambda k: new_id(resigned(
        k, lambda c: c.update(jti="a" * 100_000))), field="/jti"),
    Case("ver-as-float", "malformed", lambda k: resigned(k, lambda c: c.update(ver=1.0)), field="/ver"),
    Case("origin-set-by-sender", "malformed", lambda k: resigned(k, lambda c: c.update(origin={
        "iss": "la-camden", "jti": str(uuid.uuid4()), "digest": "sha256:" + "A" * 43})), field="/origin"),
    Case("iss-another-agency", "sender-mismatch", lambda k: resigned(k, lambda c: c.update(iss="la-camden")),
         field="/iss"),
    Case("iss-the-broker", "sender-mismatch", lambda k: resigned(k, lambda c: c.update(iss="sg-broker")),
         field="/iss"),
    Case("sharing-nested-300", "malformed", lambda k: edited(k, lambda b: b.replace(
        b'"sharing":{', b'"sharing":{"deep":' + nested(300) + b","))),
    Case("claims-nested-100000", "malformed", lambda k: edited(k, lambda b: b.replace(
        b'"to":[', b'"to":[' + nested(100_000) + b","))),
    Case("nul-in-claims-json", "malformed", lambda k: edited(k, lambda b: b.replace(b'"typ":', b'"x\x00":1,"typ":'))),
    Case("invalid-utf8-in-claims", "malformed", lambda k: edited(k, lambda b: b.replace(
        b'"iss":"police-met"', b'"iss":"police-met\xff"'))),
    Case("lone-surrogate-in-claims", "malformed", lambda k: edited(k, lambda b: b.replace(
        b'"typ":', b'"thread":"\\ud800","typ":')), field="/thread"),
    # -- size --------------------------------------------------------------------------------------
    Case("1-mib", "too-large", lambda k: valid(k, payload=referral() | {"pad": "x" * 600_000}, validate=False),
         field="/"),
    Case("5-mib-over-the-stream-limit", "nats", lambda k: bare("5mib", b"A" * (5 * MiB))),
    Case("10-mib-over-nats-max-payload", "nats", lambda k: bare("10mib", b"A" * (10 * MiB))),
    # -- recipients -------------------------------------------------------------------------------
    Case("1000-recipients", "malformed", lambda k: resigned(k, lambda c: c.update(
        to=[f"la-{i}" for i in range(1000)])), field="/to"),
    Case("recipient-twice", "malformed", lambda k: resigned(k, lambda c: c.update(to=["la-camden", "la-camden"])),
         field="/to"),
    Case("sender-as-its-own-recipient", "not-permitted", lambda k: valid(k, to=["police-met"]), field="/to/0"),
    Case("sender-among-its-recipients", "not-permitted", lambda k: valid(
        k, to=["la-camden", "police-met"]), field="/to/1"),
    Case("another-agencys-ingress-subject", "sender-mismatch", lambda k: valid(k), field="/header/kid",
         subject="la-camden"),
    # -- the sealed payload ---------------------------------------------------------------------
    Case("sealed-to-another-recipient", "undecryptable", lambda k: sealed_to(k, "la-camden"), field="/payload"),
    Case("sealed-to-broker-key-for-another-recipient", "undecryptable", lambda k: sealed_to(
        k, "sg-broker", recipient="la-camden"), field="/payload"),
    Case("ciphertext-lifted-from-another-message", "undecryptable", lifted, field="/payload"),
    Case("enc-kid-of-another-agency", "undecryptable", lambda k: resigned(k, lambda c: c["enc"].update(
        kid=k.kid("la-camden", "enc"))), field="/enc/kid"),
    Case("suite-mismatch-hybrid-claimed", "undecryptable", lambda k: resigned(k, lambda c: c["enc"].update(
        suite=_crypto.HYBRID_SUITE)), field="/enc/kid"),
    Case("suite-unknown", "malformed", lambda k: resigned(k, lambda c: c["enc"].update(
        suite="X25519-SHA256-NULL")), field="/enc/suite"),
    Case("ciphertext-truncated", "undecryptable", lambda k: resigned(k, lambda c: c.update(
        payload=_crypto.b64u(_crypto.unb64u(c["payload"])[:-8]))), field="/payload"),
    Case("ciphertext-noncanonical-base64", "malformed", noncanonical_ciphertext, field="/payload"),
    Case("payload-nested-300", "schema-invalid", lambda k: edited(k, lambda b: b, payload_with(
        b'"pad":' + nested(300)))),
    Case("payload-nested-33", "schema-invalid", lambda k: edited(k, lambda b: b, payload_with(
        b'"pad":' + nested(33)))),
    Case("nul-in-payload-json", "schema-invalid", lambda k: edited(k, lambda b: b, payload_with(
        b'"pad":"a\x00b"'))),
    Case("invalid-utf8-in-payload", "schema-invalid", lambda k: edited(k, lambda b: b, payload_with(
        b'"pad":"\xff\xfe"'))),
    Case("lone-surrogate-in-payload", "schema-invalid", lambda k: edited(k, lambda b: b, orjson.dumps(
        referral()).replace(b'"details":"', b'"details":"\\udc00'))),
    Case("payload-not-an-object", "schema-invalid", lambda k: edited(k, lambda b: b, b"[1,2,3]"),
         field="/payload"),
    # -- the schema and the type claim ----------------------------------------------------------
    Case("schema-missing-required", "schema-invalid", _police_payload(_without_concern(referral()))),
    Case("schema-extra-member", "schema-invalid", _police_payload(referral() | {"SECRET": "x"})),
    Case("schema-bad-format", "schema-invalid", _police_payload(
        referral() | {"child": referral()["child"] | {"nhsNumber": "12345-SECRET"}}), field="/child/nhsNumber"),
    Case("type-claim-lies", "schema-invalid", lambda k: valid(
        k, typ="information-request", sharing=sharing("information-request"), validate=False)),
    Case("type-claims-receipt", "schema-invalid", lambda k: valid(
        k, typ="receipt", sharing=sharing("receipt"), validate=False)),
    Case("type-unknown", "unknown-type", lambda k: valid(k, typ="parking-fine", validate=False), field="/typ"),
    Case("type-version-unknown", "unknown-type", lambda k: valid(k, ver=2, validate=False), field="/typ"),
    Case("forged-rejection", "not-permitted", lambda k: valid(
        k, typ="rejection", sharing=sharing("rejection"), payload=example("rejection.example.json"))),
    Case("replay-of-a-refused-message", "replayed", lambda k: ("", b""), replays="schema-bad-format"),
]
