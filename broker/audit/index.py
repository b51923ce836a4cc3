"""The local SQLite index of the audit log, for the API and the IG pages.

Derived from ``SG_AUDIT`` only, so it can be deleted and rebuilt at any time
(``sgb audit reindex``). The :class:`Indexer` follows the stream with an ordered consumer and
writes in small transactions, so a decision is queryable well within a second. A block is
indexed only if its signature and record links verify; the full chain check runs
separately (:func:`broker.auditexport.verify_store`) and its last result is kept here for the
integrity badge.

SQLite work runs in worker threads (one writer, a few readers, WAL mode) so that queries never
hold up the broker's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson
import structlog
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from broker.audit.chain import CHECKPOINT_TYP, is_checkpoint
from broker.audit.query import Page, decode_cursor, encode_cursor
from broker.audit.query import RecordQuery as RecordQuery  # re-exported: the index answers these
from broker.audit.query import records as records_page
from broker.audit.verify import Verifier
from broker.errors import ConfigError, InvalidEnvelope
from broker.timestamps import at_of
from broker.wire.jws import unverified, verify_typed
from broker.wire.subjects import AUDIT

log = structlog.get_logger("sgb.audit.index")
T = TypeVar("T")

SCHEMA_VERSION: Final = 1
REVIEW_FLAGS: Final = {
    "shared-without-consent": "Shared without consent",
    "consent-overridden": "Consent overridden",
    "emergency-without-consent-reason": "Emergency share, no consent reason",
    "emergency-family-informed-unrecorded": "Emergency share, family-informed status not recorded",
    "consent-as-basis": "Consent used as the basis by a public authority",
    "without-consent-condition-with-consent": "Without-consent safeguarding condition claimed with consent given",
    "emergency-consent-unrecorded": "Emergency share, consent not recorded",
    "emergency-consent-contradiction": "Emergency share, consent record contradicts itself",
    "advice-sought": "Advice sought before sharing",
    "late": "Sent after the sender's statutory clock ran out",
    "clock-unjudged": "Sent without the date the sender's statutory clock starts from",
    "recipient-missing": "A recipient the law requires was not addressed",
    "overdue": "Reply overdue",
}
REVIEW_OUTCOMES: Final = {
    "proportionate": "Lawful, necessary and proportionate: no action",
    "follow-up": "Follow up with the agency (practice or recording)",
    "not-proportionate": "Not proportionate: escalate to the Data Protection Officer",
    "breach": "Personal data breach: report under the breach procedure",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
  id TEXT PRIMARY KEY, seq INTEGER NOT NULL, instance TEXT NOT NULL, n INTEGER NOT NULL, at TEXT NOT NULL,
  event TEXT NOT NULL, message TEXT, type TEXT, sender TEXT, recipient TEXT, decision TEXT, lawful_basis TEXT,
  consent TEXT, purpose TEXT, urgency TEXT, code TEXT, flags TEXT, flagged INTEGER NOT NULL DEFAULT 0,
  thread TEXT, re TEXT, due TEXT, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS records_at ON records (at DESC, id DESC);
CREATE INDEX IF NOT EXISTS records_message ON records (message);
CREATE INDEX IF NOT EXISTS records_re ON records (re);
CREATE INDEX IF NOT EXISTS records_sender ON records (sender, at DESC);
CREATE INDEX IF NOT EXISTS records_recipient ON records (recipient, at DESC);
CREATE INDEX IF NOT EXISTS records_type ON records (type, at DESC);
CREATE INDEX IF NOT EXISTS records_event ON records (event, at DESC);
CREATE INDEX IF NOT EXISTS records_basis ON records (lawful_basis, at DESC);
CREATE INDEX IF NOT EXISTS records_flagged ON records (flagged, at DESC);
CREATE TABLE IF NOT EXISTS subjects (token TEXT NOT NULL, message TEXT NOT NULL, PRIMARY KEY (token, message))
  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reviews (
  item TEXT PRIMARY KEY, kind TEXT NOT NULL, message TEXT NOT NULL, recipient TEXT, type TEXT, sender TEXT,
  reasons TEXT NOT NULL, at TEXT NOT NULL, outcome TEXT, reviewer TEXT, reviewed_at TEXT, review_record TEXT);
CREATE INDEX IF NOT EXISTS reviews_open ON reviews (outcome, at);
CREATE TABLE IF NOT EXISTS checkpoints (instance TEXT PRIMARY KEY, count INTEGER NOT NULL, head TEXT NOT NULL,
  at TEXT NOT NULL, token BLOB NOT NULL);
"""

_INSERT_RECORD: Final = "INSERT OR IGNORE INTO records VALUES (?" + ",?" * 21 + ")"


def _columns(seq: int, record: Mapping[str, Any]) -> tuple[Any, ...]:
    sharing = record.get("sharing") if isinstance(record.get("sharing"), Mapping) else {}
    assert isinstance(sharing, Mapping)
    flags = record.get("flags") or []
    return (
        str(record["id"]), seq, str(record.get("instance", "")), int(record.get("n", 0)), str(record.get("at", "")),
        str(record.get("event", "")), record.get("message"), record.get("type"), record.get("sender"),
        record.get("recipient"), record.get("decision"),
        sharing.get("lawfulBasis") or sharing.get("lawEnforcementBasis"), sharing.get("consentStatus"),
        sharing.get("purpose"), sharing.get("urgency"), record.get("code"),
        orjson.dumps(flags).decode() if flags else None, 1 if flags else 0, record.get("thread"), record.get("re"),
        record.get("due"), orjson.dumps(record).decode(),
    )


class AuditIndex:
    """The index file. Writes go through one thread, reads through a small pool."""

    def __init__(self, path: Path, *, readers: int = 4) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sgb-index-w")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="sgb-index-r")
        self._local = threading.local()
        self._wconn: sqlite3.Connection | None = None
        self.version = 0  # bumped after every write; lets waiters notice new records
        self._changed = asyncio.Event()

    # -- plumbing ----------------------------------------------------------------------

    def _connect(self, *, same_thread: bool = True) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=same_thread)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._readers, lambda: fn(self._reader()))

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            if self._wconn is None:
                self._wconn = self._connect()
                self._wconn.executescript(_SCHEMA)
            return fn(self._wconn)

        result = await asyncio.get_running_loop().run_in_executor(self._writer, run)
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        return result

    async def open(self, stream_created: str | None = None) -> None:
        """Create the tables; start afresh if the index was built from another stream (one that was
        since re-created), since its sequence numbers would not match."""
        def prepare(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT value FROM meta WHERE key = 'stream'").fetchone()
            if stream_created and row and orjson.loads(row[0]) != stream_created:
                log.warning("audit index built from another stream; rebuilding")
                for table in ("records", "subjects", "reviews", "checkpoints", "meta"):
                    conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
            if stream_created:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('stream', ?)",
                             (orjson.dumps(stream_created).decode(),))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

        await self._write(prepare)

    def close(self) -> None:
        def shut(conn: sqlite3.Connection | None) -> None:
            if conn is not None:
                conn.close()

        self._writer.submit(shut, self._wconn).result(timeout=10)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)

    async def wait_for_change(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    # -- writing -----------------------------------------------------------------------

    async def apply(self, batch: Sequence[tuple[int, list[dict[str, Any]]]], checkpoints: Sequence[bytes],
                    last_seq: int) -> None:
        await self._write(lambda c: _apply(c, batch, checkpoints, last_seq))

    async def set_meta(self, key: str, value: Any) -> None:
        await self._write(lambda c: c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                              (key, orjson.dumps(value).decode())))

    # -- reading -----------------------------------------------------------------------

    async def meta(self, key: str) -> Any:
        def get(conn: sqlite3.Connection) -> Any:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return orjson.loads(row[0]) if row else None

        return await self._read(get)

    async def last_seq(self) -> int:
        return int(await self.meta("last_seq") or 0)

    async def records(self, q: RecordQuery) -> Page:
        return await self._read(lambda c: records_page(c, q))

    async def record(self, record_id: str) -> dict[str, Any] | None:
        def get(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT body FROM records WHERE id = ?", (record_id,)).fetchone()
            return orjson.loads(row[0]) if row else None

        return await self._read(get)

    async def trail(self, message: str) -> list[dict[str, Any]]:
        """Every record of a message, and of the messages that answer it, in time order."""
        def get(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT body FROM records WHERE message = ? OR re = ? OR message IN "
                "(SELECT message FROM records WHERE re = ?) ORDER BY at, instance, n", (message, message, message))
            return [orjson.loads(r[0]) for r in rows]

        return await self._read(get)

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

        return await self._read(get)

    async def reviews(self, *, state: str = "open", limit: int = 50, cursor: str | None = None) -> Page:
        return await self._read(lambda c: _reviews(c, state, limit, cursor))

    async def review_item(self, item: str) -> dict[str, Any] | None:
        def get(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT * FROM reviews WHERE item = ?", (item,)).fetchone()
            return _review_row(row) if row else None

        return await self._read(get)

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

        return await self._read(get)

    async def counts(self) -> dict[str, int]:
        def get(conn: sqlite3.Connection) -> dict[str, int]:
            records = conn.execute("SELECT count(*) FROM records").fetchone()[0]
            open_reviews = conn.execute("SELECT count(*) FROM reviews WHERE outcome IS NULL").fetchone()[0]
            return {"records": records, "openReviews": open_reviews}

        return await self._read(get)

    async def retention_counts(self, before: str) -> dict[str, Any]:
        def get(conn: sqlite3.Connection) -> dict[str, Any]:
            past = conn.execute("SELECT count(*), min(at) FROM records WHERE at < ?", (before,)).fetchone()
            expired = conn.execute("SELECT count(*) FROM records WHERE event = 'expired'").fetchone()[0]
            return {"auditRecordsPastRetention": past[0], "oldestPastRetention": past[1], "expiredDeliveries": expired}

        return await self._read(get)

    async def checkpoint_tokens(self) -> list[bytes]:
        return await self._read(lambda c: [bytes(r[0]) for r in c.execute("SELECT token FROM checkpoints")])

    def export_rows(self, q: RecordQuery, chunk: int = 1000) -> Iterator[list[dict[str, Any]]]:
        """Synchronous generator of pages (for the streaming CSV export). Each step may run on a
        different executor thread, one at a time, hence a connection not tied to one thread."""
        conn = self._connect(same_thread=False)
        conn.execute("PRAGMA query_only=ON")
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


def _apply(conn: sqlite3.Connection, batch: Sequence[tuple[int, list[dict[str, Any]]]],
           checkpoints: Sequence[bytes], last_seq: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for seq, records in batch:
            for record in records:
                if "id" not in record:
                    continue
                cur = conn.execute(_INSERT_RECORD, _columns(seq, record))
                if cur.rowcount:
                    _derive(conn, record)
        for token in checkpoints:
            claims = unverified(token)[1]
            conn.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?) ON CONFLICT(instance) DO UPDATE SET "
                         "count = excluded.count, head = excluded.head, at = excluded.at, token = excluded.token "
                         "WHERE excluded.count >= checkpoints.count",
                         (claims["instance"], claims["count"], claims["head"], claims["at"], token))
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(last_seq),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _derive(conn: sqlite3.Connection, record: Mapping[str, Any]) -> None:
    """Subject tokens and the review queue, from a newly indexed record."""
    message, event = record.get("message"), record.get("event")
    for token in record.get("subjects") or ():
        conn.execute("INSERT OR IGNORE INTO subjects VALUES (?, ?)", (token, message))
    flags = [f for f in record.get("flags") or () if f in REVIEW_FLAGS]
    if event == "received" and flags:
        conn.execute("INSERT OR IGNORE INTO reviews (item, kind, message, type, sender, reasons, at) "
                     "VALUES (?, 'flagged', ?, ?, ?, ?, ?)",
                     (f"flag:{message}", message, record.get("type"), record.get("sender"),
                      orjson.dumps(flags).decode(), record.get("at")))
    elif event == "overdue":
        conn.execute("INSERT OR IGNORE INTO reviews (item, kind, message, recipient, type, sender, reasons, at) "
                     "VALUES (?, 'overdue', ?, ?, ?, ?, '[\"overdue\"]', ?)",
                     (f"overdue:{message}:{record.get('recipient')}", message, record.get("recipient"),
                      record.get("type"), record.get("sender"), record.get("at")))
    elif event == "reviewed":
        conn.execute("UPDATE reviews SET outcome = ?, reviewer = ?, reviewed_at = ?, review_record = ? "
                     "WHERE item = ?", (record.get("outcome"), record.get("reviewer"), record.get("at"),
                                        record.get("id"), record.get("item")))


def _review_row(row: sqlite3.Row) -> dict[str, Any]:
    item = {k: row[k] for k in row.keys()}  # noqa: SIM118 - sqlite3.Row is not a mapping
    item["reasons"] = orjson.loads(item["reasons"])
    return item


def _reviews(conn: sqlite3.Connection, state: str, limit: int, cursor: str | None) -> Page:
    where = ["outcome IS NULL" if state == "open" else "outcome IS NOT NULL"]
    args: list[Any] = []
    if cursor:
        at, ident = decode_cursor(cursor)
        where.append("(at > ? OR (at = ? AND item > ?))")
        args.extend([at, at, ident])
    rows = conn.execute(f"SELECT * FROM reviews WHERE {' AND '.join(where)} ORDER BY at, item LIMIT ?",  # noqa: S608
                        [*args, limit + 1]).fetchall()
    items = [_review_row(r) for r in rows[:limit]]
    nxt = encode_cursor(rows[limit - 1]["at"], rows[limit - 1]["item"]) if len(rows) > limit else None
    return Page(items, nxt)


# -- following the stream -------------------------------------------------------------------


class Indexer:
    """Follows ``SG_AUDIT`` into the index until stopped. Checks each block before indexing it."""

    def __init__(self, js: JetStreamContext, index: AuditIndex, keys: Callable[[str, float], Any],
                 *, batch: int = 500, linger: float = 0.05) -> None:
        self._js = js
        self._index = index
        self._keys = keys
        self._batch = batch
        self._linger = linger
        self.rejected_blocks = 0

    def _check(self, seq: int, subject: str, data: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        verifier = Verifier(self._keys, on_record=out.append)  # hands over only signed, linked records
        verifier.block(seq, subject, data)
        if verifier.report.problems:
            self.rejected_blocks += 1
            log.error("audit block fails verification; not indexed", seq=seq,
                      problems=[p.kind for p in verifier.report.problems])
            return []
        return out

    def _checked_checkpoint(self, data: bytes) -> bytes | None:
        try:
            claims = unverified(data)[1]
            verify_typed(data, CHECKPOINT_TYP, self._keys, at_of(claims))
        except (InvalidEnvelope, KeyError):
            return None
        return data

    async def catch_up(self, *, idle: float = 1.0) -> int:
        """Index everything stored so far; return the last sequence indexed."""
        try:
            info = await self._js.stream_info(AUDIT)
        except NotFoundError:
            return await self._index.last_seq()
        target = info.state.last_seq
        await self.run(stop=asyncio.Event(), until=target, idle=idle)
        return target

    async def run(self, *, stop: asyncio.Event, until: int | None = None, idle: float = 1.0) -> None:
        start = await self._index.last_seq() + 1
        if until is not None and start > until:
            return
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        sub = await self._js.subscribe("sg.audit.>", stream=AUDIT, ordered_consumer=True, config=config,
                                       pending_msgs_limit=4096)
        try:
            while not stop.is_set():
                batch: list[tuple[int, list[dict[str, Any]]]] = []
                checkpoints: list[bytes] = []
                last = 0
                deadline = time.monotonic() + self._linger
                while len(batch) + len(checkpoints) < self._batch:
                    wait = idle if not batch and not checkpoints else max(deadline - time.monotonic(), 0.001)
                    try:
                        msg = await sub.next_msg(timeout=wait)
                    except (TimeoutError, NatsTimeoutError):
                        break
                    seq = msg.metadata.sequence.stream
                    last = seq
                    if is_checkpoint(msg.subject):
                        token = self._checked_checkpoint(msg.data)
                        if token is not None:
                            checkpoints.append(token)
                    else:
                        batch.append((seq, self._check(seq, msg.subject, msg.data)))
                    if until is not None and seq >= until:
                        break
                if last:
                    await self._index.apply(batch, checkpoints, last)
                if until is not None and (last >= until or (not last and await self._index.last_seq() >= until)):
                    return
                if until is not None and not last:
                    return  # nothing more arrives within idle: the stream is shorter than it said
        except NatsError as exc:
            log.warning("audit indexer lost its consumer; it will restart", error=type(exc).__name__)
        finally:
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                await sub.unsubscribe()


