"""Deadlines through a real broker: recorded with the delivery, stopped by the expected reply,
and, when they pass, an overdue notice to both sides and an audit record."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from broker.audit.reading import read_audit
from broker.config import Settings
from broker.pipeline import deadlines
from broker.pipeline.service import Broker
from broker.policy.workdays import LONDON, add_working_days
from broker.transport.connection import connected, jetstream
from broker.wire.subjects import DELIVERY
from tests.conftest import ClientFactory
from tests.helpers import drain, example, referral, sharing

pytestmark = pytest.mark.timeout(60)


def _request(respond_in: float) -> dict[str, Any]:
    request = example("information-request.example.json")
    due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=respond_in)
    request["respondBy"] = due.isoformat(timespec="seconds").replace("+00:00", "Z")
    return request


async def _audit(settings: Settings) -> list[dict[str, Any]]:
    async with connected(settings, settings.nats.url or "", name="audit") as nc:
        return [r async for r in read_audit(jetstream(nc, settings))]


async def test_referral_deadline_is_one_working_day(broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    police = await agency("police-met")
    jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    await police.wait_outcome(jti, timeout=10)
    shared = next(r for r in await _audit(settings) if r["event"] == "shared")
    received = dt.datetime.fromisoformat(shared["receivedAt"].replace("Z", "+00:00"))
    expected = add_working_days(received, 1).astimezone(dt.UTC)
    assert dt.datetime.fromisoformat(shared["due"].replace("Z", "+00:00")) == expected.replace(microsecond=0)
    assert expected.astimezone(LONDON).time() == dt.time(23, 59, 59)


async def _scan_at(broker: Broker, settings: Settings, later: float) -> int:
    """One pass of a deadline scanner whose clock reads ``later`` (the broker's own runs on real time)."""
    async with connected(settings, settings.nats.url or "", name="scan") as nc:
        return await deadlines.Scanner(jetstream(nc, settings), broker.pipeline.on_overdue,
                                       clock=lambda: later).scan_once()


async def test_overdue_request_tells_both_sides(broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    la, health = await agency("la-camden"), await agency("health-camden")
    jti = await la.send(typ="information-request", to=["health-camden"], payload=_request(3600.0),
                        sharing=sharing("information-request"))
    assert (await la.wait_outcome(jti, timeout=10)).type == "receipt"
    assert await _scan_at(broker, settings, time.time() + 1800) == 0  # not yet due
    assert await _scan_at(broker, settings, time.time() + 7200) == 1  # past respondBy
    notices = [d for d in await drain(la, want=1) if d.type == "overdue-notice"]
    health_got = await drain(health, want=2)
    assert [d.type for d in health_got].count("overdue-notice") == 1
    (notice,) = notices
    assert notice.payload["messageId"] == jti and notice.payload["recipient"] == "health-camden"
    assert notice.payload["expected"] == ["information-response"]
    assert notice.payload["rule"] == "information-request.between-partners"
    overdue = [r for r in await _audit(settings) if r["event"] == "overdue"]
    assert len(overdue) == 1 and overdue[0]["recipient"] == "health-camden"
    assert broker.pipeline.counters.overdue == 1


async def test_expected_reply_stops_the_clock(broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    la, health = await agency("la-camden"), await agency("health-camden")
    jti = await la.send(typ="information-request", to=["health-camden"], payload=_request(3600.0),
                        sharing=sharing("information-request"))
    await la.wait_outcome(jti, timeout=10)
    (request,) = await drain(health, want=1)
    answer = example("information-response.example.json") | {"requestId": jti}
    reply = await health.send(typ="information-response", to=["la-camden"], payload=answer,
                              sharing=sharing("information-response"), re=request.claims["origin"]["jti"])
    assert (await health.wait_outcome(reply, timeout=10)).type == "receipt"
    assert await _scan_at(broker, settings, time.time() + 7200) == 0  # well past respondBy: nothing overdue
    assert [d.type for d in await drain(la, want=1)] == ["information-response"]
    assert not [r for r in await _audit(settings) if r["event"] == "overdue"]
    assert broker.pipeline.counters.overdue == 0


async def test_decision_not_to_share_is_recorded_and_reaches_no_one(broker: Broker, agency: ClientFactory,
                                                                    settings: Settings) -> None:
    health, la = await agency("health-camden"), await agency("la-camden")
    jti = await health.send(typ="decision-not-to-share", to=["la-camden"],
                            payload=example("decision-not-to-share.example.json"),
                            sharing=sharing("decision-not-to-share"))
    outcome = await health.wait_outcome(jti, timeout=10)
    assert outcome.payload["status"] == "recorded" and outcome.payload["recipients"] == []
    # the receipt is stored with whatever else the message produced: so nothing waits for the LA now
    info = await la.js.consumer_info(DELIVERY, "la-camden")
    assert info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq == 0
    (record,) = [r for r in await _audit(settings) if r["event"] == "not-shared"]
    assert record["recipient"] == "la-camden" and record["rules"] == ["decision-not-to-share.record"]
    assert record["notSharedReason"] == "NOT_PROPORTIONATE"  # the reason code: a record of why, not personal data
    assert "reasons" not in record and "full health record" not in str(record)  # the free text never


async def test_encompass_due_before_next_school_day_and_receipt_closes_it(
        broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    police, school = await agency("police-met"), await agency("school-hillside")
    jti = await police.send(typ="encompass-notification", to=["school-hillside"],
                            payload=example("encompass-notification.example.json"),
                            sharing=sharing("encompass-notification"))
    assert (await police.wait_outcome(jti, timeout=10)).type == "receipt"
    (notice,) = await drain(school, want=1)
    assert notice.payload["circumstances"] and notice.payload["doNotContactParents"] is True
    assert "adultsInvolved" not in notice.payload and set(notice.payload["child"]) == {"name", "dateOfBirth"}
    shared = next(r for r in await _audit(settings) if r["event"] == "shared")
    due = dt.datetime.fromisoformat(shared["due"].replace("Z", "+00:00")).astimezone(LONDON)
    assert due.time() == dt.time(8, 30) and due > dt.datetime.now(LONDON)
    receipt = {"messageId": jti, "status": "accepted", "at": dt.datetime.now(dt.UTC).isoformat()}
    rid = await school.send(typ="receipt", to=["police-met"], payload=receipt, sharing=sharing("receipt"),
                            re=notice.claims["origin"]["jti"])
    assert (await school.wait_outcome(rid, timeout=10)).type == "receipt"
    async with connected(settings, settings.nats.url or "", name="kv") as nc:
        last = await jetstream(nc, settings).get_last_msg("KV_SG_DEADLINES", f"$KV.SG_DEADLINES.{jti}.school-hillside")
    assert (last.headers or {}).get("KV-Operation") == "DEL"  # the school's receipt closed the deadline


async def test_rapid_review_from_the_notifier_stops_the_fifteen_day_clock(
        broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    la, panel = await agency("la-camden"), await agency("cscpr-panel")
    sin = await la.send(typ="serious-incident-notification", to=["cscpr-panel"],
                        payload=example("serious-incident-notification.example.json"),
                        sharing=sharing("serious-incident-notification"))
    assert (await la.wait_outcome(sin, timeout=10)).type == "receipt"
    shared = next(r for r in await _audit(settings) if r["event"] == "shared")
    received = dt.datetime.fromisoformat(shared["receivedAt"].replace("Z", "+00:00"))
    assert shared["due"] == add_working_days(received, 15).astimezone(dt.UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
    review = example("rapid-review.example.json") | {"notificationId": sin}
    rid = await la.send(typ="rapid-review", to=["cscpr-panel"], payload=review,
                        sharing=sharing("rapid-review"), re=sin)
    assert (await la.wait_outcome(rid, timeout=10)).type == "receipt"
    assert len(await drain(panel, want=2)) == 2
    async with connected(settings, settings.nats.url or "", name="kv") as nc:
        last = await jetstream(nc, settings).get_last_msg("KV_SG_DEADLINES", f"$KV.SG_DEADLINES.{sin}.la-camden")
    assert (last.headers or {}).get("KV-Operation") == "DEL"
