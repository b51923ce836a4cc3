"""Following ``SG_AUDIT`` into the audit index.

The :class:`Indexer` reads the stream with an ordered consumer and writes in small
transactions, so a decision is queryable well within a second. A block is indexed only if its
signature and record links verify (the full chain check runs separately,
:func:`broker.audit.export.verify_store`); a checkpoint only if the broker signed it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from broker.audit.chain import is_checkpoint, is_cosigned, is_tlog
from broker.audit.checkpoints import CHECKPOINT_TYP
from broker.audit.verify import Verifier
from broker.errors import InvalidEnvelope, TransportError
from broker.transport.errors import nats_failures, quietly
from broker.wire.jws import verify_typed
from broker.wire.subjects import AUDIT

log = structlog.get_logger("sgb.audit.index")


class IndexWriter(Protocol):
    """What the indexer needs of the index (:class:`broker.audit.index.AuditIndex`)."""

    async def apply(self, batch: Sequence[tuple[int, list[dict[str, Any]]]], checkpoints: Sequence[bytes],
                    last_seq: int) -> None: ...

    async def last_seq(self) -> int: ...


class Indexer:
    """Follows ``SG_AUDIT`` into the index until stopped. Checks each block before indexing it."""

    def __init__(self, js: JetStreamContext, index: IndexWriter, keys: Callable[[str, float], Any],
                 *, batch: int = 500, linger: float = 0.05) -> None:
        self._js = js
        self._index = index
        self._keys = keys
        self._batch = batch
        self._linger = linger
        self.rejected_blocks = 0

    def _check(self, seq: int, subject: str, data: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        verifier = Verifier(self._keys, on_record=out.append)  # hands over only signed, linked records
        verifier.block(seq, subject, data)
        if verifier.report.problems:
            self.rejected_blocks += 1
            log.error("audit block fails verification; not indexed", seq=seq,
                      problems=[p.kind for p in verifier.report.problems])
            return []
        return out

    def _checked_checkpoint(self, data: bytes) -> bytes | None:
        try:
            verify_typed(data, CHECKPOINT_TYP, self._keys)
        except InvalidEnvelope:
            return None
        return data

    async def catch_up(self, *, idle: float = 1.0) -> int:
        """Index everything stored so far; return the last sequence indexed."""
        with nats_failures("the audit stream"):
            try:
                info = await self._js.stream_info(AUDIT)
            except NotFoundError:
                return await self._index.last_seq()
        target = info.state.last_seq
        await self.run(stop=asyncio.Event(), until=target, idle=idle)
        return target

    async def run(self, *, stop: asyncio.Event, until: int | None = None, idle: float = 1.0) -> None:
        """Index until ``stop`` (or sequence ``until``). A NATS failure ends it, logged: the caller
        runs it again, from the index's last sequence."""
        start = await self._index.last_seq() + 1
        if until is not None and start > until:
            return
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        try:
            with nats_failures("the audit stream"):
                sub = await self._js.subscribe("sg.audit.>", stream=AUDIT, ordered_consumer=True, config=config,
                                               pending_msgs_limit=4096)
            try:
                await self._follow(sub, stop, until, idle)
            finally:
                with quietly():
                    await sub.unsubscribe()
        except TransportError as exc:
            log.warning("audit indexer lost its consumer; it will restart", error=str(exc))

    async def _follow(self, sub: JetStreamContext.PushSubscription, stop: asyncio.Event, until: int | None,
                      idle: float) -> None:
        while not stop.is_set():
            batch: list[tuple[int, list[dict[str, Any]]]] = []
            checkpoints: list[bytes] = []
            last = 0
            deadline = time.monotonic() + self._linger
            while len(batch) + len(checkpoints) < self._batch:
                wait = idle if not batch and not checkpoints else max(deadline - time.monotonic(), 0.001)
                with nats_failures("the audit stream"):
                    try:
                        msg = await sub.next_msg(timeout=wait)
                    except TimeoutError:  # nothing more for now
                        break
                seq = msg.metadata.sequence.stream
                last = seq
                if is_checkpoint(msg.subject):
                    token = self._checked_checkpoint(msg.data)
                    if token is not None:
                        checkpoints.append(token)
                elif is_tlog(msg.subject) or is_cosigned(msg.subject):
                    pass  # transparency checkpoints are checked by `sgb audit verify`; nothing to index
                else:
                    batch.append((seq, self._check(seq, msg.subject, msg.data)))
                if until is not None and seq >= until:
                    break
            if last:
                await self._index.apply(batch, checkpoints, last)
            if until is not None and (last >= until or (not last and await self._index.last_seq() >= until)):
                return
            if until is not None and not last:
                return  # nothing more arrives within idle: the stream is shorter than it said
