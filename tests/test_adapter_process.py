"""``sgb adapter run`` killed (SIGKILL) while the council's case system is still taking a
delivery: the restarted adapter hands it over again under the same delivery id, the case system
keeps it once, and the police hear ``delivered`` once. Real processes, a real broker, NATS and
aiohttp server."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.runtime.sinks import DELIVERY_HEADER, verify_webhook
from broker.files import write_private
from broker.pipeline.service import Broker
from broker.transport.topology import agency_consumer
from broker.wire.subjects import DELIVERY
from tests.conftest import ClientFactory
from tests.helpers import eventually, referral, sharing
from tests.support.pipeline import queued, settled

pytestmark = pytest.mark.timeout(120)
SECRET = b"la-case-system-webhook-secret-02"


class SlowCaseSystem:
    """Takes each delivery once, by its id; the first request is slow, so the adapter can be
    killed while it waits for the answer."""

    def __init__(self) -> None:
        self.taken: dict[str, bytes] = {}
        self.posts: dict[str, int] = {}  # by delivery id
        self.first = asyncio.Event()

    async def inbound(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify_webhook(SECRET, request.headers, body):
            return web.Response(status=401)
        delivery = request.headers[DELIVERY_HEADER]
        self.posts[delivery] = self.posts.get(delivery, 0) + 1
        if not self.first.is_set():
            self.first.set()
            await asyncio.sleep(1.0)  # the adapter dies here, before it hears 200
        self.taken.setdefault(delivery, body)
        return web.Response(status=200)


async def start_adapter(broker: Broker, url: str, secret: Path) -> asyncio.subprocess.Process:
    settings = broker.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGB_")} | {
        "SGB_HOME": str(settings.home), "SGB_NATS_URL": settings.nats.url or ""}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker.cli", "adapter", "run", "--as", "la-camden", "--webhook", url,
        "--webhook-secret-file", str(secret), env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)


async def test_killed_mid_delivery_the_case_system_keeps_it_once(broker: Broker, agency: ClientFactory,
                                                                 tmp_path: Path) -> None:
    # JetStream gives an unacknowledged delivery back after ack_wait (60 s in production); 2 s here.
    await broker.js.add_consumer(DELIVERY, config=dataclasses.replace(agency_consumer("la-camden"), ack_wait=2))
    system = SlowCaseSystem()
    app = web.Application()
    app.router.add_post("/referrals", system.inbound)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    write_private(tmp_path / "secret", SECRET)
    police = await agency("police-met")
    url = str(server.make_url("/referrals"))
    first = await start_adapter(broker, url, tmp_path / "secret")
    second: Any = None
    try:
        message = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
        await asyncio.wait_for(system.first.wait(), 30)
        first.send_signal(signal.SIGKILL)
        await asyncio.wait_for(first.wait(), 10)
        second = await start_adapter(broker, url, tmp_path / "secret")
        statuses: list[str] = []

        async def receipts() -> bool:  # every receipt about the referral police-met has now
            async for delivery, msg in police.fetch(idle=0.5):
                assert delivery is not None
                await msg.ack_sync(timeout=10)
                if delivery.type == "receipt" and delivery.payload["messageId"] == message:
                    statuses.append(delivery.payload["status"])
            return "delivered" in statuses

        async def all_done() -> bool:  # the adapter has acked all it was given, the broker relayed all it sent
            info = await broker.js.consumer_info(DELIVERY, "la-camden")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(receipts, what="the 'delivered' receipt", timeout=30, every=0)
        await eventually(all_done, what="the adapter to finish with its queue")
        await settled(broker.js)
        await receipts()  # whatever else the broker stored for police-met by now: a second 'delivered' would be here
        assert await queued(broker.js, "police-met") == 0
        assert sorted(statuses) == ["delivered", "routed"]  # one 'delivered': the first process died first
        (referral_id,) = system.taken  # kept once; and the broker's 'routed' answers to the adapter's own
        # receipts are not handed to the case system
        assert b'"typ":"referral"' in system.taken[referral_id]
        assert system.posts[referral_id] == 2  # posted twice under the same delivery id
    finally:
        if second is not None:
            second.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(second.communicate(), 30)
            assert second.returncode == 0, err.decode()[-2000:]
        await server.close()
