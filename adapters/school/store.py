"""The school's Operation Encompass inbox store: notices kept sealed on disk.

The adapter hands each delivery to an :class:`Inbox` (a :class:`~adapters.sdk.handover.Sink`) as the
still-sealed wire message (:func:`render_sealed`): the SQLite file holds the signed, encrypted
JWS with a few envelope ids beside it (delivery id, original sender and message id, when it
came, who acknowledged it and when), never the child's details. The pages
(:mod:`adapters.school`) open each notice in memory when they show it.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from adapters.sdk import AgencyClient, Delivery, DeliveryFailed
from broker.errors import InvalidEnvelope, StoreError
from broker.files import private_folder
from broker.store import Migration, Store
from broker.wire.jws import unverified

ENCOMPASS: Final = "encompass-notification"
SEALED: Final = "application/jose"
PAGE_SIZE: Final = 50
_COMPACT: Final = re.compile(rb"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


def render_sealed(delivery: Delivery) -> tuple[bytes, str]:
    """The Deliverer's ``render`` for the inbox: hand over the wire message still sealed."""
    return delivery.raw, SEALED


@dataclass(frozen=True, slots=True)
class Notice:
    """One delivery as the inbox keeps it: the sealed wire bytes and ids, no personal data."""

    seq: int
    delivery: str
    type: str
    received_at: str
    sender: str | None
    message: str | None
    raw: bytes
    acknowledged_at: str | None
    acknowledged_by: str | None
    actioned_at: str | None
    actioned_by: str | None

    def done(self, status: str) -> tuple[str | None, str | None]:
        """``(at, by)`` of the receipt ``status`` ("accepted" or "actioned"), or Nones."""
        if status == "accepted":
            return self.acknowledged_at, self.acknowledged_by
        return self.actioned_at, self.actioned_by


_COLUMNS: Final = ("seq, delivery, type, received_at, sender, message, raw, acknowledged_at, acknowledged_by, "
                   "actioned_at, actioned_by")
_DONE_COLUMNS: Final = {"accepted": ("acknowledged_at", "acknowledged_by"), "actioned": ("actioned_at", "actioned_by")}
# Versions of the inbox file (broker.store); a file from before versions is at 0 with exactly these.
_MIGRATIONS: Final[tuple[Migration, ...]] = ("""
    create table if not exists notices (
      seq integer primary key autoincrement, delivery text not null unique, type text not null,
      received_at text not null, sender text, message text, raw blob not null,
      acknowledged_at text, acknowledged_by text, actioned_at text, actioned_by text);
    create index if not exists notices_type on notices (type, seq);
""",)


class Inbox:
    """The school's notices in a small SQLite store (:class:`broker.store.Store`: folder 0700,
    file 0600, WAL, migrated), one row per delivery id.

    As a :class:`~adapters.sdk.handover.Sink` it takes only sealed wire messages (``application/jose``,
    see :func:`render_sealed`) and refuses anything else, so a misconfigured ``render`` cannot
    put a child's details on disk in clear. With ``client`` it also verifies each one (and opens
    it, in memory only) before keeping it; without, it trusts the Deliverer's verification and
    reads only the envelope.
    """

    def __init__(self, path: Path, client: AgencyClient | None = None) -> None:
        self.client = client
        self.path = path
        private_folder(path.parent)
        # every commit synced: a notice the adapter acknowledged to JetStream must be on disk
        self._store = Store(path, _MIGRATIONS, name="inbox", synchronous="FULL")

    @classmethod
    def for_agency(cls, home: Path, agency: str, client: AgencyClient | None = None) -> Inbox:
        """The inbox file in the adapter's state folder, ``<home>/adapters/<agency>/inbox.sqlite``."""
        return cls(home / "adapters" / agency / "inbox.sqlite", client)

    async def deliver(self, delivery_id: str, body: bytes, content_type: str) -> None:
        """Keep a sealed delivery (a second hand-over of the same id changes nothing)."""
        if content_type != SEALED or not _COMPACT.match(body):
            raise DeliveryFailed("the inbox keeps only sealed wire messages (render=render_sealed)", permanent=True,
                                 attempts=1)
        if self.client is not None:
            try:
                claims: dict[str, Any] | None = self.client.open(body).claims
            except InvalidEnvelope as exc:
                raise DeliveryFailed("the delivery failed verification", permanent=True, attempts=1) from exc
        else:
            claims = _envelope(body)
        if claims is None or claims.get("jti") != delivery_id:
            raise DeliveryFailed("the delivery's envelope cannot be read", permanent=True, attempts=1)
        origin = claims.get("origin")
        if not isinstance(origin, dict):
            origin = {}
        row = (delivery_id, str(claims.get("typ", "")), now(), _text(origin.get("iss")), _text(origin.get("jti")),
               body)
        try:
            await self._store.write(lambda db: db.execute(
                "insert or ignore into notices (delivery, type, received_at, sender, message, raw)"
                " values (?, ?, ?, ?, ?, ?)", row))
        except (sqlite3.Error, StoreError) as exc:
            raise DeliveryFailed(f"cannot write the inbox ({type(exc).__name__})", permanent=False,
                                 attempts=1) from exc

    # The pages' questions (adapters.school.inbox), awaited off the event loop on the store's
    # reader; a page is one indexed query of at most PAGE_SIZE rows.

    async def notices(self, *, typ: str = ENCOMPASS, before: int | None = None,
                      limit: int = PAGE_SIZE) -> list[Notice]:
        """Newest first; ``before``: a ``seq`` from the previous page."""
        rows = await self._store.read(lambda db: db.execute(
            f"select {_COLUMNS} from notices where type = ? and seq < ? order by seq desc limit ?",  # noqa: S608
            (typ, before if before is not None else 2**62, limit)).fetchall())
        return [Notice(*row) for row in rows]

    async def notice(self, delivery_id: str) -> Notice | None:
        """The notice kept under ``delivery_id``, if any."""
        row = await self._store.read(lambda db: db.execute(
            f"select {_COLUMNS} from notices where delivery = ?", (delivery_id,)).fetchone())  # noqa: S608
        return Notice(*row) if row else None

    async def unacknowledged(self, typ: str = ENCOMPASS) -> int:
        """How many notices no one has acknowledged yet."""
        row = await self._store.read(lambda db: db.execute(
            "select count(*) from notices where type = ? and acknowledged_at is null", (typ,)).fetchone())
        return int(row[0])

    async def record(self, delivery_id: str, status: str, by: str, at: str) -> bool:
        """Record that the ``status`` receipt was sent; False if it was recorded before."""
        at_column, by_column = _DONE_COLUMNS[status]
        cursor = await self._store.write(lambda db: db.execute(
            f"update notices set {at_column} = ?, {by_column} = ? where delivery = ? and {at_column} is null",  # noqa: S608
            (at, by, delivery_id)))
        return cursor.rowcount == 1

    def close(self) -> None:
        """Finish what was asked and close the file."""
        self._store.close()


def _envelope(body: bytes) -> dict[str, Any] | None:
    """The envelope claims of a JWS, unverified (the Deliverer verified it before handing it over,
    and the pages verify it again with :meth:`AgencyClient.open` whenever they open it)."""
    try:
        _, claims = unverified(body)
    except InvalidEnvelope:
        return None
    return claims if isinstance(claims.get("payload"), str) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

