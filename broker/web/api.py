"""The audit API under ``/api/v1/`` (described by ``/api/openapi.json``).

Every endpoint needs a bearer token with one of the roles it names (see ``ROUTES``). Errors
are RFC 9457 problem documents with a stable ``code``; nothing internal reaches a response
body. Actions that touch the log itself (recording a review, searching for a child,
exporting) are audited in their turn, naming the officer and never the identifier searched.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import orjson
import structlog
from aiohttp import web

from broker.audit.export import verify_store
from broker.audit.index import REVIEW_FLAGS, REVIEW_OUTCOMES, AuditIndex
from broker.audit.query import FILTERS, RecordQuery
from broker.errors import BrokerError, ConfigError, TransportError
from broker.http.tokens import AuthError, Principal
from broker.pipeline.retention import HOLD_REASONS
from broker.timestamps import iso, parse_when
from broker.web import notshared, traceability
from broker.web.context import SERVICE
from broker.web.trailview import summarise

log = structlog.get_logger("sgb.api")

IG, AUDITOR, OPERATOR = "ig-officer", "auditor", "operator"
READERS: Final = (IG, AUDITOR)
EVERYONE: Final = (IG, AUDITOR, OPERATOR)
MAX_LIMIT: Final = 500
CSV_COLUMNS: Final = ("at", "event", "message", "type", "sender", "recipient", "decision", "lawfulBasis",
                      "consentStatus", "purpose", "urgency", "code", "notSharedReason", "rules", "fields", "withheld",
                      "flags", "due", "instance", "n", "id")


PRINCIPAL: Final = web.RequestKey("principal", Principal)


class Problem(web.HTTPException):
    """An error response with a stable code (RFC 9457 ``application/problem+json``)."""

    def __init__(self, status: int, code: str, detail: str, *, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status
        super().__init__(headers=headers, content_type="application/problem+json",
                         text=orjson.dumps({"type": f"https://sgb.example/problems/{code}", "title": code,
                                            "status": status, "code": code, "detail": detail}).decode())


def principal(request: web.Request) -> Principal:
    found: Principal | None = request.get(PRINCIPAL)
    if found is None:
        raise Problem(401, "unauthenticated", "a bearer token is needed", headers={"WWW-Authenticate": "Bearer"})
    return found


def requires(*roles: str) -> Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]],
                                      Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    def wrap(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
             ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            who = principal(request)
            if not who.has(*roles):
                raise Problem(403, "forbidden", f"this needs the role {' or '.join(roles)}")
            return await handler(request)

        guarded.roles = roles  # type: ignore[attr-defined]
        guarded.__doc__ = handler.__doc__
        return guarded

    return wrap


@web.middleware
async def api_middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Bearer authentication for ``/api/v1``, and one error shape for everything under ``/api``."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    if request.path.startswith("/api/v1/"):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(401, "unauthenticated", "a bearer token is needed", headers={"WWW-Authenticate": "Bearer"})
        try:
            request[PRINCIPAL] = request.app[SERVICE].tokens.verify(token.strip())
        except AuthError as exc:
            code = "forbidden" if exc.status == 403 else "unauthenticated"
            raise Problem(exc.status, code, exc.reason,
                          headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from exc
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if isinstance(exc, Problem) or exc.status < 400:
            raise
        raise Problem(exc.status, exc.reason.lower().replace(" ", "-"), exc.reason) from exc
    except ConfigError as exc:
        raise Problem(400, "bad-request", str(exc)) from exc
    except TransportError as exc:
        log.warning("api: store unavailable", error=str(exc))
        raise Problem(503, "unavailable", "the audit store is unavailable; try again shortly") from exc
    except Exception as exc:  # never a traceback or internals in a response
        log.exception("api: unexpected error", path=request.path)
        raise Problem(500, "internal", "the server could not complete this request") from exc


# -- parameters ---------------------------------------------------------------------------


def _date(value: str, name: str) -> str:
    try:
        return iso(parse_when(value))
    except ConfigError as exc:
        raise ConfigError(f"{name} must be a date (YYYY-MM-DD) or an ISO 8601 time") from exc


def record_query(params: Mapping[str, str], *, messages: list[str] | None = None) -> RecordQuery:
    equals = {k: params[k] for k in FILTERS if params.get(k)}
    for key, value in equals.items():
        if len(value) > 200:
            raise ConfigError(f"{key} is too long")
    flagged = params.get("flagged")
    if flagged not in (None, "", "true", "false"):
        raise ConfigError("flagged is true or false")
    limit = page_limit(params)
    return RecordQuery(equals=equals, flagged=None if not flagged else flagged == "true",
                       since=_date(params["since"], "since") if params.get("since") else None,
                       until=_date(params["until"], "until") if params.get("until") else None,
                       messages=messages, limit=limit, cursor=params.get("cursor") or None)


def page_limit(params: Mapping[str, str]) -> int:
    try:
        limit = int(params.get("limit") or 50)
    except ValueError as exc:
        raise ConfigError("limit is a number") from exc
    if not 1 <= limit <= MAX_LIMIT:
        raise ConfigError(f"limit is between 1 and {MAX_LIMIT}")
    return limit


def _now() -> str:
    return iso(time.time())


async def audit_action(request: web.Request, event: str, **fields: Any) -> dict[str, Any]:
    """Append an audit record of an officer's action; returns it once durable."""
    service = request.app[SERVICE]
    record = {"v": 1, "id": str(uuid.uuid4()), "at": _now(), "instance": service.instance, "event": event,
              "actor": principal(request).sub, "roles": sorted(principal(request).roles)} | fields
    await service.append([record])
    return record


# -- handlers -------------------------------------------------------------------------------


@requires(*READERS)
async def list_records(request: web.Request) -> web.Response:
    """Audit records, newest first, filtered and paginated."""
    page = await request.app[SERVICE].index.records(record_query(request.query))
    return web.json_response({"items": page.items, "next": page.next, "notSharedReasons": notshared.LABELS},
                             dumps=_dumps)


@requires(*READERS)
async def message_trail(request: web.Request) -> web.Response:
    """Everything recorded about one message and the replies to it."""
    message = request.match_info["message"]
    trail = await request.app[SERVICE].index.trail(message)
    if not trail:
        raise Problem(404, "not-found", "no audit records for that message id")
    return web.json_response({"message": message, "records": trail, "summary": summarise(trail, message)},
                             dumps=_dumps)


@requires(IG)
async def subject_search(request: web.Request) -> web.Response:
    """Records about one child, found by the keyed blind index (POST: identifiers stay out of URLs)."""
    body = await _json(request)
    service = request.app[SERVICE]
    tokens = service.subjects.search_tokens(
        nhs_number=_str(body, "nhsNumber"), given=_str(body, "givenName"), family=_str(body, "familyName"),
        date_of_birth=_str(body, "dateOfBirth"))
    messages = await service.index.subject_messages(tokens)
    params = {k: str(v) for k, v in body.items() if k in ("limit", "cursor", "since", "until") and v is not None}
    page = await service.index.records(record_query(params, messages=messages))
    by = "nhs-number" if body.get("nhsNumber") else "name-and-date-of-birth"
    await audit_action(request, "subject-search", searchedBy=by, messagesFound=len(messages))
    return web.json_response({"messages": messages, "items": page.items, "next": page.next}, dumps=_dumps)


@requires(*READERS)
async def list_reviews(request: web.Request) -> web.Response:
    """Items for IG review: shares without consent, consent overridden, advice sought, late, overdue."""
    state = request.query.get("state", "open")
    if state not in ("open", "done"):
        raise ConfigError("state is open or done")
    page = await request.app[SERVICE].index.reviews(state=state, limit=page_limit(request.query),
                                                    cursor=request.query.get("cursor") or None)
    return web.json_response({"items": page.items, "next": page.next,
                              "reasons": REVIEW_FLAGS, "outcomes": REVIEW_OUTCOMES}, dumps=_dumps)


@requires(IG)
async def record_review(request: web.Request) -> web.Response:
    """Record an officer's review outcome for one item (itself an audit record)."""
    body = await _json(request)
    item_id, outcome = _str(body, "item"), _str(body, "outcome")
    if not item_id or outcome not in REVIEW_OUTCOMES:
        raise ConfigError(f"give the item and an outcome: one of {', '.join(REVIEW_OUTCOMES)}")
    reference = _str(body, "reference")
    if reference is not None and not _safe_reference(reference):
        raise ConfigError("reference is up to 40 letters, digits, '-' or '/' (a case or ticket number, no names)")
    record = await review(request, item_id, outcome, reference)
    return web.json_response(record, status=201, dumps=_dumps)


async def review(request: web.Request, item_id: str, outcome: str, reference: str | None) -> dict[str, Any]:
    service = request.app[SERVICE]
    item = await service.index.review_item(item_id)
    if item is None:
        raise Problem(404, "not-found", "no review item with that id")
    if item["outcome"] is not None:
        raise Problem(409, "already-reviewed", "that item has a review outcome already")
    fields: dict[str, Any] = {"item": item_id, "message": item["message"], "outcome": outcome,
                              "reviewer": principal(request).sub, "reasons": item["reasons"]}
    if reference:
        fields["reference"] = reference
    record = await audit_action(request, "reviewed", **fields)
    await wait_indexed(service.index, lambda: service.index.record(record["id"]))
    return record


async def wait_indexed(index: AuditIndex, probe: Callable[[], Awaitable[Any]], timeout: float = 3.0) -> None:
    """Wait until the indexer has the new record, so the next read shows it."""
    deadline = time.monotonic() + timeout
    while await probe() is None and time.monotonic() < deadline:
        await index.wait_for_change(min(0.2, max(deadline - time.monotonic(), 0.01)))


def _safe_reference(text: str) -> bool:
    return 0 < len(text) <= 40 and all(c.isascii() and (c.isalnum() or c in "-/") for c in text)


async def stream_csv(request: web.Request) -> web.StreamResponse:
    """The filtered records as CSV, streamed (metadata only, as in the log)."""
    query = record_query(request.query)
    service = request.app[SERVICE]
    await audit_action(request, "exported", filters={k: v for k, v in request.query.items() if k != "cursor"})
    response = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8",
                                           "Content-Disposition": 'attachment; filename="sgb-audit.csv"'})
    await response.prepare(request)
    await response.write(_csv_line(CSV_COLUMNS))
    pages = service.index.export_rows(query)
    loop = asyncio.get_running_loop()
    while True:
        chunk = await loop.run_in_executor(None, next, pages, None)
        if chunk is None:
            break
        await response.write(b"".join(_csv_line(_csv_row(r)) for r in chunk))
    await response.write_eof()
    return response


export_csv = requires(*READERS)(stream_csv)


def _csv_row(r: Mapping[str, Any]) -> tuple[str, ...]:
    sharing = r.get("sharing") or {}
    values = {**r, "lawfulBasis": sharing.get("lawfulBasis") or sharing.get("lawEnforcementBasis"),
              "consentStatus": sharing.get("consentStatus"), "purpose": sharing.get("purpose"),
              "urgency": sharing.get("urgency")}
    out = []
    for column in CSV_COLUMNS:
        value = values.get(column)
        text = " ".join(map(str, value)) if isinstance(value, list) else ("" if value is None else str(value))
        out.append("'" + text if text[:1] in ("=", "+", "-", "@") else text)  # no formula injection in a spreadsheet
    return tuple(out)


def _csv_line(row: tuple[str, ...]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(row)
    return buffer.getvalue().encode()


@requires(*EVERYONE)
async def integrity(request: web.Request) -> web.Response:
    """The last verification of every chain, and the index's counts."""
    service = request.app[SERVICE]
    status = await service.index.meta("integrity") or {"state": "never-verified"}
    return web.json_response(status | {"index": await service.index.counts()}, dumps=_dumps)


@requires(*EVERYONE)
async def verify_now(request: web.Request) -> web.Response:
    """Verify every chain now (takes seconds on a large log)."""
    status = await request.app[SERVICE].verify()
    return web.json_response(status, dumps=_dumps)


@requires(*EVERYONE)
async def volumes(request: web.Request) -> web.Response:
    """Decisions per day by lawful basis, agency or decision (counts only)."""
    by = request.query.get("by", "lawfulBasis")
    today = dt.datetime.now(dt.UTC).date()
    since = _date(request.query.get("since") or (today - dt.timedelta(days=30)).isoformat(), "since")
    until = _date(request.query.get("until") or (today + dt.timedelta(days=1)).isoformat(), "until")
    rows = await request.app[SERVICE].index.volumes(by, since=since, until=until)
    return web.json_response({"by": by, "since": since, "until": until, "rows": rows}, dumps=_dumps)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=orjson.loads)
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise ConfigError("the request body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise ConfigError("the request body must be a JSON object")
    return body


def _str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 200:
        raise ConfigError(f"{key} must be a string")
    return value


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


async def run_verification(js: Any, registry: Any, index: AuditIndex) -> dict[str, Any]:
    """Verify the live store against its checkpoints and the index's; keep the result for the badge."""
    started = time.time()
    status: dict[str, Any]
    try:
        report = await verify_store(js, registry, witnesses=await index.checkpoint_tokens())
    except (TransportError, BrokerError) as exc:
        status = {"state": "unavailable", "at": _now(), "detail": str(exc)}
    else:
        status = {"state": "verified" if report.ok else "tampered", "at": _now(),
                  "seconds": round(time.time() - started, 3)} | report.summary()
    await index.set_meta("integrity", status)
    log.info("audit verification", state=status["state"], records=status.get("records"))
    return status


_HOLD_KEY: Final = re.compile(r"^[-/_=A-Za-z0-9]([-/_=.A-Za-z0-9]{0,254}[-/_=A-Za-z0-9])?$")  # a SG_HOLDS key


@requires(*READERS)
async def list_holds(request: web.Request) -> web.Response:
    """Legal holds in force, by message id."""
    holds = await request.app[SERVICE].holds.all()
    return web.json_response({"items": [{"message": k} | v for k, v in sorted(holds.items())]}, dumps=_dumps)


@requires(IG)
async def place_hold(request: web.Request) -> web.Response:
    """Keep a message's deliveries past their retention until the hold is released (audited)."""
    message = request.match_info["message"]
    body = await _json(request)
    reason, reference = _str(body, "reason"), _str(body, "reference")
    if reason not in HOLD_REASONS:
        raise ConfigError(f"reason is one of {', '.join(HOLD_REASONS)}")
    if reference is not None and not _safe_reference(reference):
        raise ConfigError("reference is up to 40 letters, digits, '-' or '/' (a case number, no names)")
    service = request.app[SERVICE]
    if not await service.index.trail(message):
        raise Problem(404, "not-found", "no audit records for that message id")
    if not _HOLD_KEY.match(message):  # only unreadable bytes are recorded under such an id: nothing to keep
        raise ConfigError("a hold is kept for a message id of letters, digits and - _ = . /")
    hold = {"reason": reason, "by": principal(request).sub, "at": _now()} | ({"reference": reference}
                                                                             if reference else {})
    await audit_action(request, "hold-placed", message=message, reason=reason)
    await service.holds.place(message, hold)
    return web.json_response({"message": message} | hold, status=201, dumps=_dumps)


@requires(IG)
async def release_hold(request: web.Request) -> web.Response:
    """Release a legal hold (audited); retention applies again from then."""
    message = request.match_info["message"]
    service = request.app[SERVICE]
    if not _HOLD_KEY.match(message) or await service.holds.get(message) is None:
        raise Problem(404, "not-found", "no hold on that message")
    await audit_action(request, "hold-released", message=message)
    await service.holds.release(message)
    return web.json_response({"message": message, "released": True}, dumps=_dumps)


@requires(*EVERYONE)
async def retention(request: web.Request) -> web.Response:
    """Retention periods and what they currently affect (counts only)."""
    return web.json_response(await request.app[SERVICE].retention(), dumps=_dumps)


@requires(*EVERYONE)
async def rulebook_coverage(request: web.Request) -> web.Response:
    """The rulebook in force traced to the guidance's golden rules, clocks and lawful-basis codes."""
    view = await traceability.current(request.app)
    if view is None:
        raise Problem(404, "not-found", "this broker's policy is not a rulebook")
    return web.json_response(view, dumps=_dumps)


@requires(OPERATOR)
async def maintenance(request: web.Request) -> web.Response:
    """Maintenance mode on or off: the broker stops taking new work and /readyz answers 503."""
    body = await _json(request)
    on = body.get("on")
    if not isinstance(on, bool):
        raise ConfigError("give on: true or false")
    service = request.app[SERVICE]
    service.maintenance(on)
    log.warning("maintenance mode set through the API", on=on, by=principal(request).sub)
    return web.json_response({"maintenance": service.maintenance(None)}, dumps=_dumps)


ROUTES: Final = (
    ("GET", "/api/v1/records", list_records),
    ("GET", "/api/v1/messages/{message}/trail", message_trail),
    ("POST", "/api/v1/subject-search", subject_search),
    ("GET", "/api/v1/reviews", list_reviews),
    ("POST", "/api/v1/reviews", record_review),
    ("GET", "/api/v1/records.csv", export_csv),
    ("GET", "/api/v1/integrity", integrity),
    ("POST", "/api/v1/integrity/verify", verify_now),
    ("GET", "/api/v1/volumes", volumes),
    ("GET", "/api/v1/holds", list_holds),
    ("PUT", "/api/v1/holds/{message}", place_hold),
    ("DELETE", "/api/v1/holds/{message}", release_hold),
    ("GET", "/api/v1/retention", retention),
    ("PUT", "/api/v1/maintenance", maintenance),
    ("GET", "/api/v1/rulebook/coverage", rulebook_coverage),
)


async def openapi(request: web.Request) -> web.Response:
    from broker.web.openapi import document

    return web.json_response(document(), dumps=_dumps)


def add_routes(app: web.Application) -> None:
    traceability.install(app)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.router.add_get("/api/openapi.json", openapi)
