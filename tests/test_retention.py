"""Retention against a real nats-server: undelivered messages expire with a notice to the
sender and an audit record; a legal hold keeps them; acknowledged ones are never touched.

The first test runs the broker's own sweeper on a short retention, in real time. The others drive
a :class:`Sweeper` on the broker's stream, outcomes and store with a clock set past the retention
period and sweep once, so that "nothing expired" is a finished pass, not a wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from adapters.sdk import AgencyClient
from broker.audit.reading import read_audit
from broker.config import Settings
from broker.identity.keys import load_secret
from broker.pipeline.outcomes import Outcomes
from broker.pipeline.retention import Sweeper
from broker.pipeline.service import Broker, running_broker
from broker.transport.connection import connected, jetstream
from broker.wire.subjects import DELIVERY
from tests.conftest import ClientFactory
from tests.helpers import drain, eventually, referral, sharing
from tests.support.pipeline import queued as queued_in

pytestmark = pytest.mark.timeout(60)
RETENTION = 1.5


@pytest.fixture
async def short_broker(settings: Settings, topology: None) -> AsyncIterator[Broker]:
    short = replace(settings, streams=replace(settings.streams, delivery_retention=RETENTION,
                                              retention_sweep_interval=0.2))
    async with running_broker(short, settings.nats.url or "") as b:
        yield b


def sweeper_past_retention(broker: Broker) -> Sweeper:
    """A sweeper on the broker's deliveries, outcomes and store whose clock reads a second past
    the retention period of everything stored so far. (The broker's own sweeper keeps the
    default retention of 30 days: it expires nothing here.)"""
    outcomes = Outcomes(broker.registry, broker.identity, load_secret(broker.settings.home, "audit-hmac.key"),
                        broker.settings.instance, broker.subjects)
    return Sweeper(broker.js, outcomes, broker.pipeline.store, retention=RETENTION,
                   clock=lambda: time.time() + RETENTION + 1)


async def not_delivered(police: AgencyClient, message: str, timeout: float = 6.0) -> dict[str, Any]:
    """The not-delivered notice about ``message`` that police-met receives (acking what it fetches)."""
    async def notice() -> dict[str, Any] | None:
        async for delivery, msg in police.fetch(idle=1.0):  # a short pull can lose a message to ack_wait
            assert delivery is not None
            await msg.ack_sync(timeout=10)
            if delivery.type == "receipt" and delivery.payload["status"] == "not-delivered":
                assert delivery.payload["messageId"] == message
                return delivery.payload
        return None

    return await eventually(notice, what=f"a not-delivered notice about {message}", timeout=timeout, every=0)


async def queued(settings: Settings, agency: str) -> int:
    """How many deliveries wait in the agency's queue."""
    async with connected(settings, settings.nats.url or "", name="q") as nc:
        return await queued_in(jetstream(nc, settings), agency)


async def emptied(settings: Settings, agency: str) -> bool:
    return await queued(settings, agency) == 0


async def audit(settings: Settings) -> list[dict[str, object]]:
    async with connected(settings, settings.nats.url or "", name="a") as nc:
        return [r async for r in read_audit(jetstream(nc, settings))]


async def expired_records(settings: Settings) -> list[tuple[object, object]]:
    return [(r["message"], r["recipient"]) for r in await audit(settings) if r["event"] == "expired"]


async def test_uncollected_delivery_expires_with_notice(short_broker: Broker, agency: ClientFactory,
                                                        settings: Settings) -> None:
    police = await agency("police-met")
    message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    assert (await police.wait_outcome(message, timeout=10)).payload["status"] == "routed"
    notice = await not_delivered(police, message)
    assert notice["recipients"] == ["la-camden"]
    # the sender is told first, then the delivery is removed: wait for the removal
    await eventually(lambda: emptied(settings, "la-camden"), what="the expired delivery to leave the queue",
                     timeout=3)
    assert await expired_records(settings) == [(message, "la-camden")]
    assert short_broker.sweeper.expired >= 1


async def test_legal_hold_keeps_the_delivery_until_released(broker: Broker, agency: ClientFactory,
                                                            settings: Settings) -> None:
    police = await agency("police-met")
    message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    await police.wait_outcome(message, timeout=10)
    await eventually(lambda: emptied(settings, "police-met"), what="police-met's routed receipt to be acked")
    sweeper = sweeper_past_retention(broker)
    await sweeper.holds.place(message, {"reason": "litigation", "by": "ig-jo", "at": "now"})

    assert await sweeper.sweep() == 0  # a whole pass, past the retention period: the hold keeps it
    assert sweeper.held == 1 and sweeper.expired == 0
    assert await queued(settings, "la-camden") == 1  # still waiting for the council
    assert await queued(settings, "police-met") == 0  # no notice to the sender
    assert await expired_records(settings) == []

    assert await sweeper.holds.release(message)
    assert await sweeper.sweep() == 1
    assert await queued(settings, "la-camden") == 0
    assert (await not_delivered(police, message))["recipients"] == ["la-camden"]
    assert await expired_records(settings) == [(message, "la-camden")]


async def test_collected_deliveries_are_not_touched(broker: Broker, agency: ClientFactory,
                                                    settings: Settings) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    await police.wait_outcome(message, timeout=10)
    await eventually(lambda: emptied(settings, "police-met"), what="police-met's routed receipt to be acked")
    await drain(la, want=1)
    await eventually(lambda: emptied(settings, "la-camden"), what="the collected delivery to leave the queue")

    sweeper = sweeper_past_retention(broker)
    assert await sweeper.candidates() == []  # a whole pass, past the retention period
    assert await sweeper.sweep() == 0 and sweeper.expired == 0 and sweeper.held == 0
    assert await queued(settings, "police-met") == 0  # no notice to the sender
    assert await expired_records(settings) == []
    async with connected(settings, settings.nats.url or "", name="s") as nc:
        assert (await jetstream(nc, settings).stream_info(DELIVERY)).state.messages == 0


async def test_audit_retention_is_reported_never_applied(settings: Settings) -> None:
    """No age limit and deny-delete on the audit stream, whatever the retention setting says."""
    from broker.transport.topology import stream_configs

    audit_config = next(c for c in stream_configs(settings.streams) if c.name == "SG_AUDIT")
    delivery_config = next(c for c in stream_configs(settings.streams) if c.name == DELIVERY)
    assert not audit_config.max_age and audit_config.deny_delete and audit_config.deny_purge
    assert not delivery_config.max_age  # expiry only through the sweeper, with notice


async def test_a_bug_in_one_sweep_does_not_end_the_sweeper(broker: Broker, agency: ClientFactory,
                                                           settings: Settings) -> None:
    police = await agency("police-met")
    message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    await police.wait_outcome(message, timeout=10)
    await eventually(lambda: emptied(settings, "police-met"), what="police-met's routed receipt to be acked")
    stores: list[int] = []

    async def store_with_a_bug_once(outputs: list[Any]) -> None:
        stores.append(len(outputs))
        if len(stores) == 1:
            raise ZeroDivisionError("a bug in the first sweep")
        await broker.pipeline.store(outputs)

    past = sweeper_past_retention(broker)
    sweeper = Sweeper(broker.js, past._outcomes, store_with_a_bug_once, retention=RETENTION,
                      clock=lambda: time.time() + RETENTION + 1)
    stop = asyncio.Event()
    task = asyncio.create_task(sweeper.run(interval=0.05, stop=stop))
    try:
        assert (await not_delivered(police, message))["recipients"] == ["la-camden"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert len(stores) >= 2 and sweeper.expired == 1
