"""Times on the wire and in the audit log: ISO 8601 in UTC with milliseconds and a ``Z``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from broker.errors import ConfigError


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_when(text: str) -> float:
    """``2026-11-24`` or ``2026-11-24T09:30:00Z`` from a person; dates and naive times are UTC.
    Raises :class:`ConfigError` with a plain reason."""
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"{text[:40]!r} is not a date (YYYY-MM-DD) or an ISO 8601 time") from exc
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def at_of(claims: Mapping[str, Any]) -> float:
    """The ``at`` time of a record or token's claims; 0.0 when it cannot be read."""
    try:
        return dt.datetime.fromisoformat(str(claims.get("at", "")).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
