"""JetStream publishes in flight, answered through one reply subscription per connection.

nats-py's ``publish_async`` costs about 180 µs of CPU a message on this machine (a timer for its
stall wait, a token from ``secrets``, the standard ``json`` and a ``PubAck`` dataclass per
answer) where a core publish with a reply subject and one wildcard subscription for the answers
costs about 30 µs (``issue 15``: a referral makes four such publishes). It also never resolves
the future of a publish that JetStream refuses (``APIError.from_error`` raises inside its reply
handler, nats-py 2.16), so a compare-and-set that loses can only be learned by timing out.

Here each publish gets a reply subject ``<inbox>.<n>`` under one subscription ``<inbox>.*``;
the answer is read with orjson into an :class:`Answer`, a refusal included. A publish that is
never answered (the server died between storing and answering) is the caller's to give up on:
it :meth:`Acks.drop`\\s the token and publishes again under the same ``Nats-Msg-Id``.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Any, Final

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker.errors import TransportError
from broker.transport.errors import nats_failures

_STATUS: Final = "Status"


@dataclass(frozen=True, slots=True)
class Answer:
    """JetStream's answer to one publish: stored (a duplicate too), or refused with its code."""

    stored: bool
    err_code: int | None = None
    error: str = ""


def answer(msg: Msg) -> Answer:
    """Read a publish's answer (never its content: an answer holds a stream name and numbers)."""
    if not msg.data:  # a status message: 503 when no stream takes the subject
        status = (msg.headers or {}).get(_STATUS, "no data")
        return Answer(False, None, f"no stream answered (status {status})")
    try:
        body = orjson.loads(msg.data)
    except orjson.JSONDecodeError:
        return Answer(False, None, "an answer that is not JSON")
    error = body.get("error") if isinstance(body, dict) else None
    if error is not None:
        code = error.get("err_code") if isinstance(error, dict) else None
        description = error.get("description", "") if isinstance(error, dict) else ""
        return Answer(False, code, f"APIError {code} ({description})")
    return Answer(True)


class Acks:
    """The answers to one connection's publishes (see the module); make one with :func:`acks_for`."""

    def __init__(self, nc: NATS) -> None:
        self._nc = weakref.ref(nc)  # not a strong one: the registry below is keyed by the connection
        self._pending: dict[str, asyncio.Future[Msg]] = {}
        self._prefix = ""
        self._count = 0
        self._started = asyncio.Lock()
        self._subscribed = False

    async def _start(self) -> None:
        async with self._started:
            if self._subscribed:
                return
            nc = self._connection()
            inbox = nc.new_inbox()
            with nats_failures("the publish answers' subscription"):
                await nc.subscribe(f"{inbox}.*", cb=self._answered)
            self._prefix = f"{inbox}."
            self._subscribed = True

    async def _answered(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject[len(self._prefix):], None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> tuple[str, asyncio.Future[Msg]]:
        """Publish with a reply subject; the token (for :meth:`drop`) and the future of the answer.
        What nats-py raises leaves as it is: the caller names it at its boundary."""
        if not self._subscribed:
            await self._start()
        self._count += 1
        token = str(self._count)
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        try:
            await self._connection().publish(subject, data, reply=self._prefix + token, headers=headers)
        except BaseException:
            self._pending.pop(token, None)  # (its answer may have come during a forced flush)
            raise
        return token, future

    def _connection(self) -> NATS:
        nc = self._nc()
        if nc is None:
            raise TransportError("the connection is gone")
        return nc

    def drop(self, token: str) -> None:
        """Give up on a publish's answer (a late one is then ignored)."""
        future = self._pending.pop(token, None)
        if future is not None:
            future.cancel()

    @property
    def waiting(self) -> int:
        return len(self._pending)


_BY_CONNECTION: weakref.WeakKeyDictionary[Any, Acks] = weakref.WeakKeyDictionary()


def acks_for(js: Any) -> Acks:
    """The one :class:`Acks` of the connection under JetStream context ``js`` (its subscription
    made at the first publish). nats-py keeps the connection in ``_nc`` and offers no public way
    to it; this is the one place that reads it."""
    nc = js._nc
    acks = _BY_CONNECTION.get(nc)
    if acks is None:
        acks = _BY_CONNECTION[nc] = Acks(nc)
    return acks
