"""What each kind of agency speaks: the native formats its adapter takes in, and the form in which
deliveries are handed to its system.

Every adapter also takes ``canonical`` (the broker's own payloads, for systems integrated with
the SDK's formats directly).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from adapters.formats.mapping import Mapper
from adapters.runtime.deliverer import canonical_json
from adapters.runtime.inbound import canonical
from adapters.sdk import Delivery


@dataclass(frozen=True, slots=True)
class Profile:
    formats: Mapping[str, Mapper]
    render: Callable[[Delivery], tuple[bytes, str]]


def profile_for(kind: str) -> Profile:
    if kind == "police":
        from adapters.formats.police import ppn_csv, ppn_json

        return Profile({"ppn-json": ppn_json, "ppn-csv": ppn_csv, "canonical": canonical}, canonical_json)
    if kind == "health":
        from adapters.formats.health import fhir_bundle, render_fhir

        return Profile({"fhir": fhir_bundle, "canonical": canonical}, render_fhir)
    if kind == "local-authority":
        from adapters.formats.local_authority import case_events

        return Profile({"case-events": case_events, "canonical": canonical}, canonical_json)
    return Profile({"canonical": canonical}, canonical_json)
