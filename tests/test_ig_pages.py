"""The IG officers' pages: server behaviour through pytest-aiohttp, and a real headless Chromium
(Debian's, driven by Playwright) signing in, filtering, opening a trail, recording a review and
searching for a child. Screenshots go to ``$SGB_SCREENSHOTS`` when it is set.

Outside CI the browser tests skip when no Chromium is installed; in CI (``CI=true``) a missing
browser fails them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from broker.audit.query import RecordQuery
from broker.config import Settings
from broker.web.context import AuditService
from tests.conftest import ClientFactory
from tests.support.sending import NHS, NOT_SHARED_WORDS, send_not_to_share, send_referrals
from tests.support.web import sign_in, snap, token, until_indexed, until_recorded

pytestmark = pytest.mark.timeout(120)
Client = TestClient  # type: ignore[type-arg]


async def test_pages_need_a_session(client: Client, settings: Settings) -> None:
    for path in ("/ig/", "/ig/reviews", "/ig/subject", "/ig/charts", "/ig/integrity", "/ig/messages/x",
                 "/ig/rulebook"):
        r = await client.get(path, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"].startswith("/ig/login"), path
    r = await client.post("/ig/login", data={"token": "nonsense"})
    assert r.status == 401 and "Not signed in" in await r.text()
    r = await client.post("/ig/login", data={"token": token(settings, "ig-officer"), "next": "https://evil.example/"},
                          allow_redirects=False)
    assert r.headers["Location"] == "/ig/"  # no open redirect


async def test_roles_csrf_and_headers(client: Client, settings: Settings, agency: ClientFactory) -> None:
    (message,) = await send_referrals(agency, consent="REFUSED_OVERRIDDEN")
    await until_indexed(client, settings, message)
    csrf = await sign_in(client, settings, "auditor")
    r = await client.get("/ig/subject")
    assert r.status == 403  # subject access is for IG officers
    r = await client.get("/ig/")
    assert r.status == 200 and message[:8] in await r.text()
    assert "default-src 'none'" in r.headers["Content-Security-Policy"] and r.headers["Cache-Control"] == "no-store"
    assert 'name="outcome"' not in await (await client.get("/ig/reviews")).text()  # auditors cannot record reviews
    r = await client.post("/ig/reviews", data={"csrf": csrf, "item": f"flag:{message}", "outcome": "breach"})
    assert r.status == 403
    client.session.cookie_jar.clear()
    csrf = await sign_in(client, settings, "ig-officer")
    r = await client.post("/ig/reviews", data={"item": f"flag:{message}", "outcome": "breach"})
    assert r.status == 403 and "Form expired" in await r.text()  # no CSRF token
    r = await client.post("/ig/reviews", data={"csrf": csrf, "item": f"flag:{message}", "outcome": "breach"},
                          allow_redirects=False)
    assert r.status == 303
    client.session.cookie_jar.clear()
    await sign_in(client, settings, "operator")
    r = await client.get("/ig/", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/ig/integrity"
    assert (await client.get("/ig/charts")).status == 200


async def test_the_log_and_the_trail_say_why_a_decision_was_not_to_share(client: Client, settings: Settings,
                                                                           agency: ClientFactory) -> None:
    message = await send_not_to_share(agency)
    other = await send_not_to_share(agency, "RISK_TO_CHILD_IF_SHARED")
    await until_recorded(client, settings, message, "not-shared")
    await until_recorded(client, settings, other, "not-shared")
    await sign_in(client, settings, "auditor")
    log_page = await (await client.get("/ig/?notSharedReason=NOT_PROPORTIONATE")).text()
    assert "1 records" in log_page and message[:8] in log_page and other[:8] not in log_page
    assert "Reason: <strong>Not proportionate</strong>" in log_page and "decision-not-to-share.record" in log_page
    assert '<option value="NOT_PROPORTIONATE" selected>Not proportionate</option>' in log_page
    assert "Sharing would put the child at risk" in await (await client.get("/ig/?event=not-shared")).text()
    trail = await (await client.get(f"/ig/messages/{message}")).text()
    decision = trail.split('aria-label="Decision per recipient"')[1].split("</table>")[0]
    assert "la-camden" in decision and "Not proportionate" in decision and "NOT_PROPORTIONATE" in decision
    assert "decision-not-to-share.record" in decision
    for text in (log_page, trail):
        assert NOT_SHARED_WORDS not in text and "Okafor" not in text


async def test_pages_render_quickly_on_a_large_log(client: Client, settings: Settings, service: AuditService,
                                                   agency: ClientFactory) -> None:
    """Functional check that the pages page through a big index (the timing is in ``make bench``)."""
    (message,) = await send_referrals(agency)
    await until_indexed(client, settings, message)
    record = (await service.index.records(RecordQuery(equals={"event": "shared"}, limit=1))).items[0]
    batch = [(10_000 + i, [record | {"id": f"synthetic-{i}", "message": f"m-{i}", "n": 10_000 + i}])
             for i in range(5000)]
    await service.index.apply(batch, [], await service.index.last_seq())
    await sign_in(client, settings, "ig-officer")
    page = await (await client.get("/ig/?event=shared")).text()
    assert "50 records" in page and 'rel="next"' in page
    nxt = page.split('<a href="?')[1].split('"')[0].replace("&amp;", "&")
    second = await (await client.get("/ig/?" + nxt)).text()
    assert "50 records" in second, nxt
    assert "<svg" in await (await client.get("/ig/charts?by=decision")).text()
    csv_text = await (await client.get("/ig/export.csv?event=shared")).text()  # streamed in 1,000-row chunks
    assert len(csv_text.splitlines()) == 1 + 5001


# -- a real browser -------------------------------------------------------------------------------


async def test_an_ig_officer_reviews_a_share_in_the_browser(browser_page: Any, live_url: str, settings: Settings,
                                                            agency: ClientFactory, client: Client,
                                                            tmp_path: Path) -> None:
    page = browser_page
    (flagged,) = await send_referrals(agency, consent="REFUSED_OVERRIDDEN")
    (plain,) = await send_referrals(agency, consent="GIVEN")
    await until_indexed(client, settings, plain)

    await page.goto(f"{live_url}/ig/")
    assert "/ig/login" in page.url
    await page.get_by_label("Access token").fill(token(settings, "ig-officer", sub="ig-sam"))
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{live_url}/ig/")
    await page.get_by_role("heading", name="Sharing log").wait_for()
    await snap(page, "1-log.png")

    await page.get_by_label("Event").select_option("shared")
    await page.get_by_label("Consent status").select_option("REFUSED_OVERRIDDEN")
    await page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.records tbody tr")
    assert await rows.count() == 1
    await snap(page, "2-filtered.png")

    await rows.first.get_by_role("link").click()
    await page.get_by_role("heading", name=f"Trail of message {flagged}").wait_for()
    decision = page.get_by_role("table", name="Decision per recipient")
    assert "la-camden" in await decision.inner_text() and "share" in await decision.inner_text()
    await snap(page, "3-trail.png")

    await page.get_by_role("link", name="Review queue").click()
    item = page.locator("section.item", has_text="Consent overridden")
    await item.get_by_label("Follow up with the agency").check()
    await item.get_by_label("Case or ticket reference").fill("IG-2026/118")
    await item.get_by_role("button", name="Record review").click()
    await page.locator("#review-done").wait_for()
    assert await page.locator("section.item", has_text="Consent overridden").count() == 0
    await snap(page, "4-reviewed.png")
    await page.get_by_role("link", name="Reviewed").click()
    assert "ig-sam" in await page.locator("main").inner_text()

    await page.get_by_role("link", name="Subject access").click()
    await page.get_by_label("NHS number").fill(NHS)
    await page.get_by_role("button", name="Search").click()
    await page.locator("#results").wait_for()
    assert "2 messages found" in await page.locator("#results").inner_text()
    await snap(page, "5-subject.png")

    await page.get_by_role("link", name="Volumes").click()
    assert await page.locator("svg rect").count() >= 1
    await page.get_by_role("link", name="Integrity").first.click()
    await page.get_by_role("button", name="Verify the whole log").click()
    await page.locator("#integrity-state").wait_for()
    assert "verified" in await page.locator("#integrity-badge").inner_text()
    await snap(page, "6-integrity.png")


async def test_keyboard_only_navigation(browser_page: Any, live_url: str, settings: Settings) -> None:
    page = browser_page
    await page.goto(f"{live_url}/ig/login")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to main content"
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "token"
    await page.keyboard.type(token(settings, "auditor"))
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await page.get_by_role("heading", name="Sharing log").wait_for()
    unlabelled = await page.evaluate("""() => [
        ...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
        .filter(e => !e.labels || e.labels.length === 0).map(e => e.name)""")
    assert unlabelled == []


def test_web_app_has_no_route_without_an_owner() -> None:
    """Every /ig/ route is either the sign-in or guarded by the roles it is for (a new page cannot
    forget to be, nor widen who sees it)."""
    app = web.Application()
    from broker.web import igpages

    igpages.add_routes(app)
    open_paths = {"/ig", "/ig/", "/ig/login", "/ig/logout", "/ig/ig.css"}  # "/ig/" is the log's, for readers
    readers, officers, everyone = {"ig-officer", "auditor"}, {"ig-officer"}, {"ig-officer", "auditor", "operator"}
    expected = {("GET", "/ig/export.csv"): readers, ("GET", "/ig/messages/{message}"): readers,
                ("GET", "/ig/reviews"): readers | {"dpo"}, ("POST", "/ig/reviews"): officers,
                ("POST", "/ig/reviews/bulk"): officers,
                ("GET", "/ig/subject"): officers, ("POST", "/ig/subject"): officers,
                ("POST", "/ig/subject/proof"): officers,
                ("GET", "/ig/rulebook"): readers, ("GET", "/ig/report"): readers | {"dpo"},
                ("GET", "/ig/charts"): everyone | {"dpo"},
                ("GET", "/ig/integrity"): everyone | {"dpo"}, ("POST", "/ig/integrity"): everyone}
    guarded = {}
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if path not in open_paths:
            method = "GET" if route.method == "HEAD" else route.method
            guarded[(method, path)] = set(getattr(route.handler, "roles", ()))
    assert guarded == expected
