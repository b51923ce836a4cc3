"""The adapter's outbound loop: from the agency's durable on ``SG_DELIVERY`` into its own system.

For each delivery: verify and open it; if its id was handed over before (a redelivery after a
crash or a lost ack), just ack it; else hand it to the :class:`~adapters.sdk.handover.Sink` and ack
only once the agency system has accepted it, then tell the sender it was ``delivered``.

When the agency system does not take it, and may later (down, a timeout, a 5xx), the delivery
goes back to JetStream with a delay and is tried again for ``retry_for`` from its first failure
(:mod:`adapters.runtime.retries`): a restart of the agency's system loses nothing, and the deliveries
behind it are not held up. When the window has passed, or at a refusal that will not change, the
*sealed* wire message goes to the dead-letter folder (:mod:`adapters.runtime.deadletters`: still
encrypted to this agency, no personal data in clear on disk), the sender is told it was
``not-delivered``, and the message is acked so it does not block the queue. A delivery that
fails verification is dead-lettered the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import structlog
from nats.aio.msg import Msg

from adapters.runtime.deadletters import REFUSED, RETRIES_EXHAUSTED, UNRENDERABLE, UNVERIFIABLE, DeadLetters
from adapters.runtime.retries import Failing, RetryLedger, RetryPolicy
from adapters.sdk import AgencyClient, Delivery, DeliveryFailed, Sink
from adapters.sdk.receipts import RECEIPT_SHARING, receipt_id
from broker.errors import BrokerError, InvalidEnvelope, TransportError
from broker.transport.errors import nats_failures
from broker.wire.ids import ADMIN_TYPES
from broker.wire.jws import unverified

log = structlog.get_logger("sgb.adapter")
KEY_WAIT: Final = 30.0  # seconds before a delivery sealed to a key not yet here is offered again


async def _ack(msg: Msg) -> None:
    """Acknowledge, and wait for JetStream to confirm it: then the delivery will not come again."""
    with nats_failures("acknowledging a delivery"):
        await msg.ack_sync()


async def _nak(msg: Msg, delay: float) -> None:
    """Hand a delivery back to JetStream, to come again after ``delay`` seconds."""
    with nats_failures("handing a delivery back"):
        await msg.nak(delay=delay)


def canonical_json(delivery: Delivery) -> tuple[bytes, str]:
    """The default native format: the envelope (without ciphertext) and the opened payload."""
    return orjson.dumps(delivery.as_json()), "application/json"


@dataclass
class Counts:
    delivered: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    waiting_for_key: int = 0
    handed_back: int = 0    # tries that failed, or were put off while the agency system failed: back to JetStream


class Deliverer:
    def __init__(self, client: AgencyClient, sink: Sink, dead: DeadLetters, *,
                 render: Callable[[Delivery], tuple[bytes, str]] = canonical_json, batch: int = 16,
                 idle: float = 1.0, receipts: bool = True, key_wait: float = KEY_WAIT,
                 retry: RetryPolicy | None = None, ledger: RetryLedger | None = None,
                 clock: Callable[[], float] = time.time, jitter: Callable[[], float] = random.random) -> None:
        if client.seen is None:
            raise BrokerError("the deliverer needs the client's SeenStore for idempotent hand-over")
        self.client = client
        self.sink = sink
        self.dead = dead
        self.render = render
        self.batch = batch
        self.idle = idle
        self.receipts = receipts
        self.key_wait = key_wait
        self.retry = retry or RetryPolicy()
        self.ledger = ledger or RetryLedger(None)  # the service keeps it in a file: windows survive a restart
        self.clock = clock
        self.jitter = jitter
        self.counts = Counts()
        self._failing = 0           # hand-overs failed in a row (any delivery): how long to pause
        self._paused_until = 0.0    # until then, deliveries go back to JetStream untried
        self._why_paused = ""

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async for _, msg in self.client.fetch(batch=self.batch, idle=self.idle):
                    await self.handle(msg)
                    if stop.is_set():
                        break
            except TransportError as exc:  # fetching, or an ack or nak: what was not acked comes again
                log.warning("NATS failed; trying again", error=str(exc))
                await asyncio.sleep(self.idle)

    async def handle(self, msg: Msg) -> None:
        seen = self.client.seen
        assert seen is not None
        try:
            delivery = self.client.open(msg.data)
        except InvalidEnvelope:
            if self._sealed_to_a_key_not_yet_here(msg.data):
                # A key rotation under way: the broker seals to a key whose file has not reached this
                # adapter yet (SIGHUP after copying it). Wait for it rather than dead-letter the message.
                self.counts.waiting_for_key += 1
                log.warning("a delivery is sealed to a key this adapter does not hold yet; reload the key file",
                            seq=msg.metadata.sequence.stream)
                await _nak(msg, self.key_wait)
                return
            self._dead(f"seq-{msg.metadata.sequence.stream}", msg.data, UNVERIFIABLE,
                       "the delivery failed verification", 1)
            await _ack(msg)
            return
        with structlog.contextvars.bound_contextvars(delivery=delivery.id, type=delivery.type, stage="hand-over"):
            if await self._about_own_receipt(delivery):
                log.debug("the broker routed this adapter's own receipt; nothing for the agency system")
                await _ack(msg)
                return
            if await seen.has(delivery.id):
                self.counts.redelivered += 1
                log.info("already handed over; acknowledging the redelivery")
                await self._tell_sender(delivery, "delivered", None)  # in case the first life died before it
                await _ack(msg)
                return
            await self._hand_over(delivery, msg)

    async def _hand_over(self, delivery: Delivery, msg: Msg) -> None:
        now = self.clock()
        if now < self._paused_until:  # the agency system is failing: do not try this one now
            failing = await self.ledger.failed(delivery.id, now, self._why_paused, attempted=False)
            await self._again_or_give_up(delivery, msg, failing, now)
            return
        try:
            body, content_type = self._render(delivery)
        except DeliveryFailed as exc:
            await self._give_up(delivery, msg, UNRENDERABLE, exc.reason, 0, None)
            return
        try:
            await self.sink.deliver(delivery.id, body, content_type)
        except DeliveryFailed as exc:
            if exc.permanent:
                await self._give_up(delivery, msg, REFUSED, exc.reason, 1, None)
                return
            now = self.clock()
            self._failing += 1
            self._paused_until = now + self.retry.pause(self._failing, self.jitter())
            self._why_paused = exc.reason
            await self._again_or_give_up(delivery, msg, await self.ledger.failed(delivery.id, now, exc.reason), now)
            return
        self._failing, self._paused_until = 0, 0.0
        assert self.client.seen is not None
        await self.client.seen.add(delivery.id, delivery)
        await self.ledger.forget(delivery.id)
        await self._tell_sender(delivery, "delivered", None)  # before the ack: a crash between sends it again
        await _ack(msg)
        self.counts.delivered += 1
        log.info("handed over to the agency system")

    async def _again_or_give_up(self, delivery: Delivery, msg: Msg, failing: Failing, now: float) -> None:
        """Back to JetStream until the pause ends (at most until the window does), or, the window
        over, a dead letter."""
        end = failing.first + self.retry.retry_for
        if now >= end:
            reason = (f"not taken within {self.retry.retry_for:g} s of the first failure, {failing.attempts} "
                      f"attempts ({failing.reason})")
            await self._give_up(delivery, msg, RETRIES_EXHAUSTED, reason, failing.attempts, failing.first)
            return
        delay = max(0.0, min(self._paused_until - now, end - now))
        self.counts.handed_back += 1
        log.info("not taken; handed back to try again", reason=failing.reason, attempts=failing.attempts,
                 retry_in=round(delay, 3), gives_up_in=round(end - now))
        await _nak(msg, delay)

    async def _give_up(self, delivery: Delivery, msg: Msg, code: str, reason: str, attempts: int,
                       first: float | None) -> None:
        self._dead(delivery.id, msg.data, code, reason, attempts, first)
        await self.ledger.forget(delivery.id)
        await self._tell_sender(delivery, "not-delivered", reason)
        await _ack(msg)

    async def resend(self, data: bytes, when: float | None = None) -> str:
        """Hand a dead letter over again (``sgb adapter dead-letters retry``): verified and opened
        (``when``: the time it first came, for the broker key's validity), handed over under its own
        delivery id unless that was done before, then the sender told ``delivered``. Raises
        :class:`~broker.errors.InvalidEnvelope` or :class:`~adapters.sdk.handover.DeliveryFailed`."""
        delivery = self.client.open(data, when=when)
        assert self.client.seen is not None
        if await self.client.seen.has(delivery.id):
            return "already-delivered"
        await self.sink.deliver(delivery.id, *self._render(delivery))
        await self.client.seen.add(delivery.id, delivery)
        await self.ledger.forget(delivery.id)
        await self._tell_sender(delivery, "delivered", None)
        self.counts.delivered += 1
        return "delivered"

    def _sealed_to_a_key_not_yet_here(self, data: bytes) -> bool:
        """Addressed to this agency and sealed to an encryption key its key file does not hold: the
        rotation gap (only the broker may publish here; the signature is checked once the key is)."""
        try:
            _, claims = unverified(data)
            kid = claims["enc"]["kid"]
        except (InvalidEnvelope, KeyError, TypeError):
            return False
        return claims.get("to") == [self.client.agency] and self.client.identity.kem_key(str(kid)) is None

    async def _about_own_receipt(self, delivery: Delivery) -> bool:
        assert self.client.seen is not None
        return (delivery.type == "receipt" and delivery.payload.get("status") == "routed"
                and await self.client.seen.is_own_receipt(delivery.claims.get("re")))

    def _render(self, delivery: Delivery) -> tuple[bytes, str]:
        """The agency's native form; a delivery it cannot take is dead-lettered, not retried for ever."""
        try:
            return self.render(delivery)
        except Exception as exc:  # a renderer fault: keep the sealed message, say so, move on
            log.error("cannot render the delivery in the agency's format", error=type(exc).__name__)
            raise DeliveryFailed("the delivery cannot be put in the agency system's format", permanent=True,
                                 attempts=0) from exc

    def _dead(self, key: str, data: bytes, code: str, reason: str, attempts: int, first: float | None = None) -> None:
        self.dead.put(key, data, code=code, reason=reason, attempts=attempts, first_failure=first)
        self.counts.dead_lettered += 1
        log.warning("dead-lettered", code=code, reason=reason, attempts=attempts)

    async def _tell_sender(self, delivery: Delivery, status: str, note: str | None) -> None:
        sender, message = delivery.origin
        if not self.receipts or delivery.type in ADMIN_TYPES or not sender or not message:
            return
        body: dict[str, Any] = {"messageId": message, "status": status, "recipients": [self.client.agency],
                                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
        if note:
            body["note"] = note[:200]
        receipt = receipt_id(delivery.id, status)
        assert self.client.seen is not None
        await self.client.seen.note_own_receipt(receipt)
        with contextlib.suppress(BrokerError):  # a receipt that cannot be sent must not undo the hand-over
            await self.client.send(typ="receipt", to=[sender], payload=body, sharing=RECEIPT_SHARING, re=message,
                                   jti=receipt)
