"""The adapter's hand-over end to end: a real broker and nats-server, a real aiohttp server
standing in for the agency system (up, refusing, down for a while, down for too long, failing for
one delivery only), the adapter killed mid-delivery."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from adapters.runtime.deadletters import RETRIES_EXHAUSTED
from adapters.runtime.deliverer import DeadLetters, Deliverer
from adapters.runtime.retries import RetryPolicy
from adapters.runtime.sinks import DELIVERY_HEADER, WebhookSettings, WebhookSink
from broker.pipeline.service import Broker
from broker.wire.subjects import DELIVERY
from tests.conftest import ClientFactory
from tests.helpers import eventually, referral, sharing
from tests.support.casesystem import SECRET, CaseSystem, free_port, receipts, run_once, serve

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def running(deliverer: Deliverer) -> AsyncIterator[Deliverer]:
    stop = asyncio.Event()
    task = asyncio.create_task(deliverer.run(stop))
    try:
        yield deliverer
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def counted(deliverer: Deliverer, name: str, at_least: int) -> bool:
    return getattr(deliverer.counts, name) >= at_least


async def test_hand_over_then_the_sender_hears_delivered(broker: Broker, agency: ClientFactory,
                                                         tmp_path: Path) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    system = CaseSystem()
    server = await serve(system)
    try:
        async with aiohttp.ClientSession() as session:
            sink = WebhookSink(session, WebhookSettings(url=str(server.make_url("/referrals")), secret=SECRET,
                                                        timeout=2.0))
            deliverer = Deliverer(la, sink, DeadLetters(tmp_path / "dead"), idle=0.3)
            message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
            await run_once(deliverer, until=1)
            assert await receipts(police, message, {"routed", "delivered"}) == {"routed", "delivered"}
            # The broker stored its 'routed' answer to that receipt with the receipt it relayed to the
            # police (one batch), so it is in the LA's queue now: run until the queue is empty...
            stop = asyncio.Event()
            task = asyncio.create_task(deliverer.run(stop))
            async def emptied() -> bool:
                info = await broker.js.consumer_info(DELIVERY, "la-camden")
                relayed = broker.pipeline.counters.shared >= 2  # the referral and the adapter's receipt, stored
                return relayed and info.num_pending == 0 and info.num_ack_pending == 0

            try:
                await eventually(emptied, what="the LA's queue to be empty")
            finally:
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
            sink = WebhookSink(session, WebhookSettings(url=str(server.make_url("/referrals")), secret=SECRET))
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
                await la.seen.add(delivery.id)
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
    import sys

    port = free_port()
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

        async def written() -> bytes | None:
            texts = [p.read_bytes() for p in folder.glob("*.json")] if folder.exists() else []
            referrals = [t for t in texts if b'"typ":"referral"' in t]
            return referrals[0] if referrals else None

        assert message.encode() in await eventually(written, what="the referral in the drop folder")

        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                assert r.status == 200

            async def counted() -> dict[str, str] | None:  # the file is written before the count moves
                async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                    values = dict(line.split() for line in (await r.text()).splitlines() if line.startswith("sgb_"))
                return values if float(values["sgb_adapter_handed_over"]) >= 1 else None

            values = await eventually(counted, what="the hand-over counted")
        assert float(values["sgb_adapter_dead_letters"]) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"adapter stopped" in err


QUICK = RetryPolicy(retry_for=60.0, backoff_base=0.05, backoff_max=0.2)  # pauses short enough for a test


async def test_a_system_down_for_a_while_takes_the_delivery_once_when_it_is_back(
        broker: Broker, agency: ClientFactory, tmp_path: Path) -> None:
    """The agency system restarts: connections are refused for a while, then it is back. The
    delivery waits in JetStream (handed back, not held in the adapter), arrives once under its
    delivery id, and is not dead-lettered; the sender hears ``delivered``."""
    police, la = await agency("police-met"), await agency("la-camden")
    port, system = free_port(), CaseSystem()
    dead = DeadLetters(tmp_path / "dead")
    async with aiohttp.ClientSession() as session:
        sink = WebhookSink(session, WebhookSettings(url=f"http://127.0.0.1:{port}/referrals", secret=SECRET,
                                                    timeout=2.0))
        async with running(Deliverer(la, sink, dead, idle=0.3, retry=QUICK)) as deliverer:
            message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
            await eventually(lambda: counted(deliverer, "handed_back", 5), what="five failed hand-overs")
            assert len(deliverer.ledger) == 1 and system.posts == 0
            server = await serve(system, port)  # the agency system is back
            try:
                await eventually(lambda: counted(deliverer, "delivered", 1), what="the hand-over")
            finally:
                await server.close()
    assert system.posts == 1 and len(system.taken) == 1  # once, under its delivery id
    (delivery_id,) = system.taken
    assert system.taken[delivery_id]["envelope"]["jti"] == delivery_id
    assert system.taken[delivery_id]["envelope"]["origin"]["jti"] == message
    assert deliverer.counts.dead_lettered == 0 and dead.entries() == [] and len(deliverer.ledger) == 0
    assert "delivered" in await receipts(police, message, {"delivered"})


async def test_an_outage_longer_than_the_window_dead_letters_and_tells_the_sender(
        broker: Broker, agency: ClientFactory, tmp_path: Path) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    dead = DeadLetters(tmp_path / "dead")
    window = RetryPolicy(retry_for=1.0, backoff_base=0.05, backoff_max=0.2)
    async with aiohttp.ClientSession() as session:
        sink = WebhookSink(session, WebhookSettings(url=f"http://127.0.0.1:{free_port()}/referrals", secret=SECRET))
        started = time.monotonic()
        async with running(Deliverer(la, sink, dead, idle=0.3, retry=window)) as deliverer:
            message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
            await eventually(lambda: counted(deliverer, "dead_lettered", 1), what="the dead letter")
    assert time.monotonic() - started >= window.retry_for  # not before the window was over
    (letter,) = dead.letters()
    assert (letter.code, letter.type, letter.sender, letter.message) == (RETRIES_EXHAUSTED, "referral",
                                                                         "police-met", message)
    assert letter.key == letter.delivery and letter.attempts >= 2 and "cannot reach" in letter.reason
    assert b"Okafor" not in (dead.folder / f"{letter.key}.why.json").read_bytes()
    assert "not-delivered" in await receipts(police, message, {"not-delivered"})
    assert len(deliverer.ledger) == 0


async def test_the_window_is_time_not_a_count_of_attempts(broker: Broker, agency: ClientFactory,
                                                          tmp_path: Path) -> None:
    """With an hour's window, many more failures than the old six attempts dead-letter nothing; an
    hour later (the injected clock moves) the next failure does."""
    police, la = await agency("police-met"), await agency("la-camden")
    offset = [0.0]
    hour = RetryPolicy(retry_for=3600.0, backoff_base=0.01, backoff_max=0.02)
    dead = DeadLetters(tmp_path / "dead")
    async with aiohttp.ClientSession() as session:
        sink = WebhookSink(session, WebhookSettings(url=f"http://127.0.0.1:{free_port()}/referrals", secret=SECRET))
        deliverer = Deliverer(la, sink, dead, idle=0.3, retry=hour, clock=lambda: time.time() + offset[0])
        async with running(deliverer):
            await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
            await eventually(lambda: counted(deliverer, "handed_back", 20), what="twenty failed hand-overs")
            assert deliverer.counts.dead_lettered == 0 and len(deliverer.ledger) == 1
            offset[0] = 3600.0
            await eventually(lambda: counted(deliverer, "dead_lettered", 1), what="the dead letter after an hour")
    (letter,) = dead.letters()
    assert letter.code == RETRIES_EXHAUSTED and "3600" in letter.reason


async def test_a_delivery_the_system_keeps_failing_does_not_hold_up_the_others(
        broker: Broker, agency: ClientFactory, tmp_path: Path) -> None:
    """The agency system answers 503 for one delivery only: the others are handed over meanwhile."""
    police, la = await agency("police-met"), await agency("la-camden")
    stuck: list[str] = []

    class Picky(CaseSystem):
        async def inbound(self, request: web.Request) -> web.Response:
            delivery = request.headers[DELIVERY_HEADER]
            if not stuck or stuck == [delivery]:
                stuck[:] = [delivery]
                self.posts += 1
                return web.Response(status=503)
            return await super().inbound(request)

    system = Picky()
    server = await serve(system)
    try:
        async with aiohttp.ClientSession() as session:
            sink = WebhookSink(session, WebhookSettings(url=str(server.make_url("/referrals")), secret=SECRET))
            async with running(Deliverer(la, sink, DeadLetters(tmp_path / "dead"), idle=0.3, retry=QUICK)) as d:
                for _ in range(3):
                    await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
                await eventually(lambda: counted(d, "delivered", 2), what="the two others handed over")
                assert len(d.ledger) == 1 and stuck[0] not in system.taken
                stuck.append("it is fixed")  # the system takes it now
                await eventually(lambda: counted(d, "delivered", 3), what="the third, once it is taken")
    finally:
        await server.close()
    assert len(system.taken) == 3 and d.counts.dead_lettered == 0
