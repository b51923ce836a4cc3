"""Hand-over to an agency system, against a real aiohttp receiver standing in for it: up, down,
slow, answering errors (one attempt per call; whether trying again may help); the retry pauses;
and a drop folder written atomically."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.runtime.retries import RetryPolicy
from adapters.runtime.sinks import DELIVERY_HEADER, DropFolderSink, WebhookSettings, WebhookSink, verify_webhook
from adapters.sdk import DeliveryFailed
from tests.support.casesystem import free_port

SECRET = b"agency-webhook-secret-0123456789"


class Receiver:
    """The agency system: answers from a script, remembers what it took (by delivery id)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.calls = 0
        self.taken: dict[str, bytes] = {}
        self.valid: list[bool] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        body = await request.read()
        self.valid.append(verify_webhook(SECRET, request.headers, body))
        step = self.script[min(self.calls - 1, len(self.script) - 1)]
        if isinstance(step, float):
            await asyncio.sleep(step)  # slow
            step = 200
        if step == 200:
            self.taken.setdefault(request.headers[DELIVERY_HEADER], body)
        return web.Response(status=step)


@pytest.fixture
async def receiver_factory() -> AsyncIterator[Callable[[list[Any]], Awaitable[tuple[Receiver, str]]]]:
    servers: list[TestServer] = []

    async def make(script: list[Any]) -> tuple[Receiver, str]:
        receiver = Receiver(script)
        app = web.Application()
        app.router.add_post("/inbound", receiver.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return receiver, str(server.make_url("/inbound"))

    yield make
    for server in servers:
        await server.close()


def sink(session: aiohttp.ClientSession, url: str, **kw: Any) -> WebhookSink:
    return WebhookSink(session, WebhookSettings(url=url, secret=SECRET, timeout=kw.pop("timeout", 2.0)))


async def test_signed_delivery_is_taken_once(receiver_factory: Any) -> None:
    receiver, url = await receiver_factory([200])
    async with aiohttp.ClientSession() as session:
        await sink(session, url).deliver("d-1", b'{"a": 1}', "application/json")
        await sink(session, url).deliver("d-1", b'{"a": 1}', "application/json")  # sent again: same id
    assert receiver.taken == {"d-1": b'{"a": 1}'} and receiver.valid == [True, True]
    assert not verify_webhook(b"another-secret", {"X-SGB-Timestamp": "1", DELIVERY_HEADER: "d-1"}, b"")


async def test_answers_that_may_change_say_so_one_attempt_each(receiver_factory: Any) -> None:
    receiver, url = await receiver_factory([500, 503, 429, 408, 425, 200])
    async with aiohttp.ClientSession() as session:
        for status in (500, 503, 429, 408, 425):
            with pytest.raises(DeliveryFailed) as caught:
                await sink(session, url).deliver("d-2", b"x", "application/json")
            assert not caught.value.permanent and f"HTTP {status}" in caught.value.reason
        await sink(session, url).deliver("d-2", b"x", "application/json")
    assert receiver.calls == 6 and "d-2" in receiver.taken  # one request per call: no sleeping in the sink


async def test_a_refusal_that_will_not_change_is_permanent(receiver_factory: Any) -> None:
    receiver, url = await receiver_factory([422])
    async with aiohttp.ClientSession() as session:
        with pytest.raises(DeliveryFailed) as caught:
            await sink(session, url).deliver("d-3", b"x", "application/json")
    assert caught.value.permanent and caught.value.attempts == 1 and receiver.calls == 1
    assert "HTTP 422" in caught.value.reason


async def test_a_slow_receiver_times_out_per_attempt(receiver_factory: Any) -> None:
    receiver, url = await receiver_factory([1.0, 200])
    async with aiohttp.ClientSession() as session:
        with pytest.raises(DeliveryFailed, match="no answer in time") as caught:
            await sink(session, url, timeout=0.3).deliver("d-4", b"x", "application/json")
        assert not caught.value.permanent
        await sink(session, url, timeout=0.3).deliver("d-4", b"x", "application/json")
    assert receiver.calls == 2 and "d-4" in receiver.taken


async def test_a_receiver_that_is_down_may_come_back() -> None:
    port = free_port()  # nobody listens here
    async with aiohttp.ClientSession() as session:
        with pytest.raises(DeliveryFailed) as caught:
            await sink(session, f"http://127.0.0.1:{port}/inbound").deliver("d-5", b"x", "text/plain")
    assert not caught.value.permanent and caught.value.attempts == 1 and "cannot reach" in caught.value.reason


def test_pauses_grow_exponentially_with_full_jitter_up_to_a_cap() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=4.0)
    assert [round(policy.pause(n, 0.999999), 2) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.pause(4, 0.0) == 0.0
    assert RetryPolicy().backoff_max == 60.0 and RetryPolicy().retry_for == 3600.0  # a minute's pause, an hour's window


async def test_drop_folder_is_atomic_and_idempotent(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    drop = DropFolderSink(folder)
    await drop.deliver("d-6", b'{"resourceType": "Bundle"}', "application/fhir+json")
    await drop.deliver("d-6", b"something else", "application/fhir+json")  # a redelivery changes nothing
    assert sorted(p.name for p in folder.iterdir()) == ["d-6.json"]
    assert (folder / "d-6.json").read_bytes() == b'{"resourceType": "Bundle"}'
    assert oct((folder / "d-6.json").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(DeliveryFailed):
        await drop.deliver("../escape", b"x", "application/json")
    os.chmod(folder, 0o500)
    try:
        if os.geteuid() != 0:  # root ignores the permission
            with pytest.raises(DeliveryFailed, match="drop folder"):
                await drop.deliver("d-7", b"x", "application/json")
    finally:
        os.chmod(folder, 0o700)
