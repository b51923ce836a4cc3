"""A school's Operation Encompass inbox: notices kept sealed, read and acknowledged by the DSL.

The adapter hands each delivery to an :class:`~adapters.school_store.Inbox` still sealed
(:func:`render_sealed`; :mod:`adapters.school_store` keeps it). The web pages
(:func:`inbox_app`) open each notice in memory when they show it, checking the broker's
signature as of when the notice came, so a key rotation since does not lock the school out.
They show what Operation Encompass gives the school's key adult, and the police's instruction
not to contact the parents or carers, when they give it, above everything else.

The designated safeguarding lead signs in with a token from the partnership's issuer (role
``dsl``, audience ``sgb-inbox-<school id>``: one school's token does not open another's inbox),
kept in an HttpOnly SameSite=Strict cookie. "Acknowledge" sends the police a ``receipt`` with
status ``accepted`` through the broker and only then records who acknowledged it and when;
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
import hashlib
import hmac
import re
import secrets
import zoneinfo
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import jinja2
import jwt
import structlog
from aiohttp import web
from nats.errors import Error as NatsError

from adapters.school.store import ENCOMPASS, PAGE_SIZE, SEALED, Inbox, Notice, now, render_sealed
from adapters.sdk import RECEIPT_SHARING, AgencyClient, Delivery, receipt_id
from broker.config import ApiSettings
from broker.errors import BrokerError, InvalidEnvelope
from broker.http.pages import page_headers
from broker.http.tokens import AuthError, Principal, TokenVerifier
from broker.wire.registry import Registry

__all__ = ["DSL", "SEALED", "Inbox", "inbox_app", "inbox_audience", "inbox_verifier", "receipt_id", "render_sealed"]

log = structlog.get_logger("sgb.school")

ROLE: Final = "dsl"
DSL: Final = "Designated safeguarding lead"
COOKIE: Final = "sgb_inbox"
STATUSES: Final = ("accepted", "actioned")  # the receipts this inbox sends, in order
# What a school shows of a notice: the fields the rulebook gives a school (Operation Encompass),
# and no others (a notice that carried more, under some other rule, still shows only these; of
# the child, only the name and date of birth).
SHOWN: Final = ("child", "incidentDateTime", "incidentLocation", "childPresent", "whereChildWas", "circumstances",
                "voiceOfChild", "policeReference", "keyAdultAdvice", "doNotContactParents")
_CHILD_SHOWN: Final = ("name", "dateOfBirth")
_STAFF_REF: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9/_.-]{0,39}$")  # sharing.v1.json decidedBy.staffRef
_TEMPLATES: Final = Path(__file__).parent / "templates"
_ENV: Final = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_TEMPLATES),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,
)
try:
    _LONDON: dt.tzinfo = zoneinfo.ZoneInfo("Europe/London")
except zoneinfo.ZoneInfoNotFoundError:  # no tz database: show UTC, and say so
    _LONDON = dt.UTC


def inbox_audience(school: str) -> str:
    """The token audience of ``school``'s inbox."""
    return f"sgb-inbox-{school}"


def inbox_verifier(registry: Registry, api: ApiSettings, school: str) -> TokenVerifier:
    """Tokens from the partnership's issuer for this school's inbox, and for nothing else."""
    return TokenVerifier(registry, dataclasses.replace(api, audience=inbox_audience(school)))



# -- the pages ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Inbox:
    inbox: Inbox
    client: AgencyClient
    verifier: TokenVerifier
    secret: bytes
    lock: asyncio.Lock


_STATE: Final = web.AppKey("school_inbox", _Inbox)


@web.middleware
async def _headers(request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # redirects and 404s get the headers too
        _secure(exc, stylesheet=False)
        raise
    _secure(response, stylesheet=request.path.endswith("/inbox.css"))
    return response


def _secure(response: web.StreamResponse, *, stylesheet: bool) -> None:
    page_headers(response, cache="max-age=3600" if stylesheet else "no-store")


def _state(request: web.Request) -> _Inbox:
    return request.app[_STATE]


def _base(request: web.Request) -> str:
    """Where the inbox is mounted (``/inbox/``), so links and the cookie path follow the mount."""
    return str(request.app.router["home"].url_for())


def _csrf(request: web.Request) -> str:
    session = request.cookies.get(COOKIE, "")
    return hmac.new(_state(request).secret, session.encode(), hashlib.sha256).hexdigest()[:32]


def _verify(state: _Inbox, token: str) -> Principal:
    """A DSL of this school: the issuer's signature, this inbox's audience, the ``dsl`` role and a
    subject that is a staff reference (it goes into each receipt's ``decidedBy``)."""
    who = state.verifier.verify(token)
    audience = jwt.decode(token, options={"verify_signature": False}).get("aud")  # signature checked just now
    wanted = inbox_audience(state.client.agency)
    if audience not in (wanted, [wanted]):  # this inbox alone, not a token for several
        raise AuthError("the token is for another service's or another school's inbox")
    if not who.has(ROLE):
        raise AuthError("this inbox needs the designated safeguarding lead's role (dsl)", status=403)
    if not _STAFF_REF.match(who.sub):
        raise AuthError("the token's subject is not a staff reference (letters, digits, / _ . -)", status=403)
    return who


def _who(request: web.Request) -> Principal | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    try:
        return _verify(_state(request), token)
    except AuthError:
        return None


def _page(request: web.Request, template: str, *, status: int = 200, who: Principal | None = None,
          **context: Any) -> web.Response:
    state = _state(request)
    school = state.client.registry.get(state.client.agency)
    html = _ENV.get_template(template).render(
        who=who, csrf=_csrf(request) if who else "", base=_base(request), agency=state.client.agency,
        school=school.name if school else state.client.agency, **context)
    return web.Response(text=html, content_type="text/html", status=status)


Handler = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]


def _signed_in(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A signed-in DSL of this school; a POST must carry the session's CSRF token."""
    async def guarded(request: web.Request) -> web.StreamResponse:
        who = _who(request)
        if who is None:
            raise web.HTTPSeeOther(_base(request) + "login?" + urlencode({"next": request.path_qs}))
        if request.method == "POST":
            form = await request.post()
            if not hmac.compare_digest(str(form.get("csrf", "")), _csrf(request)):
                return _page(request, "inbox-error.html", status=403, who=who, title="Form expired",
                             message="Go back, reload the page and try again.")
        return await handler(request, who)

    guarded.__name__ = "guarded"
    return guarded


async def _login_form(request: web.Request) -> web.Response:
    return _page(request, "inbox-login.html", error=None, next=_safe_next(request, request.query.get("next")))


async def _login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = str(form.get("token", "")).strip()
    nxt = _safe_next(request, str(form.get("next", "")))
    try:
        who = _verify(_state(request), token)
    except AuthError as exc:
        log.info("inbox sign-in refused", reason=exc.reason)
        return _page(request, "inbox-login.html", status=exc.status, error=exc.reason, next=nxt)
    response = web.HTTPSeeOther(nxt)
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.secure, path=_base(request),
                        max_age=max(int(who.exp - dt.datetime.now(dt.UTC).timestamp()), 0))
    log.info("inbox sign-in", sub=who.sub)
    raise response


async def _logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther(_base(request) + "login")
    response.del_cookie(COOKIE, path=_base(request))
    raise response


def _safe_next(request: web.Request, value: str | None) -> str:
    base = _base(request)
    return value if value and value.startswith(base) and "//" not in value and "\\" not in value else base


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
    notices = state.inbox.notices(before=int(before) if valid else None)
    older = (_base(request) + "?" + urlencode({"before": notices[-1].seq})) if len(notices) == PAGE_SIZE else None
    return _page(request, "inbox-list.html", who=who, notices=[_show(state, n) for n in notices],
                 waiting=state.inbox.unacknowledged(), older=older, when=_when, day=_day, name=_name)


@_signed_in
async def _one(request: web.Request, who: Principal) -> web.Response:
    state = _state(request)
    notice = state.inbox.notice(request.match_info["delivery"])
    if notice is None or notice.type != ENCOMPASS:
        return _page(request, "inbox-error.html", status=404, who=who, title="Not found",
                     message="There is no notice with that id in this inbox.")
    return _page(request, "inbox-notice.html", who=who, item=_show(state, notice), done=request.query.get("done"),
                 when=_when, day=_day, name=_name)


def _receipt_action(status: str) -> Handler:
    async def act(request: web.Request, who: Principal) -> web.StreamResponse:
        state = _state(request)
        delivery_id = request.match_info["delivery"]
        async with state.lock:  # one receipt at a time: a double click sends one
            notice = state.inbox.notice(delivery_id)
            if notice is None or notice.type != ENCOMPASS:
                return _page(request, "inbox-error.html", status=404, who=who, title="Not found",
                             message="There is no notice with that id in this inbox.")
            if status == "actioned" and notice.acknowledged_at is None:
                return _page(request, "inbox-error.html", status=409, who=who, title="Acknowledge it first",
                             message="Acknowledge the notice before recording that support is in place.")
            if notice.done(status)[0] is None:
                outcome = await _send_receipt(state, notice, status, who)
                if outcome is not None:
                    return _page(request, "inbox-error.html", status=outcome[0], who=who, title=outcome[1],
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
    except (BrokerError, NatsError, TimeoutError) as exc:
        log.warning("receipt not sent: the broker cannot be reached", delivery=notice.delivery, status=status,
                    error=type(exc).__name__)
        return (503, "The broker cannot be reached",
                "The police have not been told and nothing was recorded. Try again in a few minutes; "
                "if it keeps failing, phone the police contact as your local protocol says.")
    state.inbox.record(notice.delivery, status, who.sub, at)
    log.info("receipt sent", delivery=notice.delivery, status=status, staff=who.sub)
    return None


async def _stylesheet(request: web.Request) -> web.FileResponse:
    return web.FileResponse(_TEMPLATES / "inbox.css", headers={"Content-Type": "text/css"})


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

    ``verifier`` must be :func:`inbox_verifier` for ``client.agency`` (the pages also check the
    token's audience themselves, so a verifier for another audience opens nothing).
    """
    app = web.Application(middlewares=[_headers], client_max_size=64 * 1024)
    app[_STATE] = _Inbox(inbox, client, verifier, secrets.token_bytes(32), asyncio.Lock())
    app.router.add_get("/", _list, name="home")
    app.router.add_get("/login", _login_form)
    app.router.add_post("/login", _login)
    app.router.add_post("/logout", _logout)
    app.router.add_get("/inbox.css", _stylesheet)
    app.router.add_get("/notices/{delivery}", _one)
    app.router.add_post("/notices/{delivery}/acknowledge", _signed_in(_receipt_action("accepted")))
    app.router.add_post("/notices/{delivery}/actioned", _signed_in(_receipt_action("actioned")))
    return app
