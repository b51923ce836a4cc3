"""Signing in to the broker's web app and its API as an IG officer or auditor, and to a school's
inbox as its designated safeguarding lead; waiting for the audit index; screenshots for a person to look at."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestClient

from adapters.school.inbox import inbox_audience
from broker.config import Settings
from broker.http.tokens import mint
from broker.identity.keys import load_identity
from tests.helpers import eventually

Client = TestClient[web.Request, web.Application]
SCHOOL = "school-hillside"
STAFF = "HPS-DSL-07"  # the school's designated safeguarding lead


def token(settings: Settings, *roles: str, sub: str = "ig-jo", **overrides: Any) -> str:
    identity = load_identity(settings.home, "dev-token-issuer")
    if not overrides:
        return mint(identity, sub=sub, roles=list(roles), settings=settings.api)
    now = time.time()
    claims = {"iss": settings.api.issuer, "aud": settings.api.audience, "sub": sub, "roles": list(roles),
              "iat": int(now), "exp": int(now + 600)} | overrides
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, identity.signing_key, algorithm="EdDSA", headers={"kid": identity.sig_kid})


def auth(settings: Settings, *roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(settings, *roles)}"}


async def sign_in(client: Client, settings: Settings, *roles: str) -> str:
    """Sign in to the IG pages with ``roles``; return the page's CSRF token."""
    r = await client.post("/ig/login", data={"token": token(settings, *roles), "next": "/ig/"}, allow_redirects=False)
    assert r.status == 303 and r.cookies["sgb_session"]["httponly"]
    assert r.cookies["sgb_session"]["samesite"] == "Strict"
    page = await (await client.get("/ig/reviews")).text()
    return page.split('name="csrf" value="')[1].split('"')[0]


def dsl_token(settings: Settings, *, sub: str = STAFF, roles: tuple[str, ...] = ("dsl",),
              audience: str | None = inbox_audience(SCHOOL), ttl: int = 600) -> str:
    identity = load_identity(settings.home, settings.api.issuer)
    now = int(time.time())
    claims = {"iss": settings.api.issuer, "aud": audience or settings.api.audience, "sub": sub, "roles": list(roles),
              "iat": now, "exp": now + ttl, "jti": f"t-{now}-{sub}"}
    return jwt.encode(claims, identity.signing_key, algorithm="EdDSA", headers={"kid": identity.sig_kid})


async def sign_in_inbox(http: Client, token: str) -> str:
    """Sign in to the school's inbox with ``token``; return the page's CSRF token."""
    r = await http.post("/inbox/login", data={"token": token, "next": "/inbox/"}, allow_redirects=False)
    assert r.status == 303, await r.text()
    cookie = r.cookies["sgb_inbox"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/inbox/"
    page = await (await http.get("/inbox/")).text()
    return page.split('name="csrf" value="')[1].split('"')[0]


async def until_recorded(client: Client, settings: Settings, message: str, event: str, timeout: float = 3.0
                         ) -> dict[str, Any]:
    """The message's record of ``event`` once the index has it."""
    async def record() -> dict[str, Any] | None:
        r = await client.get(f"/api/v1/records?message={message}&event={event}", headers=auth(settings, "auditor"))
        items = (await r.json())["items"]
        return items[0] if items else None  # type: ignore[no-any-return]

    return await eventually(record, what=f"the {event} record of {message} in the index", timeout=timeout,
                            every=0.02)


async def until_indexed(client: Client, settings: Settings, message: str, timeout: float = 1.0) -> float:
    """Seconds until the message's records are queryable (the issue asks for under one)."""
    started = time.monotonic()

    async def indexed() -> bool:
        r = await client.get(f"/api/v1/records?message={message}", headers=auth(settings, "auditor"))
        return bool((await r.json())["items"])

    await eventually(indexed, what=f"{message} in the index", timeout=timeout, every=0.02)
    return time.monotonic() - started


async def snap(page: Any, name: str) -> None:
    """A full-page screenshot to ``$SGB_SCREENSHOTS``, for a person to look at; none when it is
    unset, since it asserts nothing and a long page's full-page shot can take seconds on a loaded
    machine."""
    if not (target := os.environ.get("SGB_SCREENSHOTS")):
        return
    Path(target).mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(Path(target) / name), full_page=True, timeout=60_000)
