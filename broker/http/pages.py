"""What every HTML page of the project shares, the IG officers' pages and a school's inbox: the
Jinja environment, the headers every page sends, and how a stylesheet is served."""

from __future__ import annotations

from pathlib import Path

import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware


def templates(folder: Path) -> jinja2.Environment:
    """The templates in ``folder``: every value escaped, an undefined name an error."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )


def page_headers(response: web.StreamResponse, *, images: bool = False, cache: str = "no-store") -> None:
    """What every page of ours sends (the IG pages, a school's inbox): no script, no framing, no
    referrer, not cached; headers the handler set stay."""
    response.headers.setdefault("Content-Security-Policy",
                                "default-src 'none'; style-src 'self'; " + ("img-src 'self' data:; " if images else "")
                                + "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Cache-Control", cache)


def headers_middleware(*, prefix: str = "/", images: bool = False) -> Middleware:
    """:func:`page_headers` on every answer under ``prefix``, redirects and errors included."""

    @web.middleware
    async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(prefix):
            return await handler(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            page_headers(exc, images=images)
            raise
        page_headers(response, images=images)
        return response

    return headers


def stylesheet(path: Path) -> Handler:
    """A handler serving the stylesheet at ``path`` (cached for an hour)."""

    async def serve(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers={"Content-Type": "text/css", "Cache-Control": "max-age=3600"})

    return serve
