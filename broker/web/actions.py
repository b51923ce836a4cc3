"""An officer's action through the API or the IG pages (a review, a subject-access search, an
export, a legal hold), recorded in the audit log in its turn, naming the officer."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from broker.audit.index import AuditIndex
from broker.web.context import SERVICE
from broker.web.params import now
from broker.web.problems import principal


async def audit_action(request: web.Request, event: str, **fields: Any) -> dict[str, Any]:
    """Append an audit record of an officer's action; returns it once durable."""
    return (await audit_actions(request, event, [fields]))[0]


async def audit_actions(request: web.Request, event: str, each: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One audit record per entry of ``each`` (one action on many items, as a bulk review), all
    durable together in one block; returns them."""
    service = request.app[SERVICE]
    who = principal(request)
    at = now()
    records = [{"v": 1, "id": str(uuid.uuid4()), "at": at, "instance": service.instance, "event": event,
                "actor": who.sub, "roles": sorted(who.roles)} | fields for fields in each]
    await service.append(records)
    return records


async def wait_indexed(index: AuditIndex, probe: Callable[[], Awaitable[Any]], timeout: float = 3.0) -> None:
    """Wait until the indexer has the new record, so the next read shows it."""
    deadline = time.monotonic() + timeout
    while await probe() is None and time.monotonic() < deadline:
        await index.wait_for_change(min(0.2, max(deadline - time.monotonic(), 0.01)))
