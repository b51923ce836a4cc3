"""Pipelined JetStream publishing with an ack deadline and idempotent re-publish.

nats-py's ``publish_async`` futures never time out by themselves: if the server dies
between storing a message and acknowledging it, the future stays pending forever. Every
batch here has a deadline; what is not acknowledged by then is cancelled (which frees
nats-py's in-flight slot) and published again under the same ``Nats-Msg-Id``, which the
stream's duplicate window absorbs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.js import JetStreamContext

from broker.errors import PublishTimeout
from broker.transport.errors import NATS_FAILURES, describe

log = structlog.get_logger("sgb.publish")


@dataclass(frozen=True, slots=True)
class Outgoing:
    subject: str
    data: bytes
    msg_id: str
    headers: dict[str, str] = field(default_factory=dict)


class Publisher:
    def __init__(self, js: JetStreamContext, *, deadline: float, attempts: int) -> None:
        self._js = js
        self._deadline = deadline
        self._attempts = attempts

    async def publish_all(self, items: Sequence[Outgoing]) -> None:
        """Return once JetStream has stored every item; raise :class:`PublishTimeout` otherwise."""
        pending = list(items)
        last_error = "no acknowledgement"
        for attempt in range(self._attempts):
            futures: list[tuple[Outgoing, asyncio.Future[Any]]] = []
            try:
                for item in pending:
                    fut = await self._js.publish_async(
                        item.subject, item.data, wait_stall=self._deadline,
                        headers={"Nats-Msg-Id": item.msg_id, **item.headers},
                    )
                    futures.append((item, fut))
            except NATS_FAILURES as exc:  # publish again below; PublishTimeout when attempts run out
                last_error = describe(exc)
            if futures:
                await asyncio.wait([f for _, f in futures], timeout=self._deadline)
            retry = []
            for item, fut in futures:
                if not fut.done():
                    fut.cancel()
                    retry.append(item)
                elif fut.cancelled() or fut.exception() is not None:
                    last_error = type(fut.exception()).__name__ if not fut.cancelled() else "cancelled"
                    retry.append(item)
            retry.extend(pending[len(futures):])
            if not retry:
                return
            pending = retry
            log.warning("publish not acknowledged; re-publishing", count=len(pending), attempt=attempt + 1,
                        error=last_error)
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
        raise PublishTimeout(f"{len(pending)} publishes unacknowledged after {self._attempts} attempts ({last_error})")
