"""The secure message path end to end through a real nats-server and broker."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import orjson
import pytest

from broker.audit.reading import read_audit
from broker.config import Settings
from broker.pipeline.service import Broker, running_broker
from broker.timestamps import iso
from broker.transport.connection import connected, jetstream
from tests.conftest import ClientFactory, make_settings
from tests.helpers import drain, eventually, example, referral, sharing
from tests.support.pipeline import queued, settled

pytestmark = pytest.mark.timeout(90)


async def test_referral_is_delivered_opened_and_receipted(broker: Broker, agency: ClientFactory) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    payload = referral()
    jti = await police.send(typ="referral", to=["la-camden"], payload=payload, sharing=sharing())

    outcome = await police.wait_outcome(jti, timeout=10)
    assert outcome.type == "receipt"
    assert outcome.payload["status"] == "routed" and outcome.payload["recipients"] == ["la-camden"]

    (delivery,) = await drain(la, want=1)
    assert delivery.type == "referral"
    assert delivery.payload == payload
    assert delivery.claims["iss"] == "sg-broker" and delivery.claims["to"] == ["la-camden"]
    assert delivery.claims["origin"]["iss"] == "police-met" and delivery.claims["origin"]["jti"] == jti
    assert delivery.claims["origin"]["digest"].startswith("sha256:")
    assert delivery.claims["sharing"] == sharing()


async def test_audit_records_metadata_only(broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    payload = referral()
    jti = await police.send(typ="referral", to=["la-camden"], payload=payload, sharing=sharing())
    await police.wait_outcome(jti, timeout=10)
    await drain(la, want=1)
    async with connected(settings, settings.nats.url or "", name="t") as nc:
        records = [r async for r in read_audit(jetstream(nc, settings))]
    events = sorted(r["event"] for r in records if r["message"] == jti)
    assert events == ["received", "shared"]
    shared = next(r for r in records if r["event"] == "shared")
    assert shared["recipient"] == "la-camden" and shared["sharing"] == sharing()
    assert shared["fields"] == sorted(payload)
    text = orjson.dumps(records).decode()
    for secret in (payload["child"]["name"]["family"], payload["concern"]["summary"]):
        assert secret not in text


async def test_hybrid_suite_recipient_gets_post_quantum_sealing(broker: Broker, agency: ClientFactory) -> None:
    la, health = await agency("la-camden"), await agency("health-camden")
    request = example("information-request.example.json")
    request["respondBy"] = iso(time.time() + 7 * 86400)  # not yet due: no overdue notice joins the delivery
    jti = await la.send(typ="information-request", to=["health-camden"], payload=request,
                        sharing=sharing("information-request"))
    assert (await la.wait_outcome(jti, timeout=10)).type == "receipt"
    (delivery,) = await drain(health, want=1)
    assert delivery.claims["enc"]["suite"] == "MLKEM768X25519-SHA256-AES256GCM"
    assert delivery.payload == request


async def test_policy_narrows_recipients_never_widens(broker: Broker, agency: ClientFactory,
                                                      settings: Settings) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    jti = await police.send(typ="referral", to=["la-camden", "school-hillside"], payload=referral(),
                            sharing=sharing())
    outcome = await police.wait_outcome(jti, timeout=10)
    assert outcome.payload["recipients"] == ["la-camden"]
    assert outcome.payload["refused"] == [{"recipient": "school-hillside", "code": "not-permitted",
                                           "rule": "referral.to-local-authority"}]
    await drain(la, want=1)
    # the deliveries are stored with the sender's outcome, before the ingress ack: all there now
    await settled(broker.js)
    assert await queued(broker.js, "school-hillside") == 0


async def _count(settings: Settings, agency: str) -> int:
    async with connected(settings, settings.nats.url or "", name="count") as nc:
        return await queued(jetstream(nc, settings), agency)


async def _final_count(settings: Settings, agency: str, want: int, timeout: float) -> int:
    """The deliveries in ``agency``'s queue once it holds ``want`` and the broker has finished all
    its work: a duplicate, stored before the ingress ack like any delivery, would be counted."""
    async def enough() -> bool:
        return await _count(settings, agency) >= want

    await eventually(enough, what=f"{want} deliveries to {agency}", timeout=timeout, every=0.2)
    async with connected(settings, settings.nats.url or "", name="settled") as nc:
        await settled(jetstream(nc, settings), timeout=timeout)
    return await _count(settings, agency)


async def _serve(settings: Settings, instance: str) -> asyncio.subprocess.Process:
    env = os.environ | {"SGB_NATS_URL": settings.nats.url or "", "SGB_INSTANCE": instance,
                        "SGB_HOME": str(settings.home), "SGB_ACK_WAIT": "5"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker.cli", "serve", "--workers", "1", "--log-level", "ERROR", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


async def test_broker_killed_mid_stream_loses_nothing_and_duplicates_nothing(
        settings: Settings, topology: None, agency: ClientFactory) -> None:
    police = await agency("police-met")
    total = 1500
    for _ in range(total):  # a backlog, so the kill lands while the broker is busy
        jti, data = police.build(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
        await police.publish(data, jti)
    first = await _serve(settings, "crash-1")
    try:
        async def started() -> int | None:
            return n if (n := await _count(settings, "la-camden")) >= 1 else None

        got = await eventually(started, what="the first broker's first delivery", timeout=30)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert 0 < got < total, "the kill must land mid-stream"
    second = await _serve(settings, "crash-2")
    try:
        # After SIGKILL, unacked messages come back once ack_wait (5 s here) passes.
        delivered = await _final_count(settings, "la-camden", total, timeout=60)
        receipts = await _final_count(settings, "police-met", total, timeout=10)
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
    assert delivered == total
    assert receipts == total


async def test_two_instances_share_the_work(settings: Settings, topology: None, agency: ClientFactory) -> None:
    police = await agency("police-met")
    total = 200
    other = make_settings(settings.home, settings.nats.url or "", instance="test-2")
    async with running_broker(settings, settings.nats.url or "") as one, \
            running_broker(other, other.nats.url or "") as two:
        for _ in range(total):
            jti, data = police.build(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
            await police.publish(data, jti)
        assert await _final_count(settings, "la-camden", total, timeout=30) == total
        await eventually(lambda: one.pipeline.counters.shared + two.pipeline.counters.shared >= total,
                         what="both brokers to count what they shared")
        assert one.pipeline.counters.shared > 0 and two.pipeline.counters.shared > 0
        assert one.pipeline.counters.shared + two.pipeline.counters.shared == total


async def test_minimised_delivery_and_review_flag_reach_the_audit(broker: Broker, agency: ClientFactory,
                                                                   settings: Settings) -> None:
    la, school = await agency("la-camden"), await agency("school-hillside")
    outcome_payload = example("referral-outcome.example.json")
    emergency = sharing("referral-outcome") | {"urgency": "EMERGENCY", "consentStatus": "REFUSED_OVERRIDDEN"}
    emergency.pop("subjectInformed")
    jti = await la.send(typ="referral-outcome", to=["school-hillside"], payload=outcome_payload, sharing=emergency)
    assert (await la.wait_outcome(jti, timeout=10)).type == "receipt"
    (delivery,) = await drain(school, want=1)
    assert set(delivery.payload) == set(outcome_payload) - {"reasons", "allocatedTeam"}
    assert "reasons" not in delivery.payload
    async with connected(settings, settings.nats.url or "", name="t") as nc:
        records = [r async for r in read_audit(jetstream(nc, settings))]
    shared = next(r for r in records if r["event"] == "shared")
    assert shared["withheld"] == ["allocatedTeam", "reasons"]
    assert shared["fields"] == sorted(delivery.payload)
    assert shared["flags"] == ["consent-overridden", "emergency-family-informed-unrecorded"]
    assert "referral-outcome.to-referrer" in shared["rules"] and "urgent.never-held" in shared["rules"]
