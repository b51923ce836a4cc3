"""The audit index's tables, their migrations, and how a verified record becomes rows.

The index is derived (:mod:`broker.audit.index`): a record is written once, by the indexer,
with its subject tokens and its place in the IG review queue derived from it in the same
transaction. Versions (``PRAGMA user_version``, :mod:`broker.store`): 1, the tables as first
shipped (an index from before versions is version 0 with exactly these, so the same script
brings it up); 2, the triaged queue (:mod:`broker.audit.triage`: each item's priority and sample
point, and the deliveries by type and recipient kind the rare-recipient test counts).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from broker.audit.triage import RANKS, SAMPLE, Triage, by_message, judge
from broker.store import Migration
from broker.wire.jws import unverified

MIGRATIONS: Final[tuple[Migration, ...]] = ("""
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
""", """
ALTER TABLE reviews ADD COLUMN priority TEXT NOT NULL DEFAULT 'high';
ALTER TABLE reviews ADD COLUMN rank INTEGER NOT NULL DEFAULT 1;
ALTER TABLE reviews ADD COLUMN point REAL;
CREATE INDEX IF NOT EXISTS reviews_queue ON reviews (outcome, rank, at, item);
CREATE INDEX IF NOT EXISTS reviews_reviewer ON reviews (reviewer, reviewed_at);
CREATE INDEX IF NOT EXISTS records_seq ON records (seq);
CREATE TABLE IF NOT EXISTS triage_seen (type TEXT NOT NULL, kind TEXT NOT NULL, n INTEGER NOT NULL,
  PRIMARY KEY (type, kind)) WITHOUT ROWID;
""")
TABLES: Final = ("records", "subjects", "reviews", "checkpoints", "triage_seen", "meta")
DERIVED: Final = ("reviews", "triage_seen")  # what the triage settings shape

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


def apply_batch(conn: sqlite3.Connection, batch: Sequence[tuple[int, list[dict[str, Any]]]],
                checkpoints: Sequence[bytes], last_seq: int, triage: Triage) -> None:
    """Index verified records and checkpoints up to stream sequence ``last_seq``, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for seq, records in batch:
            fresh = [r for r in records if "id" in r and conn.execute(_INSERT_RECORD, _columns(seq, r)).rowcount]
            _derive_all(conn, triage, fresh)
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


def _derive_all(conn: sqlite3.Connection, triage: Triage, records: Sequence[Mapping[str, Any]]) -> None:
    """Subject tokens and the review queue, from the newly indexed records of one block."""
    grouped = by_message(records)
    for record in records:
        _derive(conn, triage, record, grouped.get(record.get("message"), ()))


def _derive(conn: sqlite3.Connection, triage: Triage, record: Mapping[str, Any],
            siblings: Sequence[Mapping[str, Any]]) -> None:
    message, event = record.get("message"), record.get("event")
    for token in record.get("subjects") or ():
        conn.execute("INSERT OR IGNORE INTO subjects VALUES (?, ?)", (token, message))
    if event == "received":
        verdict = judge(conn, triage, record, siblings)
        if verdict is not None:
            conn.execute("INSERT OR IGNORE INTO reviews (item, kind, message, type, sender, reasons, at, priority, "
                         "rank, point) VALUES (?, 'flagged', ?, ?, ?, ?, ?, ?, ?, ?)",
                         (f"flag:{message}", message, record.get("type"), record.get("sender"),
                          orjson.dumps(verdict.reasons).decode(), record.get("at"), verdict.priority,
                          RANKS[verdict.priority], verdict.point))
    elif event == "overdue" and (priority := triage.priority_of("overdue")) is not None:
        conn.execute("INSERT OR IGNORE INTO reviews (item, kind, message, recipient, type, sender, reasons, at, "
                     "priority, rank) VALUES (?, 'overdue', ?, ?, ?, ?, '[\"overdue\"]', ?, ?, ?)",
                     (f"overdue:{message}:{record.get('recipient')}", message, record.get("recipient"),
                      record.get("type"), record.get("sender"), record.get("at"), priority, RANKS[priority]))
    elif event == "reviewed":  # the first outcome stands; it stays even for an item the triage no longer picks
        # (the message's type, sender and time come from its received record, if indexed; SQLite needs the
        # "WHERE true" to read ON CONFLICT after a join as the upsert clause)
        priority = str(record.get("priority")) if record.get("priority") in RANKS else SAMPLE
        conn.execute("INSERT INTO reviews (item, kind, message, type, sender, reasons, at, outcome, reviewer, "
                     "reviewed_at, review_record, priority, rank) SELECT ?, 'reviewed', ?, r.type, r.sender, ?, "
                     "COALESCE(r.at, ?), ?, ?, ?, ?, ?, ? FROM (SELECT NULL) LEFT JOIN records r ON r.message = ? "
                     "AND r.event = 'received' WHERE true ON CONFLICT(item) DO UPDATE SET outcome = excluded.outcome, "
                     "reviewer = excluded.reviewer, reviewed_at = excluded.reviewed_at, "
                     "review_record = excluded.review_record WHERE reviews.outcome IS NULL",
                     (record.get("item"), record.get("message"), orjson.dumps(record.get("reasons") or []).decode(),
                      record.get("at"), record.get("outcome"), record.get("reviewer"), record.get("at"),
                      record.get("id"), priority, RANKS[priority], record.get("message")))


REDERIVE_RECORDS: Final = 20_000  # about the records one transaction of :func:`rederive_step` covers (~1 s)


def start_rederive(conn: sqlite3.Connection, digest: str) -> dict[str, Any]:
    """Begin deriving the queue again: empty what the triage shapes and note where it stands, and
    up to which block (what is indexed later is judged as it comes, under the new triage)."""
    for table in DERIVED:
        conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
    until = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
    state = {"pending": digest, "after": 0, "until": until}
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('triage', ?)", (orjson.dumps(state).decode(),))
    return state


def rederive_step(conn: sqlite3.Connection, triage: Triage, digest: str, after: int,
                  until: int | None = None) -> int | None:
    """Derive the queue from the next :data:`REDERIVE_RECORDS` records or so (whole stream messages)
    after stream sequence ``after`` (up to ``until``, if given), noting the progress in the same
    transaction (so an interrupted run resumes there); returns where it got to, or None once done."""
    last = conn.execute("SELECT seq FROM records WHERE seq > ? AND (? IS NULL OR seq <= ?) ORDER BY seq "
                        "LIMIT 1 OFFSET ?", (after, until, until, REDERIVE_RECORDS - 1)).fetchone()
    upto = last[0] if last else None
    bound = upto if upto is not None else until
    rows = conn.execute("SELECT seq, body FROM records WHERE seq > ? AND (? IS NULL OR seq <= ?) AND event IN "
                        "('received', 'shared', 'overdue', 'reviewed') ORDER BY seq, instance, n",
                        (after, bound, bound))
    block: list[dict[str, Any]] = []
    seq = None
    for row in rows:
        if row[0] != seq and block:
            _derive_all(conn, triage, block)
            block = []
        seq = row[0]
        block.append(orjson.loads(row[1]))
    _derive_all(conn, triage, block)
    state = digest if upto is None else {"pending": digest, "after": upto, "until": until}
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('triage', ?)", (orjson.dumps(state).decode(),))
    return upto
