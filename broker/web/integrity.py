"""What the broker can show of itself through the API: the last verification of every audit
chain (run every so often for the badge, or now on request) and the rulebook in force traced to
the guidance."""

from __future__ import annotations

import time
from typing import Any

import structlog
from aiohttp import web

from broker.audit.export import verify_store
from broker.audit.incremental import TRUSTED, verify_incremental
from broker.audit.index import AuditIndex
from broker.errors import BrokerError
from broker.web import traceability
from broker.web.context import SERVICE
from broker.web.params import dumps, now
from broker.web.problems import EVERYONE, Problem, requires
from broker.web.vocabulary import NEVER_VERIFIED, TAMPERED, UNAVAILABLE, VERIFIED

log = structlog.get_logger("sgb.api")


async def run_verification(js: Any, registry: Any, index: AuditIndex, *,
                           tlog_origin: str | None = None) -> dict[str, Any]:
    """Verify the live store against its checkpoints and the index's; keep the result for the badge."""
    started = time.time()
    status: dict[str, Any]
    try:
        report = await verify_store(js, registry, witnesses=await index.checkpoint_tokens(),
                                    **({} if tlog_origin is None else {"tlog_origin": tlog_origin}))
    except BrokerError as exc:  # NATS, the index's store: the badge says unavailable
        status = {"state": UNAVAILABLE, "at": now(), "detail": str(exc)}
    else:
        status = {"state": VERIFIED if report.ok else TAMPERED, "at": now(),
                  "seconds": round(time.time() - started, 3)} | report.summary() | {"scope": "full"}
    await index.set_meta("integrity", status)
    log.info("audit verification", state=status["state"], records=status.get("records"))
    return status


async def run_incremental(js: Any, registry: Any, index: AuditIndex, *,
                          tlog_origin: str | None = None) -> dict[str, Any]:
    """Verify every chain from the last transparency checkpoint trusted (broker/audit/incremental.py);
    trust the newest on success. A problem the last full verification found stays on the badge
    until a full verification passes: this check does not look before its trusted points."""
    started = time.time()
    status: dict[str, Any]
    previous = await index.meta("integrity") or {}
    sticky = (previous.get("scope") == "full" and previous.get("state") == TAMPERED) or previous.get("sticky")
    kept = {"problems": previous.get("problems", []), "sticky": True} if sticky else {}
    try:
        result = await verify_incremental(js, registry, await index.meta(TRUSTED) or {},
                                          **({} if tlog_origin is None else {"tlog_origin": tlog_origin}))
    except BrokerError as exc:
        status = {"state": UNAVAILABLE, "at": now(), "detail": str(exc), "scope": "incremental"} | kept
    else:
        status = {"state": VERIFIED if result.report.ok else TAMPERED, "at": now(),
                  "seconds": round(time.time() - started, 3)} | result.summary()
        if result.report.ok:
            await index.set_meta(TRUSTED, result.trusted)
            if sticky:
                status |= kept | {"state": TAMPERED,
                                  "detail": "the last verification of the whole log found these problems"}
    await index.set_meta("integrity", status)
    log.info("audit verification", scope="incremental", state=status["state"], read=status.get("recordsRead"))
    return status


async def last_verification(index: AuditIndex) -> dict[str, Any]:
    """The last verification's result, or that the log was never verified."""
    return await index.meta("integrity") or {"state": NEVER_VERIFIED}


@requires(*EVERYONE)
async def integrity(request: web.Request) -> web.Response:
    """The last verification of every chain, and the index's counts."""
    index = request.app[SERVICE].index
    return web.json_response(await last_verification(index) | {"index": await index.counts()}, dumps=dumps)


@requires(*EVERYONE)
async def verify_now(request: web.Request) -> web.Response:
    """Verify every chain now (takes seconds on a large log)."""
    status = await request.app[SERVICE].verify()
    return web.json_response(status, dumps=dumps)


@requires(*EVERYONE)
async def rulebook_coverage(request: web.Request) -> web.Response:
    """The rulebook in force traced to the guidance's golden rules, clocks and lawful-basis codes."""
    view = await traceability.current(request.app)
    if view is None:
        raise Problem(404, "not-found", "this broker's policy is not a rulebook")
    return web.json_response(view, dumps=dumps)
