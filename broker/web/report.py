"""The monthly report for the partnership board (``GET /ig/report?month=YYYY-MM``): the audit
index's counts for one calendar month (:mod:`broker.audit.report`), with agency names from the
trust registry, lawful bases as an IG officer reads them, and the integrity of the log.

A page a Data Protection Officer prints to PDF from the browser (``ig.css`` has the print
styles). Numbers, codes and agency names only: nothing about a child or a family. The handler is
wrapped by :func:`broker.web.igpages.page` where the route is added, as igpages imports this module.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from aiohttp import web

from broker.audit.index import REVIEW_OUTCOMES
from broker.audit.report import Counts, month_bounds
from broker.http.sessions import SESSIONS
from broker.http.tokens import Principal
from broker.web.context import BROKER_KEY, SERVICE
from broker.web.integrity import last_verification
from broker.web.params import now
from broker.wire import lawfulbasis

ROLES: Final = ("ig-officer", "auditor", "dpo")


async def monthly(request: web.Request, who: Principal) -> web.Response:
    """The report for ``?month=`` (default: the last full calendar month, what a board meets on)."""
    today = dt.datetime.now(dt.UTC).date()
    month = request.query.get("month") or _shift(today.strftime("%Y-%m"), -1)
    month_bounds(month)  # a ConfigError, shown as a 400 page, before anything is read
    report = await request.app[SERVICE].index.monthly_report(month)
    broker = request.app[BROKER_KEY]
    registry = broker.registry

    def agency(agency_id: str) -> str:
        found = registry.get(agency_id)
        return f"{found.name} ({agency_id})" if found and found.name != agency_id else agency_id

    following = _shift(month, 1)
    return await request.app[SESSIONS].render(
        request, "report.html", who=who, report=report, title=_title(month),
        previous=_shift(month, -1), following=following if following <= today.strftime("%Y-%m") else None,
        chart=hbar_chart(report.shared_by_type), agency=agency, basis=lawfulbasis.label, outcomes=REVIEW_OUTCOMES,
        verification=await last_verification(request.app[SERVICE].index), witnesses=broker.witnesses.check(),
        partnership=registry.broker.name, generated=now())


def _shift(month: str, by: int) -> str:
    """A valid ``YYYY-MM`` moved ``by`` months."""
    year, mon = (int(part) for part in month.split("-"))
    index = year * 12 + mon - 1 + by
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _title(month: str) -> str:
    return dt.date.fromisoformat(month + "-01").strftime("%B %Y")


def hbar_chart(counts: Counts, *, width: int = 640, bar: int = 24, gap: int = 10, label: int = 220
               ) -> dict[str, Any]:
    """Horizontal bars, one per key, as SVG geometry; the page shows the same numbers in a table."""
    peak = max((n for _, n in counts), default=0) or 1
    room = width - label - 60  # the count is written after the bar
    bars = [{"key": key, "count": n, "y": i * (bar + gap), "w": max(round(n / peak * room, 1), 1.0),
             "text_y": i * (bar + gap) + bar * 0.7} for i, (key, n) in enumerate(counts)]
    return {"width": width, "height": max(len(bars) * (bar + gap) - gap, bar), "bar": bar, "label": label,
            "bars": bars}
