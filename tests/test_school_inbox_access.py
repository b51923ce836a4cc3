"""The school's Operation Encompass inbox, through a real broker and nats-server: who may sign in
(only this school's DSL, every form with its CSRF token) and that a DSL token opens nothing of the
broker's API or IG pages; nothing half-done when the broker cannot be reached; only sealed, verified
messages kept; and kept notices still read and acknowledged after the keys rotate and retire.
The whole path and the real browser: tests/test_school_inbox.py.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from adapters.school.inbox import (
    DSL,
    SEALED,
    Inbox,
    inbox_app,
    inbox_audience,
    inbox_verifier,
    receipt_id,
)
from adapters.sdk import RECEIPT_SHARING, AgencyClient, DeliveryFailed
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
from tests.helpers import eventually
from tests.support.school import (
    POLICE,
    School,
    accepted,
    count_sends,
    notify,
    police_receipts,
    school_inbox,
)
from tests.support.web import SCHOOL, STAFF, Client, dsl_token, sign_in_inbox

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def school(broker: Broker, agency: ClientFactory, settings: Settings,
                 registry: Registry) -> AsyncIterator[School]:
    async with school_inbox(agency, settings, registry) as opened:
        yield opened


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
