"""The questions the API and the IG pages ask the audit index: filters, pages and cursors.

:class:`RecordQuery` is what a caller may ask for; :func:`records` turns it into one SQL query
over the ``records`` table of :mod:`broker.audit.index` (newest first, keyset-paginated by
``(at, id)``). Every filter is a fixed SQL condition with one bound value: nothing a caller
sends becomes SQL text.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from broker.errors import ConfigError

FILTERS: Final = {  # query parameter -> SQL condition on one value (equality)
    "agency": "sender = ?", "recipient": "recipient = ?", "type": "type = ?", "event": "event = ?",
    "decision": "decision = ?", "lawfulBasis": "lawful_basis = ?", "consentStatus": "consent = ?",
    "message": "message = ?", "code": "code = ?",
    # only decisions not to share carry a reason code: the event index finds those few records first
    "notSharedReason": "event = 'not-shared' AND json_extract(body, '$.notSharedReason') = ?",
}


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordQuery:
    equals: Mapping[str, str] = field(default_factory=dict)  # keys of FILTERS
    flagged: bool | None = None
    since: str | None = None
    until: str | None = None
    messages: Sequence[str] | None = None  # from a subject search
    limit: int = 50
    cursor: str | None = None


def encode_cursor(at: str, ident: str) -> str:
    return base64.urlsafe_b64encode(f"{at}|{ident}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        at, _, ident = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition("|")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError("the page cursor is not one this server gave out") from exc
    if not ident:
        raise ConfigError("the page cursor is not one this server gave out")
    return at, ident


def records(conn: sqlite3.Connection, q: RecordQuery) -> Page:
    where: list[str] = []
    args: list[Any] = []
    for key, value in q.equals.items():
        where.append(f"({FILTERS[key]})")
        args.append(value)
    if q.flagged is not None:
        where.append("flagged = ?")
        args.append(1 if q.flagged else 0)
    if q.since:
        where.append("at >= ?")
        args.append(q.since)
    if q.until:
        where.append("at < ?")
        args.append(q.until)
    if q.messages is not None:
        if not q.messages:
            return Page([], None)
        where.append(f"message IN ({','.join('?' * len(q.messages))})")
        args.extend(q.messages)
    if q.cursor:
        at, ident = decode_cursor(q.cursor)
        where.append("(at < ? OR (at = ? AND id < ?))")
        args.extend([at, at, ident])
    sql = "SELECT id, at, body FROM records"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY at DESC, id DESC LIMIT ?"
    args.append(q.limit + 1)
    rows = conn.execute(sql, args).fetchall()
    items = [orjson.loads(r["body"]) for r in rows[: q.limit]]
    nxt = encode_cursor(rows[q.limit - 1]["at"], rows[q.limit - 1]["id"]) if len(rows) > q.limit else None
    return Page(items, nxt)


def review_row(row: sqlite3.Row) -> dict[str, Any]:
    item = {k: row[k] for k in row.keys()}  # noqa: SIM118 - sqlite3.Row is not a mapping
    item["reasons"] = orjson.loads(item["reasons"])
    return item


_OF_MESSAGE: Final = "EXISTS (SELECT 1 FROM records r WHERE r.message = reviews.message AND r.event = "
REVIEW_FILTERS: Final = {  # query parameter -> SQL condition on one value (each ? takes it)
    "agency": "sender = ?", "type": "type = ?", "priority": "priority = ?", "reviewer": "reviewer = ?",
    "outcome": "outcome = ?", "reason": "EXISTS (SELECT 1 FROM json_each(reviews.reasons) WHERE value = ?)",
    # an item about one recipient is that recipient's; an item about a message, any it was shared with
    "recipient": f"coalesce(recipient = ?, {_OF_MESSAGE}'shared' AND r.recipient = ?))",
    "lawfulBasis": f"{_OF_MESSAGE}'received' AND r.lawful_basis = ?)",
    "consentStatus": f"{_OF_MESSAGE}'received' AND r.consent = ?)",
}
ESCALATED: Final = ("not-proportionate", "breach")  # outcomes that go to the Data Protection Officer


@dataclass(frozen=True, slots=True, kw_only=True)
class ReviewQuery:
    """Which part of the queue (``open``; ``done``; ``escalated``: outcomes for the DPO), filtered
    by the keys of :data:`REVIEW_FILTERS`. Open items come highest priority first, then oldest;
    reviewed ones newest review first."""

    state: str = "open"
    equals: Mapping[str, str] = field(default_factory=dict)
    limit: int = 50
    cursor: str | None = None


def _review_filters(q: ReviewQuery) -> tuple[list[str], list[Any]]:
    where = ["outcome IS NULL" if q.state == "open" else "outcome IS NOT NULL"]
    args: list[Any] = []
    if q.state == "escalated":
        where.append(f"outcome IN ({','.join('?' * len(ESCALATED))})")
        args.extend(ESCALATED)
    for key, value in q.equals.items():
        where.append(REVIEW_FILTERS[key])
        args.extend([value] * REVIEW_FILTERS[key].count("?"))
    return where, args


def reviews(conn: sqlite3.Connection, q: ReviewQuery) -> Page:
    """The IG review queue, keyset-paginated: open by ``(rank, at, item)``, reviewed by ``(reviewed_at, item)``."""
    where, args = _review_filters(q)
    if q.state == "open":
        if q.cursor:
            position, ident = decode_cursor(q.cursor)
            rank, _, at = position.partition("~")
            where.append("(rank > ? OR (rank = ? AND (at > ? OR (at = ? AND item > ?))))")
            args.extend([_int(rank), _int(rank), at, at, ident])
        order = "rank, at, item"
    else:
        if q.cursor:
            at, ident = decode_cursor(q.cursor)
            where.append("(reviewed_at < ? OR (reviewed_at = ? AND item < ?))")
            args.extend([at, at, ident])
        order = "reviewed_at DESC, item DESC"
    rows = conn.execute(f"SELECT * FROM reviews WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?",  # noqa: S608
                        [*args, q.limit + 1]).fetchall()
    items = [review_row(r) for r in rows[: q.limit]]
    nxt = None
    if len(rows) > q.limit:
        last = rows[q.limit - 1]
        nxt = encode_cursor(f"{last['rank']}~{last['at']}" if q.state == "open" else last["reviewed_at"], last["item"])
    return Page(items, nxt)


def review_count(conn: sqlite3.Connection, q: ReviewQuery) -> int:
    """How many items the query's filters match (the whole set a bulk review would cover)."""
    where, args = _review_filters(q)
    return int(conn.execute(f"SELECT count(*) FROM reviews WHERE {' AND '.join(where)}", args).fetchone()[0])  # noqa: S608


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError("the page cursor is not one this server gave out") from exc
