"""An agency whose encryption keys expired without a rotation (``docs/operating.md``): nothing can
be sealed to it. A message to it and to others reaches the others at once, and the sender's
receipt names the recipient it could not reach (``no-recipient-key``), rather than the whole
message failing as a bug at every delivery until it is refused; an agency that cannot be sent a
receipt or a rejection still has its message handled, and the operator is told."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import orjson
import pytest
import structlog.testing

from adapters.sdk import AgencyClient, Delivery
from broker.audit.reading import read_audit
from broker.config import Settings
from broker.pipeline import deadlines
from broker.pipeline.service import Broker
from tests.conftest import ClientFactory
from tests.helpers import drain, eventually, example, referral, sharing
from tests.support.pipeline import queued, settled
from tests.test_retention import emptied, expired_records, sweeper_past_retention

pytestmark = pytest.mark.timeout(60)


def expire(settings: Settings, broker: Broker, agency: str) -> None:
    """``agency``'s encryption keys all past their ``notAfter``, and the broker reloaded (SIGHUP)."""
    doc = orjson.loads(settings.registry_path.read_bytes())
    (entry,) = [e for e in doc["agencies"] if e["id"] == agency]
    for key in entry["keys"]:
        if key["use"] == "enc":
            key["notAfter"] = "2001-01-01T00:00:00Z"
    settings.registry_path.write_bytes(orjson.dumps(doc))
    assert broker.reload()


async def records(broker: Broker, message: str) -> list[dict[str, Any]]:
    return [r async for r in read_audit(broker.js) if r.get("message") == message]


async def ask_health(agency: ClientFactory) -> tuple[AgencyClient, AgencyClient, str, Delivery]:
    """The LA asks health for an answer within the hour (its clock owed by health); health has the
    request. Returns the LA's and health's clients, the request's id and health's delivery of it."""
    la, health = await agency("la-camden"), await agency("health-camden")
    request = example("information-request.example.json") | {
        "respondBy": (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat(timespec="seconds")}
    jti = await la.send(typ="information-request", to=["health-camden"], payload=request,
                        sharing=sharing("information-request"))
    assert (await la.wait_outcome(jti, timeout=10)).type == "receipt"
    (asked,) = await drain(health, want=1)
    assert asked.type == "information-request"
    return la, health, jti, asked


async def test_a_recipient_without_a_valid_key_is_refused_and_the_others_receive(
        broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    la, police = await agency("la-camden"), await agency("police-met")
    expire(settings, broker, "health-camden")
    payload = example("strategy-discussion.example.json") | {"kind": "record", "s47Initiated": True}
    with structlog.testing.capture_logs() as logs:
        jti = await la.send(typ="strategy-discussion", to=["police-met", "health-camden"], payload=payload,
                            sharing=sharing("strategy-discussion"))
        outcome = await la.wait_outcome(jti, timeout=10)
    assert [e["agency"] for e in logs if e["event"].startswith("an agency has no valid encryption key")] == [
        "health-camden"]  # once for the message
    assert outcome.type == "receipt"
    assert outcome.payload["recipients"] == ["police-met"]
    assert outcome.payload["refused"] == [{"recipient": "health-camden", "code": "no-recipient-key",
                                           "rule": "registry.encryption-key"}]
    assert [d.type for d in await drain(police, want=1)] == ["strategy-discussion"]
    await settled(broker.js)
    assert await queued(broker.js, "health-camden") == 0
    assert broker.pipeline.counters.internal == 0 and broker.pipeline.counters.retried == 0
    (received,) = [r for r in await records(broker, jti) if r["event"] == "received"]
    assert "recipient-unreachable" in received["flags"]  # for the IG officer: high priority in the queue
    refused = [r for r in await records(broker, jti) if r["event"] == "refused"]
    assert [(r["recipient"], r["code"], r["rules"][:2]) for r in refused] == [
        ("health-camden", "no-recipient-key", ["registry.encryption-key", "strategy-discussion.la-to-partners"])]


async def test_a_message_none_of_whose_recipients_has_a_valid_key_is_rejected(
        broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    police = await agency("police-met")
    expire(settings, broker, "la-camden")
    jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    outcome = await police.wait_outcome(jti, timeout=10)
    assert outcome.type == "rejection"
    assert (outcome.payload["code"], outcome.payload["field"], outcome.payload["rule"], outcome.payload["retryable"]) \
        == ("no-recipient-key", "/to", "registry.encryption-key", True)
    await settled(broker.js)
    assert await queued(broker.js, "la-camden") == 0 and broker.pipeline.counters.internal == 0
    assert [(r["event"], r["code"]) for r in await records(broker, jti)] == [("rejected", "no-recipient-key")]


async def test_a_sender_without_a_valid_key_is_still_heard_and_the_operator_told(
        broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    expire(settings, broker, "police-met")
    with structlog.testing.capture_logs() as logs:
        shared = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
        refused = await police.send(typ="referral", to=["school-hillside"], payload=referral(),
                                    sharing=sharing())  # refused by the rulebook: a rejection, not sealable either
        assert [d.type for d in await drain(la, want=1)] == ["referral"]
        await settled(broker.js)
    told = [e for e in logs if e["event"].startswith("an agency has no valid encryption key")]
    assert len(told) == 2 and {e["agency"] for e in told} == {"police-met"} and told[0]["log_level"] == "error"
    assert await queued(broker.js, "police-met") == 0  # no receipt, no rejection: nothing to seal them to
    assert broker.pipeline.counters.internal == 0 and broker.pipeline.counters.retried == 0
    assert {r["event"] for r in await records(broker, shared)} == {"received", "shared"}
    assert [(r["event"], r["code"]) for r in await records(broker, refused)] == [("rejected", "not-permitted")]


async def test_an_overdue_notice_reaches_the_side_that_can_still_be_sealed_to(
        broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    la, _, jti, _ = await ask_health(agency)
    expire(settings, broker, "health-camden")
    scanner = deadlines.Scanner(broker.js, broker.pipeline.on_overdue, clock=lambda: time.time() + 7200)
    assert await scanner.scan_once() == 1  # past respondBy
    (notice,) = await drain(la, want=1)
    assert notice.type == "overdue-notice" and notice.payload["recipient"] == "health-camden"
    await settled(broker.js)
    assert await queued(broker.js, "health-camden") == 0
    assert [r["recipient"] for r in await records(broker, jti) if r["event"] == "overdue"] == ["health-camden"]
    assert broker.pipeline.counters.overdue == 1 and broker.pipeline.counters.internal == 0


async def test_the_retention_sweep_goes_on_past_a_sender_without_a_valid_key(
        broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    police = await agency("police-met")
    message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    assert (await police.wait_outcome(message, timeout=10)).type == "receipt"
    await eventually(lambda: emptied(settings, "police-met"), what="police-met's receipt to be acked")
    expire(settings, broker, "police-met")
    sweeper = sweeper_past_retention(broker)  # the LA never collected it
    assert await sweeper.sweep() == 1
    assert await queued(broker.js, "la-camden") == 0  # expired, so no personal data kept past retention
    assert await queued(broker.js, "police-met") == 0  # no not-delivered notice: nothing to seal it to
    assert await expired_records(settings) == [(message, "la-camden")]


async def test_an_answer_to_a_requester_without_a_valid_key_still_stops_its_clock(
        broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    """The answer cannot reach the LA, but it came on time: it is recorded, the clock stops, and the
    IG officer sees that it did not arrive; no overdue notice accuses health."""
    _, health, jti, asked = await ask_health(agency)
    expire(settings, broker, "la-camden")
    answer = await health.send(typ="information-response", to=["la-camden"],
                               payload=example("information-response.example.json") | {"requestId": jti},
                               sharing=sharing("information-response"), re=asked.claims["origin"]["jti"])
    outcome = await health.wait_outcome(answer, timeout=10)
    assert outcome.type == "receipt" and outcome.payload["recipients"] == []
    assert [r["code"] for r in outcome.payload["refused"]] == ["no-recipient-key"]
    await settled(broker.js)  # the receipt may arrive before the audit block is stored
    (received,) = [r for r in await records(broker, answer) if r["event"] == "received"]
    assert received["meetsDeadline"] is True and "recipient-unreachable" in received["flags"]
    scanner = deadlines.Scanner(broker.js, broker.pipeline.on_overdue, clock=lambda: time.time() + 7200)
    assert await scanner.scan_once() == 0  # past respondBy, but answered
    assert broker.pipeline.counters.overdue == 0 and broker.pipeline.counters.internal == 0
