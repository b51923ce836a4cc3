"""The school's Operation Encompass inbox, through a real broker and nats-server: police-met
notifies school-hillside; the adapter's Deliverer hands the notice to the inbox still sealed;
the DSL signs in, reads it and acknowledges it, and police-met receives the ``accepted``
receipt once. Who may sign in, CSRF, an unreachable broker and a real Chromium (keyboard
only; screenshots to ``$SGB_SCREENSHOTS``, default the test's tmp dir) are covered too.
"""

from __future__ import annotations

import contextlib
import re
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from adapters.runtime.deliverer import DeadLetters, Deliverer
from adapters.school.inbox import (
    DSL,
    SEALED,
    Inbox,
    inbox_app,
    inbox_audience,
    inbox_verifier,
    receipt_id,
    render_sealed,
)
from adapters.sdk import RECEIPT_SHARING, AgencyClient, Delivery, DeliveryFailed
from broker.config import Settings
from broker.errors import ConfigError, InvalidEnvelope
from broker.http.tokens import TokenVerifier
from broker.identity.keys import load_identity
from broker.identity.rotation import retire_keys, rotate_keys
from broker.pipeline.service import Broker
from broker.transport.connection import connected, jetstream
from broker.web import api
from broker.wire import jws
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry
from tests.conftest import ClientFactory
from tests.helpers import eventually, example, sharing
from tests.support.casesystem import run_once
from tests.support.pipeline import queued, settled
from tests.support.web import STAFF, dsl_token, shots, sign_in_inbox

pytestmark = pytest.mark.timeout(90)
Client = TestClient[web.Request, web.Application]
SCHOOL, POLICE = "school-hillside", "police-met"
NHS = "9990001235"
# what Operation Encompass gives the school's key adult, besides the child's name and date of birth
GIVEN = ("glass broken", "Said she was scared", "home address", "in the bedroom upstairs", "CAD-4471-22NOV")
# what the school must never see (the adults' details: the rulebook withholds them, the page shows only its fields)
WITHHELD = ("Demo-Smith", "Grace", "mother's partner", "alleged-perpetrator")
DO_NOT_CONTACT = "Do not contact the parents or carers about this notification."


def notification() -> dict[str, Any]:
    payload: dict[str, Any] = example("encompass-notification.example.json")
    payload["child"]["nhsNumber"] = NHS
    return payload


@dataclass
class School:
    police: AgencyClient
    client: AgencyClient
    inbox: Inbox
    deliverer: Deliverer
    app: web.Application


@pytest.fixture
async def school(broker: Broker, agency: ClientFactory, settings: Settings,
                 registry: Registry) -> AsyncIterator[School]:
    police, client = await agency(POLICE), await agency(SCHOOL)
    inbox = Inbox.for_agency(settings.home, SCHOOL, client)
    deliverer = Deliverer(client, inbox, DeadLetters(settings.home / "adapters" / SCHOOL / "dead-letters"),
                          render=render_sealed, idle=0.3)
    app = web.Application()
    app.add_subapp("/inbox/", inbox_app(inbox, client, inbox_verifier(registry, settings.api, SCHOOL)))
    try:
        yield School(police, client, inbox, deliverer, app)
    finally:
        inbox.close()


async def notify(school: School, payload: dict[str, Any] | None = None) -> str:
    """police-met sends a notice; the adapter hands it to the inbox. Returns the police message id."""
    before = school.deliverer.counts.delivered
    message = await school.police.send(typ="encompass-notification", to=[SCHOOL], payload=payload or notification(),
                                       sharing=sharing("encompass-notification"))
    await run_once(school.deliverer, until=before + 1)  # (the broker's receipts for the school's receipts count too)
    assert school.deliverer.counts.dead_lettered == 0
    assert message in {n.message for n in await school.inbox.notices()}
    return message


async def police_receipts(police: AgencyClient, message: str, *, want: int, timeout: float = 10.0) -> list[Delivery]:
    """Receipts about ``message`` that police-met receives: at least ``want``, then, once the broker
    has finished everything published to it (so a duplicate would be stored by then), whatever
    else waits in police-met's queue."""
    got: list[Delivery] = []

    async def taken() -> bool:
        async for delivery, msg in police.fetch(idle=0.3):
            assert delivery is not None
            await msg.ack_sync()
            if delivery.type == "receipt" and delivery.payload["messageId"] == message:
                got.append(delivery)
        return len(got) >= want

    await eventually(taken, what=f"{want} receipts about {message}", timeout=timeout, every=0)
    await settled(police.js, timeout=timeout)
    await taken()
    assert await queued(police.js, "police-met") == 0
    return got


def accepted(receipts: list[Delivery]) -> list[Delivery]:
    return [d for d in receipts if d.payload["status"] == "accepted"]


# -- the whole path ---------------------------------------------------------------------------------


def count_sends(client: AgencyClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The status of every receipt ``client`` is asked to send (each attempt, before NATS): the real
    ``send`` still runs, so a duplicate cannot hide behind JetStream's de-duplication."""
    sent: list[str] = []
    real = client.send

    async def counting(**kwargs: Any) -> str:
        sent.append(str(kwargs["payload"]["status"]))
        return await real(**kwargs)

    monkeypatch.setattr(client, "send", counting)
    return sent


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


# -- who may open it ------------------------------------------------------------------------------


async def test_only_this_schools_dsl_signs_in_and_every_form_needs_its_csrf_token(
        school: School, settings: Settings, registry: Registry,
        aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    await notify(school)
    (notice,) = await school.inbox.notices()
    http = await aiohttp_client(school.app)
    ack = f"/inbox/notices/{notice.delivery}/acknowledge"

    for path in ("/inbox/", f"/inbox/notices/{notice.delivery}"):
        r = await http.get(path, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"].startswith("/inbox/login?next="), path
    r = await http.post(ack, data={"csrf": "x"}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"].startswith("/inbox/login")

    refused = {
        "nonsense": ("not-a-token", 401, "cannot be read"),
        "another school": (dsl_token(settings, audience=inbox_audience("school-oakwood")), 401, "another audience"),
        "the API audience": (dsl_token(settings, audience=settings.api.audience), 401, "another audience"),
        "several services": (dsl_token(settings, audience=[inbox_audience(SCHOOL), settings.api.audience]),  # type: ignore[arg-type]
                             401, "this one alone"),
        "another role": (dsl_token(settings, roles=("ig-officer",)), 403, "role (dsl)"),
        "not a staff reference": (dsl_token(settings, sub="Mrs Jane Smith"), 403, "not a staff reference"),
        "expired": (dsl_token(settings, ttl=-120), 401, "expired"),
    }
    for why, (token, status, reason) in refused.items():
        r = await http.post("/inbox/login", data={"token": token}, allow_redirects=False)
        assert r.status == status and reason in await r.text(), why
        assert "sgb_inbox" not in r.cookies, why
        http.session.cookie_jar.update_cookies({"sgb_inbox": token})  # a cookie planted by hand is no better
        r = await http.get("/inbox/", allow_redirects=False)
        assert r.status == 303, why
        r = await http.post(ack, data={"csrf": "x"}, allow_redirects=False)
        assert r.status == 303, why
        http.session.cookie_jar.clear()
    r = await http.post("/inbox/login", data={"token": dsl_token(settings), "next": "https://evil.example/"},
                        allow_redirects=False)
    assert r.headers["Location"] == "/inbox/"  # no open redirect

    csrf = await sign_in_inbox(http, dsl_token(settings))
    r = await http.post(ack, data={})
    assert r.status == 403 and "Form expired" in await r.text()
    r = await http.post(ack, data={"csrf": csrf[::-1]})
    assert r.status == 403
    assert (await school.inbox.notice(notice.delivery)).acknowledged_at is None  # type: ignore[union-attr]
    r = await http.post(f"/inbox/notices/{notice.delivery}/actioned", data={"csrf": csrf})
    assert r.status == 409  # support in place only after acknowledging
    r = await http.get("/inbox/notices/no-such-notice")
    assert r.status == 404

    r = await http.post("/inbox/logout", allow_redirects=False)
    assert r.status == 303
    assert (await http.get("/inbox/", allow_redirects=False)).status == 303

    # wired by mistake with the API's verifier, the inbox refuses to start: it takes only its own audience
    with pytest.raises(ConfigError, match="alone"):
        inbox_app(school.inbox, school.client, TokenVerifier(registry, settings.api))


async def test_a_dsl_token_opens_no_api_route_and_no_ig_page(client: Client, settings: Settings) -> None:
    """The API and the IG pages check specific roles; a dsl token gets nothing from them, neither
    with the inbox's audience nor with the API's."""
    inbox_token, api_audience_token = dsl_token(settings), dsl_token(settings, audience=settings.api.audience)
    for method, path, _ in api.ROUTES:
        concrete = re.sub(r"\{[^}]+\}", "m-1", path)
        for token, status in ((inbox_token, 401), (api_audience_token, 403)):
            r = await client.request(method, concrete, headers={"Authorization": f"Bearer {token}"}, json={})
            assert r.status == status, (method, path, status)
    r = await client.post("/ig/login", data={"token": inbox_token, "next": "/ig/"}, allow_redirects=False)
    assert r.status == 401
    for path in ("/ig/", "/ig/reviews", "/ig/subject", "/ig/charts", "/ig/integrity", "/ig/messages/m-1"):
        client.session.cookie_jar.update_cookies({"sgb_session": api_audience_token})
        r = await client.get(path, allow_redirects=False)
        assert r.status in (303, 403), path
        assert r.status == 403 or "/ig/integrity" in r.headers["Location"], path
    r = await client.get("/ig/integrity")
    assert r.status == 403 and "Not permitted" in await r.text()


# -- nothing half-done ---------------------------------------------------------------------------


async def test_when_the_broker_cannot_be_reached_nothing_is_recorded_and_a_retry_sends_one_receipt(
        school: School, settings: Settings, registry: Registry, catalogue: Catalogue,
        aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    message = await notify(school)
    (notice,) = await school.inbox.notices()
    verifier = inbox_verifier(registry, settings.api, SCHOOL)
    async with contextlib.AsyncExitStack() as stack:
        nc = await stack.enter_async_context(connected(settings, settings.nats.url or "", name="school-down"))
        cut_off = AgencyClient(nc, jetstream(nc, settings), registry, load_identity(settings.home, SCHOOL), catalogue,
                               request_timeout=0.5)
        await nc.close()
        down = web.Application()
        down.add_subapp("/inbox/", inbox_app(school.inbox, cut_off, verifier))
        http = await aiohttp_client(down)
        csrf = await sign_in_inbox(http, dsl_token(settings))
        r = await http.post(f"/inbox/notices/{notice.delivery}/acknowledge", data={"csrf": csrf})
        text = await r.text()
        assert r.status == 503 and "The broker cannot be reached" in text and "nothing was recorded" in text
        assert "Ada" not in text.split("<main")[1].split("</main>")[0].split("Back to")[0]  # no personal data
        assert (await school.inbox.notice(notice.delivery)).acknowledged_at is None  # type: ignore[union-attr]
        assert "1 notice not yet acknowledged" in await (await http.get("/inbox/")).text()

    # the adapter crashed after a receipt went out but before it was recorded: the retry reuses its id
    await school.client.send(typ="receipt", to=[POLICE], re=message, jti=receipt_id(notice.delivery, "accepted"),
                             sharing=RECEIPT_SHARING | {"decidedBy": {"role": DSL, "staffRef": STAFF}},
                             payload={"messageId": message, "status": "accepted", "at": "2026-11-22T07:50:00Z",
                                      "recipients": [SCHOOL]})
    http = await aiohttp_client(school.app)
    csrf = await sign_in_inbox(http, dsl_token(settings))
    r = await http.post(f"/inbox/notices/{notice.delivery}/acknowledge", data={"csrf": csrf}, allow_redirects=False)
    assert r.status == 303
    assert (await school.inbox.notice(notice.delivery)).acknowledged_by == STAFF  # type: ignore[union-attr]
    assert len(accepted(await police_receipts(school.police, message, want=3))) == 1


async def test_the_inbox_keeps_only_sealed_verified_messages(school: School, settings: Settings) -> None:
    """A misconfigured ``render`` (the default canonical JSON) cannot put a child's details on disk,
    and a delivery that fails verification is not kept."""
    with pytest.raises(DeliveryFailed) as refused:
        await school.inbox.deliver("d-1", b'{"payload": {"child": {"name": {"given": "Ada"}}}}', "application/json")
    assert refused.value.permanent
    unverifying = Inbox(settings.home / "unverified.sqlite")
    try:
        for inbox in (school.inbox, unverifying):
            with pytest.raises(DeliveryFailed):
                await inbox.deliver("d-1", b"eyJhIjoxfQ.eyJhIjoxfQ.c2ln", SEALED)  # a JWS with no sealed payload
            assert await inbox.notices() == []
    finally:
        unverifying.close()
    await notify(school)
    (notice,) = await school.inbox.notices()
    head, body, signature = notice.raw.split(b".")
    forged = b".".join((head, body, (b"A" if signature[:1] != b"A" else b"B") + signature[1:]))
    with pytest.raises(DeliveryFailed, match="failed verification"):
        await school.inbox.deliver(notice.delivery + "-x", forged, SEALED)
    kept = b"".join(p.read_bytes() for p in school.inbox.path.parent.glob(f"{school.inbox.path.name}*"))  # and WAL
    assert len(await school.inbox.notices()) == 1 and b"Ada" not in kept


# -- key rotations ---------------------------------------------------------------------------------


async def test_a_kept_notice_still_shows_and_is_acknowledged_after_the_keys_rotate_and_retire(
        school: School, broker: Broker, settings: Settings, registry: Registry, catalogue: Catalogue,
        aiohttp_client: Callable[..., Awaitable[Client]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The inbox keeps notices sealed for as long as the school needs them: a broker key rotation
    whose overlap has passed (the notice's signing key has expired) and a rotation and retirement
    of the school's own keys (the key it was sealed to has left the registry) lock nothing out."""
    message = await notify(school)
    (notice,) = await school.inbox.notices()
    sealed_to = school.client.open(notice.raw).claims["enc"]["kid"]
    signed_by = wire_kid(notice.raw)
    assert len(await police_receipts(school.police, message, want=2)) == 2  # routed, delivered: collected now

    overlap = 1.5
    broker_keys = rotate_keys(settings.home, settings.registry_path, "sg-broker", overlap=overlap)
    school_keys = rotate_keys(settings.home, settings.registry_path, SCHOOL, overlap=overlap)
    assert signed_by in broker_keys.ended and sealed_to in school_keys.ended
    registry.replace_with(Registry.load(settings.registry_path, catalogue))  # the adapters' SIGHUP, first
    school.client.reload(registry, load_identity(settings.home, SCHOOL))
    assert broker.reload()
    overlap_ends = max(broker_keys.not_after, school_keys.not_after) + 0.05
    await eventually(lambda: time.time() > overlap_ends, what="the overlap to pass")
    retired = retire_keys(settings.home, settings.registry_path, SCHOOL, now=time.time())
    assert sealed_to in retired.enc and retired.purged == ()
    registry.replace_with(Registry.load(settings.registry_path, catalogue))
    school.client.reload(registry, load_identity(settings.home, SCHOOL))
    assert broker.reload()

    with pytest.raises(InvalidEnvelope):
        school.client.open(notice.raw)  # checked now, the broker's old signing key has expired...
    assert school.client.open(notice.raw, when=time.time() - 60) is not None  # ...not when the notice came
    assert sealed_to in school.client.identity.kem  # and the key file kept the retired decryption key

    sent = count_sends(school.client, monkeypatch)
    http = await aiohttp_client(school.app)
    csrf = await sign_in_inbox(http, dsl_token(settings))
    page = await (await http.get("/inbox/")).text()
    assert "Ada Okafor-Demo" in page and "CAD-4471-22NOV" in page and "1 notice not yet acknowledged" in page
    r = await http.get(f"/inbox/notices/{notice.delivery}")
    assert r.status == 200 and "Notice about Ada Okafor-Demo" in await r.text()
    r = await http.post(f"/inbox/notices/{notice.delivery}/acknowledge", data={"csrf": csrf}, allow_redirects=False)
    assert r.status == 303, await r.text()
    assert sent == ["accepted"]
    assert (await school.inbox.notice(notice.delivery)).acknowledged_by == STAFF  # type: ignore[union-attr]
    (receipt,) = accepted(await police_receipts(school.police, message, want=1))  # signed with the new keys
    assert receipt.origin == (SCHOOL, receipt_id(notice.delivery, "accepted"))
    assert wire_kid(receipt.raw) == broker_keys.sig_kid


def wire_kid(raw: bytes) -> str:
    """The key id a wire message is signed with."""
    return str(jws.read_header(raw)["kid"])


# -- a real browser -------------------------------------------------------------------------------


async def tab_to(page: Any, text: str, *, limit: int = 25) -> None:
    for _ in range(limit):
        await page.keyboard.press("Tab")
        if (await page.evaluate("document.activeElement.textContent")).strip().startswith(text):
            return
    raise AssertionError(f"no control starting {text!r} within {limit} presses of Tab")


async def test_the_dsl_acknowledges_with_the_keyboard_in_a_real_browser(
        browser_page: Any, school: School, settings: Settings, tmp_path: Path) -> None:
    page, out = browser_page, shots(tmp_path)
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
        await page.screenshot(path=str(out / "inbox-1-sign-in.png"), full_page=True)
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
        await page.screenshot(path=str(out / "inbox-2-list.png"), full_page=True)

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
        await page.screenshot(path=str(out / "inbox-3-acknowledged.png"), full_page=True)
    finally:
        await server.close()
    assert len(accepted(await police_receipts(school.police, message, want=3))) == 1
    assert all((out / f"inbox-{n}.png").stat().st_size > 1000 for n in ("1-sign-in", "2-list", "3-acknowledged"))
