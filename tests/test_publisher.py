"""The publisher's deadline and idempotent re-publish, and the answers it reads
(:mod:`broker.transport.acks`), against a real nats-server."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from nats.js.api import StreamConfig

from broker.config import Settings
from broker.errors import PublishTimeout
from broker.transport.acks import Answer, acks_for, answer
from broker.transport.connection import connected, jetstream
from broker.transport.errors import WRONG_LAST_SEQUENCE
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


async def test_a_refused_publish_is_an_answer_with_its_code_not_a_hang(settings: Settings) -> None:
    async with connected(settings, settings.nats.url or "", name="pub") as nc:
        js = jetstream(nc, settings)
        await js.add_stream(StreamConfig(name="CAS", subjects=["cas.*"]))
        acks = acks_for(js)
        first = [await acks.publish("cas.k", b"v", {"Nats-Expected-Last-Subject-Sequence": "0"}) for _ in range(2)]
        answers = [answer(await asyncio.wait_for(future, 10)) for _, future in first]
        assert answers[0] == Answer(True)
        assert not answers[1].stored and answers[1].err_code == WRONG_LAST_SEQUENCE
        _, nowhere = await acks.publish("nowhere.x", b"m", {})
        assert answer(await asyncio.wait_for(nowhere, 10)).stored is False  # no stream: a status, answered
        token, unanswered = await acks.publish("cas.k", b"v", {})
        acks.drop(token)  # given up on: cancelled and forgotten, a late answer ignored
        assert unanswered.cancelled() and acks.waiting == 0
        assert acks_for(js) is acks  # one per connection


async def test_what_is_never_stored_is_named_and_the_rest_is_stored(settings: Settings) -> None:
    async with connected(settings, settings.nats.url or "", name="pub") as nc:
        js = jetstream(nc, settings)
        await js.add_stream(StreamConfig(name="SOME", subjects=["some.*"], duplicate_window=60))
        items = [Outgoing("some.x", b"a", "id-a"), Outgoing("nowhere.x", b"b", "id-b"),
                 Outgoing("some.x", b"c", "id-c")]
        with pytest.raises(PublishTimeout) as caught:
            await Publisher(js, deadline=0.2, attempts=2).publish_all(items)
        assert caught.value.failed == (items[1],)
        assert (await js.stream_info("SOME")).state.messages == 2


async def test_a_connection_s_answers_go_with_it(settings: Settings) -> None:
    async with connected(settings, settings.nats.url or "", name="pub") as nc:
        js = jetstream(nc, settings)
        acks = acks_for(js)
        await acks.publish("nowhere.x", b"m", {})
    held = weakref.ref(nc)
    del nc, js, acks
    gc.collect()
    assert held() is None  # the one Acks per connection does not keep its connection alive
