"""The broker's work loop over the durable pull consumer on ``SG_INGRESS``.

Each fetched batch is handled together, in one task (:meth:`Pipeline._handle_batch`): its
messages are decided with their NATS waits shared (:mod:`broker.pipeline.batch`), then every
delivery, receipt, rejection and audit record of the batch is published with one wait, and only
then is the batch acked (invariant 2). Batches overlap (up to ``max_in_flight`` messages), so
one batch's crypto runs while another waits on JetStream.

What goes wrong is told apart per message (:class:`~broker.pipeline.batch.Work`):

- the message's own fault (:class:`~broker.errors.RejectedMessage`): a rejection to its sender,
  stored with the batch, then the ack; never retried;
- NATS unavailable or too slow for it alone (:class:`~broker.errors.TransportError`, from the
  one boundary in :mod:`broker.transport.errors`): nak'ed with a growing delay and redelivered,
  while the batch's others are stored. A delivery that is not stored holds back its own message
  only; the audit records go in one block, so if that fails every message of the batch is
  nak'ed (what was stored is absorbed on redelivery by its deterministic ``Nats-Msg-Id``);
- a bug of the broker's own (anything else): logged with its traceback as a bug, counted in
  ``sgb_internal_errors_total`` (never as a transport failure) and nak'ed with a delay, so the
  message is not lost and a fixed broker takes it; from its fifth delivery it is refused as
  ``internal`` ("send it again"), so one poisonous message does not come back for ever.

Logging at ``INFO`` happens only when it is written, and counting goes through metric children
bound once (:class:`~broker.pipeline.metrics.Children`): at ``ERROR``, as brokers run under
load, logging and metrics cost next to nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from broker import logs
from broker.audit.chain import AuditWriter
from broker.config import PipelineSettings
from broker.errors import PublishTimeout, TransportError
from broker.pipeline.batch import Decider, Work, bound
from broker.pipeline.intake import Intake
from broker.pipeline.metrics import Metrics
from broker.pipeline.outcomes import AuditEntry, Ingress, Outcomes, Output
from broker.policy.engine import Policy
from broker.transport.errors import NATS_FAILURES, describe, nats_failures, quietly
from broker.transport.publisher import Outgoing, Publisher
from broker.transport.replay import ReplayGuard
from broker.wire.ids import derived_id
from broker.wire.subjects import BROKER_CONSUMER, INGRESS

log = structlog.get_logger("sgb.pipeline")

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
        self._policy = policy
        self._outcomes = outcomes
        self._audit = audit
        self._settings = settings
        self._publisher = Publisher(js, deadline=settings.publish_deadline, attempts=settings.publish_attempts)
        self._tasks: dict[asyncio.Task[None], list[Msg]] = {}  # a batch in flight, with the messages it holds
        self._holding = 0  # messages in those batches
        self._stopping = asyncio.Event()
        self.metrics = metrics or Metrics()
        self.metrics.in_flight.set_function(lambda: self._holding)
        self._decider = Decider(intake, policy, outcomes, ReplayGuard(js, timeout=request_timeout), js,
                                self.metrics, self._count_internal)
        self._paused = asyncio.Event()
        self.counters = Counters()

    @property
    def in_flight(self) -> int:
        return self._holding

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
                free = self._settings.max_in_flight - self._holding
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
                task = asyncio.create_task(self._handle_batch(msgs))
                self._tasks[task] = msgs
                self._holding += len(msgs)
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
        self._holding -= len(self._tasks.pop(task, ()))

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
        handed_back = 0
        for task in pending:  # hand each back now (a task cancelled before it ran could not do it itself)
            for msg in held[task]:
                with quietly():
                    await asyncio.wait_for(msg.nak(), self._settings.fetch_timeout + 1)
                handed_back += 1
        log.info("pipeline drained", finished=sum(len(held[t]) for t in done), handed_back=handed_back)

    async def _handle_batch(self, msgs: Sequence[Msg]) -> None:
        """Decide the batch, store what it produced with one wait, ack what was stored and hand
        back the rest (see the module)."""
        batch: list[Work] = []
        try:
            batch = [_work(msg) for msg in msgs]
            await self._decider.decide(batch)
            ready = [w for w in batch if w.outputs is not None]
            stored = time.perf_counter()
            await self._store_batch(ready)
            ready = [w for w in ready if not w.retry]
            await self._ack(ready)
            done = time.perf_counter()
            for work in ready:
                self.metrics.stage["store"].observe(done - stored)
                self.metrics.stage["total"].observe(done - work.started)
        except Exception:  # a bug outside any one message's steps: every message goes back, none is lost
            self._count_internal()
            log.exception("internal error (a bug) handling a batch; its messages will be redelivered",
                          stage="batch", messages=len(msgs))
            if not batch:  # not even read: hand each back as it came
                for msg in msgs:
                    await self._hand_back(msg, 1)
            for work in batch:
                if not work.acked:
                    work.retry = work.retry or "internal"
        for work in batch:
            if work.retry:
                if work.retry == "transport":
                    self.counters.retried += 1
                    self.metrics.retried.inc()
                await self._hand_back(work.msg, work.deliveries)

    async def _store_batch(self, ready: list[Work]) -> None:
        """Store every output of ``ready`` with one wait. What could not be stored sets ``retry`` on
        the messages it belongs to, and only on those: a delivery JetStream keeps refusing holds
        back its own message, not the batch. The audit records go in one block, so if that fails
        every message goes back (what was stored is absorbed as a repeat on redelivery)."""
        messages = [o for w in ready for o in w.outputs if isinstance(o, Outgoing)]  # type: ignore[union-attr]
        records = [o.record for w in ready for o in w.outputs if isinstance(o, AuditEntry)]  # type: ignore[union-attr]
        published, appended = await asyncio.gather(self._publisher.publish_all(messages),
                                                    self._audit.append(records), return_exceptions=True)
        for outcome in (published, appended):
            if isinstance(outcome, BaseException) and not isinstance(outcome, TransportError):
                raise outcome  # a bug: the caller hands the batch back
        if isinstance(appended, TransportError):
            failing = set(range(len(ready)))
            error = str(appended)
        elif isinstance(published, TransportError):
            failed = {id(o) for o in published.failed} if isinstance(published, PublishTimeout) else None
            failing = {i for i, w in enumerate(ready)
                       if failed is None or any(id(o) in failed for o in w.outputs)}  # type: ignore[union-attr]
            error = str(published)
        else:
            return
        log.warning("transport failure; messages will be redelivered", stage="publish", error=error,
                    messages=len(failing), stored=len(ready) - len(failing))
        for i in failing:
            ready[i].retry = "transport"

    async def _ack(self, ready: list[Work]) -> None:
        """Count and ack each stored message. An ack that fails leaves its message to come back
        after ``ack_wait``, where its outputs are absorbed as repeats: it is counted as processed."""
        info = logs.enabled(logging.INFO)
        for work in ready:
            work.acked = True
            self._record(work.outcome)
            try:
                with nats_failures("the ack"):
                    await work.msg.ack()
            except TransportError as exc:
                log.warning("ack failed; the message will come back and be absorbed", error=str(exc),
                            msg_id=work.ingress.msg_id)
            if info:
                with bound(work):
                    log.info("message processed", stage="done", outcome=work.outcome)

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

    async def _process(self, ingress: Ingress, data: bytes, num_delivered: int) -> tuple[list[Output], str]:
        """One message decided as a batch of one (tests that store its outputs themselves)."""
        work = Work(ingress, data, num_delivered)
        await self._decider.decide([work])
        if work.outputs is None:
            raise TransportError(f"the message was not decided ({work.retry})")
        return work.outputs, work.outcome

    async def on_overdue(self, entry: Mapping[str, Any]) -> None:
        await self.store(self._outcomes.overdue(entry))
        self.counters.overdue += 1
        self.metrics.overdue.inc()
        log.info("deadline passed; both sides told", stage="overdue", message=entry["message"],
                 recipient=entry["recipient"], rule=entry["rule"])

    def _count_internal(self) -> None:
        self.counters.internal += 1
        self.metrics.internal.inc()

    def _record(self, outcome: str) -> None:
        self.counters.received += 1
        self.metrics.received.inc()
        if outcome == "shared":
            self.counters.shared += 1
        else:
            self.counters.rejected[outcome] = self.counters.rejected.get(outcome, 0) + 1
            self.metrics.rejected_by[outcome].inc()


def _work(msg: Msg) -> Work:
    meta = msg.metadata
    seq, stored_at = meta.sequence.stream, meta.timestamp.timestamp()
    msg_id = (msg.headers or {}).get("Nats-Msg-Id") or derived_id("ingress", seq, stored_at)
    return Work(Ingress(msg.subject.removeprefix("sg.in."), seq, stored_at, msg_id), msg.data, meta.num_delivered,
                msg)


def summary(counters: Counters) -> dict[str, Any]:
    return {"received": counters.received, "shared": counters.shared, "rejected": dict(counters.rejected)}
