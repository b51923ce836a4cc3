"""Pipelined JetStream publishing with an ack deadline and idempotent re-publish.

Publishes go out through :class:`~broker.transport.acks.Acks` (a core publish with a reply
subject, answered through one subscription: a fifth of nats-py's ``publish_async`` CPU, and a
refusal is an answer, not a hang). Every batch here has a deadline; what is not acknowledged by
then (the server may have died between storing a message and answering) is given up on and
published again under the same ``Nats-Msg-Id``, which the stream's duplicate window absorbs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.js import JetStreamContext

from broker.errors import PublishTimeout, TransportError
from broker.transport.acks import acks_for, answer
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
        """Return once JetStream has stored every item; raise :class:`PublishTimeout` otherwise,
        naming in ``failed`` the items that were not stored (the others were)."""
        acks = acks_for(self._js)
        pending = list(items)
        last_error = "no acknowledgement"
        for attempt in range(self._attempts):
            sent: list[tuple[Outgoing, str, asyncio.Future[Any]]] = []
            retry: list[Outgoing] = []
            try:
                for item in pending:
                    try:
                        token, future = await acks.publish(item.subject, item.data,
                                                           {"Nats-Msg-Id": item.msg_id, **item.headers})
                    except NATS_FAILURES as exc:  # this one again below; the others go on
                        last_error = describe(exc)
                        retry.append(item)
                    except TransportError as exc:  # the answers' subscription could not be made
                        last_error = str(exc)
                        retry.append(item)
                    else:
                        sent.append((item, token, future))
                if sent:
                    await asyncio.wait([f for _, _, f in sent], timeout=self._deadline)
            finally:  # also when cancelled: no answer is waited for any longer
                for _, token, future in sent:
                    if not future.done():
                        acks.drop(token)
            for item, _, future in sent:
                stored = answer(future.result()) if future.done() and not future.cancelled() else None
                if stored is None or not stored.stored:
                    last_error = stored.error if stored is not None else last_error
                    retry.append(item)
            if not retry:
                return
            pending = retry
            log.warning("publish not acknowledged; re-publishing", count=len(pending), attempt=attempt + 1,
                        error=last_error)
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
        raise PublishTimeout(f"{len(pending)} publishes unacknowledged after {self._attempts} attempts ({last_error})",
                             failed=tuple(pending))
