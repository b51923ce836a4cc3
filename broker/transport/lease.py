"""A lease: a named right that one broker instance holds at a time, kept in the KV bucket
``SG_LEASES``.

The lease's value records its holder (the instance name) and when it expires. The holder
renews it with a compare-and-set on the revision it wrote (``Nats-Expected-Last-Subject-Sequence``),
so a renewal that lost the race to a takeover fails instead of overwriting it; any other
instance reads it (one KV read) and takes it over, again by compare-and-set, only once it has
expired or been released, so two cannot both take it. The holder releases it at shutdown (a
delete, also compare-and-set) so that another takes over at once rather than after the expiry.

Expiry is the holder's clock compared with the reader's: the lease must be longer than the
clocks of the instances can disagree (NTP keeps them within a second), and longer than the work
done under it between renewals. A lease saves work; it is not what keeps work from being done
twice (the work that matters does its own compare-and-set).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import orjson
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from broker.transport.errors import WRONG_LAST_SEQUENCE, nats_failures
from broker.wire.subjects import LEASES_BUCKET

_STREAM: Final = f"KV_{LEASES_BUCKET}"
_EXPECTED: Final = "Nats-Expected-Last-Subject-Sequence"


class Lease:
    """The lease ``name`` as ``holder`` sees it; :meth:`hold` once per round of the work it guards."""

    def __init__(self, js: JetStreamContext, name: str, *, holder: str, length: float,
                 clock: Callable[[], float] = time.time,
                 on_change: Callable[[bool], object] = lambda held: None) -> None:
        self._js = js
        self._subject = f"$KV.{LEASES_BUCKET}.{name}"
        self._what = f"the lease {name}"
        self._holder = holder
        self._length = length
        self._clock = clock
        self._on_change = on_change
        self._revision: int | None = None  # of our own last write, while we hold it

    @property
    def held(self) -> bool:
        return self._revision is not None

    async def hold(self) -> bool:
        """Renew the lease if this instance holds it, else take it if it is free or expired;
        whether this instance holds it now. The holder's call is one write; another's one read
        (and a write when it takes over). Raises TransportError if NATS does not answer."""
        with nats_failures(self._what):
            if self._revision is not None:
                self._set(await self._write(self._revision))
                if self._revision is not None:
                    return True
            revision, expires, holder = await self._read()
            if expires is not None and expires > self._clock() and holder != self._holder:
                return False  # held by another (held under our own name: a write of ours whose answer
            self._set(await self._write(revision))  # was lost, or this instance restarted: ours again)
            return self._revision is not None

    async def release(self) -> None:
        """Give the lease up (if held) so that another instance takes it at its next pass."""
        if self._revision is None:
            return
        revision, self._revision = self._revision, None
        self._on_change(False)
        with nats_failures(self._what):
            try:
                await self._js.publish(self._subject, b"", headers={"KV-Operation": "DEL", _EXPECTED: str(revision)})
            except APIError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:  # already taken over: nothing to give up
                    raise

    def _set(self, revision: int | None) -> None:
        if (revision is None) != (self._revision is None):
            self._on_change(revision is not None)
        self._revision = revision

    async def _read(self) -> tuple[int, float | None, str | None]:
        """The lease's revision (0: never written), its expiry (None: free, deleted or unreadable)
        and its holder."""
        try:
            msg = await self._js.get_last_msg(_STREAM, self._subject)
        except NotFoundError:
            return 0, None, None
        revision = msg.seq or 0
        if not msg.data or (msg.headers or {}).get("KV-Operation"):
            return revision, None, None
        try:
            record = orjson.loads(msg.data)
            expires, holder = record.get("expires"), record.get("holder")
        except (ValueError, AttributeError):
            expires = holder = None  # unreadable: the next taker writes over it
        return (revision, expires if isinstance(expires, (int, float)) else None,
                holder if isinstance(holder, str) else None)

    async def _write(self, expected: int) -> int | None:
        """Write ``holder`` and a fresh expiry if the lease is still at revision ``expected``; the
        new revision, or None if another instance wrote first."""
        record = {"holder": self._holder, "expires": self._clock() + self._length}
        try:
            ack = await self._js.publish(self._subject, orjson.dumps(record), headers={_EXPECTED: str(expected)})
        except APIError as exc:
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
            return None
        return int(ack.seq)
