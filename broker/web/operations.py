"""Keeping and stopping through the API: legal holds on a message's deliveries (placed and
released by an IG officer, each audited), what the retention periods affect, and maintenance
mode (an operator's)."""

from __future__ import annotations

import re
from typing import Final

import structlog
from aiohttp import web

from broker.errors import ConfigError
from broker.pipeline.retention import HOLD_REASONS
from broker.web.actions import audit_action
from broker.web.context import SERVICE
from broker.web.params import dumps, json_body, now, reference, string
from broker.web.problems import EVERYONE, IG, OPERATOR, READERS, Problem, principal, requires
from broker.web.vocabulary import HOLD_PLACED, HOLD_RELEASED

log = structlog.get_logger("sgb.api")

_HOLD_KEY: Final = re.compile(r"^[-/_=A-Za-z0-9]([-/_=.A-Za-z0-9]{0,254}[-/_=A-Za-z0-9])?$")  # a SG_HOLDS key


@requires(*READERS)
async def list_holds(request: web.Request) -> web.Response:
    """Legal holds in force, by message id."""
    holds = await request.app[SERVICE].holds.all()
    return web.json_response({"items": [{"message": k} | v for k, v in sorted(holds.items())]}, dumps=dumps)


@requires(IG)
async def place_hold(request: web.Request) -> web.Response:
    """Keep a message's deliveries past their retention until the hold is released (audited)."""
    message = request.match_info["message"]
    body = await json_body(request)
    reason, ref = string(body, "reason"), reference(string(body, "reference"))
    if reason not in HOLD_REASONS:
        raise ConfigError(f"reason is one of {', '.join(HOLD_REASONS)}")
    service = request.app[SERVICE]
    if not await service.index.trail(message):
        raise Problem(404, "not-found", "no audit records for that message id")
    if not _HOLD_KEY.match(message):  # only unreadable bytes are recorded under such an id: nothing to keep
        raise ConfigError("a hold is kept for a message id of letters, digits and - _ = . /")
    hold = {"reason": reason, "by": principal(request).sub, "at": now()} | ({"reference": ref} if ref else {})
    await audit_action(request, HOLD_PLACED, message=message, reason=reason)
    await service.holds.place(message, hold)
    return web.json_response({"message": message} | hold, status=201, dumps=dumps)


@requires(IG)
async def release_hold(request: web.Request) -> web.Response:
    """Release a legal hold (audited); retention applies again from then."""
    message = request.match_info["message"]
    service = request.app[SERVICE]
    if not _HOLD_KEY.match(message) or await service.holds.get(message) is None:
        raise Problem(404, "not-found", "no hold on that message")
    await audit_action(request, HOLD_RELEASED, message=message)
    await service.holds.release(message)
    return web.json_response({"message": message, "released": True}, dumps=dumps)


@requires(*EVERYONE)
async def retention(request: web.Request) -> web.Response:
    """Retention periods and what they currently affect (counts only)."""
    return web.json_response(await request.app[SERVICE].retention(), dumps=dumps)


@requires(OPERATOR)
async def maintenance(request: web.Request) -> web.Response:
    """Maintenance mode on or off: the broker stops taking new work and /readyz answers 503."""
    body = await json_body(request)
    on = body.get("on")
    if not isinstance(on, bool):
        raise ConfigError("give on: true or false")
    service = request.app[SERVICE]
    service.maintenance(on)
    log.warning("maintenance mode set through the API", on=on, by=principal(request).sub)
    return web.json_response({"maintenance": service.maintenance(None)}, dumps=dumps)
