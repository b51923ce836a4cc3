"""Retention against a real nats-server: undelivered messages expire with a notice to the
sender and an audit record; a legal hold keeps them; acknowledged ones are never touched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from adapters.sdk import AgencyClient
from broker.audit.reading import read_audit
from broker.config import Settings
from broker.pipeline.service import Broker, running_broker
from broker.transport.connection import connected, jetstream
from broker.wire.subjects import DELIVERY
from tests.conftest import ClientFactory
from tests.helpers import drain, referral, sharing

pytestmark = pytest.mark.timeout(60)
RETENTION = 1.5


@pytest.fixture
async def short_broker(settings: Settings, topology: None) -> AsyncIterator[Broker]:
    short = replace(settings, streams=replace(settings.streams, delivery_retention=RETENTION,
                                              retention_sweep_interval=0.2))
    async with running_broker(short, settings.nats.url or "") as b:
        yield b


async def not_delivered(police: AgencyClient, message: str, timeout: float = 6.0) -> dict[str, object] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async for delivery, msg in police.fetch(idle=1.0):  # a short pull can lose a message to ack_wait
            assert delivery is not None
            await msg.ack_sync()
            if delivery.type == "receipt" and delivery.payload["status"] == "not-delivered":
                assert delivery.payload["messageId"] == message
                return delivery.payload
    return None


async def gone_from_queue(settings: Settings, agency: str, timeout: float = 3.0) -> bool:
    """The sender is told first, then the delivery is removed: wait for the removal."""
    from nats.js.errors import NotFoundError

    async with connected(settings, settings.nats.url or "", name="q") as nc:
        js = jetstream(nc, settings)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                await js.get_last_msg(DELIVERY, f"sg.out.{agency}")
            except NotFoundError:
                return True
            await asyncio.sleep(0.05)
    return False


async def audit(settings: Settings) -> list[dict[str, object]]:
    async with connected(settings, settings.nats.url or "", name="a") as nc:
        return [r async for r in read_audit(jetstream(nc, settings))]


async def test_uncollected_delivery_expires_with_notice(short_broker: Broker, agency: ClientFactory,
                                                        settings: Settings) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    assert (await police.wait_outcome(message, timeout=10)).payload["status"] == "routed"
    notice = await not_delivered(police, message)
    assert notice is not None and notice["recipients"] == ["la-camden"]
    assert await gone_from_queue(settings, "la-camden")
    assert [d async for d in la.fetch(idle=0.3)] == []
    expired = [r for r in await audit(settings) if r["event"] == "expired"]
    assert [(r["message"], r["recipient"]) for r in expired] == [(message, "la-camden")]
    assert short_broker.sweeper.expired >= 1


async def test_legal_hold_keeps_the_delivery_until_released(short_broker: Broker, agency: ClientFactory,
                                                            settings: Settings) -> None:
    police = await agency("police-met")
    message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    await police.wait_outcome(message, timeout=10)
    await short_broker.sweeper.holds.place(message, {"reason": "litigation", "by": "ig-jo", "at": "now"})
    assert await not_delivered(police, message, timeout=RETENTION + 1.5) is None
    assert short_broker.sweeper.held >= 1
    assert not await gone_from_queue(settings, "la-camden", timeout=0.3)  # still waiting for the council
    assert "expired" not in [r["event"] for r in await audit(settings)]
    assert await short_broker.sweeper.holds.release(message)
    assert await not_delivered(police, message) is not None
    assert await gone_from_queue(settings, "la-camden")


async def test_collected_deliveries_are_not_touched(short_broker: Broker, agency: ClientFactory,
                                                    settings: Settings) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    await police.wait_outcome(message, timeout=10)
    await drain(la, want=1)
    await asyncio.sleep(RETENTION + 0.6)
    assert await not_delivered(police, message, timeout=0.5) is None
    assert "expired" not in [r["event"] for r in await audit(settings)]
    async with connected(settings, settings.nats.url or "", name="s") as nc:
        assert (await jetstream(nc, settings).stream_info(DELIVERY)).state.messages == 0


async def test_audit_retention_is_reported_never_applied(settings: Settings) -> None:
    """No age limit and deny-delete on the audit stream, whatever the retention setting says."""
    from broker.transport.topology import stream_configs

    audit_config = next(c for c in stream_configs(settings.streams) if c.name == "SG_AUDIT")
    delivery_config = next(c for c in stream_configs(settings.streams) if c.name == DELIVERY)
    assert not audit_config.max_age and audit_config.deny_delete and audit_config.deny_purge
    assert not delivery_config.max_age  # expiry only through the sweeper, with notice
