"""Ids the wire contract derives, and the administrative messages.

Every message the broker makes has an id derived from what it answers (uuid5), so processing a
message again after a crash republishes under the same ``Nats-Msg-Id`` and JetStream drops the
copy. Receipts, rejections and overdue notices carry no personal data and one sharing block.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Final

_NS: Final = uuid.UUID("6f1c1f43-7d0e-4f59-9a8e-2b1f7c5d9e10")


ADMIN_TYPES: Final = frozenset({"receipt", "rejection", "overdue-notice"})  # notices about messages, no personal data


ADMIN_SHARING: Final[Mapping[str, Any]] = {
    "vocabulary": "sgb-lawful-basis/1",
    "purpose": "SERVICE_ADMINISTRATION",
    "lawfulBasis": "UKGDPR_6_1_E",
    "consentStatus": "NOT_APPLICABLE",
    "urgency": "ROUTINE",
    "decidedBy": {"role": "Safeguarding Broker", "staffRef": "sg-broker"},
    "guidanceEdition": "WT2023",
}


def derived_id(*parts: object) -> str:
    return str(uuid.uuid5(_NS, "/".join(str(p) for p in parts)))
