"""The information governance officers' pages under ``/ig/``: server-rendered with Jinja2.

Sign-in takes an API token (from the partnership's identity provider, or ``sgb token`` in
development) and keeps it in an HttpOnly, SameSite=Strict cookie; every form carries a CSRF
token derived from the session. Pages: the sharing log with filters, one message's trail,
the review queue, subject-access search, charts of sharing volume, and the integrity badge
on every page. No JavaScript is needed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import jinja2
import structlog
from aiohttp import web

from broker.audit.index import REVIEW_FLAGS, REVIEW_OUTCOMES
from broker.audit.query import RecordQuery
from broker.errors import ConfigError, TransportError
from broker.http.pages import page_headers
from broker.http.tokens import AuthError, Principal
from broker.web import api, notshared, traceability
from broker.web.context import SERVICE
from broker.web.trailview import summarise

log = structlog.get_logger("sgb.ig")
COOKIE: Final = "sgb_session"
_SECRET: Final = web.AppKey("ig_secret", bytes)
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,
)
PAGE_ROLES: Final = ("ig-officer", "auditor", "operator")
EVENTS: Final = ("received", "shared", "refused", "not-shared", "rejected", "overdue", "reviewed", "subject-search",
                 "exported")
DECISIONS: Final = ("share", "refuse", "not-share", "reject")


@web.middleware
async def security_headers(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    response = await handler(request)
    if request.path.startswith("/ig/"):
        page_headers(response, images=True)
    return response


def _csrf(request: web.Request) -> str:
    session = request.cookies.get(COOKIE, "")
    return hmac.new(request.app[_SECRET], session.encode(), hashlib.sha256).hexdigest()[:32]


def _who(request: web.Request) -> Principal | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    try:
        return request.app[SERVICE].tokens.verify(token)
    except AuthError:
        return None


async def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    who = _who(request)
    service = request.app[SERVICE]
    integrity = await service.index.meta("integrity") if who else None
    html = _ENV.get_template(template).render(
        who=who, csrf=_csrf(request) if who else "", integrity=integrity or {"state": "never-verified"},
        path=request.path, reason_label=notshared.label, **context)
    return web.Response(text=html, content_type="text/html", status=status)


Handler = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]


def page(*roles: str) -> Callable[[Handler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """Signed-in users with one of ``roles``; POSTs must carry the session's CSRF token."""
    def wrap(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            who = _who(request)
            if who is None:
                raise web.HTTPSeeOther("/ig/login?" + urlencode({"next": request.path_qs}))
            if not who.has(*roles):
                return await render(request, "error.html", status=403, title="Not permitted",
                                    message=f"This page needs the role {' or '.join(roles)}.")
            if request.method == "POST":
                form = await request.post()
                if not hmac.compare_digest(str(form.get("csrf", "")), _csrf(request)):
                    return await render(request, "error.html", status=403, title="Form expired",
                                        message="Reload the page and try again.")
            try:
                return await handler(request, who)
            except ConfigError as exc:
                return await render(request, "error.html", status=400, title="Check the request", message=str(exc))
            except TransportError:
                return await render(request, "error.html", status=503, title="Unavailable",
                                    message="The audit store is unavailable; try again shortly.")
            except api.Problem as exc:
                return await render(request, "error.html", status=exc.status, title=exc.reason,
                                    message="That could not be done.")

        return guarded

    return wrap


# -- sign-in --------------------------------------------------------------------------------


async def login_form(request: web.Request) -> web.Response:
    return await render(request, "login.html", error=None, next=_safe_next(request.query.get("next")))


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = str(form.get("token", "")).strip()
    nxt = _safe_next(str(form.get("next", "")))
    try:
        who = request.app[SERVICE].tokens.verify(token)
    except AuthError as exc:
        log.info("ig sign-in refused", reason=exc.reason)
        return await render(request, "login.html", status=401, error=exc.reason, next=nxt)
    response = web.HTTPSeeOther(nxt)
    max_age = max(int(who.exp - dt.datetime.now(dt.UTC).timestamp()), 0)
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.secure, path="/ig/",
                        max_age=max_age)
    log.info("ig sign-in", sub=who.sub, roles=sorted(who.roles))
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/ig/login")
    response.del_cookie(COOKIE, path="/ig/")
    raise response


def _safe_next(value: str | None) -> str:
    return value if value and value.startswith("/ig/") and "//" not in value and "\\" not in value else "/ig/"


# -- pages ------------------------------------------------------------------------------------


@page("ig-officer", "auditor")
async def sharing_log(request: web.Request, who: Principal) -> web.Response:
    params = {k: v for k, v in request.query.items() if v}
    query = api.record_query(params)
    result = await request.app[SERVICE].index.records(query)
    next_link = "?" + urlencode(params | {"cursor": result.next}) if result.next else None
    csv_link = "/ig/export.csv?" + urlencode({k: v for k, v in params.items() if k != "cursor"})
    return await render(request, "log.html", records=result.items, filters=params, next_link=next_link,
                        csv_link=csv_link, events=EVENTS, decisions=DECISIONS, basis=_basis,
                        not_shared_reasons=notshared.LABELS)


@page("ig-officer", "auditor")
async def export_csv(request: web.Request, who: Principal) -> web.StreamResponse:
    request[api.PRINCIPAL] = who
    return await api.stream_csv(request)


@page("ig-officer", "auditor")
async def trail(request: web.Request, who: Principal) -> web.Response:
    message = request.match_info["message"]
    records = await request.app[SERVICE].index.trail(message)
    if not records:
        return await render(request, "error.html", status=404, title="Not found",
                            message="There are no audit records for that message id.")
    return await render(request, "trail.html", message=message, records=records,
                        summary=summarise(records, message), basis=_basis)


@page("ig-officer", "auditor")
async def reviews(request: web.Request, who: Principal) -> web.Response:
    state = request.query.get("state", "open")
    if state not in ("open", "done"):
        raise ConfigError("state is open or done")
    result = await request.app[SERVICE].index.reviews(state=state, limit=50,
                                                          cursor=request.query.get("cursor") or None)
    next_link = "?" + urlencode({"state": state, "cursor": result.next}) if result.next else None
    return await render(request, "reviews.html", items=result.items, state=state, next_link=next_link,
                        reasons=REVIEW_FLAGS, outcomes=REVIEW_OUTCOMES, can_review=who.has("ig-officer"),
                        done=request.query.get("done"))


@page("ig-officer")
async def record_review(request: web.Request, who: Principal) -> web.StreamResponse:
    form = await request.post()
    item, outcome = str(form.get("item", "")), str(form.get("outcome", ""))
    reference = str(form.get("reference", "")).strip() or None
    if outcome not in REVIEW_OUTCOMES:
        raise ConfigError("choose an outcome")
    if reference is not None and not api._safe_reference(reference):
        raise ConfigError("a reference is up to 40 letters, digits, '-' or '/': a case number, never a name")
    request[api.PRINCIPAL] = who
    await api.review(request, item, outcome, reference)
    raise web.HTTPSeeOther("/ig/reviews?" + urlencode({"done": item}))


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
    request[api.PRINCIPAL] = who
    await api.audit_action(request, "subject-search", searchedBy="nhs-number" if field("nhsNumber") else
                           "name-and-date-of-birth", messagesFound=len(messages))
    return await render(request, "subject.html", records=result.items, messages=messages, error=None,
                        more=result.next is not None, basis=_basis)


@page("ig-officer", "auditor")
async def rulebook(request: web.Request, who: Principal) -> web.Response:
    """The rulebook in force traced to the guidance (``sgb policy coverage`` as a page)."""
    view = await traceability.current(request.app)
    if view is None:
        return await render(request, "error.html", status=404, title="No rulebook",
                            message="This broker's policy is not a rulebook: there is nothing to trace.")
    return await render(request, "rulebook.html", view=view, kinds=traceability.KINDS)


@page("ig-officer", "auditor", "operator")
async def charts(request: web.Request, who: Principal) -> web.Response:
    by = request.query.get("by", "lawfulBasis")
    days = int(request.query.get("days", "30")) if request.query.get("days", "30").isdigit() else 30
    days = min(max(days, 1), 366)
    today = dt.datetime.now(dt.UTC).date()
    since = (today - dt.timedelta(days=days - 1)).isoformat()
    until = (today + dt.timedelta(days=1)).isoformat()
    rows = await request.app[SERVICE].index.volumes(by, since=since, until=until)
    chart = bar_chart(rows, [(today - dt.timedelta(days=i)).isoformat() for i in range(days - 1, -1, -1)])
    return await render(request, "charts.html", by=by, days=days, chart=chart, rows=rows)


@page("ig-officer", "auditor", "operator")
async def integrity(request: web.Request, who: Principal) -> web.Response:
    return await render(request, "integrity.html", counts=await request.app[SERVICE].index.counts())


@page("ig-officer", "auditor", "operator")
async def verify_now(request: web.Request, who: Principal) -> web.StreamResponse:
    await request.app[SERVICE].verify()
    raise web.HTTPSeeOther("/ig/integrity")


async def home(request: web.Request) -> web.StreamResponse:
    who = _who(request)
    if who is not None and not who.has("ig-officer", "auditor"):
        raise web.HTTPSeeOther("/ig/integrity")
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


async def stylesheet(request: web.Request) -> web.FileResponse:
    return web.FileResponse(Path(__file__).parent / "templates" / "ig.css",
                            headers={"Content-Type": "text/css", "Cache-Control": "max-age=3600"})


def add_routes(app: web.Application) -> None:
    app[_SECRET] = secrets.token_bytes(32)
    traceability.install(app)
    app.router.add_get("/ig", to_home)
    app.router.add_get("/ig/", home)
    app.router.add_get("/ig/login", login_form)
    app.router.add_post("/ig/login", login)
    app.router.add_post("/ig/logout", logout)
    app.router.add_get("/ig/ig.css", stylesheet)
    app.router.add_get("/ig/export.csv", export_csv)
    app.router.add_get("/ig/messages/{message}", trail)
    app.router.add_get("/ig/reviews", reviews)
    app.router.add_post("/ig/reviews", record_review)
    app.router.add_get("/ig/subject", subject_form)
    app.router.add_post("/ig/subject", subject_search)
    app.router.add_get("/ig/rulebook", rulebook)
    app.router.add_get("/ig/charts", charts)
    app.router.add_get("/ig/integrity", integrity)
    app.router.add_post("/ig/integrity", verify_now)


async def to_home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/ig/")

