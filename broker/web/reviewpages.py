"""The review queue's pages under ``/ig/reviews``: the triaged queue with filters whose URLs can be
shared, one outcome at a time or for a selected set (bulk review), a reviewer's own history, and
the outcomes escalated to the Data Protection Officer (``state=escalated``, where a user with
only the ``dpo`` role lands on signing in).

The handlers take the signed-in principal; :mod:`broker.web.igpages` wraps them as pages (it
imports this module), so a failure is shown as the IG pages show it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from broker.audit.index import REVIEW_OUTCOMES
from broker.audit.query import ESCALATED, REVIEW_FILTERS
from broker.errors import ConfigError
from broker.http.sessions import SESSIONS
from broker.http.tokens import Principal
from broker.web.choices import filter_choices
from broker.web.context import SERVICE
from broker.web.params import reference
from broker.web.problems import PRINCIPAL
from broker.web.reviews import MAX_BULK, PRIORITY_CHOICES, REASONS, matching_items, review, review_query

PAGE: Final = 50
_KEPT: Final = ("state", *REVIEW_FILTERS)  # what a view's URL carries (and a review returns to)
HEADINGS: Final = {"open": "Review queue", "done": "Reviewed", "escalated": "Escalated to the Data Protection Officer"}


def view_params(source: Mapping[str, Any]) -> dict[str, str]:
    """The parameters that make a view of the queue, from a query or a form, for its URL. Only a
    view of reviewed items filters by outcome: a review form's ``outcome`` is what it records."""
    params = {k: str(source[k]) for k in _KEPT if source.get(k)}
    if params.get("state", "open") == "open":
        params.pop("outcome", None)
    return params


async def queue(request: web.Request, who: Principal) -> web.Response:
    params = view_params(request.query)
    q = review_query(params | {"cursor": request.query.get("cursor", "")}, limit=PAGE)
    params["state"] = q.state
    index = request.app[SERVICE].index
    result = await index.reviews(q)
    here = urlencode(params)
    next_link = "?" + urlencode(params | {"cursor": result.next}) if result.next else None
    return await request.app[SESSIONS].render(
        request, "reviews.html", who=who, items=result.items, state=q.state, filters=params, here=here,
        heading=HEADINGS[q.state], matching=await index.review_count(q), next_link=next_link,
        choices=filter_choices(request.app), priorities=PRIORITY_CHOICES, reasons=REASONS,
        outcomes=REVIEW_OUTCOMES, escalated=ESCALATED, can_review=who.has("ig-officer") and q.state == "open",
        select_all=request.query.get("select") == "all", max_bulk=MAX_BULK, done=_count(request.query.get("done")),
        mine=params.get("reviewer") == who.sub, deriving=index.deriving,
        derive_failed=index.derive_failure is not None)


async def record_one(request: web.Request, who: Principal) -> web.StreamResponse:
    form = await request.post()
    item, outcome = str(form.get("item", "")), str(form.get("outcome", ""))
    ref = reference(str(form.get("reference", "")).strip() or None)
    if outcome not in REVIEW_OUTCOMES:
        raise ConfigError("choose an outcome")
    request[PRINCIPAL] = who
    await review(request, [item], outcome, ref, single=True)
    raise web.HTTPSeeOther("/ig/reviews?" + urlencode(view_params(form) | {"done": "1"}))


async def record_bulk(request: web.Request, who: Principal) -> web.StreamResponse:
    """One outcome for the items the officer selected on a view of the queue."""
    form = await request.post()
    if form.get("scope") == "all":  # every open item of the view (its filters come with the form)
        items = await matching_items(request, view_params(form))
    else:
        items = [str(i) for i in form.getall("item", [])]
    outcome = str(form.get("outcome", ""))
    if not items:
        raise ConfigError("select the items to review first")
    if outcome not in REVIEW_OUTCOMES:
        raise ConfigError("choose an outcome for the selected items")
    ref = reference(str(form.get("reference", "")).strip() or None)
    request[PRINCIPAL] = who
    records = await review(request, items, outcome, ref)
    raise web.HTTPSeeOther("/ig/reviews?" + urlencode(view_params(form) | {"done": str(len(records))}))


def _count(value: str | None) -> int | None:
    """How many reviews the last action recorded (a number, never text from the address)."""
    return int(value) if value is not None and value.isdigit() and len(value) < 4 else None
