"""The hostile corpus (``tests/hostile.py``) through one running broker: every message refused with
its contract code (and field where it matters), at once (never retried), each with one signed
rejection to the agency that published it and one ``rejected`` audit record; nothing delivered to
anyone; and a valid message afterwards is delivered.

Two cases never reach the broker, and are asserted for what really happens: a 5 MiB message is
refused by JetStream (the ingress stream's ``max_msg_size`` is 4 MiB) and a 10 MiB one by the NATS
client before it is sent (the embedded server's ``max_payload`` is 8 MiB); nothing is stored, so
there is no rejection and no audit record. With the NATS permissions ``sgb keys init`` writes, an
agency cannot publish onto another agency's ingress subject at all
(``tests/test_nats_permissions.py``); here, without them, the broker's own check is asserted: a
police-signed message on ``sg.in.la-camden`` is ``sender-mismatch``, told to la-camden.
"""

from __future__ import annotations

import collections
import uuid
from typing import Any

import nats
import orjson
import pytest

from broker.audit.reading import read_audit
from broker.config import Settings
from broker.pipeline.service import Broker
from broker.transport.connection import connected, jetstream
from broker.wire import strictjson
from broker.wire.subjects import DELIVERY, INGRESS, ingress_subject
from tests.conftest import ClientFactory
from tests.helpers import counted, drain, eventually
from tests.hostile import CASES, Case, Kit, claims_of, valid

pytestmark = pytest.mark.timeout(120)
SECRETS = ("SECRET", "police-met-sig\x00", "evil.invalid")


def test_the_corpus_is_labelled_and_covers_the_issue() -> None:
    labels = [c.label for c in CASES]
    assert len(labels) == len(set(labels))
    assert sum(c.code != "nats" for c in CASES) >= 40
    codes = {c.code for c in CASES}
    assert {"malformed", "bad-signature", "unknown-key", "sender-mismatch", "stale", "replayed", "undecryptable",
            "unknown-type", "schema-invalid", "not-permitted", "too-large", "nats"} <= codes


@pytest.mark.parametrize(("text", "reason", "where"), [
    (b'{"a":NaN}', "NaN", ""), (b'{"a":-Infinity}', "NaN", ""), (b'{"a":1e400}', "NaN", ""),
    (b'{"a":[1,"\\ud800"]}', "surrogate", "/a/1"), (b'{"\\udc00":1}', "surrogate", "/*"),
    (b'{"a":{"k":1,"k":2}}', "twice", "/a/k"), (b'{"a":{"k":1,"k":2} x', "not JSON", ""),
    (b'{"a":{"k":1,"k":2},"b":' + b"[" * 100_000, "not JSON", ""),
])
def test_the_strict_reader_refuses_what_json_lets_through(text: bytes, reason: str, where: str) -> None:
    with pytest.raises(strictjson.StrictJSONError) as refused:
        strictjson.loads(text)
    assert reason in refused.value.reason and refused.value.where == where
    assert strictjson.loads(b'{"a":"\\ud83d\\ude00","b":1.5}') == {"a": "\U0001f600", "b": 1.5}  # a pair is text


async def _publish(kit: Kit, case: Case, built: dict[str, tuple[str, bytes]]) -> str:
    """Publish one case; returns the message id its rejection names."""
    if case.replays:
        msg_id, data = built[case.replays]
        nats_id = str(uuid.uuid4())  # the same bytes under a new NATS id: only the broker can catch it
    else:
        msg_id, data = case.make(kit)
        nats_id = msg_id
    built[case.label] = (msg_id, data)
    client = kit.police if case.publisher == "police-met" else kit.la
    ack = await client.js.publish(ingress_subject(case.subject or case.publisher), data, timeout=5,
                                  headers={"Nats-Msg-Id": nats_id})
    assert not ack.duplicate, case.label
    return msg_id


async def _refused_by_nats(kit: Kit, case: Case) -> None:
    js = kit.police.js
    before = (await js.stream_info(INGRESS)).state.last_seq
    msg_id, data = case.make(kit)
    if len(data) > kit.police.nc.max_payload:  # the client will not send it: the server would drop the connection
        with pytest.raises(nats.errors.MaxPayloadError):
            await js.publish(ingress_subject("police-met"), data, headers={"Nats-Msg-Id": msg_id})
    else:  # sent, and refused by JetStream: larger than the stream's max_msg_size
        with pytest.raises(nats.js.errors.APIError) as refused:
            await js.publish(ingress_subject("police-met"), data, headers={"Nats-Msg-Id": msg_id})
        assert refused.value.err_code == 10054, refused.value  # "message size exceeds maximum allowed"
    assert (await js.stream_info(INGRESS)).state.last_seq == before  # nothing stored


async def _outcomes(kit: Kit, want: int) -> dict[str, list[dict[str, Any]]]:
    """Every rejection the two publishing agencies received, by the message id it names."""
    got: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    count = 0

    async def more() -> bool:
        nonlocal count
        for client in (kit.police, kit.la):
            async for delivery, msg in client.fetch(idle=0.2):
                assert delivery is not None, "a rejection failed verification"
                assert delivery.type == "rejection" and delivery.claims["iss"] == "sg-broker"
                got[delivery.payload["messageId"]].append(delivery.payload | {"_to": client.agency})
                count += 1
                await msg.ack_sync(timeout=10)
        return count >= want

    await eventually(more, what=f"{want} rejections", timeout=30)
    return got


async def test_every_hostile_message_is_refused_with_its_code_and_audited(
        broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    kit = Kit(await agency("police-met"), await agency("la-camden"))
    built: dict[str, tuple[str, bytes]] = {}
    expected: dict[str, list[Case]] = collections.defaultdict(list)
    for case in CASES:
        if case.code == "nats":
            await _refused_by_nats(kit, case)
        else:
            expected[await _publish(kit, case, built)].append(case)
    total = sum(len(cases) for cases in expected.values())

    # nothing but rejections reached SG_DELIVERY: one per message, to the agency whose subject it was on
    js = kit.police.js

    async def all_rejected() -> bool:
        return (await js.stream_info(DELIVERY)).state.messages >= total

    await eventually(all_rejected, what="a rejection per hostile message", timeout=60)
    state = (await js.stream_info(DELIVERY)).state
    assert state.messages == total
    for seq in range(state.first_seq, state.last_seq + 1):
        stored = await js.get_msg(DELIVERY, seq)
        assert claims_of(stored.data or b"")["typ"] == "rejection", stored.subject
        assert stored.subject in ("sg.out.police-met", "sg.out.la-camden")

    outcomes = await _outcomes(kit, total)
    wrong = []
    for msg_id, cases in expected.items():
        answers = outcomes.get(msg_id, [])
        if sorted(a["code"] for a in answers) != sorted(c.code for c in cases):
            wrong.append((tuple(c.label for c in cases), [(a["code"], a.get("field"), a.get("rule")) for a in answers]))
            continue
        for case in cases:
            answer = next(a for a in answers if a["code"] == case.code)
            if (case.field, case.rule) != (case.field and answer.get("field"), case.rule and answer.get("rule")):
                wrong.append(((case.label,), [(answer["code"], answer.get("field"), answer.get("rule"))]))
            assert answer["_to"] == (case.subject or case.publisher), case.label
            assert answer["retryable"] is (case.code == "stale"), case.label
            assert not any(s in orjson.dumps(answer).decode() for s in SECRETS), case.label
    assert not wrong, "\n".join(f"{labels}: {got}" for labels, got in wrong)
    await counted(broker, total)
    assert broker.pipeline.counters.retried == 0  # refused at once, never retried
    assert broker.pipeline.counters.shared == 0
    assert sum(broker.pipeline.counters.rejected.values()) == total
    assert "internal" not in broker.pipeline.counters.rejected

    # the audit log: one `rejected` record per message, with its code, and nothing else
    async with connected(settings, settings.nats.url or "", name="audit") as nc:
        audit_js = jetstream(nc, settings)

        async def audited() -> list[dict[str, Any]] | None:
            records = [r async for r in read_audit(audit_js, idle=0.3)]
            return records if sum(r["event"] == "rejected" for r in records) >= total else None

        records = await eventually(audited, what="the audit records", timeout=30)
    assert {r["event"] for r in records} == {"rejected"}
    by_message = collections.defaultdict(list)
    for r in records:
        by_message[r["message"]].append(r["code"])
    assert {m: sorted(codes) for m, codes in by_message.items()} == {
        m: sorted(c.code for c in cases) for m, cases in expected.items()}
    assert not any(s in orjson.dumps(records).decode() for s in SECRETS)

    # and the broker still works: a valid message afterwards is delivered, and it is the only delivery
    good_id, good = valid(kit)
    await kit.police.publish(good, good_id)
    assert (await kit.police.wait_outcome(good_id, timeout=10)).payload["status"] == "routed"
    (delivered,) = await drain(kit.la, want=1)
    assert delivered.claims["origin"]["jti"] == good_id
