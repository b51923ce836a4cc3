"""What every HTML page of the project shares, the IG officers' pages and a school's inbox."""

from __future__ import annotations

from aiohttp import web


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
