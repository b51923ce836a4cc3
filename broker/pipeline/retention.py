"""Retention: undelivered messages expire with notice, legal holds keep what they cover, and the
audit log is never shortened silently.

* ``SG_DELIVERY`` has no age limit of its own (JetStream would drop messages without telling
  anyone). The :class:`Sweeper` walks it from the oldest message; a delivery older than the
  retention period that its agency never acknowledged is removed, its sender gets a signed
  ``receipt`` with status ``not-delivered``, and an ``expired`` audit record is written, in
  that order, so a crash in between repeats the notice (same id, absorbed) rather than losing it.
* A *legal hold* on a message id (``SG_HOLDS``, set by an IG officer through the API, and
  audited) keeps that message's deliveries past their retention until it is released.
* Audit records are never deleted by the broker (``SG_AUDIT`` denies it). Records past the
  audit retention period are *reported* (``sgb audit retention``, ``/api/v1/retention``) for an
  IG decision to export and archive them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import structlog
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, NotFoundError

from broker.errors import InvalidEnvelope, TransportError
from broker.pipeline.outcomes import AuditEntry, Outcomes, Output
from broker.timestamps import iso
from broker.transport.errors import NO_MESSAGE_FOUND, nats_failures
from broker.transport.publisher import Outgoing
from broker.transport.topology import kv_latest
from broker.wire import jws
from broker.wire.ids import ADMIN_SHARING, ADMIN_TYPES, derived_id
from broker.wire.jws import unverified
from broker.wire.subjects import DELIVERY, HOLDS_BUCKET, delivery_subject

log = structlog.get_logger("sgb.retention")


@dataclass(frozen=True, slots=True)
class Expired:
    seq: int
    recipient: str
    claims: dict[str, Any]
    stored_at: float


class Holds:
    """Legal holds by message id, in the ``SG_HOLDS`` bucket."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def get(self, message: str) -> dict[str, Any] | None:
        with nats_failures("legal holds"):
            try:
                kv = await self._js.key_value(HOLDS_BUCKET)
                entry = await kv.get(message)
            except (KeyNotFoundError, NotFoundError):
                return None
        return orjson.loads(entry.value) if entry.value else None

    async def place(self, message: str, hold: dict[str, Any]) -> None:
        with nats_failures("legal holds"):
            kv = await self._js.key_value(HOLDS_BUCKET)
            await kv.put(message, orjson.dumps(hold))

    async def release(self, message: str) -> bool:
        if await self.get(message) is None:
            return False
        with nats_failures("legal holds"):
            kv = await self._js.key_value(HOLDS_BUCKET)
            await kv.delete(message)
        return True

    async def all(self) -> dict[str, dict[str, Any]]:
        return {k: orjson.loads(v) for k, v in (await kv_latest(self._js, HOLDS_BUCKET)).items()}


class Sweeper:
    """Expires undelivered messages older than ``retention`` seconds, with notice."""

    def __init__(self, js: JetStreamContext, outcomes: Outcomes, store: Callable[[list[Output]], Awaitable[None]],
                 *, retention: float, clock: Callable[[], float] = time.time, max_per_pass: int = 1000,
                 on_expired: Callable[[], None] | None = None) -> None:
        self._on_expired = on_expired
        self._js = js
        self._outcomes = outcomes
        self._store = store
        self._retention = retention
        self._clock = clock
        self._max = max_per_pass
        self.holds = Holds(js)
        self.expired = 0
        self.held = 0

    async def run(self, *, interval: float, stop: asyncio.Event) -> None:
        """A sweep every ``interval`` seconds until ``stop``. A NATS failure or a bug ends only its
        sweep: the task stays, or uncollected deliveries would never expire again."""
        while not stop.is_set():
            try:
                await self.sweep()
            except TransportError as exc:
                log.warning("retention sweep failed; will try again", error=str(exc))
            except Exception:
                log.exception("retention sweep failed (a bug); will try again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def candidates(self) -> list[Expired]:
        """Deliveries stored before the cut-off and not yet acknowledged (interest retention
        removes a delivery once its agency acks it, so what is left was never collected)."""
        cutoff = self._clock() - self._retention
        found: list[Expired] = []
        seq = 1
        with nats_failures("cannot read deliveries"):
            seq = max((await self._js.stream_info(DELIVERY)).state.first_seq, 1)
            while len(found) < self._max:
                try:
                    msg = await self._js.get_msg(DELIVERY, seq, next=True)
                except NotFoundError:
                    break
                stored_at = msg.time.timestamp() if msg.time else 0.0
                if stored_at >= cutoff:
                    break
                try:
                    claims = unverified(msg.data or b"")[1]
                except InvalidEnvelope:
                    claims = {}
                found.append(Expired(int(msg.seq or seq), (msg.subject or "").removeprefix("sg.out."), claims,
                                     stored_at))
                seq = int(msg.seq or seq) + 1
        return found

    async def sweep(self) -> int:
        expired = 0
        for item in await self.candidates():
            origin = item.claims.get("origin") or {}
            message = str(origin.get("jti") or item.claims.get("jti") or f"seq-{item.seq}")
            hold = await self.holds.get(message)
            if hold is not None:
                self.held += 1
                continue
            await self._store(self._notice(item, message, origin))
            with nats_failures("cannot remove an expired delivery"), contextlib.suppress(NotFoundError):
                try:  # another instance may have got there first
                    await self._js.delete_msg(DELIVERY, item.seq)
                except APIError as exc:
                    if exc.err_code != NO_MESSAGE_FOUND:
                        raise
            expired += 1
            if self._on_expired is not None:
                self._on_expired()
            log.info("undelivered message expired", stage="retention", message=message, recipient=item.recipient,
                     seq=item.seq)
        self.expired += expired
        return expired

    def _notice(self, item: Expired, message: str, origin: dict[str, Any]) -> list[Output]:
        typ = str(item.claims.get("typ", "?"))
        record = {"v": 1, "at": iso(self._clock()), "instance": self._outcomes.instance, "message": message,
                  "id": derived_id("audit", "expired", item.claims.get("jti", item.seq)), "event": "expired",
                  "type": typ, "recipient": item.recipient, "deliveryId": item.claims.get("jti"),
                  "storedAt": iso(item.stored_at), "retentionSeconds": self._retention,
                  "sender": origin.get("iss") or item.claims.get("iss")}
        out: list[Output] = [AuditEntry(record)]
        sender = origin.get("iss")
        if typ in ADMIN_TYPES or not sender or self._outcomes.registry.get(str(sender)) is None:
            return out  # no notice about a notice
        now = self._clock()  # one reading: the key found valid is the key sealed to
        if not self._outcomes.sealable(str(sender), now):
            return out  # its keys expired unrotated: said to the operator; the sweep goes on
        body = {"messageId": message, "status": "not-delivered", "at": iso(now),
                "recipients": [item.recipient], "note": "not collected by the recipient within the retention period"}
        notice_id = derived_id("not-delivered", item.claims.get("jti", item.seq))
        out.append(Outgoing(delivery_subject(str(sender)), self._outcomes.seal(
            jti=notice_id, typ="receipt", ver=1, recipient=str(sender), plaintext=jws.dumps(body),
            sharing=ADMIN_SHARING, re=message, now=now), notice_id))
        return out


HOLD_REASONS: Final = ("litigation", "regulator-investigation", "subject-access-request", "safeguarding-review",
                        "police-investigation", "complaint")
