"""What the witness remembers, in one SQLite file (:class:`broker.store.Store`, ``synchronous``
FULL: a cosignature answered must survive a power cut, or a restarted witness could cosign a
rolled-back tree):

- ``logs``: per origin, the latest cosigned size and root, and that checkpoint as the witness
  serves it (the log's verified signatures and the witness's cosignature);
- ``cosigned``: every (origin, size, root) it ever cosigned, so a second root for any size it
  cosigned is seen, not just for the latest;
- ``forks``: the evidence of each fork seen (origin, size, the two roots). ``/readyz`` fails while
  any is recorded: an operator must look (docs/transparency.md "Witnesses").

:meth:`WitnessState.add` checks and advances in one ``BEGIN IMMEDIATE`` transaction on the one
writer connection, with a compare-and-set on the stored size, so two requests from the same old
size cannot both advance (tlog-witness: "checking the old size ... and persisting the new
checkpoint must be performed atomically").
"""

from __future__ import annotations

import hmac
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from broker.audit import merkle, notes
from broker.store import Store
from broker.witness.protocol import AddCheckpoint, Refused, proved_old_root

MIGRATIONS: Final = ("""
CREATE TABLE logs (origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL, note BLOB NOT NULL,
                   updated REAL NOT NULL);
CREATE TABLE cosigned (origin TEXT NOT NULL, size INTEGER NOT NULL, root BLOB NOT NULL, PRIMARY KEY (origin, size));
CREATE TABLE forks (origin TEXT NOT NULL, size INTEGER NOT NULL, cosigned_root BLOB NOT NULL,
                    other_root BLOB NOT NULL, seen REAL NOT NULL, PRIMARY KEY (origin, size, other_root));
""",)


@dataclass(frozen=True)
class Fork:
    """Two roots for one size of one log: the one cosigned, and the other the log signed."""

    origin: str
    size: int
    cosigned_root: bytes
    other_root: bytes
    new: bool  # first seen now (not already recorded)


@dataclass(frozen=True)
class Outcome:
    """What :meth:`WitnessState.add` decided: the cosignature line, or the refusal; and the
    witness's size for the log (before, or after advancing)."""

    size: int
    line: str | None = None
    refused: Refused | None = None
    fork: Fork | None = None


def _add(conn: sqlite3.Connection, request: AddCheckpoint, signed: notes.SignedCheckpoint,
         cosigner: notes.Cosigner) -> Outcome:
    cp = signed.checkpoint
    origin, size, root = cp.origin, cp.size, cp.root_hash
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT size, root FROM logs WHERE origin = ?", (origin,)).fetchone()
        stored_size, stored_root = (int(row[0]), bytes(row[1])) if row else (0, merkle.EMPTY_ROOT)
        fork = _fork(conn, request, cp, stored_size, stored_root)
        refused = _refusal(request, cp, stored_size, stored_root)
        if refused is not None:
            conn.execute("COMMIT")  # the fork's evidence, if any
            return Outcome(stored_size, refused=refused, fork=fork)
        sig = cosigner.sign(signed.note.text, int(time.time()))
        logged = tuple(v.signature for v in signed.note.verified if v.key.sig_type == notes.ED25519)
        note = str(notes.Note(signed.note.text, (*logged, sig))).encode("utf-8")
        if row is None:
            conn.execute("INSERT INTO logs (origin, size, root, note, updated) VALUES (?, ?, ?, ?, ?)",
                         (origin, size, root, note, time.time()))
        else:
            done = conn.execute("UPDATE logs SET size = ?, root = ?, note = ?, updated = ? WHERE origin = ? AND "
                                "size = ?", (size, root, note, time.time(), origin, stored_size)).rowcount
            if done != 1:  # cannot happen on the one writer; never advance from a size not checked
                conn.execute("ROLLBACK")
                return Outcome(stored_size, refused=Refused(409, "conflict", "the witness's size changed"))
        conn.execute("INSERT OR IGNORE INTO cosigned (origin, size, root) VALUES (?, ?, ?)", (origin, size, root))
        conn.execute("COMMIT")
        return Outcome(size, line=sig.line())
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _fork(conn: sqlite3.Connection, request: AddCheckpoint, cp: notes.Checkpoint, stored_size: int,
          stored_root: bytes) -> Fork | None:
    """Evidence, from a checkpoint the log signed, that it signed two trees for one size: a root
    other than the one cosigned for that size, or a proof binding its tree to another old root."""
    found: tuple[int, bytes, bytes] | None = None
    prior = conn.execute("SELECT root FROM cosigned WHERE origin = ? AND size = ?", (cp.origin, cp.size)).fetchone()
    if prior is not None and not hmac.compare_digest(bytes(prior[0]), cp.root_hash):
        found = (cp.size, bytes(prior[0]), cp.root_hash)
    elif request.old_size == stored_size < cp.size:
        other = proved_old_root(stored_size, cp.size, request.proof, cp.root_hash)
        if other is not None and not hmac.compare_digest(other, stored_root):
            found = (stored_size, stored_root, other)
    if found is None:
        return None
    size, cosigned_root, other_root = found
    new = conn.execute("INSERT OR IGNORE INTO forks (origin, size, cosigned_root, other_root, seen) "
                       "VALUES (?, ?, ?, ?, ?)", (cp.origin, size, cosigned_root, other_root, time.time())).rowcount
    return Fork(cp.origin, size, cosigned_root, other_root, new == 1)


def _refusal(request: AddCheckpoint, cp: notes.Checkpoint, stored_size: int, stored_root: bytes) -> Refused | None:
    """The spec's checks after the signature's, in its order: 409, then 422."""
    if request.old_size != stored_size:
        return Refused(409, "conflict", "the old size is not the size this witness last cosigned")
    if cp.size == 0 and cp.root_hash != merkle.EMPTY_ROOT:
        return Refused(422, "empty-root", "a checkpoint of size 0 has the empty tree's root")
    if request.old_size == 0 and request.proof:
        return Refused(422, "consistency", "from old size 0 the consistency proof is empty")
    if request.old_size == cp.size and not hmac.compare_digest(stored_root, cp.root_hash):
        return Refused(422, "consistency", "the checkpoint has another root for the size this witness cosigned")
    if not merkle.verify_consistency(request.old_size, cp.size, request.proof, stored_root, cp.root_hash):
        return Refused(422, "consistency", "the consistency proof does not verify")
    return None


class WitnessState:
    """The witness's SQLite file; :meth:`add` is the only writer."""

    def __init__(self, path: Path | None) -> None:
        self.store = Store(path, MIGRATIONS, name="witness", synchronous="FULL")

    async def add(self, request: AddCheckpoint, signed: notes.SignedCheckpoint, cosigner: notes.Cosigner) -> Outcome:
        return await self.store.write(lambda conn: _add(conn, request, signed, cosigner))

    async def latest(self, origin: str) -> tuple[int, bytes, bytes] | None:
        """(size, root, cosigned note) of the latest checkpoint cosigned for ``origin``."""
        def read(conn: sqlite3.Connection) -> tuple[int, bytes, bytes] | None:
            row = conn.execute("SELECT size, root, note FROM logs WHERE origin = ?", (origin,)).fetchone()
            return None if row is None else (int(row[0]), bytes(row[1]), bytes(row[2]))
        return await self.store.read(read)

    async def forks(self) -> dict[str, int]:
        """Forks recorded, by origin."""
        def read(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT origin, count(*) FROM forks GROUP BY origin ORDER BY origin")
            return {str(r[0]): int(r[1]) for r in rows}
        return await self.store.read(read)

    async def __aenter__(self) -> Self:
        await self.store.__aenter__()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.store.aclose()
