"""The information governance officers' pages under ``/ig/``: server-rendered with Jinja2.

Sign-in takes an API token (from the partnership's identity provider, or ``sgb token`` in
development), the way every page of ours does (:mod:`broker.http.sessions`). Pages: the
sharing log with filters, one message's trail, the review queue, subject-access search, charts
of sharing volume, and the integrity badge on every page. No JavaScript is needed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Handler

from broker.audit.query import RecordQuery
from broker.errors import ConfigError, TransportError
from broker.http import sessions
from broker.http.pages import headers_middleware, stylesheet, templates
from broker.http.sessions import SESSIONS, Page, Sessions, signed_in
from broker.http.tokens import Principal
from broker.web import notshared, report, reviewpages, subjectproof, traceability
from broker.web.actions import audit_action
from broker.web.choices import filter_choices, labeller
from broker.web.context import BROKER_KEY, SERVICE
from broker.web.integrity import last_verification
from broker.web.params import record_query
from broker.web.problems import AUDITOR, DPO, IG, PRINCIPAL, Problem
from broker.web.records import stream_csv
from broker.web.reviews import REASONS
from broker.web.trailview import summarise
from broker.web.vocabulary import DECISIONS, EVENTS, NEVER_VERIFIED, SUBJECT_SEARCH, VOLUMES_BY

COOKIE: Final = "sgb_session"
_TEMPLATES: Final = Path(__file__).parent / "templates"
MAX_PROOF_MESSAGES: Final = 10_000

security_headers: Final = headers_middleware(prefix="/ig/", images=True)


def _verify(request: web.Request, token: str) -> Principal:
    return request.app[SERVICE].tokens.verify(token)


async def _globals(request: web.Request, who: Principal | None) -> dict[str, Any]:
    """What every IG page shows: the integrity badge (to someone signed in) and where it is."""
    integrity = await last_verification(request.app[SERVICE].index) if who else {"state": NEVER_VERIFIED}
    return {"integrity": integrity, "path": request.path, "reason_label": notshared.label, **labeller(request.app)}


def _sessions() -> Sessions:
    return Sessions(name="ig", cookie=COOKIE, env=templates(_TEMPLATES), verify=_verify, globals=_globals,
                    login_template="login.html", error_template="error.html", home="ig-home")


def _who(request: web.Request) -> Principal | None:
    return request.app[SESSIONS].who(request)


async def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """An IG page for whoever is signed in."""
    return await request.app[SESSIONS].render(request, template, status=status, who=_who(request), **context)


def page(*roles: str) -> Callable[[Page], Handler]:
    """Signed-in users with one of ``roles`` (:func:`broker.http.sessions.signed_in`); what goes
    wrong in the page is shown as an error page."""
    def wrap(handler: Page) -> Handler:
        async def answered(request: web.Request, who: Principal) -> web.StreamResponse:
            try:
                return await handler(request, who)
            except ConfigError as exc:
                return await render(request, "error.html", status=400, title="Check the request", message=str(exc))
            except TransportError:
                return await render(request, "error.html", status=503, title="Unavailable",
                                    message="The audit store is unavailable; try again shortly.")
            except Problem as exc:
                return await render(request, "error.html", status=exc.status, title=exc.reason,
                                    message="That could not be done.")

        answered.__doc__ = handler.__doc__
        return signed_in(*roles)(answered)

    return wrap


# -- pages ------------------------------------------------------------------------------------


@page("ig-officer", "auditor")
async def sharing_log(request: web.Request, who: Principal) -> web.Response:
    params = {k: v for k, v in request.query.items() if v}
    query = record_query(params)
    result = await request.app[SERVICE].index.records(query)
    next_link = "?" + urlencode(params | {"cursor": result.next}) if result.next else None
    csv_link = "/ig/export.csv?" + urlencode({k: v for k, v in params.items() if k != "cursor"})
    return await render(request, "log.html", records=result.items, filters=params, next_link=next_link,
                        csv_link=csv_link, events=EVENTS, decisions=DECISIONS, basis=_basis,
                        not_shared_reasons=notshared.LABELS, choices=filter_choices(request.app),
                        here=urlencode({k: v for k, v in params.items() if k != "cursor"}))


@page("ig-officer", "auditor")
async def export_csv(request: web.Request, who: Principal) -> web.StreamResponse:
    request[PRINCIPAL] = who
    return await stream_csv(request)


@page("ig-officer", "auditor")
async def trail(request: web.Request, who: Principal) -> web.Response:
    message = request.match_info["message"]
    records = await request.app[SERVICE].index.trail(message)
    if not records:
        return await render(request, "error.html", status=404, title="Not found",
                            message="There are no audit records for that message id.")
    return await render(request, "trail.html", message=message, records=records,
                        summary=summarise(records, message), basis=_basis)


@page("ig-officer")
async def subject_form(request: web.Request, who: Principal) -> web.Response:
    return await render(request, "subject.html", records=None, messages=None, error=None)


@page("ig-officer")
async def subject_search(request: web.Request, who: Principal) -> web.Response:
    form = await request.post()
    service = request.app[SERVICE]

    def field(name: str) -> str | None:
        value = str(form.get(name, "")).strip()
        return value or None

    try:
        tokens = service.subjects.search_tokens(nhs_number=field("nhsNumber"), given=field("givenName"),
                                                family=field("familyName"), date_of_birth=field("dateOfBirth"))
    except ConfigError as exc:
        return await render(request, "subject.html", status=400, records=None, messages=None, error=str(exc))
    messages = await service.index.subject_messages(tokens)
    result = await service.index.records(RecordQuery(messages=messages, limit=500))
    request[PRINCIPAL] = who
    await audit_action(request, SUBJECT_SEARCH, searchedBy="nhs-number" if field("nhsNumber") else
                       "name-and-date-of-birth", messagesFound=len(messages))
    return await render(request, "subject.html", records=result.items, messages=messages, error=None,
                        more=result.next is not None, basis=_basis)


@page("ig-officer")
async def subject_proof(request: web.Request, who: Principal) -> web.Response:
    """The subject-access results (their message ids, as the search found them) as a proof bundle."""
    form = await request.post()
    messages = sorted({str(m) for m in form.getall("message", [])})
    if not messages or len(messages) > MAX_PROOF_MESSAGES:
        raise ConfigError(f"search again, then download the proof of 1 to {MAX_PROOF_MESSAGES} messages")
    request[PRINCIPAL] = who
    return subjectproof.attachment(await subjectproof.subject_bundle(request, messages, "subject-search-results"))


@page("ig-officer", "auditor")
async def rulebook(request: web.Request, who: Principal) -> web.Response:
    """The rulebook in force traced to the guidance (``sgb policy coverage`` as a page)."""
    view = await traceability.current(request.app)
    if view is None:
        return await render(request, "error.html", status=404, title="No rulebook",
                            message="This broker's policy is not a rulebook: there is nothing to trace.")
    book = traceability.rulebook_in_force(request.app[BROKER_KEY].policy)
    return await render(request, "rulebook.html", view=view, kinds=traceability.KINDS,
                        triage=book.triage if book is not None else {}, reasons=REASONS)


@page("ig-officer", "auditor", "operator", DPO)
async def charts(request: web.Request, who: Principal) -> web.Response:
    by = request.query.get("by", next(iter(VOLUMES_BY)))
    days = int(request.query.get("days", "30")) if request.query.get("days", "30").isdigit() else 30
    days = min(max(days, 1), 366)
    today = dt.datetime.now(dt.UTC).date()
    since = (today - dt.timedelta(days=days - 1)).isoformat()
    until = (today + dt.timedelta(days=1)).isoformat()
    rows = await request.app[SERVICE].index.volumes(by, since=since, until=until)
    chart = bar_chart(rows, [(today - dt.timedelta(days=i)).isoformat() for i in range(days - 1, -1, -1)])
    return await render(request, "charts.html", by=by, days=days, chart=chart, rows=rows, groupings=VOLUMES_BY)


@page("ig-officer", "auditor", "operator", DPO)
async def integrity(request: web.Request, who: Principal) -> web.Response:
    witnesses = request.app[BROKER_KEY].witnesses.check()
    return await render(request, "integrity.html", counts=await request.app[SERVICE].index.counts(),
                        witnesses=witnesses)


@page("ig-officer", "auditor", "operator")
async def verify_now(request: web.Request, who: Principal) -> web.StreamResponse:
    await request.app[SERVICE].verify()
    raise web.HTTPSeeOther("/ig/integrity")


async def home(request: web.Request) -> web.StreamResponse:
    who = _who(request)
    if who is not None and not who.has("ig-officer", "auditor"):
        raise web.HTTPSeeOther("/ig/reviews?state=escalated" if who.has(DPO) else "/ig/integrity")
    return await sharing_log(request)


# -- helpers --------------------------------------------------------------------------------


def _basis(record: Mapping[str, Any]) -> str:
    sharing = record.get("sharing") or {}
    return str(sharing.get("lawfulBasis") or sharing.get("lawEnforcementBasis") or "")


_PALETTE: Final = ("#1d70b8", "#d4351c", "#00703c", "#6f72af", "#f47738", "#912b88", "#28a197", "#505a5f")


def bar_chart(rows: list[dict[str, Any]], days: list[str]) -> dict[str, Any]:
    """Stacked bars per day as SVG geometry (the page also shows the same numbers as a table)."""
    keys = sorted({r["key"] for r in rows})
    colour = {k: _PALETTE[i % len(_PALETTE)] for i, k in enumerate(keys)}
    per_day: dict[str, dict[str, int]] = {d: {} for d in days}
    for r in rows:
        if r["day"] in per_day:
            per_day[r["day"]][r["key"]] = r["count"]
    peak = max((sum(v.values()) for v in per_day.values()), default=0) or 1
    width, height, gap = 720, 240, 2
    bar = max(width / max(len(days), 1) - gap, 1.0)
    bars = []
    for i, day in enumerate(days):
        y = float(height)
        for key in keys:
            n = per_day[day].get(key, 0)
            if not n:
                continue
            h = n / peak * (height - 20)
            y -= h
            bars.append({"x": round(i * (bar + gap), 1), "y": round(y, 1), "w": round(bar, 1), "h": round(h, 1),
                         "fill": colour[key], "label": f"{day} {key}: {n}"})
    return {"width": width, "height": height, "bars": bars, "legend": [(k, colour[k]) for k in keys], "peak": peak,
            "first": days[0] if days else "", "last": days[-1] if days else ""}


def add_routes(app: web.Application) -> None:
    sessions.install(app, _sessions(), at="/ig/")
    traceability.install(app)
    app.router.add_get("/ig", to_home)
    app.router.add_get("/ig/", home, name="ig-home")
    app.router.add_get("/ig/ig.css", stylesheet(_TEMPLATES / "ig.css"))
    app.router.add_get("/ig/export.csv", export_csv)
    app.router.add_get("/ig/messages/{message}", trail)
    app.router.add_get("/ig/reviews", page(IG, AUDITOR, DPO)(reviewpages.queue))
    app.router.add_post("/ig/reviews", page(IG)(reviewpages.record_one))
    app.router.add_post("/ig/reviews/bulk", page(IG)(reviewpages.record_bulk))
    app.router.add_get("/ig/subject", subject_form)
    app.router.add_post("/ig/subject", subject_search)
    app.router.add_post("/ig/subject/proof", subject_proof)
    app.router.add_get("/ig/rulebook", rulebook)
    app.router.add_get("/ig/report", page(*report.ROLES)(report.monthly))
    app.router.add_get("/ig/charts", charts)
    app.router.add_get("/ig/integrity", integrity)
    app.router.add_post("/ig/integrity", verify_now)


async def to_home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/ig/")

