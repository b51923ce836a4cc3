"""The publisher's deadline and idempotent re-publish, against a real nats-server."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import StreamConfig

from broker.config import Settings
from broker.errors import PublishTimeout
from broker.transport.connection import connected, jetstream
from broker.transport.publisher import Outgoing, Publisher

pytestmark = pytest.mark.timeout(30)


async def test_retries_until_stored_and_duplicates_are_absorbed(settings: Settings) -> None:
    async with connected(settings, settings.nats.url or "", name="pub") as nc:
        js = jetstream(nc, settings)
        publisher = Publisher(js, deadline=0.5, attempts=8)
        items = [Outgoing("late.x", b"m%d" % i, f"id-{i}") for i in range(20)]

        async def create_stream_later() -> None:
            await asyncio.sleep(0.6)  # the first attempts find no stream and must be retried
            await js.add_stream(StreamConfig(name="LATE", subjects=["late.*"], duplicate_window=60))

        creator = asyncio.create_task(create_stream_later())
        await publisher.publish_all(items)
        await creator
        await publisher.publish_all(items)  # a re-publish under the same ids stores nothing new
        assert (await js.stream_info("LATE")).state.messages == 20


async def test_gives_up_with_publish_timeout_after_its_attempts(settings: Settings) -> None:
    async with connected(settings, settings.nats.url or "", name="pub") as nc:
        publisher = Publisher(jetstream(nc, settings), deadline=0.2, attempts=3)
        with pytest.raises(PublishTimeout):
            await publisher.publish_all([Outgoing("nowhere.x", b"m", "id-1")])
