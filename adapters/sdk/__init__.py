"""The SDK agency systems use to talk to the broker: sign, seal and publish messages; receive,
verify and open deliveries; send receipts; hand deliveries over to their own system.

``from adapters.sdk import AgencyClient, agency_client`` is the public surface; the modules
behind it are :mod:`~adapters.sdk.client`, :mod:`~adapters.sdk.receipts` and
:mod:`~adapters.sdk.handover`.
"""

from adapters.sdk.client import AgencyClient, Delivery, Handed, SeenStore, agency_client
from adapters.sdk.handover import DeliveryFailed, Sink
from adapters.sdk.receipts import RECEIPT_SHARING, receipt_id

__all__ = ["RECEIPT_SHARING", "AgencyClient", "Delivery", "DeliveryFailed", "Handed", "SeenStore", "Sink",
           "agency_client", "receipt_id"]
