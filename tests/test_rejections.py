"""Every rejection code: bad input gets a signed rejection with a stable code on the sender's
subject and an audit record, delivers nothing to anyone, and never stalls the broker."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import orjson
import pytest

from adapters.sdk import AgencyClient
from broker.audit.reading import read_audit
from broker.config import Settings
from broker.pipeline.service import Broker
from broker.transport.connection import connected, jetstream
from broker.wire import _crypto, hpke, jws
from tests.conftest import ClientFactory
from tests.helpers import drain, example, referral, sharing

pytestmark = pytest.mark.timeout(60)


def _claims(token: bytes) -> dict[str, Any]:
    body = token.split(b".")[1]
    return orjson.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))  # type: ignore[no-any-return]


def _resign(client: AgencyClient, claims: dict[str, Any], *, key: _crypto.SigningKey | None = None,
            kid: str | None = None) -> bytes:
    return jws.sign(claims, key or client.identity.signing_key, kid or client.identity.sig_kid)


def _good(client: AgencyClient, **kw: Any) -> tuple[str, bytes]:
    args: dict[str, Any] = {"typ": "referral", "to": ["la-camden"], "payload": referral(), "sharing": sharing()}
    return client.build(**(args | kw))


def _mutated(client: AgencyClient, change: Callable[[dict[str, Any]], None]) -> tuple[str, bytes]:
    jti, token = _good(client)
    claims = _claims(token)
    change(claims)
    return jti, _resign(client, claims)


def _flip_signature(token: bytes) -> bytes:
    head, body, sig = token.split(b".")
    raw = bytearray(base64.urlsafe_b64decode(sig + b"=="))
    raw[0] ^= 0xFF
    return head + b"." + body + b"." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=")


def _alg_none(client: AgencyClient) -> tuple[str, bytes]:
    jti, token = _good(client)
    head = base64.urlsafe_b64encode(b'{"alg":"none","typ":"sg+jwt","kid":"%s"}' % client.identity.sig_kid.encode())
    return jti, head.rstrip(b"=") + b"." + token.split(b".")[1] + b"."


def _hs256(client: AgencyClient) -> tuple[str, bytes]:
    jti, token = _good(client)
    secret = client.registry.agencies[client.agency].keys[0].x
    forged = jwt.encode(_claims(token), secret, algorithm="HS256",
                        headers={"kid": client.identity.sig_kid, "typ": "sg+jwt"})
    return jti, forged.encode()


def _unknown_key(client: AgencyClient) -> tuple[str, bytes]:
    jti, token = _good(client)
    return jti, _resign(client, _claims(token), key=_crypto.new_signing_key(), kid="police-met-sig-rogue")


def _sealed_to_wrong_party(client: AgencyClient) -> tuple[str, bytes]:
    jti, token = _good(client)
    claims = _claims(token)
    kid, suite, public = client.registry.recipient_key("la-camden", time.time())
    sealed = hpke.seal_payload(b"{}", jti=jti, iss=client.agency, typ="referral", ver=1, recipient="la-camden",
                               kid=kid, suite=suite, public_key=public)
    claims["payload"] = sealed.payload  # the broker's enc kid stays: it cannot open this
    return jti, _resign(client, claims)


def _bad_nhs_number(client: AgencyClient) -> tuple[str, bytes]:
    payload = referral()
    payload["child"]["nhsNumber"] = "12345-SECRET"
    return _good(client, payload=payload, validate=False)


def _no_basis(client: AgencyClient) -> tuple[str, bytes]:
    bases = ("lawfulBasis", "lawEnforcementBasis")
    return _good(client, sharing={k: v for k, v in sharing().items() if k not in bases})


def _raw_claims(client: AgencyClient, edit: Callable[[bytes], bytes], *, payload: bytes | None = None,
                header: bytes | None = None) -> tuple[str, bytes]:
    """A message signed over claims (and a header, and a sealed payload) edited as bytes, where a
    JSON library would not let a duplicate member through."""
    jti, token = _good(client)
    claims = _claims(token)
    if payload is not None:
        kid, suite, public = client.registry.recipient_key("sg-broker", time.time())
        claims["payload"] = hpke.seal_payload(payload, jti=jti, iss=client.agency, typ="referral", ver=1,
                                              recipient="sg-broker", kid=kid, suite=suite, public_key=public).payload
    head = header or b'{"alg":"EdDSA","kid":"%s","typ":"sg+jwt"}' % client.identity.sig_kid.encode()
    signing_input = _crypto.b64u(head).encode() + b"." + _crypto.b64u(edit(orjson.dumps(claims))).encode()
    return jti, signing_input + b"." + _crypto.b64u(client.identity.signing_key.sign(signing_input)).encode()


def _nested(levels: int) -> bytes:
    return orjson.dumps(referral())[:-1] + b',"pad":' + b"[" * levels + b"]" * levels + b"}"


CASES: dict[str, tuple[str, Callable[[AgencyClient], tuple[str, bytes]]]] = {
    # duplicate member names mean one thing to one reader and another to the next (issue 12)
    "duplicate-header-alg": ("malformed", lambda c: _raw_claims(c, lambda b: b, header=(
        b'{"alg":"none","alg":"EdDSA","kid":"%s","typ":"sg+jwt"}' % c.identity.sig_kid.encode()))),
    "duplicate-iss": ("malformed", lambda c: _raw_claims(c, lambda b: b.replace(
        b'"iss":"police-met"', b'"iss":"la-camden","iss":"police-met"'))),
    "duplicate-lawful-basis": ("malformed", lambda c: _raw_claims(c, lambda b: b.replace(
        b'"lawfulBasis":"UKGDPR_6_1_E"', b'"lawfulBasis":"UKGDPR_6_1_F","lawfulBasis":"UKGDPR_6_1_E"'))),
    "duplicate-in-payload": ("schema-invalid", lambda c: _raw_claims(c, lambda b: b, payload=orjson.dumps(
        referral())[:-1] + b',"policeReference":"SECRET-2"}')),
    "payload-nested-300-deep": ("schema-invalid", lambda c: _raw_claims(c, lambda b: b, payload=_nested(300))),
    "sharing-nested-300-deep": ("malformed", lambda c: _raw_claims(c, lambda b: b.replace(
        b'"sharing":{', b'"sharing":{"deep":' + b"[" * 300 + b"]" * 300 + b","))),
    "garbage": ("malformed", lambda c: ("garbage-1", b"\x00\xffnot a jws at all")),
    "truncated": ("malformed", lambda c: (lambda j, t: (j, t[: len(t) // 2]))(*_good(c))),
    "envelope-extra-claim": ("malformed", lambda c: _mutated(c, lambda m: m.update(extra="x"))),
    "oversized": ("too-large", lambda c: _good(c, payload=referral() | {"pad": "x" * 600_000}, validate=False)),
    "bad-signature": ("bad-signature", lambda c: (lambda j, t: (j, _flip_signature(t)))(*_good(c))),
    "missing-signature": ("bad-signature", lambda c: (lambda j, t: (j, t.rsplit(b".", 1)[0] + b"."))(*_good(c))),
    "alg-none": ("bad-signature", _alg_none),
    "alg-hs256": ("bad-signature", _hs256),
    "unknown-key": ("unknown-key", _unknown_key),
    "iss-not-publisher": ("sender-mismatch", lambda c: _mutated(c, lambda m: m.update(iss="la-camden"))),
    "stale": ("stale", lambda c: _mutated(c, lambda m: m.update(iat=int(time.time()) - 3600))),
    "future": ("stale", lambda c: _mutated(c, lambda m: m.update(iat=int(time.time()) + 3600))),
    "undecryptable": ("undecryptable", _sealed_to_wrong_party),
    "unknown-type": ("unknown-type", lambda c: _good(c, typ="parking-fine", validate=False)),
    "schema-invalid": ("schema-invalid", _bad_nhs_number),
    "receipt-about-another-message": ("schema-invalid", lambda c: _good(
        c, typ="receipt", sharing=sharing("receipt"), re=str(uuid.uuid4()),
        payload=example("receipt.example.json") | {"messageId": str(uuid.uuid4())})),
    "unknown-recipient": ("unknown-recipient", lambda c: _good(c, to=["la-nowhere"])),
    "broker-as-recipient": ("unknown-recipient", lambda c: _good(c, to=["sg-broker"])),
    "no-lawful-basis": ("no-lawful-basis", _no_basis),
    "not-permitted-type": ("not-permitted", lambda c: _good(
        c, typ="referral-outcome", to=["la-camden"], sharing=sharing("referral-outcome"),
        payload=example("referral-outcome.example.json"))),
    "not-permitted-rejection": ("not-permitted", lambda c: _good(
        c, typ="rejection", to=["la-camden"], sharing=sharing("rejection"),
        payload=example("rejection.example.json"))),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_rejection(case: str, broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    code, make = CASES[case]
    police, la = await agency("police-met"), await agency("la-camden")
    msg_id, data = make(police)
    await police.publish(data, msg_id)

    outcome = await police.wait_outcome(msg_id, timeout=10)
    assert outcome.type == "rejection"
    assert outcome.payload["code"] == code
    assert outcome.claims["iss"] == "sg-broker"
    assert outcome.payload["retryable"] is (code == "stale") and broker.pipeline.counters.retried == 0  # at once
    assert "SECRET" not in orjson.dumps(outcome.payload).decode()

    # nothing reached anyone else, and the broker still works
    good_id, good = _good(police)
    await police.publish(good, good_id)
    assert (await police.wait_outcome(good_id, timeout=10)).type == "receipt"
    (delivered,) = await drain(la, want=1)
    assert delivered.claims["origin"]["jti"] == good_id

    async with connected(settings, settings.nats.url or "", name="audit") as nc:
        records = [r async for r in read_audit(jetstream(nc, settings))]
    rejected = [r for r in records if r["event"] == "rejected"]
    assert [r["code"] for r in rejected] == [code]
    assert "SECRET" not in orjson.dumps(records).decode()


async def test_sender_mismatch_when_publishing_on_another_agencys_subject(
        broker: Broker, agency: ClientFactory) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    jti, token = _good(police)
    await la.publish(token, jti)  # police-signed bytes on sg.in.la-camden
    outcome = await la.wait_outcome(jti, timeout=10)
    assert outcome.payload["code"] == "sender-mismatch"


async def test_replay_under_a_new_nats_message_id_is_refused(broker: Broker, agency: ClientFactory) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    jti, token = _good(police)
    await police.publish(token, jti)
    assert (await police.wait_outcome(jti, timeout=10)).type == "receipt"
    await police.publish(token, str(uuid.uuid4()))  # same bytes, dedup header changed
    outcome = await police.wait_outcome(jti, timeout=10)
    assert outcome.type == "rejection" and outcome.payload["code"] == "replayed"
    assert len(await drain(la, want=1)) == 1


async def test_schema_rejection_names_field_not_value(broker: Broker, agency: ClientFactory) -> None:
    police = await agency("police-met")
    msg_id, data = _bad_nhs_number(police)
    await police.publish(data, msg_id)
    outcome = await police.wait_outcome(msg_id, timeout=10)
    assert outcome.payload["field"] == "/child/nhsNumber"
    assert outcome.payload["rule"] == "referral.v1.json"
    assert "12345" not in orjson.dumps(outcome.payload).decode()


@pytest.mark.parametrize(("case", "field"), [("duplicate-header-alg", "/header/alg"), ("duplicate-iss", "/iss"),
                                             ("duplicate-lawful-basis", "/sharing/lawfulBasis"),
                                             ("duplicate-in-payload", "/payload/policeReference")])
async def test_a_duplicate_member_is_named_where_it_is(case: str, field: str, broker: Broker,
                                                       agency: ClientFactory) -> None:
    police = await agency("police-met")
    msg_id, data = CASES[case][1](police)
    await police.publish(data, msg_id)
    outcome = await police.wait_outcome(msg_id, timeout=10)
    assert (outcome.payload["field"], outcome.payload["rule"]) == (field, "strict-json")
    assert "SECRET" not in orjson.dumps(outcome.payload).decode()
