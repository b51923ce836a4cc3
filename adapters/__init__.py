"""Agency-side code: the SDK agency systems use to talk to the broker, and (later) one
adapter per agency kind that translates its native format."""

from adapters.sdk import AgencyClient, Delivery

__all__ = ["AgencyClient", "Delivery"]
