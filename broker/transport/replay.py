"""Replay detection: each message id is accepted from one stored message only.

A KV bucket (``SG_SEEN``) maps a message id to the ingress stream sequence that first
carried it, created with an expected-last-subject-sequence of 0 so that only one writer
wins. A redelivery of the same stored message (after a broker crash) finds its own
sequence and proceeds; any other copy is a replay. Entries expire after ``seen_ttl``,
which exceeds the freshness window, so an older copy is refused as stale instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from broker.errors import Replayed, TransportError
from broker.transport.acks import acks_for, answer
from broker.transport.errors import WRONG_LAST_SEQUENCE, nats_failures
from broker.wire.subjects import SEEN_BUCKET

_STREAM = f"KV_{SEEN_BUCKET}"


class ReplayGuard:
    def __init__(self, js: JetStreamContext, *, timeout: float) -> None:
        self._js = js
        self._timeout = timeout

    async def claim_all(self, claims: Sequence[tuple[str, int]]) -> list[BaseException | None]:
        """Record each message id of a batch of ``(message id, ingress sequence)`` as carried by that
        stored message, the creates in flight together (:class:`~broker.transport.acks.Acks`) and
        awaited once: for each, None when claimed, else :class:`Replayed` (another stored message
        claimed it) or :class:`TransportError` (NATS did not answer for it). Those claimed before (a
        redelivery, a replay) are then looked up together."""
        if not claims:
            return []
        acks = acks_for(self._js)
        results: list[BaseException | None] = [None] * len(claims)
        sent: list[tuple[int, str, asyncio.Future[Any]]] = []
        try:
            with nats_failures("the replay store"):
                for i, (message_id, ingress_seq) in enumerate(claims):
                    token, future = await acks.publish(f"$KV.{SEEN_BUCKET}.{message_id}", str(ingress_seq).encode(),
                                                       {"Nats-Expected-Last-Subject-Sequence": "0"})
                    sent.append((i, token, future))
        except TransportError as exc:
            for i in range(len(sent), len(claims)):
                results[i] = exc
        try:
            if sent:
                await asyncio.wait([f for _, _, f in sent], timeout=self._timeout)
        finally:  # also when cancelled: no answer is waited for any longer
            for _, token, future in sent:
                if not future.done():
                    acks.drop(token)  # the message is redelivered and claims again
        before: list[int] = []  # claimed before: by the same stored message (a redelivery) or by a replay
        for i, _, future in sent:
            if future.cancelled():
                results[i] = TransportError("the replay store: no answer in time; will retry")
                continue
            claimed = answer(future.result())
            if claimed.err_code == WRONG_LAST_SEQUENCE:
                before.append(i)
            elif not claimed.stored:
                results[i] = TransportError(f"the replay store: {claimed.error}; will retry")
        looked = await asyncio.gather(*(self._held_by(*claims[i]) for i in before), return_exceptions=True)
        for i, result in zip(before, looked, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, (TransportError, Replayed)):
                raise result  # a bug
            results[i] = result
        return results

    async def _held_by(self, message_id: str, ingress_seq: int) -> None:
        """A claim found made before: by this stored message (a redelivery: fine) or by another
        (a replay: :class:`Replayed`)."""
        with nats_failures("the replay store"):
            try:
                held = await self._js.get_last_msg(_STREAM, f"$KV.{SEEN_BUCKET}.{message_id}")
            except NotFoundError:  # expired between the two calls: claim again next delivery
                raise TransportError("the replay store: the entry vanished; will retry") from None
        if held.data != str(ingress_seq).encode():
            raise Replayed("this message id was already received", field="/jti", rule="unique-message-id")
