"""The adapter's local endpoint for the agency system: ``POST /records/{format}``.

Requests are signed like the adapter's own webhooks, the other way round: HMAC-SHA256 with the
secret the two share, over ``<X-SGB-Timestamp>.<Idempotency-Key>.<body>`` (header
``X-SGB-Signature: v1=<hex>``; :func:`adapters.runtime.sinks.signed_headers` makes them), refused when
older than five minutes. The answer is JSON: ``202`` with the message ids (``200`` when the same
submission was sent before), or a problem (RFC 9457) with a stable ``code`` — ``unauthenticated``,
``unknown-format``, ``too-large``, ``unmappable`` (with the ``field``), ``key-reused``,
``unavailable`` (try again with the same key: nothing is sent twice).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import structlog
from aiohttp import web

from adapters.formats.mapping import Mapper
from adapters.runtime.inbound import Submitter
from adapters.runtime.sinks import verify_webhook
from broker.errors import RejectedMessage, TransportError

log = structlog.get_logger("sgb.adapter")
KEY_HEADER: Final = "Idempotency-Key"
_STATUS: Final = {"unmappable": 422, "key-reused": 409, "too-large": 413}


def problem(status: int, code: str, detail: str, **extra: Any) -> web.Response:
    body = {"type": f"https://sgb.invalid/problems/{code}", "title": code, "status": status, "code": code,
            "detail": detail} | {k: v for k, v in extra.items() if v is not None}
    return web.json_response(body, status=status, content_type="application/problem+json")


def add_routes(app: web.Application, submitter: Submitter, formats: Mapping[str, Mapper], secret: bytes, *,
               max_bytes: int) -> None:
    """Add ``POST /records/{format}`` for ``formats`` to ``app`` (the adapter's own address; its
    ``client_max_size`` must be at least ``max_bytes``)."""

    async def take(request: web.Request) -> web.Response:
        fmt = request.match_info["format"]
        mapper = formats.get(fmt)
        if mapper is None:
            return problem(404, "unknown-format", "this adapter takes no such format", formats=sorted(formats))
        if request.content_length is not None and request.content_length > max_bytes:
            return problem(413, "too-large", f"documents are at most {max_bytes} bytes")
        try:
            body = await request.read()  # the app's client_max_size is max_bytes
        except web.HTTPRequestEntityTooLarge:
            return problem(413, "too-large", f"documents are at most {max_bytes} bytes")
        key = request.headers.get(KEY_HEADER, "")
        if len(key) > 200 or not key.isprintable() or "." in key:
            return problem(400, "malformed", "the Idempotency-Key is at most 200 printable characters, without '.'")
        if not verify_webhook(secret, request.headers, body, id_header=KEY_HEADER):
            return problem(401, "unauthenticated", "the request is not signed with this adapter's secret, "
                           "or its timestamp is more than five minutes off")
        with structlog.contextvars.bound_contextvars(stage="intake", format=fmt):
            try:
                done = await submitter.submit(body, mapper, key=key or None)
            except RejectedMessage as exc:
                return problem(_STATUS.get(exc.code, 422), exc.code, exc.reason, field=exc.field, rule=exc.rule)
            except TransportError as exc:
                log.warning("cannot reach the broker; the agency system should retry", error=type(exc).__name__)
                return problem(503, "unavailable", "the broker cannot be reached now; send the same request again "
                               "(same Idempotency-Key): nothing is sent twice")
            except Exception as exc:  # a fault of ours: a stable code, no internals (only the type is logged:
                # an exception's text may quote a record)
                log.error("document not taken: internal error", error=type(exc).__name__)
                return problem(500, "internal", "the adapter could not take this document; send it again later "
                               "(same Idempotency-Key), and tell the adapter's operator if it persists")
        return web.json_response(done.as_json(), status=200 if done.repeated else 202)

    app.router.add_post("/records/{format}", take)
