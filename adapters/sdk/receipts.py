"""Receipts an agency sends about a delivery (``delivered``, ``accepted``, ``actioned``,
``not-delivered``): one sharing block, no personal data, and an id derived from the delivery and
the status, so the same receipt sent twice is kept once."""

from __future__ import annotations

import uuid
from typing import Final

_RECEIPTS: Final = uuid.UUID("3d1f0c9a-5b7e-4e2a-9c61-8f4b2d7a0e53")

# The sharing block of every receipt: administration of the service, no personal data, decided by
# the adapter itself (a receipt says what happened to a delivery, never what it held).
RECEIPT_SHARING: Final = {
    "vocabulary": "sgb-lawful-basis/1", "purpose": "SERVICE_ADMINISTRATION", "lawfulBasis": "UKGDPR_6_1_E",
    "consentStatus": "NOT_APPLICABLE", "urgency": "ROUTINE",
    "decidedBy": {"role": "Agency adapter", "staffRef": "adapter"}, "guidanceEdition": "WT2023",
}


def receipt_id(delivery_id: str, status: str) -> str:
    """The message id of the ``status`` receipt for a delivery: the same every time it is sent, so
    JetStream keeps one however often a retry or a restart sends it."""
    return str(uuid.uuid5(_RECEIPTS, f"{delivery_id}/{status}"))
