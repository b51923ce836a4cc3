"""The audit index's tables, their migrations, and how a verified record becomes rows.

The index is derived (:mod:`broker.audit.index`): a record is written once, by the indexer,
with its subject tokens and its place in the IG review queue derived from it in the same
transaction. Versions (``PRAGMA user_version``, :mod:`broker.store`): 1, the tables as first
shipped (an index from before versions is version 0 with exactly these, so the same script
brings it up).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from broker.store import Migration
from broker.wire.jws import unverified

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
""",)
TABLES: Final = ("records", "subjects", "reviews", "checkpoints", "meta")

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
                checkpoints: Sequence[bytes], last_seq: int) -> None:
    """Index verified records and checkpoints up to stream sequence ``last_seq``, in one transaction."""
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
