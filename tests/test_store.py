"""The one SQLite store helper (broker.store) and the private-file writer (broker.files): private
files, WAL, versioned migrations, work off the event loop within a deadline; and every store
file written before versions (each shape as the code before this helper left it) still opens,
keeps its rows and is brought up to the current version."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from adapters.runtime.inbound import SubmissionStore
from adapters.runtime.retries import RetryLedger
from adapters.school.store import Inbox
from adapters.sdk import Delivery, SeenStore
from broker.audit.index import AuditIndex, RecordQuery
from broker.audit.tables import MIGRATIONS
from broker.errors import ConfigError, KeyStoreError, StoreError
from broker.files import append_private, check_private, read_private, write_private
from broker.store import Store, add_columns


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _old(path: Path, script: str) -> None:
    """A file as the code before versions made it: user_version 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(script)
    db.commit()
    db.close()


def _version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("pragma user_version").fetchone()[0])
    finally:
        db.close()


async def test_a_store_is_private_in_wal_and_migrated_in_order(tmp_path: Path) -> None:
    path = tmp_path / "state" / "x.sqlite"
    steps = ["create table t (a text);", add_columns("t", ("b text", "c integer")), "create index t_b on t (b);"]
    async with Store(path, steps, name="x") as store:
        await store.write(lambda db: db.execute("insert into t values ('1', '2', 3)"))
        assert await store.read(lambda db: db.execute("select a, b, c from t").fetchone()[:]) == ("1", "2", 3)
        assert await store.read(lambda db: db.execute("pragma journal_mode").fetchone()[0]) == "wal"
    assert _mode(path.parent) == 0o700 and _mode(path) == 0o600
    assert all(_mode(p) == 0o600 for p in path.parent.iterdir())  # its -wal and -shm too, while they exist
    assert _version(path) == 3
    again = Store(path, steps, name="x")  # nothing left to apply: the row stays
    try:
        assert again.read_blocking(lambda db: db.execute("select count(*) from t").fetchone()[0]) == 1
    finally:
        again.close()


async def test_a_failed_migration_changes_nothing_and_a_newer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite"
    broken = Store(path, ["create table t (a text);", "create table u (b text); not sql at all;"], name="x")
    with pytest.raises(sqlite3.Error):
        await broken.write(lambda db: None)
    broken.close()
    assert _version(path) == 1  # the first step stands, the second left no table behind
    db = sqlite3.connect(path)
    assert [r[0] for r in db.execute("select name from sqlite_master where type = 'table'")] == ["t"]
    db.execute("pragma user_version = 9")
    db.close()
    newer = Store(path, ["create table t (a text);"], name="x")
    with pytest.raises(StoreError, match="newer version"):
        await newer.read(lambda db: None)
    newer.close()


async def test_work_runs_off_the_event_loop_within_a_deadline(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.sqlite", ["create table t (a text);"], name="x", readers=2, deadline=0.3)
    try:
        loop_thread = threading.current_thread()
        threads = {await store.write(lambda db: threading.current_thread()),
                   await store.read(lambda db: threading.current_thread())}
        assert loop_thread not in threads and len(threads) == 2  # a writer, and a reader of its own
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        with pytest.raises(StoreError, match=r"did not answer within 0\.3 s"):
            await store.write(lambda db: time.sleep(0.6))
        ticker.cancel()
        assert ticks >= 10  # the loop went on while SQLite was busy
        with pytest.raises(StoreError, match="did not answer"):
            store.read_blocking(lambda db: time.sleep(0.6))
    finally:
        store.close()
    store.close()  # a second close does nothing
    with pytest.raises(StoreError, match="closed"):
        await store.read(lambda db: None)


def test_private_files_one_writer_one_check(tmp_path: Path) -> None:
    secret = tmp_path / "keys" / "s.key"
    write_private(secret, b"x" * 32)
    assert _mode(secret) == 0o600 and _mode(secret.parent) == 0o700 and read_private(secret) == b"x" * 32
    log = tmp_path / "letters" / "discarded.jsonl"
    append_private(log, b"a\n")
    append_private(log, b"b\n")
    assert log.read_bytes() == b"a\nb\n" and _mode(log) == 0o600
    secret.chmod(0o640)
    with pytest.raises(KeyStoreError, match="readable by others; chmod 600 it"):
        read_private(secret)
    with pytest.raises(ConfigError, match="readable by others"):  # a setting's secret: the operator's to fix
        check_private(secret, error=ConfigError)
    with pytest.raises(FileNotFoundError):
        read_private(tmp_path / "none")


# -- every store file from before versions, in the shape the code before this helper left it --


async def test_an_audit_index_from_before_versions_opens_with_its_records(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "index.sqlite"
    _old(path, """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE records (
          id TEXT PRIMARY KEY, seq INTEGER NOT NULL, instance TEXT NOT NULL, n INTEGER NOT NULL, at TEXT NOT NULL,
          event TEXT NOT NULL, message TEXT, type TEXT, sender TEXT, recipient TEXT, decision TEXT,
          lawful_basis TEXT, consent TEXT, purpose TEXT, urgency TEXT, code TEXT, flags TEXT,
          flagged INTEGER NOT NULL DEFAULT 0, thread TEXT, re TEXT, due TEXT, body TEXT NOT NULL);
        CREATE INDEX records_at ON records (at DESC, id DESC);
        CREATE TABLE subjects (token TEXT NOT NULL, message TEXT NOT NULL, PRIMARY KEY (token, message))
          WITHOUT ROWID;
        CREATE TABLE reviews (
          item TEXT PRIMARY KEY, kind TEXT NOT NULL, message TEXT NOT NULL, recipient TEXT, type TEXT, sender TEXT,
          reasons TEXT NOT NULL, at TEXT NOT NULL, outcome TEXT, reviewer TEXT, reviewed_at TEXT,
          review_record TEXT);
        CREATE TABLE checkpoints (instance TEXT PRIMARY KEY, count INTEGER NOT NULL, head TEXT NOT NULL,
          at TEXT NOT NULL, token BLOB NOT NULL);
        INSERT INTO meta VALUES ('schema', '1'), ('last_seq', '7'), ('stream', '"2026-01-01T00:00:00Z"');
        INSERT INTO records (id, seq, instance, n, at, event, message, body)
          VALUES ('r1', 7, 'b1', 1, '2026-01-02T00:00:00Z', 'received', 'm1', '{"id": "r1", "event": "received"}');
    """)
    index = AuditIndex(path)
    try:
        await index.open(stream_created="2026-01-01T00:00:00Z")
        assert await index.last_seq() == 7
        assert [r["id"] for r in (await index.records(RecordQuery())).items] == ["r1"]
        assert (await index.counts())["records"] == 1
    finally:
        index.close()
    assert _version(path) == len(MIGRATIONS) and _mode(path) == 0o600


async def test_a_seen_store_from_before_versions_opens_in_each_of_its_shapes(tmp_path: Path) -> None:
    before_replies = tmp_path / "old.sqlite"  # before replies were tracked: ids and times only
    _old(before_replies, "create table seen (id text primary key, at real not null);"
                         "insert into seen values ('d-1', 1.0);")
    last = tmp_path / "last.sqlite"  # as the last unversioned code made it
    _old(last, "create table seen (id text primary key, at real not null, type text, sender text, message text,"
               " thread text); create index seen_message on seen (message);"
               "create table own_receipts (id text primary key, at real not null);"
               "insert into seen values ('d-1', 1.0, 'referral', 'police-met', 'm-1', 't-1');"
               "insert into own_receipts values ('r-1', 1.0);")
    for path in (before_replies, last):
        seen = SeenStore(path)
        try:
            assert await seen.has("d-1") and not await seen.has("d-2")
            await seen.add("d-2", Delivery({"jti": "d-2", "typ": "referral", "thread": "t-2",
                                            "origin": {"iss": "health-camden", "jti": "m-2"}}, {}))
            handed = await asyncio.to_thread(seen.handed, "m-2")  # as a mapper asks, from a worker thread
            assert handed is not None and (handed.delivery, handed.sender, handed.thread) == \
                ("d-2", "health-camden", "t-2")
            assert await seen.is_own_receipt("r-1") == (path == last)
        finally:
            seen.close()
        assert _version(path) == 3


async def test_the_adapters_other_stores_from_before_versions_open_with_their_rows(tmp_path: Path) -> None:
    submissions = tmp_path / "submissions.sqlite"
    _old(submissions, "create table submissions (key text primary key, digest text not null, at real not null,"
                      " messages text not null); create table sent (message text primary key, at real not null);"
                      "insert into submissions values ('k1', 'd1', 1.0, '[\"m1\",\"m2\"]');"
                      "insert into sent values ('m1', 1.0);")
    store = SubmissionStore(submissions)
    try:
        assert await store.known("k1") == ("d1", ["m1", "m2"]) and await store.sent_among(["m1", "m2"]) == {"m1"}
    finally:
        store.close()
    retrying = tmp_path / "retrying.sqlite"
    _old(retrying, "create table retrying (id text primary key, first real not null, attempts integer not null,"
                   " reason text not null); insert into retrying values ('d-1', 5.0, 2, 'HTTP 503');")
    ledger = RetryLedger(retrying)
    try:
        assert await ledger.prune(1.0) == 0 and len(ledger) == 1
        failing = await ledger.failed("d-1", 9.0, "HTTP 502")
        assert (failing.first, failing.attempts, failing.reason) == (5.0, 3, "HTTP 502")
    finally:
        ledger.close()
    inbox_path = tmp_path / "inbox.sqlite"
    _old(inbox_path, "create table notices (seq integer primary key autoincrement, delivery text not null unique,"
                     " type text not null, received_at text not null, sender text, message text, raw blob not null,"
                     " acknowledged_at text, acknowledged_by text, actioned_at text, actioned_by text);"
                     "create index notices_type on notices (type, seq);"
                     "insert into notices (delivery, type, received_at, raw) values"
                     " ('d-1', 'encompass-notification', '2026-01-02T08:00:00Z', x'00');")
    inbox = Inbox(inbox_path)
    try:
        assert [n.delivery for n in await inbox.notices()] == ["d-1"]
        assert await inbox.record("d-1", "accepted", "dsl-1", "2026-01-02T09:00:00Z")
    finally:
        inbox.close()
    for path in (submissions, retrying, inbox_path):
        assert _version(path) == 1 and _mode(path) == 0o600
