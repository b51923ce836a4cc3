"""The broker's work loop over the durable pull consumer on ``SG_INGRESS``.

Batched fetches keep the consumer fed; a semaphore bounds messages in flight; each message
is handled in its own task so that crypto for one overlaps with JetStream round trips for
others. The ingress message is acked only after JetStream has acknowledged every
delivery, receipt, rejection and audit record it produced (invariant 2).

What goes wrong is told apart (:meth:`Pipeline._handle`):

- the message's own fault (:class:`~broker.errors.RejectedMessage`): a rejection to its sender,
  stored, then the ack; never retried;
- NATS unavailable or too slow (:class:`~broker.errors.TransportError`, from the one boundary in
  :mod:`broker.transport.errors`): nak'ed with a growing delay and redelivered, for as long as it takes;
- a bug of the broker's own (anything else): logged with its traceback as a bug, counted in
  ``sgb_internal_errors_total`` (never as a transport failure) and nak'ed with a delay, so the
  message is not lost and a fixed broker takes it; from its fifth delivery it is refused as
  ``internal`` ("send it again"), so one poisonous message does not come back for ever.

Per message, the loop binds its ids to the log context only when warnings are written (an error
log names them itself), logs at ``INFO`` only when that is written, and counts through metric
children bound once (:class:`~broker.pipeline.metrics.Children`): at ``ERROR``, as brokers run
under load, logging and metrics cost next to nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from broker import logs
from broker.audit.chain import AuditWriter
from broker.config import PipelineSettings
from broker.errors import InternalFailure, RejectedMessage, TransportError
from broker.pipeline import deadlines
from broker.pipeline.intake import Authenticated, Intake
from broker.pipeline.metrics import Metrics
from broker.pipeline.outcomes import AuditEntry, Ingress, Outcomes, Output
from broker.policy.engine import Decision, Policy
from broker.transport.errors import NATS_FAILURES, describe, nats_failures, quietly
from broker.transport.publisher import Outgoing, Publisher
from broker.transport.replay import ReplayGuard
from broker.wire.ids import derived_id
from broker.wire.subjects import BROKER_CONSUMER, INGRESS

log = structlog.get_logger("sgb.pipeline")

_INTERNAL_GIVE_UP = 5  # deliveries of a message that keeps hitting a bug before it is rejected
_NAK_DELAY_MAX = 30.0


@dataclass
class Counters:
    """Plain counters for the summary line at shutdown; ``/metrics`` has the full set."""

    received: int = 0
    shared: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    retried: int = 0
    internal: int = 0
    overdue: int = 0


class Pipeline:
    def __init__(self, js: JetStreamContext, intake: Intake, policy: Policy, outcomes: Outcomes,
                 audit: AuditWriter, settings: PipelineSettings, *, request_timeout: float,
                 metrics: Metrics | None = None) -> None:
        self._js = js
        self._intake = intake
        self._policy = policy
        self._outcomes = outcomes
        self._audit = audit
        self._settings = settings
        self._publisher = Publisher(js, deadline=settings.publish_deadline, attempts=settings.publish_attempts)
        self._replay = ReplayGuard(js, timeout=request_timeout)
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._tasks: dict[asyncio.Task[None], Msg] = {}  # in flight, with the message each holds
        self._stopping = asyncio.Event()
        self.metrics = metrics or Metrics()
        self.metrics.in_flight.set_function(lambda: len(self._tasks))
        self._paused = asyncio.Event()
        self.counters = Counters()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def stop(self) -> None:
        self._stopping.set()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def pause(self, on: bool) -> None:
        """Maintenance mode: take no new messages (in-flight ones finish); they wait in the stream."""
        if on:
            self._paused.set()
        else:
            self._paused.clear()
        self.metrics.maintenance.set(1 if on else 0)
        log.warning("maintenance mode " + ("on: taking no new work" if on else "off: taking work again"))

    async def run(self) -> None:
        """Fetch and dispatch until :meth:`stop`; then let in-flight work finish, within a deadline."""
        with nats_failures("the ingress consumer"):
            sub = await self._js.pull_subscribe_bind(BROKER_CONSUMER, INGRESS)
        try:
            while not self._stopping.is_set():
                if self._paused.is_set():
                    await asyncio.sleep(min(self._settings.fetch_timeout, 0.5))
                    continue
                free = self._settings.max_in_flight - len(self._tasks)
                if free <= 0:
                    await self._wait_for_slot()
                    continue
                try:
                    msgs = await sub.fetch(min(self._settings.fetch_batch, free), timeout=self._settings.fetch_timeout)
                except TimeoutError:  # nothing waiting
                    continue
                except NATS_FAILURES as exc:
                    log.warning("fetch failed; retrying", error=describe(exc))
                    await asyncio.sleep(0.5)
                    continue
                if self._paused.is_set():  # paused while that fetch was waiting: give them back untouched
                    for msg in msgs:
                        with quietly():
                            await msg.nak()
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self._handle(msg))
                    self._tasks[task] = msg
                    task.add_done_callback(self._forget)
        finally:
            await self._drain()
            await self._hand_back_prefetched(sub)
            with quietly():
                await sub.unsubscribe()

    async def _hand_back_prefetched(self, sub: Any) -> None:
        """A pull request can deliver more messages than the fetch that made it returned; they wait
        in the subscription's queue. Nak them at shutdown, or they would sit out ack_wait. (nats-py
        has no public call for this queue; if it moves, ack_wait still brings them back.)"""
        queue = getattr(getattr(sub, "_sub", None), "_pending_queue", None)
        if not isinstance(queue, asyncio.Queue):
            return
        count = 0
        while not queue.empty():
            msg = queue.get_nowait()
            with quietly(), contextlib.suppress(AttributeError):
                await asyncio.wait_for(msg.nak(), self._settings.fetch_timeout + 1)
                count += 1
        if count:
            log.info("prefetched messages handed back", count=count)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _wait_for_slot(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._settings.fetch_timeout,
                               return_when=asyncio.FIRST_COMPLETED)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        held = dict(self._tasks)
        done, pending = await asyncio.wait(set(held), timeout=self._settings.drain_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in pending:  # hand each back now (a task cancelled before it ran could not do it itself)
            with quietly():
                await asyncio.wait_for(held[task].nak(), self._settings.fetch_timeout + 1)
        log.info("pipeline drained", finished=len(done), handed_back=len(pending))

    async def _handle(self, msg: Msg) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        stored_at = meta.timestamp.timestamp()
        agency = msg.subject.removeprefix("sg.in.")
        msg_id = (msg.headers or {}).get("Nats-Msg-Id") or derived_id("ingress", seq, stored_at)
        ingress = Ingress(agency, seq, stored_at, msg_id)
        context = logs.enabled(logging.WARNING)
        bound = (structlog.contextvars.bound_contextvars(msg_id=msg_id, sender=agency, seq=seq) if context
                 else contextlib.nullcontext())
        started = time.perf_counter()
        with bound:
            try:
                outputs, outcome = await self._process(ingress, msg.data, meta.num_delivered, context=context)
                stored = time.perf_counter()
                await self.store(outputs)
                with nats_failures("the ack"):
                    await msg.ack()
                done = time.perf_counter()
                self.metrics.stage["store"].observe(done - stored)
                self.metrics.stage["total"].observe(done - started)
            except TransportError as exc:
                self.counters.retried += 1
                self.metrics.retried.inc()
                log.warning("transport failure; message will be redelivered", stage="publish", error=str(exc))
                await self._hand_back(msg, meta.num_delivered)
                return
            except Exception:  # a bug must neither crash the broker nor lose the message: see the module
                self.counters.internal += 1
                self.metrics.internal.inc()
                log.exception("internal error (a bug); message will be redelivered", stage="process",
                              deliveries=meta.num_delivered, msg_id=msg_id, sender=agency, seq=seq)
                await self._hand_back(msg, meta.num_delivered)
                return
            self._record(outcome)
            if logs.enabled(logging.INFO):
                log.info("message processed", stage="done", outcome=outcome)

    async def _hand_back(self, msg: Msg, num_delivered: int) -> None:
        """Nak for redelivery after a delay that grows with each delivery (if even the nak fails,
        JetStream redelivers after ``ack_wait``)."""
        with quietly():
            await msg.nak(delay=min(2.0 * num_delivered, _NAK_DELAY_MAX))

    async def store(self, outputs: list[Output]) -> None:
        """Deliveries and audit records together; both must be stored before the ingress ack."""
        messages = [o for o in outputs if isinstance(o, Outgoing)]
        records = [o.record for o in outputs if isinstance(o, AuditEntry)]
        await asyncio.gather(self._publisher.publish_all(messages), self._audit.append(records))

    async def _process(self, ingress: Ingress, data: bytes, num_delivered: int, *,
                       context: bool = True) -> tuple[list[Output], str]:
        """``context``: bind the message's id and type to the log context (see the module)."""
        auth: Authenticated | None = None
        stage = self.metrics.stage
        try:
            try:
                t0 = time.perf_counter()
                auth = self._intake.authenticate(ingress.subject_agency, data, ingress.stored_at)
                if context:
                    structlog.contextvars.bind_contextvars(message=auth.claims["jti"], type=auth.claims["typ"])
                await self._replay.claim(auth.claims["jti"], ingress.seq)
                t1 = time.perf_counter()
                opened = self._intake.open(auth)
                t2 = time.perf_counter()
                decision = self._policy.decide(auth.sender, opened.recipients, opened.mtype,
                                               auth.claims["sharing"], opened.payload, received=ingress.stored_at)
                closes = await deadlines.met_by(self._js, auth.claims, opened.payload,
                                                self._policy.clocks_answered_by)
                outputs = self._outcomes.accepted(ingress, opened, decision, closes=closes)
                stage["authenticate"].observe(t1 - t0)
                stage["open"].observe(t2 - t1)
                stage["decide"].observe(time.perf_counter() - t2)
                self._count_decision(auth.claims["typ"], decision)
                return outputs, "shared"
            except RejectedMessage as rejection:
                if logs.enabled(logging.INFO):
                    log.info("message rejected", stage="decide", code=rejection.code, field=rejection.field,
                             rule=rejection.rule)
                return self._outcomes.rejected(ingress, rejection, auth.claims if auth else None), rejection.code
        except TransportError:
            raise
        except Exception:
            if num_delivered < _INTERNAL_GIVE_UP:
                raise  # a bug, as it is: :meth:`_handle` logs it and hands the message back
            log.exception("internal error (a bug) at every delivery; refused as internal", stage="process",
                          deliveries=num_delivered, msg_id=ingress.msg_id, sender=ingress.subject_agency,
                          seq=ingress.seq)
            self.counters.internal += 1
            self.metrics.internal.inc()
            error = InternalFailure("the broker could not process this message; send it again", rule="internal")
            return self._outcomes.rejected(ingress, error, auth.claims if auth else None), error.code

    async def on_overdue(self, entry: Mapping[str, Any]) -> None:
        await self.store(self._outcomes.overdue(entry))
        self.counters.overdue += 1
        self.metrics.overdue.inc()
        log.info("deadline passed; both sides told", stage="overdue", message=entry["message"],
                 recipient=entry["recipient"], rule=entry["rule"])

    def _count_decision(self, typ: str, decision: Decision) -> None:
        m = self.metrics
        m.accepted_by[typ].inc()
        for rd in decision.recipients:
            if rd.share:
                m.delivered_by[typ].inc()
                if rd.withheld:
                    m.withheld.inc(len(rd.withheld))
            else:
                m.refused_by[rd.code or "refused"].inc()
        for flag in decision.flags:
            m.flagged_by[flag].inc()
        if "late" in decision.flags:
            m.late_by[typ].inc()

    def _record(self, outcome: str) -> None:
        self.counters.received += 1
        self.metrics.received.inc()
        if outcome == "shared":
            self.counters.shared += 1
        else:
            self.counters.rejected[outcome] = self.counters.rejected.get(outcome, 0) + 1
            self.metrics.rejected_by[outcome].inc()


def summary(counters: Counters) -> dict[str, Any]:
    return {"received": counters.received, "shared": counters.shared, "rejected": dict(counters.rejected)}
