"""Signing in to our HTML pages, the IG officers' pages and a school's inbox, in one way.

A person signs in by pasting a token from the partnership's issuer; the pages keep it in an
HttpOnly, SameSite=Strict cookie scoped to where they are mounted, and verify it again on every
request (:class:`~broker.http.tokens.TokenVerifier`: its signature, issuer, audience and lifetime),
so an expired token stops working at once. Every form carries a CSRF token derived from the
session with a secret of this process, and a POST without it is refused. After signing in, the
person goes back to the page they asked for, and only ever to a page under the same mount (no
open redirect).

An app installs one :class:`Sessions` (:func:`install`, which adds its ``login`` and ``logout``
routes) and wraps each page in :func:`signed_in`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

import jinja2
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from broker.http.tokens import AuthError, Principal

log = structlog.get_logger("sgb.sessions")

Verify = Callable[[web.Request, str], Principal]  # raises AuthError
Globals = Callable[[web.Request, Principal | None], Awaitable[Mapping[str, Any]]]
Page = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sessions:
    """How one app's pages sign people in, and render a page for them."""

    name: str  # which pages, in log lines
    cookie: str
    env: jinja2.Environment
    verify: Verify  # the signed-in person a token stands for; AuthError when it stands for no one here
    globals: Globals  # what every page of the app is given besides its handler's own values
    login_template: str
    error_template: str
    home: str = "home"  # the name of the pages' home route: its URL is where the pages are mounted
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def base(self, request: web.Request) -> str:
        """Where the pages are mounted (``/ig/``, ``/inbox/``): links and the cookie's path follow it."""
        return str(request.app.router[self.home].url_for())

    def csrf(self, request: web.Request) -> str:
        session = request.cookies.get(self.cookie, "")
        return hmac.new(self.secret, session.encode(), hashlib.sha256).hexdigest()[:32]

    def who(self, request: web.Request) -> Principal | None:
        """The person signed in, if the session's token is (still) good."""
        token = request.cookies.get(self.cookie)
        if not token:
            return None
        try:
            return self.verify(request, token)
        except AuthError:
            return None

    async def render(self, request: web.Request, template: str, *, status: int = 200, who: Principal | None = None,
                     **context: Any) -> web.Response:
        values = {"who": who, "csrf": self.csrf(request) if who else "", "base": self.base(request),
                  **await self.globals(request, who), **context}
        html = self.env.get_template(template).render(values)
        return web.Response(text=html, content_type="text/html", status=status)

    def safe_next(self, request: web.Request, value: str | None) -> str:
        """Where to go after signing in: ``value`` if it is a page under the same mount, else the home page."""
        base = self.base(request)
        return value if value and value.startswith(base) and "//" not in value and "\\" not in value else base

    async def login_form(self, request: web.Request) -> web.Response:
        return await self.render(request, self.login_template, error=None,
                                 next=self.safe_next(request, request.query.get("next")))

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        token = str(form.get("token", "")).strip()
        nxt = self.safe_next(request, str(form.get("next", "")))
        try:
            who = self.verify(request, token)
        except AuthError as exc:
            log.info("sign-in refused", pages=self.name, reason=exc.reason)
            return await self.render(request, self.login_template, status=exc.status, error=exc.reason, next=nxt)
        response = web.HTTPSeeOther(nxt)
        response.set_cookie(self.cookie, token, httponly=True, samesite="Strict", secure=request.secure,
                            path=self.base(request), max_age=max(int(who.exp - time.time()), 0))
        log.info("sign-in", pages=self.name, sub=who.sub, roles=sorted(who.roles))
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        response = web.HTTPSeeOther(self.base(request) + "login")
        response.del_cookie(self.cookie, path=self.base(request))
        raise response


SESSIONS: Final = web.AppKey("sessions", Sessions)


def install(app: web.Application, sessions: Sessions, *, at: str) -> None:
    """Give ``app`` its sessions, with the sign-in page and sign-out at ``{at}login`` and ``{at}logout``."""
    app[SESSIONS] = sessions
    app.router.add_get(at + "login", sessions.login_form)
    app.router.add_post(at + "login", sessions.login)
    app.router.add_post(at + "logout", sessions.logout)


def signed_in(role: str, *more: str) -> Callable[[Page], Handler]:
    """A page for a signed-in person with one of these roles (kept on the handler as ``roles``); a
    POST must carry the session's CSRF token. Someone not signed in is sent to sign in first."""
    roles = (role, *more)

    def wrap(page: Page) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            sessions = request.app[SESSIONS]
            who = sessions.who(request)
            if who is None:
                raise web.HTTPSeeOther(sessions.base(request) + "login?" + urlencode({"next": request.path_qs}))
            if not who.has(*roles):
                return await sessions.render(request, sessions.error_template, status=403, who=who,
                                             title="Not permitted",
                                             message=f"This page needs the role {' or '.join(roles)}.")
            if request.method == "POST":
                form = await request.post()
                if not hmac.compare_digest(str(form.get("csrf", "")), sessions.csrf(request)):
                    return await sessions.render(request, sessions.error_template, status=403, who=who,
                                                 title="Form expired",
                                                 message="Go back, reload the page and try again.")
            return await page(request, who)

        guarded.roles = roles  # type: ignore[attr-defined]
        guarded.__doc__ = page.__doc__
        return guarded

    return wrap
