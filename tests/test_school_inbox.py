"""The school's Operation Encompass inbox, through a real broker and nats-server: police-met
notifies school-hillside; the adapter's Deliverer hands the notice to the inbox still sealed;
the DSL signs in, reads it and acknowledges it, and police-met receives the ``accepted``
receipt once; the list's paging and a notice without the police's instruction; and the same in a
real Chromium (keyboard only; screenshots to ``$SGB_SCREENSHOTS`` when it is set).
Who may sign in, an unreachable broker and key rotations: tests/test_school_inbox_access.py.
"""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from adapters.school.inbox import DSL, SEALED, receipt_id
from broker.config import Settings
from broker.pipeline.service import Broker
from broker.wire.registry import Registry
from tests.conftest import ClientFactory
from tests.support.school import (
    NHS,
    POLICE,
    School,
    accepted,
    count_sends,
    notification,
    notify,
    police_receipts,
    school_inbox,
)
from tests.support.web import SCHOOL, STAFF, Client, dsl_token, sign_in_inbox, snap

pytestmark = pytest.mark.timeout(90)

# what Operation Encompass gives the school's key adult, besides the child's name and date of birth
GIVEN = ("glass broken", "Said she was scared", "home address", "in the bedroom upstairs", "CAD-4471-22NOV")
# what the school must never see (the adults' details: the rulebook withholds them, the page shows only its fields)
WITHHELD = ("Demo-Smith", "Grace", "mother's partner", "alleged-perpetrator")
DO_NOT_CONTACT = "Do not contact the parents or carers about this notification."


@pytest.fixture
async def school(broker: Broker, agency: ClientFactory, settings: Settings,
                 registry: Registry) -> AsyncIterator[School]:
    async with school_inbox(agency, settings, registry) as opened:
        yield opened


# -- the whole path ---------------------------------------------------------------------------------


async def test_the_dsl_reads_and_acknowledges_a_notice_and_the_police_hear_it_once(
        school: School, settings: Settings, aiohttp_client: Callable[..., Awaitable[Client]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    message = await notify(school)
    sent = count_sends(school.client, monkeypatch)

    # kept sealed: nothing about the child on disk in clear, only the owner can read the file
    folder = settings.home / "adapters" / SCHOOL
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(school.inbox.path.stat().st_mode) == 0o600
    on_disk = b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())
    for clear in ("Ada", "Okafor-Demo", NHS, "2017-03-14", "A123456789012", *GIVEN, *WITHHELD):
        assert clear.encode() not in on_disk, clear
    (notice,) = await school.inbox.notices()
    assert (notice.sender, notice.message, notice.acknowledged_at) == (POLICE, message, None)
    opened = school.client.open(notice.raw).payload  # the page can open it; the broker sent the school its fields
    assert opened["child"] == {"name": {"given": "Ada", "family": "Okafor-Demo"}, "dateOfBirth": "2017-03-14"}
    assert "adultsInvolved" not in opened and opened["doNotContactParents"] is True
    await school.inbox.deliver(notice.delivery, notice.raw, SEALED)  # a second hand-over changes nothing
    assert len(await school.inbox.notices()) == 1

    http = await aiohttp_client(school.app)
    csrf = await sign_in_inbox(http, dsl_token(settings))
    r = await http.get("/inbox/")
    page = await r.text()
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["Cache-Control"] == "no-store" and r.headers["X-Frame-Options"] == "DENY"
    assert "1 notice not yet acknowledged" in page and "New" in page
    for shown in ("Ada Okafor-Demo", "14 March 2017", *GIVEN, "Yes", "Please do not approach the parents",
                  "Metropolitan Police Service", "Police instruction to the designated safeguarding lead",
                  DO_NOT_CONTACT, "Do not contact them about this notification"):
        assert shown in page, shown
    for hidden in (*WITHHELD, NHS, "A123456789012"):
        assert hidden not in page, hidden
    # each button's description carries the police's instruction (heard with it by a screen reader)
    described = page.split("aria-describedby=\"")[1].split("\"")[0].split()
    assert described == [f"ack-help-{notice.delivery}", f"dnc-{notice.delivery}"]
    assert f'id="dnc-{notice.delivery}"' in page
    r = await http.get(f"/inbox/notices/{notice.delivery}")
    assert r.status == 200 and "Ada Okafor-Demo" in await r.text()

    r = await http.post(f"/inbox/notices/{notice.delivery}/acknowledge", data={"csrf": csrf}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == f"/inbox/notices/{notice.delivery}?done=accepted"
    assert sent == ["accepted"]
    after = await (await http.get(r.headers["Location"])).text()
    assert "The police have been sent a receipt" in after and f"Acknowledged by {STAFF}" in after
    assert (await school.inbox.notice(notice.delivery)).acknowledged_by == STAFF  # type: ignore[union-attr]
    assert "Every notice has been acknowledged" in await (await http.get("/inbox/")).text()

    receipts = await police_receipts(school.police, message, want=3)  # routed, delivered, accepted
    assert sorted(d.payload["status"] for d in receipts) == ["accepted", "delivered", "routed"]
    (receipt,) = accepted(receipts)
    assert receipt.origin == (SCHOOL, receipt_id(notice.delivery, "accepted"))
    assert receipt.claims["re"] == message and receipt.payload["recipients"] == [SCHOOL]
    assert receipt.claims["sharing"]["decidedBy"] == {"role": DSL, "staffRef": STAFF}

    # a second acknowledgement (a double click, a reload) does not even try to send a receipt
    r = await http.post(f"/inbox/notices/{notice.delivery}/acknowledge", data={"csrf": csrf}, allow_redirects=False)
    assert r.status == 303 and sent == ["accepted"], "a second receipt was sent"

    # then support is in place: the police hear "actioned", once (and no second "accepted")
    r = await http.post(f"/inbox/notices/{notice.delivery}/actioned", data={"csrf": csrf}, allow_redirects=False)
    assert r.status == 303
    await http.post(f"/inbox/notices/{notice.delivery}/actioned", data={"csrf": csrf}, allow_redirects=False)
    assert sent == ["accepted", "actioned"]
    receipts = await police_receipts(school.police, message, want=1)
    assert [d.payload["status"] for d in receipts] == ["actioned"]
    assert f"Support in place, recorded by {STAFF}" in await (await http.get("/inbox/")).text()


async def test_the_older_page_link_takes_only_a_sequence_number(
        school: School, settings: Settings, aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    await notify(school)
    (notice,) = await school.inbox.notices()
    http = await aiohttp_client(school.app)
    await sign_in_inbox(http, dsl_token(settings))
    r = await http.get("/inbox/", params={"before": str(notice.seq)})
    assert r.status == 200 and "Ada Okafor-Demo" not in await r.text()  # a real link: the page before it
    r = await http.get("/inbox/", params={"before": str(notice.seq + 1)})
    assert r.status == 200 and "Ada Okafor-Demo" in await r.text()
    # anything else is no page marker at all: the first page, never a server error
    for before in ("\u00b2", "\u0663", "9" * 19, "9" * 40, "-1", "1e3", " 1", "abc", ""):
        r = await http.get("/inbox/", params={"before": before})
        assert r.status == 200, before
        assert "Ada Okafor-Demo" in await r.text(), before


async def test_a_notice_without_the_instruction_says_so_and_shows_what_it_has(
        school: School, settings: Settings, aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    """No instruction from the police: no banner, and the page says the police have not asked the
    school to avoid contacting the parents. A notice without the newer fields says they were not given."""
    payload = {k: v for k, v in notification().items()
               if k not in ("doNotContactParents", "circumstances", "voiceOfChild", "incidentLocation")}
    await notify(school, payload)
    await notify(school, notification() | {"doNotContactParents": False, "policeReference": "CAD-4472-22NOV"})
    http = await aiohttp_client(school.app)
    await sign_in_inbox(http, dsl_token(settings))
    page = await (await http.get("/inbox/")).text()
    assert DO_NOT_CONTACT not in page and "Police instruction" not in page and 'id="dnc-' not in page
    assert page.count("The police have not asked you to avoid it") == 2
    assert "glass broken" in page and "CAD-4472-22NOV" in page  # the second notice has them
    assert page.count("not given") >= 3  # the first has no location, circumstances or voice of the child


# -- a real browser -------------------------------------------------------------------------------


async def tab_to(page: Any, text: str, *, limit: int = 25) -> None:
    for _ in range(limit):
        await page.keyboard.press("Tab")
        if (await page.evaluate("document.activeElement.textContent")).strip().startswith(text):
            return
    raise AssertionError(f"no control starting {text!r} within {limit} presses of Tab")


async def test_the_dsl_acknowledges_with_the_keyboard_in_a_real_browser(
        browser_page: Any, school: School, settings: Settings, tmp_path: Path) -> None:
    page = browser_page
    message = await notify(school)
    server = TestServer(school.app, host="127.0.0.1")
    await server.start_server()
    try:
        base = str(server.make_url("/inbox/"))
        await page.goto(base)
        assert "/inbox/login" in page.url
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.textContent") == "Skip to main content"
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.id") == "token"
        assert await page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"  # focus shows
        await page.keyboard.type(dsl_token(settings))
        await snap(page, "inbox-1-sign-in.png")
        await page.keyboard.press("Tab")
        await page.keyboard.press("Enter")
        await page.get_by_role("heading", name="Operation Encompass notices").wait_for()
        assert "1 notice not yet acknowledged" in await page.locator("#waiting").inner_text()
        item = page.get_by_role("listitem").filter(has_text="Ada Okafor-Demo")
        text = await item.inner_text()
        assert "CAD-4471-22NOV" in text and "glass broken" in text and "Demo-Smith" not in await page.content()
        instruction = page.locator(".instruction")
        assert await instruction.is_visible() and DO_NOT_CONTACT in await instruction.inner_text()
        assert await instruction.evaluate("e => getComputedStyle(e).borderTopWidth") == "5px"  # it stands out
        unlabelled = await page.evaluate("""() => [
            ...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
            .filter(e => e.tagName === 'BUTTON' ? !e.textContent.trim() : (!e.labels || !e.labels.length))
            .map(e => e.name)""")
        assert unlabelled == []
        await snap(page, "inbox-2-list.png")

        await tab_to(page, "Ada Okafor-Demo")  # the notice's link
        await page.keyboard.press("Enter")
        await page.get_by_role("heading", name="Notice about Ada Okafor-Demo").wait_for()
        await tab_to(page, "Acknowledge")
        assert await page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
        description = await page.evaluate("""() => document.activeElement.getAttribute('aria-describedby')
            .split(' ').map(id => document.getElementById(id).textContent).join(' ')""")
        assert DO_NOT_CONTACT in " ".join(description.split())  # heard with the button
        await page.keyboard.press("Enter")
        await page.locator("#done").wait_for()
        assert "The police have been sent a receipt" in await page.locator("#done").inner_text()
        assert f"Acknowledged by {STAFF}" in await page.locator("main").inner_text()
        await snap(page, "inbox-3-acknowledged.png")
    finally:
        await server.close()
    assert len(accepted(await police_receipts(school.police, message, want=3))) == 1
