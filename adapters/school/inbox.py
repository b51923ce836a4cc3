"""A school's Operation Encompass inbox: notices kept sealed, read and acknowledged by the DSL.

The adapter hands each delivery to an :class:`~adapters.school.store.Inbox` still sealed
(:func:`render_sealed`; :mod:`adapters.school.store` keeps it). The web pages
(:func:`inbox_app`) open each notice in memory when they show it, checking the broker's
signature as of when the notice came, so a key rotation since does not lock the school out.
They show what Operation Encompass gives the school's key adult, and the police's instruction
not to contact the parents or carers, when they give it, above everything else.

The designated safeguarding lead signs in with a token from the partnership's issuer (role
``dsl``, audience ``sgb-inbox-<school id>`` alone: one school's token does not open another's
inbox), the way every page of ours signs people in (:mod:`broker.http.sessions`).
"Acknowledge" sends the police a ``receipt`` with status ``accepted`` through the broker and
only then records who acknowledged it and when;
"Support in place" sends ``actioned`` the same way. Each receipt's message id is derived from
the delivery id and the status, so a second click, a retry or two DSLs at once send one
receipt (JetStream and the broker drop the duplicate). If the broker cannot be reached
nothing is recorded, and the page says to try again.

Wiring, in the adapter service::

    inbox = Inbox.for_agency(settings.home, "school-hillside", client)   # the Deliverer's sink
    deliverer = Deliverer(client, inbox, dead, render=render_sealed)
    verifier = inbox_verifier(registry, settings.api, "school-hillside")
    app.add_subapp("/inbox/", inbox_app(inbox, client, verifier))
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import structlog
from aiohttp import web

from adapters.school.store import ENCOMPASS, PAGE_SIZE, SEALED, Inbox, Notice, now, render_sealed
from adapters.sdk import RECEIPT_SHARING, AgencyClient, Delivery, receipt_id
from broker.config import ApiSettings
from broker.errors import BrokerError, ConfigError, InvalidEnvelope
from broker.http import sessions
from broker.http.pages import headers_middleware, stylesheet, templates
from broker.http.sessions import SESSIONS, Page, Sessions, signed_in
from broker.http.tokens import AuthError, Principal, TokenVerifier
from broker.wire.registry import Registry

__all__ = ["DSL", "SEALED", "Inbox", "inbox_app", "inbox_audience", "inbox_verifier", "receipt_id", "render_sealed"]

log = structlog.get_logger("sgb.school")

ROLE: Final = "dsl"
DSL: Final = "Designated safeguarding lead"
COOKIE: Final = "sgb_inbox"
# What a school shows of a notice: the fields the rulebook gives a school (Operation Encompass),
# and no others (a notice that carried more, under some other rule, still shows only these; of
# the child, only the name and date of birth).
SHOWN: Final = ("child", "incidentDateTime", "incidentLocation", "childPresent", "whereChildWas", "circumstances",
                "voiceOfChild", "policeReference", "keyAdultAdvice", "doNotContactParents")
_CHILD_SHOWN: Final = ("name", "dateOfBirth")
_STAFF_REF: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9/_.-]{0,39}$")  # sharing.v1.json decidedBy.staffRef
_TEMPLATES: Final = Path(__file__).parent / "templates"
try:
    _LONDON: dt.tzinfo = zoneinfo.ZoneInfo("Europe/London")
except zoneinfo.ZoneInfoNotFoundError:  # no tz database: show UTC, and say so
    _LONDON = dt.UTC


def inbox_audience(school: str) -> str:
    """The token audience of ``school``'s inbox."""
    return f"sgb-inbox-{school}"


def inbox_verifier(registry: Registry, api: ApiSettings, school: str) -> TokenVerifier:
    """Tokens from the partnership's issuer for this school's inbox, and for nothing else."""
    return TokenVerifier(registry, dataclasses.replace(api, audience=inbox_audience(school)), sole_audience=True)


# -- the pages ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Inbox:
    inbox: Inbox
    client: AgencyClient
    verifier: TokenVerifier
    lock: asyncio.Lock


_STATE: Final = web.AppKey("school_inbox", _Inbox)


def _state(request: web.Request) -> _Inbox:
    return request.app[_STATE]


def _verify(request: web.Request, token: str) -> Principal:
    """A DSL of this school: the issuer's signature and this inbox's audience alone (the verifier's
    checks), the ``dsl`` role and a subject that is a staff reference (it goes into each receipt's
    ``decidedBy``)."""
    who = _state(request).verifier.verify(token)
    if not who.has(ROLE):
        raise AuthError("this inbox needs the designated safeguarding lead's role (dsl)", status=403)
    if not _STAFF_REF.match(who.sub):
        raise AuthError("the token's subject is not a staff reference (letters, digits, / _ . -)", status=403)
    return who


async def _globals(request: web.Request, who: Principal | None) -> dict[str, Any]:
    client = _state(request).client
    school = client.registry.get(client.agency)
    return {"agency": client.agency, "school": school.name if school else client.agency}


def _sessions() -> Sessions:
    return Sessions(name="inbox", cookie=COOKIE, env=templates(_TEMPLATES), verify=_verify, globals=_globals,
                    login_template="inbox-login.html", error_template="inbox-error.html")


def _base(request: web.Request) -> str:
    return request.app[SESSIONS].base(request)


async def _page(request: web.Request, template: str, *, status: int = 200, who: Principal | None = None,
                **context: Any) -> web.Response:
    return await request.app[SESSIONS].render(request, template, status=status, who=who, **context)


_signed_in: Final = signed_in(ROLE)


@dataclass(frozen=True, slots=True)
class _Shown:
    """A notice opened in memory for one page: only the fields a school is given."""

    notice: Notice
    sender: str
    fields: Mapping[str, Any] | None  # None: it could not be verified or opened


def _open(client: AgencyClient, notice: Notice) -> Delivery:
    """Open a kept notice in memory. Its signature was verified when it came (:meth:`Inbox.deliver`),
    so the broker's signing key is checked as of then: a key that has passed its ``notAfter``
    since (a broker key rotation) does not lock the school out of its notices. The payload opens
    with whichever of the school's decryption keys it was sealed to; ``sgb keys retire`` keeps
    the old ones in the key file for this."""
    return client.open(notice.raw, when=_timestamp(notice.received_at))


def _timestamp(value: str) -> float | None:
    """Seconds since the epoch of a kept ISO time (None, meaning now, if it cannot be read)."""
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


def _show(state: _Inbox, notice: Notice) -> _Shown:
    agency = state.client.registry.get(notice.sender or "")
    sender = agency.name if agency else (notice.sender or "unknown sender")
    try:
        delivery = _open(state.client, notice)
    except InvalidEnvelope:
        log.warning("an inbox notice cannot be verified or opened", delivery=notice.delivery)
        return _Shown(notice, sender, None)
    fields: dict[str, Any] = {k: delivery.payload[k] for k in SHOWN if k in delivery.payload}
    child = fields.get("child")
    fields["child"] = {k: child[k] for k in _CHILD_SHOWN if k in child} if isinstance(child, Mapping) else {}
    return _Shown(notice, sender, fields)


@_signed_in
async def _list(request: web.Request, who: Principal) -> web.Response:
    state = _state(request)
    before = request.query.get("before", "")
    valid = before.isascii() and before.isdigit() and len(before) <= 18  # a seq from our own link; else page 1
    notices = await state.inbox.notices(before=int(before) if valid else None)
    older = (_base(request) + "?" + urlencode({"before": notices[-1].seq})) if len(notices) == PAGE_SIZE else None
    return await _page(request, "inbox-list.html", who=who, notices=[_show(state, n) for n in notices],
                 waiting=await state.inbox.unacknowledged(), older=older, when=_when, day=_day, name=_name)


@_signed_in
async def _one(request: web.Request, who: Principal) -> web.Response:
    state = _state(request)
    notice = await state.inbox.notice(request.match_info["delivery"])
    if notice is None or notice.type != ENCOMPASS:
        return await _page(request, "inbox-error.html", status=404, who=who, title="Not found",
                     message="There is no notice with that id in this inbox.")
    return await _page(request, "inbox-notice.html", who=who, item=_show(state, notice), done=request.query.get("done"),
                 when=_when, day=_day, name=_name)


def _receipt_action(status: str) -> Page:
    async def act(request: web.Request, who: Principal) -> web.StreamResponse:
        state = _state(request)
        delivery_id = request.match_info["delivery"]
        async with state.lock:  # one receipt at a time: a double click sends one
            notice = await state.inbox.notice(delivery_id)
            if notice is None or notice.type != ENCOMPASS:
                return await _page(request, "inbox-error.html", status=404, who=who, title="Not found",
                             message="There is no notice with that id in this inbox.")
            if status == "actioned" and notice.acknowledged_at is None:
                return await _page(request, "inbox-error.html", status=409, who=who, title="Acknowledge it first",
                             message="Acknowledge the notice before recording that support is in place.")
            if notice.done(status)[0] is None:
                outcome = await _send_receipt(state, notice, status, who)
                if outcome is not None:
                    return await _page(request, "inbox-error.html", status=outcome[0], who=who, title=outcome[1],
                                 message=outcome[2])
        raise web.HTTPSeeOther(_base(request) + f"notices/{delivery_id}?" + urlencode({"done": status}))

    return act


async def _send_receipt(state: _Inbox, notice: Notice, status: str,
                        who: Principal) -> tuple[int, str, str] | None:
    """Send the receipt, then record it; on failure record nothing and say why (no personal data)."""
    try:
        delivery = _open(state.client, notice)
    except InvalidEnvelope:
        return (422, "Cannot verify this notice",
                "It failed verification, so no receipt was sent. Tell the broker's operator.")
    sender, message = delivery.origin
    if not sender or not message:
        return 422, "No sender to tell", "This notice does not say who sent it, so no receipt was sent."
    at = now()
    sharing = dict(RECEIPT_SHARING) | {"decidedBy": {"role": DSL, "staffRef": who.sub}}
    payload = {"messageId": message, "status": status, "at": at, "recipients": [state.client.agency]}
    try:
        await state.client.send(typ="receipt", to=[sender], payload=payload, sharing=sharing, re=message,
                                jti=receipt_id(notice.delivery, status))
    except BrokerError as exc:  # TransportError, PublishTimeout; or a refusal of the SDK's own
        log.warning("receipt not sent: the broker cannot be reached", delivery=notice.delivery, status=status,
                    error=type(exc).__name__)
        return (503, "The broker cannot be reached",
                "The police have not been told and nothing was recorded. Try again in a few minutes; "
                "if it keeps failing, phone the police contact as your local protocol says.")
    await state.inbox.record(notice.delivery, status, who.sub, at)
    log.info("receipt sent", delivery=notice.delivery, status=status, staff=who.sub)
    return None


def _when(value: str | None) -> str:
    """An ISO date-time as a school reads it, in UK time: "Sat 21 Nov 2026, 23:40"."""
    if not value:
        return ""
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    local = moment.astimezone(_LONDON)
    return local.strftime("%a %-d %b %Y, %H:%M") + ("" if _LONDON is not dt.UTC else " UTC")


def _day(value: str | None) -> str:
    if not value:
        return ""
    try:
        return dt.date.fromisoformat(value).strftime("%-d %B %Y")
    except ValueError:
        return value


def _name(name: Mapping[str, Any] | None) -> str:
    if not name:
        return ""
    parts = [name.get("given"), *(name.get("otherNames") or []), name.get("family")]
    return " ".join(str(p) for p in parts if p)


def inbox_app(inbox: Inbox, client: AgencyClient, verifier: TokenVerifier) -> web.Application:
    """The inbox pages as an aiohttp application, to mount with ``app.add_subapp("/inbox/", ...)``.

    ``verifier`` is :func:`inbox_verifier` for ``client.agency``: one that takes tokens for this
    inbox alone (any other is refused here, so a wiring mistake cannot open the inbox to others).
    """
    wanted = inbox_audience(client.agency)
    if verifier.audience != wanted or not verifier.sole_audience:
        raise ConfigError(f"the inbox of {client.agency} takes tokens for the audience {wanted} alone "
                          "(inbox_verifier), not for another audience")
    app = web.Application(middlewares=[headers_middleware()], client_max_size=64 * 1024)
    app[_STATE] = _Inbox(inbox, client, verifier, asyncio.Lock())
    sessions.install(app, _sessions(), at="/")
    app.router.add_get("/", _list, name="home")
    app.router.add_get("/inbox.css", stylesheet(_TEMPLATES / "inbox.css"))
    app.router.add_get("/notices/{delivery}", _one)
    app.router.add_post("/notices/{delivery}/acknowledge", _signed_in(_receipt_action("accepted")))
    app.router.add_post("/notices/{delivery}/actioned", _signed_in(_receipt_action("actioned")))
    return app
