"""How long, and how often, a delivery the agency system does not take is tried again.

The window is time, not a count: a delivery is retried for ``retry_for`` seconds from its first
failed hand-over (an hour by default: a routine restart or a short outage of the agency's system
must not dead-letter a referral), then dead-lettered and its sender told ``not-delivered``.

Between attempts the delivery is not held in the adapter: it is handed back to JetStream with a
delay (``nak`` with a delay on the agency's durable of ``SG_DELIVERY``), so nothing sleeps in
process, JetStream's ``ack_wait`` never runs out on a delivery in hand, a restart of the adapter
picks up where it was, and other deliveries are not queued behind it. While the agency system is
failing, the deliverer pauses for an exponentially growing, fully jittered delay (capped at
``backoff_max``) and hands back what it fetches meanwhile without trying it: one probe per pause,
not one request per waiting delivery. The first success ends the pause.

:class:`RetryLedger` remembers, per delivery id, when its hand-over first failed (a small SQLite
store beside the adapter's other state, so the window survives a restart); ids and times only.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from broker.store import Migration, Store

BACKOFF_BASE: Final = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    retry_for: float = 3600.0   # seconds from the first failed hand-over to the dead letter
    backoff_base: float = BACKOFF_BASE  # seconds: the first pause is at most this
    backoff_max: float = 60.0   # seconds: no pause is longer

    def pause(self, failures: int, jitter: float) -> float:
        """Full jitter: ``jitter`` (uniform in [0, 1)) times min(max, base * 2**(failures - 1))."""
        ceiling = min(self.backoff_max, self.backoff_base * 2.0 ** max(failures - 1, 0))
        return jitter * ceiling


@dataclass(frozen=True, slots=True)
class Failing:
    """A delivery being retried: when its hand-over first failed, how many attempts failed, and
    why the last one did (the sink's words: codes and HTTP statuses, no content)."""

    first: float
    attempts: int
    reason: str


_MIGRATIONS: Final[tuple[Migration, ...]] = (
    "create table if not exists retrying (id text primary key, first real not null, attempts integer not null, "
    "reason text not null);",
)


class RetryLedger:
    """Deliveries whose hand-over failed and that are being retried (``path`` None: in memory).
    A :class:`broker.store.Store`; how many are waiting is kept in hand for the metrics, counted
    again by every write (the service prunes a kept ledger when it starts)."""

    def __init__(self, path: Path | None) -> None:
        self._store = Store(path, _MIGRATIONS, name="retry-ledger")
        self._count = 0

    async def failed(self, delivery_id: str, now: float, reason: str, *, attempted: bool = True) -> Failing:
        """Note a failed (or, with ``attempted`` false, a put-off) hand-over; the window starts at the first."""
        def note(db: sqlite3.Connection) -> tuple[Failing, int]:
            db.execute("insert into retrying values (?, ?, ?, ?) on conflict (id) do update set "
                       "attempts = attempts + excluded.attempts, reason = excluded.reason",
                       (delivery_id, now, int(attempted), reason))
            row = db.execute("select first, attempts, reason from retrying where id = ?", (delivery_id,)).fetchone()
            return Failing(float(row[0]), int(row[1]), str(row[2])), _count(db)

        failing, self._count = await self._store.write(note)
        return failing

    async def forget(self, delivery_id: str) -> None:
        def drop(db: sqlite3.Connection) -> int:
            db.execute("delete from retrying where id = ?", (delivery_id,))
            return _count(db)

        self._count = await self._store.write(drop)

    def __len__(self) -> int:
        return self._count

    async def prune(self, older_than: float) -> int:
        """Forget deliveries first failing before ``older_than`` (long gone: expired by the broker)."""
        def drop(db: sqlite3.Connection) -> tuple[int, int]:
            return db.execute("delete from retrying where first < ?", (older_than,)).rowcount, _count(db)

        pruned, self._count = await self._store.write(drop)
        return pruned

    def close(self) -> None:
        self._store.close()


def _count(db: sqlite3.Connection) -> int:
    return int(db.execute("select count(*) from retrying").fetchone()[0])
