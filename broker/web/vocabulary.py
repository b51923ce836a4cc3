"""One source for each word the API and the IG pages offer as a choice, filter on or promise in
the OpenAPI document.

What a message schema defines is read from the schema (a receipt's statuses, a practitioner's
reasons not to share); the review queue's flags and outcomes are the audit index's
(:data:`broker.audit.index.REVIEW_FLAGS`), the reasons for a legal hold the retention rules'
(:data:`broker.pipeline.retention.HOLD_REASONS`), and the standings of a message with a recipient
the trail's (:data:`broker.web.trailview.STANDINGS`): their users import them from there. What is
named here is what has no other home: the events an audit record can carry and the choices of
this web application's own parameters.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

import orjson


def schema_enum(file_name: str, prop: str) -> tuple[str, ...]:
    """The values a message schema (``schemas/<file_name>``) allows for its top-level ``prop``, in its order."""
    doc = orjson.loads((resources.files("schemas") / file_name).read_bytes())
    return tuple(doc["properties"][prop]["enum"])


RECEIPT_STATUSES: Final = schema_enum("receipt.v1.json", "status")
NOT_SHARED_REASONS: Final = schema_enum("decision-not-to-share.v1.json", "reason")

# The events the broker records for a message (broker.pipeline.outcomes and .retention write them),
# each decision event with the decision it records.
DECISION_EVENTS: Final = {"shared": "share", "refused": "refuse", "not-shared": "not-share", "rejected": "reject"}
MESSAGE_EVENTS: Final = ("received", *DECISION_EVENTS, "overdue", "expired")
# The officers' actions this web application records, each in its own audit record.
REVIEWED: Final = "reviewed"
SUBJECT_SEARCH: Final = "subject-search"
SUBJECT_PROOF: Final = "subject-proof"  # a subject access downloaded as a proof bundle
EXPORTED: Final = "exported"
HOLD_PLACED: Final = "hold-placed"
HOLD_RELEASED: Final = "hold-released"
OFFICER_EVENTS: Final = (REVIEWED, SUBJECT_SEARCH, SUBJECT_PROOF, EXPORTED, HOLD_PLACED, HOLD_RELEASED)
EVENTS: Final = (*MESSAGE_EVENTS, *OFFICER_EVENTS)
DECISIONS: Final = tuple(DECISION_EVENTS.values())

REVIEW_STATES: Final = ("open", "done", "escalated")  # escalated: outcomes for the DPO
# what the index counts decisions by (AuditIndex.volumes), and its label
VOLUMES_BY: Final = {"lawfulBasis": "Lawful basis", "agency": "Sending agency", "decision": "Decision"}
# What the last verification of the audit log found (the integrity badge).
VERIFIED, TAMPERED, UNAVAILABLE, NEVER_VERIFIED = "verified", "tampered", "unavailable", "never-verified"
INTEGRITY_STATES: Final = (VERIFIED, TAMPERED, UNAVAILABLE, NEVER_VERIFIED)
