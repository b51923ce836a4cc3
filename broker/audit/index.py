"""The local SQLite index of the audit log, for the API and the IG pages.

Derived from ``SG_AUDIT`` only, so it can be deleted and rebuilt at any time
(``sgb audit reindex``). The :class:`~broker.audit.indexer.Indexer` follows the stream into it;
the last result of the full chain check is kept here for the integrity badge. The tables and
how a record becomes rows are :mod:`broker.audit.tables`; the questions asked of it,
:mod:`broker.audit.query`.

The file is a :class:`broker.store.Store`: WAL, one writer thread and a few readers, so queries
never hold up the broker's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
import structlog

from broker.audit.indexer import Indexer as Indexer  # re-exported: the index and its follower go together
from broker.audit.query import Page, ReviewQuery, review_count, review_row, reviews
from broker.audit.query import RecordQuery as RecordQuery  # re-exported: the index answers these
from broker.audit.query import records as records_page
from broker.audit.report import MonthlyReport, monthly_report
from broker.audit.tables import MIGRATIONS, TABLES, apply_batch, rederive_step, start_rederive
from broker.audit.triage import REVIEW_FLAGS as REVIEW_FLAGS  # re-exported: the vocabulary of the review queue
from broker.audit.triage import REVIEW_OUTCOMES as REVIEW_OUTCOMES
from broker.audit.triage import Triage
from broker.errors import ConfigError
from broker.store import Store

log = structlog.get_logger("sgb.audit.index")
T = TypeVar("T")


class AuditIndex:
    """The index file. Writes go through one thread, reads through a small pool."""

    def __init__(self, path: Path, *, readers: int = 4, triage: Triage | None = None) -> None:
        self.path = path
        self.triage = triage or Triage.from_section(None)
        self._store = Store(path, MIGRATIONS, name="audit-index", readers=readers)
        self.version = 0  # bumped after every write; lets waiters notice new records
        self.follower_failure: str | None = None  # what stopped the follower last, until a block is indexed
        self.deriving = False  # the queue is being derived again (after a reload): it is incomplete meanwhile
        self.derive_failure: str | None = None  # what stopped that last (a bug), until a derivation succeeds
        self._changed = asyncio.Event()
        self._applying = asyncio.Lock()  # a block is indexed under one triage, never half under another

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        result = await self._store.write(fn)
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        return result

    async def open(self, stream_created: str | None = None) -> None:
        """Bring the tables up to date; start afresh if the index was built from another stream
        (one that was since re-created), since its sequence numbers would not match; derive the
        review queue again if the triage settings (or the registry they read) changed."""
        def prepare(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT value FROM meta WHERE key = 'stream'").fetchone()
            if stream_created and row and orjson.loads(row[0]) != stream_created:
                log.warning("audit index built from another stream; rebuilding")
                for table in TABLES:
                    conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
            if stream_created:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('stream', ?)",
                             (orjson.dumps(stream_created).decode(),))

        await self._write(prepare)
        await self._derive_queue()

    async def _derive_queue(self) -> None:
        """The review queue derived again if the triage settings (or the registry they read)
        changed, in steps of one transaction each, so a large index neither holds the writer for
        long nor starts over if the broker stops half-way."""
        digest = self.triage.digest()
        state = await self.meta("triage")
        if state == digest:
            return
        if not (isinstance(state, dict) and state.get("pending") == digest):
            state = await self._write(lambda c: start_rederive(c, digest))
        after: int | None = int(state["after"])
        until = state.get("until")  # blocks indexed after the start were judged as they came
        started = time.monotonic()
        while after is not None:
            after = await self._write(functools.partial(rederive_step, triage=self.triage, digest=digest, after=after,
                                                        until=until))
        log.info("review queue derived with the triage settings in force", seconds=round(time.monotonic() - started, 2))

    async def retriage(self, triage: Triage) -> None:
        """Take ``triage`` (a reloaded rulebook or registry) and derive the queue again, between
        two blocks: indexing waits meanwhile."""
        async with self._applying:
            self.triage, self.deriving = triage, True
            try:
                await self._derive_queue()
            except Exception as exc:
                self.derive_failure = type(exc).__name__
                raise
            else:
                self.derive_failure = None
            finally:
                self.deriving = False

    def close(self) -> None:
        self._store.close()

    async def wait_for_change(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    # -- writing -----------------------------------------------------------------------

    async def apply(self, batch: Sequence[tuple[int, list[dict[str, Any]]]], checkpoints: Sequence[bytes],
                    last_seq: int) -> None:
        async with self._applying:
            await self._write(lambda c: apply_batch(c, batch, checkpoints, last_seq, self.triage))
        self.follower_failure = None

    async def set_meta(self, key: str, value: Any) -> None:
        await self._write(lambda c: c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                              (key, orjson.dumps(value).decode())))

    # -- reading -----------------------------------------------------------------------

    async def meta(self, key: str) -> Any:
        def get(conn: sqlite3.Connection) -> Any:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return orjson.loads(row[0]) if row else None

        return await self._store.read(get)

    async def last_seq(self) -> int:
        return int(await self.meta("last_seq") or 0)

    async def records(self, q: RecordQuery) -> Page:
        return await self._store.read(lambda c: records_page(c, q))

    async def record(self, record_id: str) -> dict[str, Any] | None:
        def get(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT body FROM records WHERE id = ?", (record_id,)).fetchone()
            return orjson.loads(row[0]) if row else None

        return await self._store.read(get)

    async def trail(self, message: str) -> list[dict[str, Any]]:
        """Every record of a message, and of the messages that answer it, in time order."""
        def get(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT body FROM records WHERE message = ? OR re = ? OR message IN "
                "(SELECT message FROM records WHERE re = ?) ORDER BY at, instance, n", (message, message, message))
            return [orjson.loads(r[0]) for r in rows]

        return await self._store.read(get)

    async def subject_messages(self, tokens: Sequence[str]) -> list[str]:
        def get(conn: sqlite3.Connection) -> list[str]:
            marks = ",".join("?" * len(tokens))
            rows = conn.execute(f"SELECT DISTINCT message FROM subjects WHERE token IN ({marks})",  # noqa: S608
                                list(tokens))
            direct = [r[0] for r in rows]
            if not direct:
                return []
            marks = ",".join("?" * len(direct))
            replies = conn.execute(f"SELECT DISTINCT message FROM records WHERE re IN ({marks})",  # noqa: S608
                                   direct)
            return sorted(set(direct) | {r[0] for r in replies if r[0]})

        return await self._store.read(get)

    async def reviews(self, q: ReviewQuery) -> Page:
        return await self._store.read(lambda c: reviews(c, q))

    async def review_count(self, q: ReviewQuery) -> int:
        return await self._store.read(lambda c: review_count(c, q))

    async def open_items(self, items: Sequence[str]) -> list[dict[str, Any]]:
        """Those of ``items`` that await review (a bulk review records an outcome for these)."""
        def get(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            marks = ",".join("?" * len(items))
            rows = conn.execute(f"SELECT * FROM reviews WHERE outcome IS NULL AND item IN ({marks}) "  # noqa: S608
                                "ORDER BY rank, at, item", list(items))
            return [review_row(r) for r in rows]

        return await self._store.read(get) if items else []

    async def review_item(self, item: str) -> dict[str, Any] | None:
        def get(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT * FROM reviews WHERE item = ?", (item,)).fetchone()
            return review_row(row) if row else None

        return await self._store.read(get)

    async def volumes(self, by: str, *, since: str, until: str) -> list[dict[str, Any]]:
        """Records of decisions per day and per ``by`` (lawful basis, agency or decision)."""
        column = {"lawfulBasis": "lawful_basis", "agency": "sender", "decision": "event"}.get(by)
        if column is None:
            raise ConfigError("volumes are by lawfulBasis, agency or decision")

        def get(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                f"SELECT substr(at, 1, 10) AS day, COALESCE({column}, '-') AS key, count(*) AS n FROM records "  # noqa: S608
                "WHERE at >= ? AND at < ? AND event IN ('shared', 'refused', 'not-shared', 'rejected') "
                "GROUP BY day, key ORDER BY day, key", (since, until))
            return [{"day": r["day"], "key": r["key"], "count": r["n"]} for r in rows]

        return await self._store.read(get)

    async def counts(self) -> dict[str, int]:
        def get(conn: sqlite3.Connection) -> dict[str, int]:
            records = conn.execute("SELECT count(*) FROM records").fetchone()[0]
            open_reviews = conn.execute("SELECT count(*) FROM reviews WHERE outcome IS NULL").fetchone()[0]
            return {"records": records, "openReviews": open_reviews}

        return await self._store.read(get)

    async def monthly_report(self, month: str) -> MonthlyReport:
        """The partnership board's counts for the month ``YYYY-MM`` (:mod:`broker.audit.report`)."""
        return await self._store.read(lambda c: monthly_report(c, month))

    async def retention_counts(self, before: str) -> dict[str, Any]:
        def get(conn: sqlite3.Connection) -> dict[str, Any]:
            past = conn.execute("SELECT count(*), min(at) FROM records WHERE at < ?", (before,)).fetchone()
            expired = conn.execute("SELECT count(*) FROM records WHERE event = 'expired'").fetchone()[0]
            return {"auditRecordsPastRetention": past[0], "oldestPastRetention": past[1], "expiredDeliveries": expired}

        return await self._store.read(get)

    async def checkpoint_tokens(self) -> list[bytes]:
        return await self._store.read(lambda c: [bytes(r[0]) for r in c.execute("SELECT token FROM checkpoints")])

    def export_rows(self, q: RecordQuery, chunk: int = 1000) -> Iterator[list[dict[str, Any]]]:
        """Synchronous generator of pages (for the streaming CSV export). Each step may run on a
        different executor thread, one at a time, hence a connection of its own, not tied to one thread."""
        conn = self._store.connect(read_only=True)
        try:
            cursor = q.cursor
            while True:
                page = records_page(conn, RecordQuery(equals=q.equals, flagged=q.flagged, since=q.since, until=q.until,
                                                      messages=q.messages, limit=chunk, cursor=cursor))
                if page.items:
                    yield page.items
                if page.next is None:
                    return
                cursor = page.next
        finally:
            conn.close()
