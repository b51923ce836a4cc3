"""The school's Operation Encompass inbox on a running broker, as the inbox's test modules need it:
police-met and school-hillside connected, the inbox and the adapter's Deliverer wired to it; a notice
sent and handed over; the receipts police-met hears; the receipts the school is asked to send."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from adapters.runtime.deliverer import DeadLetters, Deliverer
from adapters.school.inbox import Inbox, inbox_app, inbox_verifier, render_sealed
from adapters.sdk import AgencyClient, Delivery
from broker.config import Settings
from broker.wire.registry import Registry
from tests.conftest import ClientFactory
from tests.helpers import eventually, example, sharing
from tests.support.casesystem import run_once
from tests.support.pipeline import queued, settled
from tests.support.web import SCHOOL

POLICE = "police-met"
NHS = "9990001235"


def notification() -> dict[str, Any]:
    payload: dict[str, Any] = example("encompass-notification.example.json")
    payload["child"]["nhsNumber"] = NHS
    return payload


@dataclass
class School:
    police: AgencyClient
    client: AgencyClient
    inbox: Inbox
    deliverer: Deliverer
    app: web.Application


@contextlib.asynccontextmanager
async def school_inbox(agency: ClientFactory, settings: Settings, registry: Registry) -> AsyncIterator[School]:
    """police-met and the school connected (the broker must be running), the inbox wired to the school."""
    police, client = await agency(POLICE), await agency(SCHOOL)
    inbox = Inbox.for_agency(settings.home, SCHOOL, client)
    deliverer = Deliverer(client, inbox, DeadLetters(settings.home / "adapters" / SCHOOL / "dead-letters"),
                          render=render_sealed, idle=0.3)
    app = web.Application()
    app.add_subapp("/inbox/", inbox_app(inbox, client, inbox_verifier(registry, settings.api, SCHOOL)))
    try:
        yield School(police, client, inbox, deliverer, app)
    finally:
        inbox.close()


async def notify(school: School, payload: dict[str, Any] | None = None) -> str:
    """police-met sends a notice; the adapter hands it to the inbox. Returns the police message id."""
    before = school.deliverer.counts.delivered
    message = await school.police.send(typ="encompass-notification", to=[SCHOOL], payload=payload or notification(),
                                       sharing=sharing("encompass-notification"))
    await run_once(school.deliverer, until=before + 1)  # (the broker's receipts for the school's receipts count too)
    assert school.deliverer.counts.dead_lettered == 0
    assert message in {n.message for n in await school.inbox.notices()}
    return message


async def police_receipts(police: AgencyClient, message: str, *, want: int, timeout: float = 10.0) -> list[Delivery]:
    """Receipts about ``message`` that police-met receives: at least ``want``, then, once the broker
    has finished everything published to it (so a duplicate would be stored by then), whatever
    else waits in police-met's queue."""
    got: list[Delivery] = []

    async def taken() -> bool:
        async for delivery, msg in police.fetch(idle=0.3):
            assert delivery is not None
            await msg.ack_sync(timeout=10)
            if delivery.type == "receipt" and delivery.payload["messageId"] == message:
                got.append(delivery)
        return len(got) >= want

    await eventually(taken, what=f"{want} receipts about {message}", timeout=timeout, every=0)
    await settled(police.js, timeout=timeout)
    await taken()
    assert await queued(police.js, "police-met") == 0
    return got


def accepted(receipts: list[Delivery]) -> list[Delivery]:
    return [d for d in receipts if d.payload["status"] == "accepted"]


def count_sends(client: AgencyClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The status of every receipt ``client`` is asked to send (each attempt, before NATS): the real
    ``send`` still runs, so a duplicate cannot hide behind JetStream's de-duplication."""
    sent: list[str] = []
    real = client.send

    async def counting(**kwargs: Any) -> str:
        sent.append(str(kwargs["payload"]["status"]))
        return await real(**kwargs)

    monkeypatch.setattr(client, "send", counting)
    return sent
