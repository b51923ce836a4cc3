"""Reading an API request: query parameters, JSON bodies, the record filters, and writing JSON
answers. A parameter that cannot be read is a :class:`~broker.errors.ConfigError` (400)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from broker.audit.query import FILTERS, RecordQuery
from broker.errors import ConfigError
from broker.timestamps import iso, parse_when

MAX_LIMIT: Final = 500


def date(value: str, name: str) -> str:
    try:
        return iso(parse_when(value))
    except ConfigError as exc:
        raise ConfigError(f"{name} must be a date (YYYY-MM-DD) or an ISO 8601 time") from exc


def record_query(params: Mapping[str, str], *, messages: list[str] | None = None) -> RecordQuery:
    """The audit index query for the filters of ``params`` (the keys of :data:`broker.audit.query.FILTERS`)."""
    equals = {k: params[k] for k in FILTERS if params.get(k)}
    for key, value in equals.items():
        if len(value) > 200:
            raise ConfigError(f"{key} is too long")
    flagged = params.get("flagged")
    if flagged not in (None, "", "true", "false"):
        raise ConfigError("flagged is true or false")
    limit = page_limit(params)
    return RecordQuery(equals=equals, flagged=None if not flagged else flagged == "true",
                       since=date(params["since"], "since") if params.get("since") else None,
                       until=date(params["until"], "until") if params.get("until") else None,
                       messages=messages, limit=limit, cursor=params.get("cursor") or None)


def page_limit(params: Mapping[str, str]) -> int:
    try:
        limit = int(params.get("limit") or 50)
    except ValueError as exc:
        raise ConfigError("limit is a number") from exc
    if not 1 <= limit <= MAX_LIMIT:
        raise ConfigError(f"limit is between 1 and {MAX_LIMIT}")
    return limit


def reference(value: str | None) -> str | None:
    """The case or ticket number an officer gives with an action (a review, a hold), if any: up to
    40 letters, digits, '-' or '/', with at least one digit, so that it cannot be a name."""
    if value is None:
        return None
    if not (0 < len(value) <= 40 and all(c.isascii() and (c.isalnum() or c in "-/") for c in value)
            and any(c.isdigit() for c in value)):
        raise ConfigError("a reference is up to 40 letters, digits, '-' or '/', with a digit: a case or ticket "
                          "number, never a name")
    return value


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=orjson.loads)
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise ConfigError("the request body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise ConfigError("the request body must be a JSON object")
    return body


def string(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 200:
        raise ConfigError(f"{key} must be a string")
    return value


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def now() -> str:
    return iso(time.time())
