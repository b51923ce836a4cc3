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

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from broker.errors import Replayed, TransportError
from broker.transport.errors import WRONG_LAST_SEQUENCE, nats_failures
from broker.wire.subjects import SEEN_BUCKET

_STREAM = f"KV_{SEEN_BUCKET}"


class ReplayGuard:
    def __init__(self, js: JetStreamContext, *, timeout: float) -> None:
        self._js = js
        self._timeout = timeout

    async def claim_all(self, claims: Sequence[tuple[str, int]]) -> list[BaseException | None]:
        """:meth:`claim` for a batch of ``(message id, ingress sequence)``, the requests in flight
        together and awaited once: for each, None when claimed, else the :class:`Replayed` or
        :class:`TransportError` that :meth:`claim` raised for it alone. (Not ``publish_async``:
        nats-py 2.16 never resolves its future when JetStream refuses the publish, as it does a
        claim already made, because ``APIError.from_error`` raises inside its reply handler.)"""
        results = await asyncio.gather(*(self.claim(m, seq) for m, seq in claims), return_exceptions=True)
        out: list[BaseException | None] = []
        for result in results:
            if isinstance(result, (Replayed, TransportError)) or result is None:
                out.append(result)
            else:  # a bug: raised here, as :meth:`claim` would
                raise result
        return out

    async def claim(self, message_id: str, ingress_seq: int) -> None:
        """Record ``message_id`` as carried by ``ingress_seq``; raise :class:`Replayed` if another
        stored message already claimed it."""
        subject = f"$KV.{SEEN_BUCKET}.{message_id}"
        mine = str(ingress_seq).encode()
        with nats_failures("the replay store"):
            try:
                await self._js.publish(
                    subject, mine, timeout=self._timeout, headers={"Nats-Expected-Last-Subject-Sequence": "0"}
                )
                return
            except APIError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
            try:  # claimed before: by this stored message (a redelivery) or by another (a replay)
                held = await self._js.get_last_msg(_STREAM, subject)
            except NotFoundError:  # expired between the two calls: claim again next delivery
                raise TransportError("the replay store: the entry vanished; will retry") from None
        if held.data != mine:
            raise Replayed("this message id was already received", field="/jti", rule="unique-message-id")
