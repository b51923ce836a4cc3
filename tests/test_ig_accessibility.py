"""Accessibility (issue 17, part 4): public-sector services must meet WCAG 2.2 AA. axe-core's A and
AA rules run in a real Chromium over every IG page and the school's inbox, with zero violations
allowed; and the main journeys are done with the keyboard alone (no mouse, no script of the page's
own), with a "skip to main content" link as the first tab stop and a visible focus indicator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from broker.config import Settings
from broker.pipeline.service import Broker
from broker.wire.registry import Registry
from tests.conftest import ClientFactory
from tests.support.axe import assert_accessible
from tests.support.school import School, notify, school_inbox
from tests.support.sending import NHS, send_referrals
from tests.support.web import STAFF, Client, dsl_token, snap, token, until_indexed

pytestmark = pytest.mark.timeout(150)

# What the focused element is, and whether its focus shows (an outline or a ring drawn as a box shadow).
_FOCUSED = """() => {
  const e = document.activeElement, style = getComputedStyle(e);
  return {tag: e.tagName.toLowerCase(), id: e.id, name: e.getAttribute('name'), type: e.getAttribute('type'),
          href: e.getAttribute('href'), value: e.value,
          buttons: e.form ? [...e.form.querySelectorAll('button')].map(b => b.textContent.trim()) : [],
          text: (e.textContent || '').trim(), label: e.labels && e.labels.length ? e.labels[0].textContent.trim() : '',
          checked: !!e.checked,
          ring: (style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0) || style.boxShadow !== 'none'};
}"""


async def focused(page: Any) -> dict[str, Any]:
    return await page.evaluate(_FOCUSED)  # type: ignore[no-any-return]


async def tab_until(page: Any, wanted: str, match: Any, *, limit: int = 60) -> dict[str, Any]:
    """Press Tab until the focused element matches; fail if it never does, or if its focus does not show."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        seen = await focused(page)
        if match(seen):
            assert seen["ring"], f"{wanted} has focus but no visible focus indicator"
            return seen
    raise AssertionError(f"{wanted} not reached within {limit} presses of Tab")


async def skip_link_first(page: Any) -> None:
    """The first tab stop is the skip link, it shows when focused, and it moves focus to <main>."""
    await page.keyboard.press("Tab")
    seen = await focused(page)
    assert (seen["tag"], seen["text"]) == ("a", "Skip to main content") and seen["ring"], seen
    assert await page.evaluate("document.activeElement.getBoundingClientRect().left >= 0")  # on screen
    await page.keyboard.press("Enter")
    assert (await focused(page))["id"] == "main"  # the next Tab goes on from the page's own content


async def keyboard_sign_in(page: Any, url: str, access: str) -> None:
    """From a sign-in page: skip link, then the token's field, then the button, by Tab, Enter and typing."""
    await page.goto(url)
    await skip_link_first(page)
    seen = await tab_until(page, "the access token field", lambda f: f["id"] == "token")
    assert seen["tag"] == "textarea"
    await page.keyboard.type(access)
    await tab_until(page, "the sign-in button", lambda f: f["tag"] == "button" and f["text"] == "Sign in", limit=3)
    await page.keyboard.press("Enter")


async def choose(page: Any, field: dict[str, Any], value: str, *, limit: int = 40) -> None:
    """Set the focused field to ``value`` by keyboard: a select by its arrow keys, a text field by typing."""
    if field["tag"] != "select":
        await page.keyboard.type(value)
        return
    for _ in range(limit):
        if (await focused(page))["value"] == value:
            return
        await page.keyboard.press("ArrowDown")
    raise AssertionError(f"{value!r} not among the first {limit} choices of {field['label']}")


@pytest.fixture
async def school(broker: Broker, agency: ClientFactory, settings: Settings,
                 registry: Registry) -> AsyncIterator[School]:
    async with school_inbox(agency, settings, registry) as opened:
        yield opened


@pytest.fixture
async def inbox_url(school: School) -> AsyncIterator[str]:
    """The school's inbox on a real port, for the browser."""
    server = TestServer(school.app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/inbox/"))
    finally:
        await server.close()


# -- axe over every page -----------------------------------------------------------------------------


async def test_every_ig_page_has_no_wcag_violation(browser_page: Any, live_url: str, settings: Settings,
                                                   agency: ClientFactory, client: Client, tmp_path: Path) -> None:
    page = browser_page
    (message,) = await send_referrals(agency, consent="REFUSED_OVERRIDDEN")
    await until_indexed(client, settings, message)
    await page.goto(f"{live_url}/ig/login")
    await assert_accessible(page, "the sign-in page")
    await page.get_by_label("Access token").fill("not a token")
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("alert").wait_for()
    await assert_accessible(page, "the sign-in page with its error")
    await page.get_by_label("Access token").fill(token(settings, "ig-officer", sub="ig-sam"))
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{live_url}/ig/")
    await page.keyboard.press("Tab")  # the skip link, shown on focus, is checked too (its contrast)
    await assert_accessible(page, "/ig/ with the skip link shown")
    for path in ("/ig/", "/ig/?consentStatus=REFUSED_OVERRIDDEN", "/ig/reviews", "/ig/reviews?state=escalated",
                 f"/ig/messages/{message}", "/ig/subject", "/ig/charts", "/ig/integrity", "/ig/rulebook",
                 "/ig/report", "/ig/messages/no-such-message"):
        response = await page.goto(f"{live_url}{path}")
        assert response.status == (404 if "no-such" in path else 200), path  # the page itself, not an error
        await assert_accessible(page, path)
    form = page.locator("form", has=page.get_by_role("button", name="Record review")).first
    await page.goto(f"{live_url}/ig/reviews")
    await form.locator("input[name=outcome]").first.check()
    await form.get_by_role("button", name="Record review").click()
    await page.locator("[role=status]", has_text="Review recorded").wait_for()
    await assert_accessible(page, "the review queue with its confirmation")
    await page.goto(f"{live_url}/ig/reviews?state=done")
    assert "ig-sam" in await page.locator("main").inner_text()
    await assert_accessible(page, "the reviewed items")
    await page.goto(f"{live_url}/ig/subject")
    await page.get_by_label("NHS number").fill(NHS)
    await page.get_by_role("button", name="Search").click()
    await page.locator("#results").wait_for()
    await assert_accessible(page, "the subject-access results")
    await page.goto(f"{live_url}/ig/integrity")
    await page.get_by_role("button", name="Verify the whole log").click()
    await page.locator("#integrity-state").wait_for()
    await assert_accessible(page, "the integrity page after a full check")
    await snap(page, "a11y-integrity.png")


async def test_every_inbox_page_has_no_wcag_violation(browser_page: Any, school: School, inbox_url: str,
                                                      settings: Settings) -> None:
    page = browser_page
    await notify(school)
    (notice,) = await school.inbox.notices()
    await page.goto(inbox_url)
    await assert_accessible(page, "the inbox's sign-in page")
    await page.get_by_label("Access token").fill(dsl_token(settings))
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", name="Operation Encompass notices").wait_for()
    await assert_accessible(page, "the inbox's list")
    await page.goto(f"{inbox_url}notices/{notice.delivery}")
    await assert_accessible(page, "a notice")
    await page.get_by_role("button", name="Acknowledge").first.click()
    await page.locator("[role=status]").wait_for()
    await assert_accessible(page, "a notice just acknowledged")
    await page.goto(inbox_url)
    await assert_accessible(page, "the inbox's list with every notice acknowledged")
    await page.goto(f"{inbox_url}notices/no-such-notice")
    await assert_accessible(page, "the inbox's not-found page")


# -- keyboard-only journeys --------------------------------------------------------------------------


async def test_an_ig_officer_signs_in_and_filters_the_log_with_the_keyboard(
        browser_page: Any, live_url: str, settings: Settings, agency: ClientFactory, client: Client) -> None:
    page = browser_page
    (flagged,) = await send_referrals(agency, consent="REFUSED_OVERRIDDEN")
    (plain,) = await send_referrals(agency, consent="GIVEN")
    await until_indexed(client, settings, plain)
    await page.goto(f"{live_url}/ig/")  # sends the reader to sign in
    assert "/ig/login" in page.url
    await keyboard_sign_in(page, page.url, token(settings, "ig-officer", sub="ig-sam"))
    await page.get_by_role("heading", name="Sharing log").wait_for()
    assert page.url == f"{live_url}/ig/"
    await skip_link_first(page)

    await choose(page, await tab_until(page, "the consent status filter", lambda f: f["label"] == "Consent status"),
                 "REFUSED_OVERRIDDEN")
    await tab_until(page, "the Filter button", lambda f: f["tag"] == "button" and f["text"] == "Filter")
    await page.keyboard.press("Enter")
    await page.wait_for_url("**consentStatus=REFUSED_OVERRIDDEN**")
    assert await page.get_by_label("Consent status").input_value() == "REFUSED_OVERRIDDEN"  # the form keeps it
    main = page.locator("main")
    assert await main.locator(f'a[href="/ig/messages/{flagged}"]').count() >= 1
    assert await main.locator(f'a[href="/ig/messages/{plain}"]').count() == 0

    # and on to the message's trail, by its link
    await tab_until(page, "the flagged message's trail link",
                    lambda f: f["href"] == f"/ig/messages/{flagged}", limit=80)
    await page.keyboard.press("Enter")
    await page.get_by_role("heading", name=f"Trail of message {flagged}").wait_for()


async def test_an_ig_officer_records_a_review_with_the_keyboard(
        browser_page: Any, live_url: str, settings: Settings, agency: ClientFactory, client: Client,
        tmp_path: Path) -> None:
    page = browser_page
    (flagged,) = await send_referrals(agency, consent="REFUSED_OVERRIDDEN")
    await until_indexed(client, settings, flagged)
    await keyboard_sign_in(page, f"{live_url}/ig/login", token(settings, "ig-officer", sub="ig-sam"))
    await page.get_by_role("heading", name="Sharing log").wait_for()
    await page.goto(f"{live_url}/ig/reviews")  # as a bookmark would (the nav's link is a tab stop, tested above)
    await skip_link_first(page)

    first = await tab_until(page, "an item's review form's first outcome",
                            lambda f: f["name"] == "outcome" and "Record review" in f["buttons"])
    assert first["type"] == "radio" and not first["checked"]
    await page.keyboard.press("Space")  # Space checks the focused radio button
    assert (await focused(page))["checked"]
    await page.keyboard.press("ArrowDown")  # the arrows move through the group, checking as they go
    second = await focused(page)
    assert second["name"] == "outcome" and second["checked"] and second["id"] != first["id"]
    await tab_until(page, "the Record review button", lambda f: f["tag"] == "button" and f["text"] == "Record review",
                    limit=5)
    await page.keyboard.press("Enter")
    status = page.get_by_role("status").filter(has_text="Review recorded")
    await status.wait_for()  # role=status: a screen reader announces it
    await snap(page, "a11y-review-recorded.png")

    await page.goto(f"{live_url}/ig/reviews?state=done")
    assert second["label"] in await page.locator("main").inner_text()  # the outcome chosen by arrow key


async def test_the_dsl_opens_and_acknowledges_a_notice_with_the_keyboard(
        browser_page: Any, school: School, inbox_url: str, settings: Settings) -> None:
    page = browser_page
    await notify(school)
    await page.goto(inbox_url)
    assert "/inbox/login" in page.url
    await keyboard_sign_in(page, page.url, dsl_token(settings))
    await page.get_by_role("heading", name="Operation Encompass notices").wait_for()
    await skip_link_first(page)

    await tab_until(page, "the notice's link", lambda f: f["tag"] == "a" and f["text"].startswith("Ada Okafor-Demo"))
    await page.keyboard.press("Enter")
    await page.get_by_role("heading", name="Notice about Ada Okafor-Demo").wait_for()
    await skip_link_first(page)
    await tab_until(page, "the Acknowledge button",
                    lambda f: f["tag"] == "button" and f["text"].startswith("Acknowledge"))
    await page.keyboard.press("Space")  # a button takes Space as well as Enter
    status = page.get_by_role("status")
    await status.wait_for()
    assert "The police have been sent a receipt" in await status.inner_text()
    assert f"Acknowledged by {STAFF}" in await page.locator("main").inner_text()
