"""The monthly report a Data Protection Officer takes to the partnership board, counted from the
audit index (:mod:`broker.audit.index`): what was shared, refused and rejected in one calendar
month (UTC), the statutory clocks that ran out, and the IG officers' reviews.

Counts only: codes, message types and agency ids, never a record's personal data. Each count
is one kind of audit record in the month, so the board's numbers can be traced back to the log.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from dataclasses import dataclass
from typing import Final

from broker.errors import ConfigError

_MONTH: Final = re.compile(r"(\d{4})-(\d{2})")

Counts = tuple[tuple[str, int], ...]  # (key, count), largest first


@dataclass(frozen=True, slots=True)
class OverdueClocks:
    """Statutory clocks of one message type between two agencies that ran out in the month."""

    type: str
    sender: str
    recipient: str
    overdue: int
    met_later: int  # of those, answered since by a reply the broker recorded as meeting the deadline


@dataclass(frozen=True, slots=True)
class MonthlyReport:
    month: str  # YYYY-MM
    since: str  # the first day, inclusive (UTC)
    until: str  # the next month's first day, exclusive
    received: int  # messages accepted ('received' records)
    shares: int  # 'shared' records: one per recipient a message went to
    shared_by_type: Counts
    shared_by_sender: Counts
    shared_by_recipient: Counts
    shared_by_basis: Counts  # the sharing block's lawful basis (or Part 3 basis), '-' when none
    rejected_by_code: Counts  # messages the broker would not pass, by rejection code
    refused_by_code: Counts  # recipients a rule refused, by code
    not_shared: int  # practitioners' recorded decisions not to share
    overdue: tuple[OverdueClocks, ...]
    reviews_by_outcome: Counts  # the officers' 'reviewed' records
    review_items_raised: int  # items put in the review queue in the month
    review_items_awaiting: int  # of those, still without an outcome

    @property
    def rejected(self) -> int:
        return sum(n for _, n in self.rejected_by_code)

    @property
    def refused(self) -> int:
        return sum(n for _, n in self.refused_by_code)

    @property
    def overdue_total(self) -> int:
        return sum(o.overdue for o in self.overdue)

    @property
    def overdue_met(self) -> int:
        return sum(o.met_later for o in self.overdue)

    @property
    def reviewed(self) -> int:
        return sum(n for _, n in self.reviews_by_outcome)


def month_bounds(month: str) -> tuple[str, str]:
    """``YYYY-MM`` as its first day and the next month's first day (ISO dates, which sort before
    any time on that day, so they bound the records' ISO times)."""
    m = _MONTH.fullmatch(month)
    if m is None or not 1 <= int(m[2]) <= 12 or int(m[1]) < 1970:
        raise ConfigError("the month is written YYYY-MM, for example 2026-10")
    first = dt.date(int(m[1]), int(m[2]), 1)
    following = dt.date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first.isoformat(), following.isoformat()


def _counts(conn: sqlite3.Connection, column: str, event: str, since: str, until: str) -> Counts:
    rows = conn.execute(
        f"SELECT COALESCE({column}, '-') AS key, count(*) AS n FROM records "  # noqa: S608 - fixed names
        "WHERE event = ? AND at >= ? AND at < ? GROUP BY key ORDER BY n DESC, key", (event, since, until))
    return tuple((str(r[0]), int(r[1])) for r in rows)


def _count(conn: sqlite3.Connection, event: str, since: str, until: str) -> int:
    return int(conn.execute("SELECT count(*) FROM records WHERE event = ? AND at >= ? AND at < ?",
                            (event, since, until)).fetchone()[0])


# An overdue clock is met later when a reply to the same message, recorded after it ran out and
# marked as meeting a deadline, came from the agency the clock ran to or was shared with it (a
# clock the sender's side owes, e.g. a rapid review to the national panel).
_OVERDUE: Final = """
SELECT o.type, o.sender, o.recipient, count(*) AS n,
  sum(EXISTS (SELECT 1 FROM records r WHERE r.re = o.message AND r.at >= o.at
              AND json_extract(r.body, '$.meetsDeadline') = 1
              AND ((r.event = 'received' AND r.sender = o.recipient)
                   OR (r.event = 'shared' AND r.recipient = o.recipient)))) AS met
FROM records o WHERE o.event = 'overdue' AND o.at >= ? AND o.at < ?
GROUP BY o.type, o.sender, o.recipient ORDER BY n DESC, o.type, o.sender, o.recipient
"""


def monthly_report(conn: sqlite3.Connection, month: str) -> MonthlyReport:
    """Count the month ``YYYY-MM`` (UTC) in the index open on ``conn``."""
    since, until = month_bounds(month)
    overdue = tuple(OverdueClocks(str(r[0] or "-"), str(r[1] or "-"), str(r[2] or "-"), int(r[3]), int(r[4] or 0))
                    for r in conn.execute(_OVERDUE, (since, until)))
    reviews = conn.execute(
        # an item kept only for its outcome (the triage no longer picks it) was not put in the queue
        "SELECT count(*), count(*) FILTER (WHERE outcome IS NULL) FROM reviews WHERE at >= ? AND at < ? "
        "AND kind != 'reviewed'",
        (since, until)).fetchone()
    return MonthlyReport(
        month=month, since=since, until=until,
        received=_count(conn, "received", since, until),
        shares=_count(conn, "shared", since, until),
        shared_by_type=_counts(conn, "type", "shared", since, until),
        shared_by_sender=_counts(conn, "sender", "shared", since, until),
        shared_by_recipient=_counts(conn, "recipient", "shared", since, until),
        shared_by_basis=_counts(conn, "lawful_basis", "shared", since, until),
        rejected_by_code=_counts(conn, "code", "rejected", since, until),
        refused_by_code=_counts(conn, "code", "refused", since, until),
        not_shared=_count(conn, "not-shared", since, until),
        overdue=overdue,
        reviews_by_outcome=_counts(conn, "json_extract(body, '$.outcome')", "reviewed", since, until),
        review_items_raised=int(reviews[0]), review_items_awaiting=int(reviews[1]),
    )
