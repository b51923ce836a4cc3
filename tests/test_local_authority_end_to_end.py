"""The local authority's adapter end to end, through a real broker, nats-server and an aiohttp
case system: a police referral acknowledged and decided (its deadline closed), and a health
information request answered. The mapping of case events alone: tests/test_local_authority.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from nats.js.api import RawStreamMsg

from adapters.formats.consent import agency_wide
from adapters.formats.local_authority import case_events
from adapters.formats.mapping import MapContext, Unmappable
from adapters.runtime.deliverer import DeadLetters, Deliverer
from adapters.runtime.inbound import Submitter
from adapters.runtime.sinks import DELIVERY_HEADER, WebhookSettings, WebhookSink, verify_webhook
from adapters.sdk import AgencyClient, Delivery
from broker.config import Settings
from broker.pipeline.service import Broker
from broker.transport.connection import connected, jetstream
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry
from tests.conftest import ClientFactory
from tests.helpers import eventually, example, referral, sharing
from tests.support.casesystem import EVENTS

pytestmark = pytest.mark.timeout(60)


# -- end to end: a partner's message → the LA's case system (webhook) → its events back through the adapter ---

SECRET = b"la-case-system-webhook-secret-01"


class CaseSystem:
    """The council's case management system: takes hand-overs (HMAC-checked) by delivery id."""

    def __init__(self) -> None:
        self.taken: dict[str, dict[str, Any]] = {}

    async def inbound(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify_webhook(SECRET, request.headers, body):
            return web.Response(status=401)
        self.taken.setdefault(request.headers[DELIVERY_HEADER], orjson.loads(body))
        return web.Response(status=200)

    def of_type(self, typ: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.taken.items() if v["envelope"]["typ"] == typ}


async def _deadline_entry(settings: Settings, message: str, recipient: str) -> RawStreamMsg:
    async with connected(settings, settings.nats.url or "", name="kv") as nc:
        return await jetstream(nc, settings).get_last_msg("KV_SG_DEADLINES", f"$KV.SG_DEADLINES.{message}.{recipient}")


async def _collect(client: AgencyClient, done: Callable[[list[Delivery]], bool],
                   timeout: float = 10.0) -> list[Delivery]:
    """Deliveries (acked) until ``done`` says enough."""
    got: list[Delivery] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done(got):
        assert loop.time() < deadline, f"{client.agency} got only {[d.type for d in got]}"
        async for delivery, msg in client.fetch(idle=0.3):
            assert delivery is not None
            got.append(delivery)
            await msg.ack_sync(timeout=10)
    return got


@contextlib.asynccontextmanager
async def _la_adapter(la: AgencyClient, registry: Registry, catalogue: Catalogue, types: tuple[str, ...],
                      state: Path) -> AsyncIterator[tuple[CaseSystem, Submitter, Deliverer]]:
    """The LA's adapter both ways: its deliverer hands deliveries to a real case system by
    webhook; its submitter takes the case system's events back in."""
    assert la.seen is not None
    context = MapContext(agency="la-camden", registry=registry, catalogue=catalogue, handed=la.seen.handed)
    submitter = Submitter(la, context, {t: agency_wide(sharing(t)) for t in types}, state / "inbound")
    system = CaseSystem()
    app = web.Application()
    app.router.add_post("/lcs/inbound", system.inbound)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            sink = WebhookSink(session, WebhookSettings(url=str(server.make_url("/lcs/inbound")), secret=SECRET,
                                                        timeout=2.0))
            deliverer = Deliverer(la, sink, DeadLetters(state / "dead"), idle=0.3)
            running = asyncio.create_task(deliverer.run(stop))
            try:
                yield system, submitter, deliverer
            finally:
                stop.set()
                await asyncio.wait_for(running, 10)
    finally:
        await server.close()
        submitter.close()
    assert deliverer.counts.dead_lettered == 0


async def _closed(settings: Settings, message: str, recipient: str) -> bool:
    """Whether the deadline entry is deleted (its close is published with the reply's delivery)."""
    entry = await _deadline_entry(settings, message, recipient)
    return (entry.headers or {}).get("KV-Operation") == "DEL"


async def test_referral_acknowledged_and_decided_through_the_case_system(
        broker: Broker, agency: ClientFactory, settings: Settings, registry: Registry, catalogue: Catalogue,
        tmp_path: Path) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    types = ("receipt", "referral-outcome")
    async with _la_adapter(la, registry, catalogue, types, tmp_path) as (system, submitter, _):
        referral_id = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing(),
                                        thread="MPS-2026-7781")
        await eventually(lambda: bool(system.of_type("referral")), what="the referral in the case system")
        ((delivery_id, taken),) = system.of_type("referral").items()
        assert taken["envelope"]["origin"]["jti"] == referral_id
        opened = orjson.loads((await _deadline_entry(settings, referral_id, "la-camden")).data or b"{}")
        assert opened["state"] == "open" and opened["expect"] == ["referral-outcome"]

        # The duty worker opens a contact: the case system posts "acknowledged" for what it received.
        ack = {"event": "acknowledged", "inReplyTo": delivery_id,
               "worker": {"role": "MASH Social Worker", "staffRef": "LBC-SW-0192"}}
        (ack_id,) = (await submitter.submit(orjson.dumps(ack), case_events, key="lcs-event-1")).messages
        got = await _collect(police, lambda g: any(d.type == "receipt" and d.payload["status"] == "accepted"
                                                   for d in g))
        (accepted,) = [d for d in got if d.type == "receipt" and d.payload["status"] == "accepted"]
        assert accepted.payload["messageId"] == referral_id and accepted.claims["re"] == referral_id
        assert accepted.origin == ("la-camden", ack_id)
        assert accepted.claims["sharing"]["decidedBy"] == ack["worker"]
        still = orjson.loads((await _deadline_entry(settings, referral_id, "la-camden")).data or b"{}")
        assert still["state"] == "open"  # an acknowledgement is not the decision the clock waits for

        # The team manager decides: s47 strategy discussion.
        outcome = EVENTS[1] | {"inReplyTo": delivery_id}
        (outcome_id,) = (await submitter.submit(orjson.dumps([outcome]), case_events, key="lcs-event-2")).messages
        got = await _collect(police, lambda g: any(d.type == "referral-outcome" for d in g))
        (decided,) = [d for d in got if d.type == "referral-outcome"]
    assert decided.claims["re"] == referral_id and decided.origin == ("la-camden", outcome_id)
    assert decided.claims["thread"] == "MPS-2026-7781"  # the referral's thread, from what was handed over
    assert decided.payload["referralId"] == referral_id
    assert decided.payload["decision"] == "strategy-discussion-s47"
    assert decided.payload["socialWorker"]["organisation"]["agencyId"] == "la-camden"
    assert decided.claims["sharing"]["decidedBy"] == {"role": "Team Manager, Front Door", "staffRef": "LBC-TM-031"}
    assert decided.claims["sharing"]["purpose"] == sharing("referral-outcome")["purpose"]  # the default, overlaid
    assert decided.claims["sharing"]["subjectInformed"] == "TO_BE_INFORMED_LATER"  # the event's own facts
    await eventually(lambda: _closed(settings, referral_id, "la-camden"), what="the referral's deadline to close")


async def test_an_information_request_answered_from_the_case_system(
        broker: Broker, agency: ClientFactory, settings: Settings, registry: Registry, catalogue: Catalogue,
        tmp_path: Path) -> None:
    """Health asks; the case system answers by the original message id; health hears, the clock stops.
    An outcome sent in reply to the same request is refused before anything is published."""
    health, la = await agency("health-camden"), await agency("la-camden")
    types = ("information-response", "referral-outcome")
    async with _la_adapter(la, registry, catalogue, types, tmp_path) as (system, submitter, _):
        request = example("information-request.example.json")
        request_id = await health.send(typ="information-request", to=["la-camden"], payload=request,  # s47 is the LA's
                                       sharing=sharing("information-request") | {"statutoryGateways": ["CA2004_S11"]})
        await eventually(lambda: bool(system.of_type("information-request")), what="the request in the case system")
        wrong = [EVENTS[1] | {"inReplyTo": request_id}]
        with pytest.raises(Unmappable) as caught:
            await submitter.submit(orjson.dumps([EVENTS[2] | {"inReplyTo": request_id}, *wrong]), case_events)
        assert caught.value.field == "/1/inReplyTo" and submitter.counts.messages == 0
        answer = EVENTS[2] | {"inReplyTo": request_id}
        (answer_id,) = (await submitter.submit(orjson.dumps(answer), case_events, key="lcs-event-3")).messages
        got = await _collect(health, lambda g: any(d.type == "information-response" for d in g))
    (response,) = [d for d in got if d.type == "information-response"]
    assert response.claims["re"] == request_id and response.origin == ("la-camden", answer_id)
    assert response.payload["requestId"] == request_id
    assert response.payload["answers"][1] == {"questionId": "q2", "noInformationHeld": True}
    await eventually(lambda: _closed(settings, request_id, "la-camden"), what="the request's deadline to close")
