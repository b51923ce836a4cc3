"""The adapter's hand-over end to end: a real broker and nats-server, a real aiohttp server
standing in for the agency system (up, refusing, down), the adapter killed mid-delivery."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.deliverer import DeadLetters, Deliverer
from adapters.sdk import AgencyClient
from adapters.sinks import DELIVERY_HEADER, WebhookSettings, WebhookSink, verify_webhook
from broker.service import Broker
from broker.streams import DELIVERY
from tests.conftest import ClientFactory
from tests.helpers import referral, sharing

pytestmark = pytest.mark.timeout(60)
SECRET = b"la-case-system-webhook-secret-01"


class CaseSystem:
    """The council's case management system: takes a referral once per delivery id."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.taken: dict[str, dict[str, Any]] = {}
        self.posts = 0

    async def inbound(self, request: web.Request) -> web.Response:
        self.posts += 1
        body = await request.read()
        if not verify_webhook(SECRET, request.headers, body):
            return web.Response(status=401)
        if self.status == 200:
            self.taken.setdefault(request.headers[DELIVERY_HEADER], await request.json())
        return web.Response(status=self.status)


async def receipts(police: AgencyClient, message: str, want: set[str], timeout: float = 10.0) -> set[str]:
    got: set[str] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not want <= got and loop.time() < deadline:
        async for delivery, msg in police.fetch(idle=0.5):
            assert delivery is not None
            await msg.ack_sync()
            if delivery.type == "receipt" and delivery.payload["messageId"] == message:
                got.add(delivery.payload["status"])
    return got


async def serve(system: CaseSystem) -> TestServer:
    app = web.Application()
    app.router.add_post("/referrals", system.inbound)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def run_once(deliverer: Deliverer, *, until: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(deliverer.run(stop))
    for _ in range(200):
        if deliverer.counts.delivered + deliverer.counts.dead_lettered + deliverer.counts.redelivered >= until:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_hand_over_then_the_sender_hears_delivered(broker: Broker, agency: ClientFactory,
                                                         tmp_path: Path) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    system = CaseSystem()
    server = await serve(system)
    try:
        async with aiohttp.ClientSession() as session:
            sink = WebhookSink(session, WebhookSettings(url=str(server.make_url("/referrals")), secret=SECRET,
                                                        timeout=2.0, attempts=3, backoff_base=0.01))
            deliverer = Deliverer(la, sink, DeadLetters(tmp_path / "dead"), idle=0.3)
            message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
            await run_once(deliverer, until=1)
            assert await receipts(police, message, {"routed", "delivered"}) == {"routed", "delivered"}
            # The broker stored its 'routed' answer to that receipt with the receipt it relayed to the
            # police (one batch), so it is in the LA's queue now: run until the queue is empty...
            stop = asyncio.Event()
            task = asyncio.create_task(deliverer.run(stop))
            for _ in range(200):
                info = await broker.js.consumer_info(DELIVERY, "la-camden")
                relayed = broker.pipeline.counters.shared >= 2  # the referral and the adapter's receipt, stored
                if relayed and info.num_pending == 0 and info.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, 10)
    finally:
        await server.close()
    assert [d async for d, _ in la.fetch(idle=0.3)] == []  # ...it was taken off the queue...
    (taken,) = system.taken.values()  # ...and not handed to the agency system
    assert deliverer.counts.delivered == 1
    assert taken["payload"]["child"]["name"]["given"] == referral()["child"]["name"]["given"]
    assert taken["envelope"]["origin"]["jti"] == message


async def test_a_refusing_system_dead_letters_and_the_sender_hears_not_delivered(
        broker: Broker, agency: ClientFactory, tmp_path: Path) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    system = CaseSystem(status=422)
    server = await serve(system)
    dead = DeadLetters(tmp_path / "dead")
    try:
        async with aiohttp.ClientSession() as session:
            sink = WebhookSink(session, WebhookSettings(url=str(server.make_url("/referrals")), secret=SECRET,
                                                        attempts=3, backoff_base=0.01))
            message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
            await run_once(Deliverer(la, sink, dead, idle=0.3), until=1)
    finally:
        await server.close()
    opened = {key: la.open((dead.folder / f"{key}.jws").read_bytes()) for key in dead.entries()}
    (key,) = [k for k, d in opened.items() if d.type == "referral"]  # (the broker's receipts are refused too)
    sealed = (dead.folder / f"{key}.jws").read_bytes()
    assert b"Okafor" not in sealed and la.open(sealed).payload == referral()  # kept sealed, still openable
    assert "not-delivered" in await receipts(police, message, {"not-delivered"})
    left = [d async for d, _ in la.fetch(idle=0.3)]  # the referral was acked: it does not block the queue
    assert [d.type if d else None for d in left if d is None or d.type != "receipt"] == []  # (a late broker
    # receipt for the adapter's own not-delivered receipt may still be on its way)


async def test_killed_after_hand_over_before_ack_hands_over_once(broker: Broker, agency: ClientFactory,
                                                                 tmp_path: Path) -> None:
    """The adapter dies after the agency system took a delivery but before the ack: JetStream
    redelivers it, and the hand-over (by delivery id) does not post it again."""
    police, la = await agency("police-met"), await agency("la-camden")
    system = CaseSystem()
    server = await serve(system)
    try:
        async with aiohttp.ClientSession() as session:
            sink = WebhookSink(session, WebhookSettings(url=str(server.make_url("/referrals")), secret=SECRET))
            await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
            async for delivery, msg in la.fetch(idle=0.5):  # the first life: hand over, then "crash"
                assert delivery is not None
                await sink.deliver(delivery.id, b"{}", "application/json")
                assert la.seen is not None
                la.seen.add(delivery.id)
                await msg.nak()  # never acked: as if the process died here
                break
            second = Deliverer(la, sink, DeadLetters(tmp_path / "dead"), idle=0.3)
            await run_once(second, until=1)
    finally:
        await server.close()
    assert system.posts == 1 and second.counts.redelivered == 1 and second.counts.delivered == 0


async def test_adapter_service_runs_as_a_process(broker: Broker, agency: ClientFactory, tmp_path: Path) -> None:
    """``sgb adapter run`` as an operator runs it: a drop folder, its probes and metrics, SIGTERM."""
    import os
    import signal
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tmp_path / "la-inbox"
    settings = broker.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGB_")} | {
        "SGB_HOME": str(settings.home), "SGB_NATS_URL": settings.nats.url or ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker.cli", "adapter", "run", "--as", "la-camden", "--http", f"127.0.0.1:{port}",
        "--drop-folder", str(folder), env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        police = await agency("police-met")
        message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
        referrals: list[bytes] = []
        for _ in range(200):
            texts = [p.read_bytes() for p in folder.glob("*.json")] if folder.exists() else []
            referrals = [t for t in texts if b'"typ":"referral"' in t]
            if referrals:
                break
            await asyncio.sleep(0.05)
        (written,) = referrals
        assert message.encode() in written  # the origin names the police message
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                assert r.status == 200
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                values = dict(line.split() for line in (await r.text()).splitlines() if line.startswith("sgb_"))
        assert float(values["sgb_adapter_handed_over"]) >= 1 and float(values["sgb_adapter_dead_letters"]) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"adapter stopped" in err
