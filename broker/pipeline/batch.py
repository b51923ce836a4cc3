"""Deciding a fetched batch of ingress messages together (issue 15).

The steps of each message are those of :mod:`broker.pipeline.intake` and the policy; what the
batch shares is every wait on NATS. Its ``SG_SEEN`` claims go out pipelined and are awaited
once (:meth:`~broker.transport.replay.ReplayGuard.claim_all`), and so are the deadline lookups
of the replies among them. The loop then stores all of the batch's outputs with one wait and
acks the batch (:meth:`broker.pipeline.loop.Pipeline._handle_batch`).

A message whose own step fails is set apart alone (:class:`Work`), and the rest go on:

- its own fault (:class:`~broker.errors.RejectedMessage`): its outputs become a rejection;
- NATS failing for it alone (a claim or a lookup not answered in time): ``retry`` is set, and it
  is handed back for redelivery while the others are stored;
- a bug of the broker's own: handed back in the same way, and from its fifth delivery refused as
  ``internal`` ("send it again"), so one poisonous message does not come back for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from broker import logs
from broker.errors import InternalFailure, RejectedMessage, TransportError
from broker.pipeline import deadlines
from broker.pipeline.intake import Authenticated, Intake, Opened
from broker.pipeline.metrics import Metrics
from broker.pipeline.outcomes import Ingress, Outcomes, Output
from broker.policy.engine import Decision, Policy
from broker.transport.replay import ReplayGuard
from broker.wire.ids import ADMIN_TYPES

log = structlog.get_logger("sgb.pipeline")

INTERNAL_GIVE_UP = 5  # deliveries of a message that keeps hitting a bug before it is refused


@dataclass(slots=True)
class Work:
    """One ingress message on its way through a batch. When the batch is decided, either
    ``outputs`` (with ``outcome``: "shared" or a rejection code) are ready to store, or ``retry``
    says why it goes back to JetStream instead ("transport" or "internal")."""

    ingress: Ingress
    data: bytes
    deliveries: int
    msg: Any = None  # the nats-py message, acked or handed back by the loop
    started: float = field(default_factory=time.perf_counter)
    auth: Authenticated | None = None
    opened: Opened | None = None
    decision: Decision | None = None
    closes: tuple[str, ...] = ()
    outputs: list[Output] | None = None
    outcome: str = ""
    retry: str = ""
    acked: bool = False

    @property
    def going(self) -> bool:
        """Still on its way: neither decided nor set apart."""
        return self.outputs is None and not self.retry


class Decider:
    """The per-message steps of a batch, with the batch's NATS waits shared."""

    def __init__(self, intake: Intake, policy: Policy, outcomes: Outcomes, replay: ReplayGuard, js: Any,
                 metrics: Metrics, on_internal: Callable[[], None]) -> None:
        self._intake = intake
        self._policy = policy
        self._outcomes = outcomes
        self.replay = replay
        self._js = js
        self._metrics = metrics
        self._on_internal = on_internal

    async def decide(self, batch: Sequence[Work]) -> None:
        """Fill in each message's ``outputs`` or ``retry``; never raises for one message's fault."""
        stage = self._metrics.stage
        t0 = time.perf_counter()
        for work in batch:
            self._step(work, self._authenticate)
        claims = [w for w in batch if w.going]
        results = await self.replay.claim_all([(w.auth.claims["jti"], w.ingress.seq) for w in claims])  # type: ignore[union-attr]
        for work, result in zip(claims, results, strict=True):
            if result is not None:
                self._step(work, _raise(result))
        t1 = time.perf_counter()
        for work in batch:
            self._step(work, self._open)
        t2 = time.perf_counter()
        for work in batch:
            self._step(work, self._decide)
        replies = [w for w in batch if w.going and w.auth and w.auth.claims.get("re")]
        if replies:
            found = await asyncio.gather(*(deadlines.met_by(self._js, w.auth.claims, w.opened.payload,  # type: ignore[union-attr]
                                                            self._policy.clocks_answered_by) for w in replies),
                                         return_exceptions=True)
            for work, closes in zip(replies, found, strict=True):
                if isinstance(closes, BaseException):
                    self._step(work, _raise(closes))
                else:
                    work.closes = closes
        for work in batch:
            self._step(work, self._accept)
        per = 1.0 / max(1, len(batch))  # the batch's time, shared among its messages
        auth_s, open_s, decide_s = (t1 - t0) * per, (t2 - t1) * per, (time.perf_counter() - t2) * per
        for _ in batch:
            stage["authenticate"].observe(auth_s)
            stage["open"].observe(open_s)
            stage["decide"].observe(decide_s)

    def _authenticate(self, work: Work) -> None:
        work.auth = self._intake.authenticate(work.ingress.subject_agency, work.data, work.ingress.stored_at)

    def _open(self, work: Work) -> None:
        work.opened = self._intake.open(work.auth)  # type: ignore[arg-type]

    def _decide(self, work: Work) -> None:
        opened, claims = work.opened, work.auth.claims  # type: ignore[union-attr]
        work.decision = self._policy.decide(work.auth.sender, opened.recipients, opened.mtype,  # type: ignore[union-attr]
                                            claims["sharing"], opened.payload, received=work.ingress.stored_at)  # type: ignore[union-attr]

    def _accept(self, work: Work) -> None:
        now, opened = self._outcomes.clock(), work.opened
        assert opened is not None and work.decision is not None
        work.decision = self._outcomes.keyed(work.decision, now, reply=bool(work.closes) or opened.mtype.name
                                             in ADMIN_TYPES, personal=opened.mtype.personal_data)
        work.outputs = self._outcomes.accepted(work.ingress, work.opened, work.decision,  # type: ignore[arg-type]
                                               closes=work.closes, now=now)
        work.outcome = "shared"
        self._count_decision(work.auth.claims["typ"], work.decision)  # type: ignore[union-attr]

    def _step(self, work: Work, step: Callable[[Work], None]) -> None:
        """Run one step for a message still on its way, turning what goes wrong into its outcome;
        the message's ids are bound to the log context while warnings are written."""
        if not work.going:
            return
        with bound(work) if logs.enabled(logging.WARNING) else contextlib.nullcontext():
            try:
                step(work)
            except RejectedMessage as rejection:
                if logs.enabled(logging.INFO):
                    log.info("message rejected", stage="decide", code=rejection.code, field=rejection.field,
                             rule=rejection.rule)
                self._reject(work, rejection)
            except TransportError as exc:
                log.warning("transport failure; message will be redelivered", stage="decide", error=str(exc))
                work.retry = "transport"
            except Exception:  # a bug must neither crash the broker nor lose the message: see the module
                self._on_internal()
                ids = {"msg_id": work.ingress.msg_id, "sender": work.ingress.subject_agency, "seq": work.ingress.seq}
                if work.deliveries < INTERNAL_GIVE_UP:  # the error line names its message at any level
                    log.exception("internal error (a bug); message will be redelivered", stage="process",
                                  deliveries=work.deliveries, **ids)
                    work.retry = "internal"
                    return
                log.exception("internal error (a bug) at every delivery; refused as internal", stage="process",
                              deliveries=work.deliveries, **ids)
                self._reject(work, InternalFailure("the broker could not process this message; send it again",
                                                   rule="internal"))

    def _reject(self, work: Work, rejection: RejectedMessage) -> None:
        work.outputs = self._outcomes.rejected(work.ingress, rejection, work.auth.claims if work.auth else None)
        work.outcome = rejection.code

    def _count_decision(self, typ: str, decision: Decision) -> None:
        m = self._metrics
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


def bound(work: Work) -> contextlib.AbstractContextManager[Any]:
    """The message's ids in the log context: where it came from and, once its signature is
    verified, its own id and type."""
    ids: dict[str, Any] = {"msg_id": work.ingress.msg_id, "sender": work.ingress.subject_agency,
                           "seq": work.ingress.seq}
    if work.auth is not None:
        ids |= {"message": work.auth.claims["jti"], "type": work.auth.claims["typ"]}
    return structlog.contextvars.bound_contextvars(**ids)


def _raise(exc: BaseException) -> Callable[[Work], None]:
    """A step that fails as a shared wait failed for this message."""
    def step(_: Work) -> None:
        raise exc
    return step
