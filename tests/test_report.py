"""The monthly report for the partnership board (``/ig/report``): its numbers against messages sent
through a running broker, its month and roles, and a Data Protection Officer opening it, changing
the month and printing it to PDF in a real Chromium."""

from __future__ import annotations

import datetime as dt
import html
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.audit.index import AuditIndex
from broker.config import Settings
from broker.wire.registry import Registry
from tests.conftest import ClientFactory
from tests.helpers import referral, sharing
from tests.support.axe import assert_accessible
from tests.support.sending import send_not_to_share, send_referrals
from tests.support.web import auth, sign_in, snap, token, until_indexed, until_recorded

pytestmark = pytest.mark.timeout(120)
Client = TestClient  # type: ignore[type-arg]


def _this_month() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m")


def _number(page: str, cell: str) -> int:
    found = re.search(rf'id="{cell}">(\d+)<', page)
    assert found, cell
    return int(found[1])


def _rows(page: str, table: str) -> dict[str, int]:
    """A counts table of the page as {what: count}."""
    body = page.split(f'id="{table}"')[1].split("</table>")[0]
    found = re.findall(r'<th scope="row">([^<]*)</th><td class="num">(\d+)</td>', body)
    return {html.unescape(k): int(n) for k, n in found}


async def _a_month_of_sharing(client: Client, settings: Settings, agency: ClientFactory) -> None:
    """Three referrals shared (one with a recipient refused), one rejected, one decision not to
    share, and one review recorded."""
    flagged, plain = (await send_referrals(agency, consent="REFUSED_OVERRIDDEN"))[0], \
        (await send_referrals(agency, consent="GIVEN"))[0]
    police = await agency("police-met")
    narrowed = await police.send(typ="referral", to=["la-camden", "school-hillside"], payload=referral(),
                                 sharing=sharing())
    assert (await police.wait_outcome(narrowed, timeout=10)).payload["refused"][0]["code"] == "not-permitted"
    invalid = await police.send(typ="referral", to=["la-camden"], payload=referral() | {"SECRET": "x"},
                                sharing=sharing(), validate=False)
    outcome = await police.wait_outcome(invalid, timeout=10)
    assert outcome.type == "rejection" and outcome.payload["code"] == "schema-invalid"
    not_shared = await send_not_to_share(agency)
    for message, event in ((flagged, "shared"), (plain, "shared"), (narrowed, "refused"), (invalid, "rejected"),
                           (not_shared, "not-shared")):
        await until_recorded(client, settings, message, event)
    r = await client.post("/api/v1/reviews", json={"item": f"flag:{flagged}", "outcome": "follow-up"},
                          headers=auth(settings, "ig-officer"))
    assert r.status == 201, await r.text()


async def test_the_report_counts_what_was_sent(client: Client, settings: Settings, agency: ClientFactory,
                                              registry: Registry) -> None:
    await _a_month_of_sharing(client, settings, agency)
    await sign_in(client, settings, "dpo")
    r = await client.get(f"/ig/report?month={_this_month()}")
    assert r.status == 200, await r.text()
    page = await r.text()
    assert {cell: _number(page, cell) for cell in (
        "n-received", "n-rejected", "n-shares", "n-refused", "n-not-shared", "n-overdue", "n-overdue-met",
        "n-reviewed")} == {"n-received": 4, "n-rejected": 1, "n-shares": 3, "n-refused": 1, "n-not-shared": 1,
                           "n-overdue": 0, "n-overdue-met": 0, "n-reviewed": 1}
    assert _number(page, "n-raised") - _number(page, "n-awaiting") == 1  # the item reviewed
    police, la = registry.get("police-met"), registry.get("la-camden")
    assert police and la
    assert _rows(page, "by-type") == {"referral": 3}
    assert _rows(page, "by-sender") == {f"{police.name} (police-met)": 3}
    assert _rows(page, "by-recipient") == {f"{la.name} (la-camden)": 3}
    assert _rows(page, "by-basis") == {"UK GDPR Art 6(1)(e) Public task": 3}
    assert _rows(page, "rejected") == {"schema-invalid": 1} and _rows(page, "refused") == {"not-permitted": 1}
    assert _rows(page, "outcomes") == {"Follow up with the agency (practice or recording)": 1}
    assert "None this month" in page.split('id="overdue-table"')[1].split("</table>")[0]
    chart = page.split("<svg role=\"img\" aria-labelledby=\"shares-chart-title\"")[1].split("</svg>")[0]
    assert chart.count("<rect") == 1 and "referral 3" in chart  # the same number as the table
    assert 'id="report-integrity"' in page and 'id="report-witnesses"' in page
    assert "9990001235" not in page and "Jayden" not in page  # the child is nowhere in it


async def test_the_month_and_who_may_read_it(client: Client, settings: Settings) -> None:
    await sign_in(client, settings, "auditor")
    page = await (await client.get("/ig/report")).text()
    last = (dt.datetime.now(dt.UTC).date().replace(day=1) - dt.timedelta(days=1)).strftime("%Y-%m")
    assert f'name="month" type="month" value="{last}"' in page  # the last full month by default
    assert 'id="n-shares">0<' in page and "No shares this month" in page
    page = await (await client.get("/ig/report?month=2025-12")).text()
    assert "December 2025" in page and 'href="/ig/report?month=2025-11"' in page
    assert 'href="/ig/report?month=2026-01"' in page  # the next month, across the year's end
    for bad in ("2026-13", "26-01", "2026-1", "next"):
        r = await client.get(f"/ig/report?month={bad}")
        assert r.status == 400 and "YYYY-MM" in await r.text(), bad
    client.session.cookie_jar.clear()
    await sign_in(client, settings, "operator")
    r = await client.get("/ig/report")
    assert r.status == 403 and "Monthly report" not in await r.text()  # nor is it in the operator's menu


async def test_overdue_clocks_met_later_and_the_months_edges(tmp_path: Path) -> None:
    """Clocks that ran out, counted in their month, and met later only by a reply that the broker
    recorded as meeting the deadline from the agency the clock ran to (or, for a clock the sender's
    side owes, sent to it); records written straight into a real index."""
    def overdue(n: int, message: str, at: str, typ: str = "information-request", sender: str = "la-camden",
                recipient: str = "health-camden") -> dict[str, Any]:
        return {"id": f"o{n}", "n": n, "at": at, "event": "overdue", "message": message, "type": typ,
                "sender": sender, "recipient": recipient}

    def reply(n: int, re_: str, at: str, sender: str, event: str = "received", **more: Any) -> dict[str, Any]:
        return {"id": f"r{n}", "n": n, "at": at, "event": event, "message": f"reply-{n}", "re": re_,
                "sender": sender, "meetsDeadline": True} | more

    records = [
        overdue(1, "m1", "2026-10-01T00:00:00.000Z"), reply(2, "m1", "2026-11-20T09:00:00.000Z", "health-camden"),
        overdue(3, "m2", "2026-10-31T23:59:59.999Z"), reply(4, "m2", "2026-11-02T09:00:00.000Z", "police-met"),
        overdue(5, "m3", "2026-10-12T08:00:00.000Z", "serious-incident-notification", "la-camden", "csprp"),
        reply(6, "m3", "2026-10-14T08:00:00.000Z", "police-met", "shared", recipient="csprp"),
        overdue(7, "m4", "2026-11-01T00:00:00.000Z"),  # the next month's
        overdue(8, "m5", "2026-09-30T23:59:59.999Z"),  # the month before's
    ]
    index = AuditIndex(tmp_path / "index.sqlite")
    try:
        await index.open()
        await index.apply([(1, records)], [], 1)
        report = await index.monthly_report("2026-10")
    finally:
        index.close()
    assert (report.since, report.until) == ("2026-10-01", "2026-11-01")
    assert [(o.type, o.sender, o.recipient, o.overdue, o.met_later) for o in report.overdue] == [
        ("information-request", "la-camden", "health-camden", 2, 1),  # m2's reply came from someone else
        ("serious-incident-notification", "la-camden", "csprp", 1, 1)]
    assert (report.overdue_total, report.overdue_met, report.shares) == (3, 2, 1)  # the rapid review shared
    assert report.review_items_raised == report.review_items_awaiting == 3  # each overdue clock, in the queue


# -- a real browser -------------------------------------------------------------------------------


async def test_a_dpo_opens_changes_and_prints_the_report(browser_page: Any, live_url: str, settings: Settings,
                                                         agency: ClientFactory, client: Client,
                                                         tmp_path: Path) -> None:
    page = browser_page
    (message,) = await send_referrals(agency)
    await until_indexed(client, settings, message)

    await page.goto(f"{live_url}/ig/login")
    await page.get_by_label("Access token").fill(token(settings, "dpo", sub="dpo-ali"))
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("link", name="Monthly report").click()
    await page.get_by_role("heading", name=re.compile("^Monthly report: ")).wait_for()
    await page.get_by_label("Month", exact=True).fill(_this_month())
    await page.get_by_role("button", name="Show month").click()
    await page.wait_for_url(f"{live_url}/ig/report?month={_this_month()}")
    title = dt.datetime.now(dt.UTC).strftime("%B %Y")
    await page.get_by_role("heading", name=f"Monthly report: {title}").wait_for()
    assert await page.get_by_role("img", name=re.compile("Shares by message type")).locator("rect").count() == 1
    assert await page.get_by_role("table", name="Shares by message type").locator("tbody tr").count() == 1
    assert await page.locator("table").count() >= 9
    await assert_accessible(page, "/ig/report")
    await snap(page, "report-1-screen.png")

    await page.emulate_media(media="print")
    await page.set_viewport_size({"width": 680, "height": 960})  # A4's width inside 15 mm margins, at 96 dpi
    assert not await page.get_by_role("navigation", name="Main").is_visible()
    assert not await page.locator("form.month-picker").is_visible()
    cut = await page.evaluate("""() => [...document.querySelectorAll('table, svg')].filter(t =>
        t.getBoundingClientRect().right > document.documentElement.clientWidth + 1
        || t.scrollWidth > t.clientWidth + 1).map(t => t.id || t.tagName)""")
    assert cut == []
    await snap(page, "report-2-print.png")
    await page.pdf(path=str(tmp_path / "report.pdf"), format="A4", print_background=False)
    pdf = (tmp_path / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 5000
