"""The audit records through the API: the log filtered and paged, one message's trail, the
records about one child (subject access), the CSV export and the volumes per day.

Searching for a child and exporting are audited in their turn, naming the officer and never the
identifier searched.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from broker.web import notshared
from broker.web.actions import audit_action
from broker.web.context import SERVICE
from broker.web.params import date, dumps, json_body, record_query, string
from broker.web.problems import EVERYONE, IG, READERS, Problem, requires
from broker.web.trailview import summarise
from broker.web.vocabulary import EXPORTED, SUBJECT_SEARCH, VOLUMES_BY

CSV_COLUMNS: Final = ("at", "event", "message", "type", "sender", "recipient", "decision", "lawfulBasis",
                      "consentStatus", "purpose", "urgency", "code", "notSharedReason", "rules", "fields", "withheld",
                      "flags", "lateReason", "due", "instance", "n", "id")


@requires(*READERS)
async def list_records(request: web.Request) -> web.Response:
    """Audit records, newest first, filtered and paginated."""
    page = await request.app[SERVICE].index.records(record_query(request.query))
    return web.json_response({"items": page.items, "next": page.next, "notSharedReasons": notshared.LABELS},
                             dumps=dumps)


@requires(*READERS)
async def message_trail(request: web.Request) -> web.Response:
    """Everything recorded about one message and the replies to it."""
    message = request.match_info["message"]
    trail = await request.app[SERVICE].index.trail(message)
    if not trail:
        raise Problem(404, "not-found", "no audit records for that message id")
    return web.json_response({"message": message, "records": trail, "summary": summarise(trail, message)},
                             dumps=dumps)


@requires(IG)
async def subject_search(request: web.Request) -> web.Response:
    """Records about one child, found by the keyed blind index (POST: identifiers stay out of URLs)."""
    body = await json_body(request)
    service = request.app[SERVICE]
    messages, by = await find_subject(request, body)
    params = {k: str(v) for k, v in body.items() if k in ("limit", "cursor", "since", "until") and v is not None}
    page = await service.index.records(record_query(params, messages=messages))
    await audit_action(request, SUBJECT_SEARCH, searchedBy=by, messagesFound=len(messages))
    return web.json_response({"messages": messages, "items": page.items, "next": page.next}, dumps=dumps)


async def find_subject(request: web.Request, body: Mapping[str, Any]) -> tuple[list[str], str]:
    """The messages about the child a subject search names (through the keyed blind index), and how
    it was named (``nhs-number`` or ``name-and-date-of-birth``, what the audit record may say)."""
    service = request.app[SERVICE]
    tokens = service.subjects.search_tokens(
        nhs_number=string(body, "nhsNumber"), given=string(body, "givenName"), family=string(body, "familyName"),
        date_of_birth=string(body, "dateOfBirth"))
    by = "nhs-number" if body.get("nhsNumber") else "name-and-date-of-birth"
    return await service.index.subject_messages(tokens), by


async def stream_csv(request: web.Request) -> web.StreamResponse:
    """The filtered records as CSV, streamed (metadata only, as in the log)."""
    query = record_query(request.query)
    service = request.app[SERVICE]
    await audit_action(request, EXPORTED, filters={k: v for k, v in request.query.items() if k != "cursor"})
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
async def volumes(request: web.Request) -> web.Response:
    """Decisions per day by lawful basis, agency or decision (counts only)."""
    by = request.query.get("by", next(iter(VOLUMES_BY)))
    today = dt.datetime.now(dt.UTC).date()
    since = date(request.query.get("since") or (today - dt.timedelta(days=30)).isoformat(), "since")
    until = date(request.query.get("until") or (today + dt.timedelta(days=1)).isoformat(), "until")
    rows = await request.app[SERVICE].index.volumes(by, since=since, until=until)
    return web.json_response({"by": by, "since": since, "until": until, "rows": rows}, dumps=dumps)
