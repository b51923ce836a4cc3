"""Where the broker's work stands, read from JetStream: how much waits in an agency's queue, and
whether everything published to the broker so far has been taken, stored and acknowledged; and a
policy with a bug in it."""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext

from broker.policy.engine import Decision, ReloadablePolicy
from broker.policy.rulebook import DEFAULT_RULEBOOK
from broker.wire.catalogue import Catalogue
from broker.wire.subjects import BROKER_CONSUMER, DELIVERY, INGRESS
from tests.helpers import eventually


async def queued(js: JetStreamContext, agency: str) -> int:
    """How many deliveries wait in ``agency``'s queue (its subject of ``SG_DELIVERY``)."""
    subject = f"sg.out.{agency}"
    info = await js.stream_info(DELIVERY, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def settled(js: JetStreamContext, *, timeout: float = 10.0) -> None:
    """Until the broker has taken, stored and acked everything published to it so far: nothing
    waits on its ingress consumer and nothing is out unacknowledged. A message is acknowledged only
    after what it produced is stored, so whatever the broker will ever make of it is stored now."""
    async def idle() -> bool:
        info = await js.consumer_info(INGRESS, BROKER_CONSUMER)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(idle, what="the broker to finish everything published to it", timeout=timeout)


class Buggy:
    """The shipped rulebook (the whole :class:`~broker.policy.engine.Policy`), with a bug in deciding
    for the first ``times`` messages it sees."""

    def __init__(self, times: int) -> None:
        self.policy = ReloadablePolicy(DEFAULT_RULEBOOK, Catalogue())
        self.left = times
        self.calls = 0

    def decide(self, *args: Any, **kwargs: Any) -> Decision:
        self.calls += 1
        if self.left > 0:
            self.left -= 1
            raise ZeroDivisionError("a bug in deciding")
        return self.policy.decide(*args, **kwargs)

    def clocks_answered_by(self, type_name: str) -> tuple[str, ...]:
        return self.policy.clocks_answered_by(type_name)
