"""The IG review queue through the API: the items flagged or overdue, and an officer's outcome
for one of them (an audit record in its turn)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.audit.index import REVIEW_FLAGS, REVIEW_OUTCOMES
from broker.errors import ConfigError
from broker.web.actions import audit_action, wait_indexed
from broker.web.context import SERVICE
from broker.web.params import dumps, json_body, page_limit, reference, string
from broker.web.problems import IG, READERS, Problem, principal, requires
from broker.web.vocabulary import REVIEW_STATES, REVIEWED


def review_state(value: str | None) -> str:
    """Which part of the queue: ``open`` (the default) or ``done``."""
    state = value or REVIEW_STATES[0]
    if state not in REVIEW_STATES:
        raise ConfigError(f"state is {' or '.join(REVIEW_STATES)}")
    return state


@requires(*READERS)
async def list_reviews(request: web.Request) -> web.Response:
    """Items for IG review: shares without consent, consent overridden, advice sought, late, overdue."""
    page = await request.app[SERVICE].index.reviews(state=review_state(request.query.get("state")),
                                                    limit=page_limit(request.query),
                                                    cursor=request.query.get("cursor") or None)
    return web.json_response({"items": page.items, "next": page.next,
                              "reasons": REVIEW_FLAGS, "outcomes": REVIEW_OUTCOMES}, dumps=dumps)


@requires(IG)
async def record_review(request: web.Request) -> web.Response:
    """Record an officer's review outcome for one item (itself an audit record)."""
    body = await json_body(request)
    item_id, outcome = string(body, "item"), string(body, "outcome")
    if not item_id or outcome not in REVIEW_OUTCOMES:
        raise ConfigError(f"give the item and an outcome: one of {', '.join(REVIEW_OUTCOMES)}")
    record = await review(request, item_id, outcome, reference(string(body, "reference")))
    return web.json_response(record, status=201, dumps=dumps)


async def review(request: web.Request, item_id: str, outcome: str, ref: str | None) -> dict[str, Any]:
    """Record ``outcome`` for the review item ``item_id``; returns the audit record once indexed."""
    service = request.app[SERVICE]
    item = await service.index.review_item(item_id)
    if item is None:
        raise Problem(404, "not-found", "no review item with that id")
    if item["outcome"] is not None:
        raise Problem(409, "already-reviewed", "that item has a review outcome already")
    fields: dict[str, Any] = {"item": item_id, "message": item["message"], "outcome": outcome,
                              "reviewer": principal(request).sub, "reasons": item["reasons"]}
    if ref:
        fields["reference"] = ref
    record = await audit_action(request, REVIEWED, **fields)
    await wait_indexed(service.index, lambda: service.index.record(record["id"]))
    return record
