"""The council's case management system behind the LA's adapter: a real aiohttp server taking
webhook deliveries, and the adapter's deliverer run until it has handed over enough."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.runtime.deliverer import Deliverer
from adapters.runtime.sinks import DELIVERY_HEADER, verify_webhook
from adapters.sdk import AgencyClient
from tests.helpers import eventually

SECRET = b"la-case-system-webhook-secret-01"
# The LA case system's recorded events (data/la-case-events.json) and the ids they refer to
EVENTS: list[dict[str, Any]] = orjson.loads(
    (Path(__file__).resolve().parent.parent / "data" / "la-case-events.json").read_bytes())
REFERRAL_DELIVERY = "5d0c6a2e-1f3b-4c8d-9e7a-0b1c2d3e4f50"  # what the case system got as X-SGB-Delivery-Id
REFERRAL = "0b6f3c2e-8d1a-4c5e-9f7b-2a3d4e5f6a7b"  # police-met's referral, as the delivery's origin names it
REQUEST_DELIVERY = "7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b"
REQUEST = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"  # health-camden's information request


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
    """The statuses of the receipts about ``message`` that ``police`` collects (acked) until it has ``want``."""
    got: set[str] = set()

    async def all_wanted() -> bool:
        async for delivery, msg in police.fetch(idle=0.5):
            assert delivery is not None
            await msg.ack_sync(timeout=10)
            if delivery.type == "receipt" and delivery.payload["messageId"] == message:
                got.add(delivery.payload["status"])
        return want <= got

    await eventually(all_wanted, what=f"receipts {sorted(want)} about {message} (got {sorted(got)})", timeout=timeout,
                     every=0)
    return got


async def serve(system: CaseSystem, port: int | None = None) -> TestServer:
    app = web.Application()
    app.router.add_post("/referrals", system.inbound)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    return server


def free_port() -> int:
    """A port nobody listens on (yet): connections to it are refused. Taken below the kernel's
    ephemeral range (32768 and up): a port from there can be handed to some client's outgoing
    connection before the test binds it ("address already in use", seen in CI)."""
    for _ in range(200):
        port = random.randrange(20000, 32768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


async def run_once(deliverer: Deliverer, *, until: int) -> None:
    """Run the deliverer until it has delivered, dead-lettered or handed back ``until`` deliveries."""
    stop = asyncio.Event()
    task = asyncio.create_task(deliverer.run(stop))

    async def done() -> bool:
        assert not task.done(), "the deliverer stopped by itself"
        counts = deliverer.counts
        return counts.delivered + counts.dead_lettered + counts.redelivered >= until

    try:
        await eventually(done, what=f"the deliverer to get through {until} deliveries")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
