"""Prometheus metrics of one broker process, with ``prometheus-client``.

Names and units follow the Prometheus conventions (``_total`` counters, ``_seconds``
histograms, base units). Labels take only bounded values: message types from the catalogue,
rejection codes, pipeline stages, review flags and agency ids from the trust registry; never
a message id and never anything from a payload. Each broker has its own registry, so several
brokers in one process (tests) do not collide.

The pipeline counts through :class:`Children`: a labelled metric's child for each label value,
looked up by prometheus-client's ``labels()`` (which checks and joins the values every time) once
and then kept, as the hot path counts five to ten times per message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

M = TypeVar("M", Counter, Histogram)

STAGES = ("authenticate", "open", "decide", "store", "total")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Children(Generic[M]):
    """The children of a metric with one label, each bound on first use and kept (the label values
    are bounded: see the module)."""

    __slots__ = ("_bound", "_metric")

    def __init__(self, metric: M, ahead: Iterable[str] = ()) -> None:
        self._metric: M = metric
        self._bound: dict[str, M] = {value: metric.labels(value) for value in ahead}

    def __getitem__(self, value: str) -> M:
        child = self._bound.get(value)
        if child is None:
            child = self._bound[value] = self._metric.labels(value)
        return child


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("sgb_messages_received", "Messages taken from the ingress stream and decided",
                                registry=r)
        self.accepted = Counter("sgb_messages_accepted", "Messages accepted, by message type", ["type"], registry=r)
        self.delivered = Counter("sgb_deliveries", "Deliveries stored for a recipient, by message type", ["type"],
                                 registry=r)
        self.refused = Counter("sgb_recipients_refused", "Recipients a message was not shared with, by code",
                               ["code"], registry=r)
        self.rejected = Counter("sgb_messages_rejected", "Messages rejected, by stable code", ["code"], registry=r)
        self.withheld = Counter("sgb_fields_withheld", "Payload fields withheld from a recipient", registry=r)
        self.flagged = Counter("sgb_review_flags", "Decisions flagged for IG review, by flag", ["flag"], registry=r)
        self.late = Counter("sgb_messages_late", "Messages sent after the sender's own statutory clock ran out "
                            "(a LADO referral, an Operation Encompass notice, a serious incident notification)",
                            ["type"], registry=r)
        self.overdue = Counter("sgb_deadlines_overdue", "Deadlines that passed without the expected reply",
                               registry=r)
        self.expired = Counter("sgb_deliveries_expired", "Uncollected deliveries removed after the retention period",
                               registry=r)
        self.retried = Counter("sgb_messages_retried", "Messages nak'ed for redelivery after a transport failure",
                               registry=r)
        self.internal = Counter("sgb_internal_errors", "Messages that met a bug of the broker's own (nak'ed, and "
                                "refused as internal from their fifth delivery), and deadline entries or scans "
                                "that did (skipped, logged)", registry=r)
        self.witness_refusals = Counter("sgb_witness_refusals", "Transparency checkpoints a witness refused as "
                                        "inconsistent with what it cosigned (422: a fork it saw), by witness",
                                        ["witness"], registry=r)
        self.audit_blocks = Counter("sgb_audit_blocks_written", "Signed audit blocks appended", registry=r)
        self.reconnects = Counter("sgb_nats_reconnects", "Reconnections to NATS", registry=r)
        self.stage_seconds = Histogram("sgb_pipeline_stage_seconds", "Time spent per pipeline stage", ["stage"],
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("sgb_messages_in_flight", "Messages being processed now", registry=r)
        self.backlog = Gauge("sgb_consumer_backlog_messages", "Ingress messages waiting for the broker", registry=r)
        self.key_expiry = Gauge("sgb_key_expiry_timestamp_seconds",
                                "When a registry key stops being valid (Unix time; absent when open-ended)",
                                ["agency", "use"], registry=r)
        self.maintenance = Gauge("sgb_maintenance_mode", "1 while the broker takes no new work", registry=r)
        self.deadline_leader = Gauge("sgb_deadline_scanner_leader", "1 while this instance holds the lease to "
                                     "scan the deadlines (one instance does)", registry=r)
        self.stage = Children(self.stage_seconds, STAGES)  # present from the start, so dashboards see zeros
        self.accepted_by = Children(self.accepted)
        self.delivered_by = Children(self.delivered)
        self.refused_by = Children(self.refused)
        self.rejected_by = Children(self.rejected)
        self.flagged_by = Children(self.flagged)
        self.late_by = Children(self.late)
