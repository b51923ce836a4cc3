"""The Safeguarding Broker: authenticated, lawful, minimised, audited sharing of safeguarding
information between agencies over NATS JetStream."""

from broker.config import Settings
from broker.errors import BrokerError, RejectedMessage

__all__ = ["BrokerError", "RejectedMessage", "Settings"]
