"""Who may call the audit API, and the one shape of its errors.

Every endpoint under ``/api/v1/`` needs a bearer token (:class:`~broker.http.tokens.TokenVerifier`)
with one of the roles its handler names (:func:`requires`). Errors are RFC 9457 problem
documents with a stable ``code``; nothing internal reaches a response body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import orjson
import structlog
from aiohttp import web

from broker.errors import ConfigError, TransportError
from broker.http.tokens import AuthError, Principal
from broker.web.context import SERVICE

log = structlog.get_logger("sgb.api")

IG, AUDITOR, OPERATOR, DPO = "ig-officer", "auditor", "operator", "dpo"
READERS: Final = (IG, AUDITOR)
EVERYONE: Final = (IG, AUDITOR, OPERATOR)

PRINCIPAL: Final = web.RequestKey("principal", Principal)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Problem(web.HTTPException):
    """An error response with a stable code (RFC 9457 ``application/problem+json``)."""

    def __init__(self, status: int, code: str, detail: str, *, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status
        super().__init__(headers=headers, content_type="application/problem+json",
                         text=orjson.dumps({"type": f"https://sgb.example/problems/{code}", "title": code,
                                            "status": status, "code": code, "detail": detail}).decode())


def principal(request: web.Request) -> Principal:
    """Who is calling (set by :func:`api_middleware`, or by an IG page for the handler it reuses)."""
    found: Principal | None = request.get(PRINCIPAL)
    if found is None:
        raise Problem(401, "unauthenticated", "a bearer token is needed", headers={"WWW-Authenticate": "Bearer"})
    return found


def requires(*roles: str) -> Callable[[Handler], Handler]:
    """A handler for callers with one of ``roles`` (kept on the handler as ``roles``)."""
    def wrap(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            who = principal(request)
            if not who.has(*roles):
                raise Problem(403, "forbidden", f"this needs the role {' or '.join(roles)}")
            return await handler(request)

        guarded.roles = roles  # type: ignore[attr-defined]
        guarded.__doc__ = handler.__doc__
        return guarded

    return wrap


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer authentication for ``/api/v1``, and one error shape for everything under ``/api``."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    if request.path.startswith("/api/v1/"):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(401, "unauthenticated", "a bearer token is needed", headers={"WWW-Authenticate": "Bearer"})
        try:
            request[PRINCIPAL] = request.app[SERVICE].tokens.verify(token.strip())
        except AuthError as exc:
            code = "forbidden" if exc.status == 403 else "unauthenticated"
            raise Problem(exc.status, code, exc.reason,
                          headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from exc
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if isinstance(exc, Problem) or exc.status < 400:
            raise
        raise Problem(exc.status, exc.reason.lower().replace(" ", "-"), exc.reason) from exc
    except ConfigError as exc:
        raise Problem(400, "bad-request", str(exc)) from exc
    except TransportError as exc:
        log.warning("api: store unavailable", error=str(exc))
        raise Problem(503, "unavailable", "the audit store is unavailable; try again shortly") from exc
    except Exception as exc:  # never a traceback or internals in a response
        log.exception("api: unexpected error", path=request.path)
        raise Problem(500, "internal", "the server could not complete this request") from exc
