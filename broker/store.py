"""Local SQLite files of the broker and the adapters, kept one way.

Every store (the audit index; an adapter's submissions, seen deliveries, retry ledger and
school inbox) is a :class:`Store`:

- **private**: the folder 0700, the file 0600 before SQLite opens it, so its ``-wal`` and
  ``-shm`` files get the same mode (:mod:`broker.files`);
- **WAL**, a busy timeout, ``synchronous`` chosen by the owner (NORMAL unless a store must not
  lose its last commits to a power cut);
- **versioned migrations**: ``PRAGMA user_version`` counts the migrations applied; each runs
  in its own transaction together with the version it reaches. A file from before versions
  (version 0) is brought up by the same list, whose first steps are written to hold for the
  shapes already on disk (``CREATE ... IF NOT EXISTS``, :func:`add_columns`). A file written by
  a newer version is refused, not guessed at;
- **off the event loop**: one writer thread owns the connection that writes; reads go to a
  pool of reader threads, each with its own read-only connection (or, with ``readers=0``, to
  the writer). A coroutine awaits :meth:`Store.read` / :meth:`Store.write`; synchronous code
  running outside the loop (a mapper in a worker thread, a command, a test) calls
  :meth:`Store.read_blocking` / :meth:`Store.write_blocking`. Every wait has the store's
  deadline; past it, :class:`~broker.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

from broker.errors import StoreError
from broker.files import create_private

T = TypeVar("T")
Migration = str | Callable[[sqlite3.Connection], None]
"""A script (run whole) or a function of the connection (no ``executescript`` in it: the
transaction is the migrator's)."""

_SYNCHRONOUS: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
BUSY_TIMEOUT: Final = 10.0


def add_columns(table: str, columns: Sequence[str]) -> Callable[[sqlite3.Connection], None]:
    """A migration adding ``columns`` (``"name type"``) to ``table`` where a file lacks them:
    files from before versions may or may not have them already."""
    def add(conn: sqlite3.Connection) -> None:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            if column.split()[0] not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")

    return add


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration], what: str) -> int:
    """Apply the migrations ``conn``'s file has not had; return its version."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current > len(migrations):
        raise StoreError(f"{what} was written by a newer version (schema {current}; this one knows "
                         f"{len(migrations)}); upgrade, or move the file aside")
    for version, step in enumerate(migrations[current:], start=current + 1):
        if isinstance(step, str):
            try:
                conn.executescript(f"BEGIN IMMEDIATE;\n{step}\n;PRAGMA user_version = {version};\nCOMMIT;")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            step(conn)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(migrations)


class Store:
    """One SQLite file (``path`` None: in memory, one connection), migrated, worked off the loop."""

    def __init__(self, path: Path | None, migrations: Sequence[Migration], *, name: str, readers: int = 0,
                 synchronous: str = "NORMAL", deadline: float = 30.0) -> None:
        if synchronous not in _SYNCHRONOUS or (path is None and readers):
            raise ValueError("synchronous is OFF, NORMAL, FULL or EXTRA; an in-memory store has no readers")
        self.path = path
        self.name = name
        self.deadline = deadline
        self._migrations = tuple(migrations)
        self._synchronous = synchronous
        if path is not None:
            create_private(path)
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"sgb-{name}-w")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix=f"sgb-{name}-r") if readers else None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._opened: Future[int] = self._writer.submit(self._open)

    # -- the threads' side -------------------------------------------------------------

    def connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        """A new connection to the file, usable from any one thread at a time; the caller closes
        it. Made once the migrations are done (for a reader that must stream, such as an export)."""
        if self.path is None:
            raise StoreError(f"the {self.name} store is in memory: it has one connection")
        if read_only:
            self._wait(self._opened)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        if read_only:
            conn.execute("PRAGMA query_only=ON")
        return conn

    def _open(self) -> int:
        if self.path is None:
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
        else:
            conn = self.connect()
        try:
            version = migrate(conn, self._migrations, f"the {self.name} store {self.path or ''}".rstrip())
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return version

    def _on_writer(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._opened.result()  # raises why it could not be opened
            raise StoreError(f"the {self.name} store is closed")
        return fn(self._conn)

    def _on_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect(read_only=True)
            self._local.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        return fn(conn)

    # -- the callers' side -------------------------------------------------------------

    def _submit(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> Future[T]:
        if self._closed:
            raise StoreError(f"the {self.name} store is closed")
        if write or self._readers is None:
            return self._writer.submit(self._on_writer, fn)
        return self._readers.submit(self._on_reader, fn)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the writer's connection (one at a time, in order), off the event loop."""
        return await self._await(self._submit(fn, write=True))

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on a read-only connection, off the event loop."""
        return await self._await(self._submit(fn, write=False))

    def write_blocking(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """:meth:`write` for synchronous code; never from a coroutine (it would hold up the loop)."""
        return self._wait(self._submit(fn, write=True))

    def read_blocking(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """:meth:`read` for synchronous code; never from a coroutine (it would hold up the loop)."""
        return self._wait(self._submit(fn, write=False))

    async def _await(self, future: Future[T]) -> T:
        try:
            async with asyncio.timeout(self.deadline):
                return await asyncio.wrap_future(future)
        except TimeoutError as exc:
            if future.done() and not future.cancelled():
                raise  # the work itself raised it
            raise self._silent() from exc

    def _wait(self, future: Future[T]) -> T:
        try:
            return future.result(timeout=self.deadline)
        except TimeoutError as exc:
            if future.done():
                raise  # the work itself raised it
            future.cancel()
            raise self._silent() from exc

    def _silent(self) -> StoreError:
        return StoreError(f"the {self.name} store did not answer within {self.deadline:g} s")

    def close(self) -> None:
        """Finish what was asked, then close every connection (a second close does nothing)."""
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            self._writer.submit(shut).result(timeout=self.deadline)
        except TimeoutError as exc:
            raise self._silent() from exc
        finally:
            self._writer.shutdown(wait=False)
            if self._readers is not None:
                self._readers.shutdown(wait=True)  # reads in flight end within SQLite's busy timeout
            with self._lock:
                for conn in self._reader_conns:
                    conn.close()
                self._reader_conns.clear()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> Self:
        await self._await(self._opened)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
