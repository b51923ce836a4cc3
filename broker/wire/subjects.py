"""Where messages travel, as the wire contract names it: the NATS subjects of each agency and
broker instance, and the JetStream streams, key-value buckets and consumer that hold them
(:mod:`broker.transport.topology` creates them)."""

from __future__ import annotations

from typing import Final

INGRESS: Final = "SG_INGRESS"


DELIVERY: Final = "SG_DELIVERY"


AUDIT: Final = "SG_AUDIT"


SEEN_BUCKET: Final = "SG_SEEN"


DEADLINES_BUCKET: Final = "SG_DEADLINES"


AUDIT_HEADS_BUCKET: Final = "SG_AUDIT_HEADS"


HOLDS_BUCKET: Final = "SG_HOLDS"


LEASES_BUCKET: Final = "SG_LEASES"  # who does what only one instance may do (broker/transport/lease.py)


BROKER_CONSUMER: Final = "sg-broker"


def ingress_subject(agency: str) -> str:
    return f"sg.in.{agency}"


def delivery_subject(agency: str) -> str:
    return f"sg.out.{agency}"


def audit_subject(instance: str) -> str:
    return f"sg.audit.{instance}"


def checkpoint_subject(instance: str) -> str:
    return f"sg.audit.{instance}.checkpoint"


def tlog_subject(instance: str) -> str:
    """The chain's transparency checkpoints: C2SP tlog-checkpoint signed notes (issue 16)."""
    return f"sg.audit.{instance}.tlog"


def cosigned_subject(instance: str) -> str:
    """The chain's transparency checkpoints with the witnesses' verified cosignatures added (issue 16)."""
    return f"sg.audit.{instance}.cosigned"
