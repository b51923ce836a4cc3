"""Handing a delivery over to the agency's own system: the one promise every hand-over makes
(a webhook, a drop folder, the school's inbox), and the one error it raises."""

from __future__ import annotations

from typing import Protocol

from broker.errors import BrokerError


class DeliveryFailed(BrokerError):
    """The agency system did not take a delivery. ``permanent``: retrying will not help."""

    def __init__(self, reason: str, *, permanent: bool, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.attempts = attempts


class Sink(Protocol):
    """Where deliveries go into the agency's own system (a webhook, a drop folder, the school's
    inbox). The adapter acknowledges JetStream only after :meth:`deliver` returns, so a sink that
    fails loses nothing: the delivery is tried again, then dead-lettered."""

    async def deliver(self, delivery_id: str, body: bytes, content_type: str) -> None:
        """Return once the agency system has accepted it; raise :class:`DeliveryFailed` otherwise."""
