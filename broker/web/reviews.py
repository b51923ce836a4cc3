"""The IG review queue through the API: the triaged items (:mod:`broker.audit.triage`), an
officer's outcome for one of them or for a filtered set at once (each an audit record in its
turn), and the outcomes escalated to the Data Protection Officer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from aiohttp import web

from broker.audit.index import REVIEW_FLAGS, REVIEW_OUTCOMES
from broker.audit.query import REVIEW_FILTERS, ReviewQuery
from broker.audit.triage import DERIVED_REASONS, PRIORITIES, SAMPLE
from broker.errors import ConfigError
from broker.web.actions import audit_actions, wait_indexed
from broker.web.context import SERVICE
from broker.web.params import dumps, json_body, page_limit, reference, string
from broker.web.problems import IG, READERS, Problem, principal, requires
from broker.web.vocabulary import REVIEW_STATES, REVIEWED

REASONS: Final = {**REVIEW_FLAGS, **DERIVED_REASONS}  # every reason an item can give, with its label
PRIORITY_CHOICES: Final = (*PRIORITIES, SAMPLE)
MAX_BULK: Final = 200  # items one bulk review may cover: a page of the queue at most a few times over


def review_query(params: Mapping[str, str], *, limit: int = 50) -> ReviewQuery:
    """The queue's filters from query parameters: ``state`` (open, done, escalated), the keys of
    :data:`~broker.audit.query.REVIEW_FILTERS`, ``cursor``. A priority, reason or outcome is checked
    against its list; an agency, type, basis or consent code the log does not hold matches nothing."""
    state = params.get("state") or REVIEW_STATES[0]
    if state not in REVIEW_STATES:
        raise ConfigError(f"state is {' or '.join(REVIEW_STATES)}")
    equals = {k: params[k] for k in REVIEW_FILTERS if params.get(k)}
    for key, value in equals.items():
        if len(value) > 200:
            raise ConfigError(f"{key} is too long")
    if "priority" in equals and equals["priority"] not in PRIORITY_CHOICES:
        raise ConfigError(f"priority is one of {', '.join(PRIORITY_CHOICES)}")
    if "reason" in equals and equals["reason"] not in REASONS:
        raise ConfigError("reason is one of the review queue's reasons (see reasons in GET /api/v1/reviews)")
    if "outcome" in equals and equals["outcome"] not in REVIEW_OUTCOMES:
        raise ConfigError(f"outcome is one of {', '.join(REVIEW_OUTCOMES)}")
    return ReviewQuery(state=state, equals=equals, limit=limit, cursor=params.get("cursor") or None)


@requires(*READERS)
async def list_reviews(request: web.Request) -> web.Response:
    """Items for IG review, highest priority first, with the reasons the triage gave."""
    q = review_query(request.query, limit=page_limit(request.query))
    index = request.app[SERVICE].index
    page = await index.reviews(q)
    return web.json_response({"items": page.items, "next": page.next, "matching": await index.review_count(q),
                              "reasons": REASONS, "outcomes": REVIEW_OUTCOMES}, dumps=dumps)


@requires(IG)
async def record_review(request: web.Request) -> web.Response:
    """Record an officer's review outcome for one item (itself an audit record)."""
    body = await json_body(request)
    item_id, outcome = string(body, "item"), string(body, "outcome")
    if not item_id or outcome not in REVIEW_OUTCOMES:
        raise ConfigError(f"give the item and an outcome: one of {', '.join(REVIEW_OUTCOMES)}")
    (record,) = await review(request, [item_id], outcome, reference(string(body, "reference")), single=True)
    return web.json_response(record, status=201, dumps=dumps)


@requires(IG)
async def record_bulk_review(request: web.Request) -> web.Response:
    """One outcome for many items the officer has read: the ``items`` listed, or every open item
    matching ``filters`` (refused if more than :data:`MAX_BULK` match); an audit record each."""
    body = await json_body(request)
    items, outcome = body.get("items"), string(body, "outcome")
    if isinstance(body.get("filters"), dict) and items is None:
        items = await matching_items(request, body["filters"])
    if not isinstance(items, list) or not all(isinstance(i, str) and 0 < len(i) <= 200 for i in items):
        raise ConfigError("give items (a list of review item ids) or filters (an object of the queue's filters)")
    if outcome not in REVIEW_OUTCOMES:
        raise ConfigError(f"outcome is one of {', '.join(REVIEW_OUTCOMES)}")
    records = await review(request, items, outcome, reference(string(body, "reference")))
    return web.json_response({"recorded": records, "skipped": len(set(items)) - len(records)}, status=201,
                             dumps=dumps)


async def matching_items(request: web.Request, filters: Mapping[str, Any]) -> list[str]:
    """The ids of every open item a view of the queue matches, for a bulk review of the whole set."""
    if not all(isinstance(v, str) for v in filters.values()):
        raise ConfigError("filters are the queue's filters, each a string")
    # open items have no outcome: an outcome given here is the one to record, not a filter
    q = review_query({k: filters[k] for k in REVIEW_FILTERS if k in filters and k != "outcome"} | {"state": "open"},
                     limit=MAX_BULK)
    index = request.app[SERVICE].index
    if await index.review_count(q) > MAX_BULK:
        raise ConfigError(f"more than {MAX_BULK} items match: narrow the view, or review them in parts")
    return [item["item"] for item in (await index.reviews(q)).items]


async def review(request: web.Request, item_ids: Sequence[str], outcome: str, ref: str | None, *,
                 single: bool = False) -> list[dict[str, Any]]:
    """Record ``outcome`` for each of ``item_ids`` that awaits review; returns their audit records
    once indexed. One item (``single``) that is unknown or reviewed already is an error; in a bulk
    review, those are skipped (another officer may have reviewed one meanwhile)."""
    unique = list(dict.fromkeys(item_ids))
    if not unique or len(unique) > MAX_BULK:
        raise ConfigError(f"review 1 to {MAX_BULK} items at once")
    service = request.app[SERVICE]
    if single:
        item = await service.index.review_item(unique[0])
        if item is None:
            raise Problem(404, "not-found", "no review item with that id")
        if item["outcome"] is not None:
            raise Problem(409, "already-reviewed", "that item has a review outcome already")
    items = await service.index.open_items(unique)
    if not items:
        if single:
            raise Problem(409, "already-reviewed", "that item has a review outcome already")
        return []
    reviewer = principal(request).sub
    bulk = {} if single else {"bulk": len(items)}  # how many one decision covered, for whoever audits it
    each = [{"item": it["item"], "message": it["message"], "outcome": outcome, "reviewer": reviewer,
             "reasons": it["reasons"], "priority": it["priority"]} | bulk | ({"reference": ref} if ref else {})
            for it in items]
    records = await audit_actions(request, REVIEWED, each)
    last = records[-1]["id"]
    await wait_indexed(service.index, lambda: service.index.record(last))
    return records
