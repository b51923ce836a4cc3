"""FHIR R4 documents for the health adapter, built from HL7's published examples (data/fhir); the
consent facts they carry; the mapping context the health adapter maps them in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from adapters.formats.fhir import CONSENT_EXTENSION
from adapters.formats.health import MESSAGE_ID, NHS_NUMBER
from adapters.formats.mapping import MapContext
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry

DATA = Path(__file__).resolve().parent.parent / "data" / "fhir"
NHS = "9990001235"
# The case's consent facts in the sharing block, as consent_extension() records them by default
FACTS = {"consentStatus": "NOT_SOUGHT", "nonConsentReason": "WOULD_PREJUDICE_PROTECTION",
         "subjectInformed": "TO_BE_INFORMED_LATER"}


def health_context(key_template: Path, catalogue: Catalogue) -> MapContext:
    """The development registry without a nats-server: mapping needs neither NATS nor keys."""
    return MapContext(agency="health-camden", registry=Registry.load(key_template / "registry.json", catalogue),
                      catalogue=catalogue, options={"local_authority": "la-camden"})


def published(name: str) -> dict[str, Any]:
    """One published HL7 FHIR R4 example, exactly as HL7 ships it (see data/fhir/README.md)."""
    return orjson.loads((DATA / f"{name}.json").read_bytes())  # type: ignore[no-any-return]


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"http://hl7.org/fhir/{r['resourceType']}/{r['id']}", "resource": r}
                      for r in resources]}


def child() -> dict[str, Any]:
    """Patient-infant-twin-1 with an NHS number added (no published R4 example carries one)."""
    patient = published("Patient-infant-twin-1")
    patient["identifier"].append({"system": NHS_NUMBER, "value": NHS})
    return patient


def mother() -> dict[str, Any]:
    """RelatedPerson-newborn-mom, pointed at our child (published, she is the unnamed newborn's mother)."""
    person = published("RelatedPerson-newborn-mom")
    person["patient"] = {"reference": "Patient/infant-twin-1"}
    return person


def referrer() -> list[dict[str, Any]]:
    return [published("Practitioner-example"), published("PractitionerRole-example"), published("Organization-f001")]


def consent_extension(status: str = "NOT_SOUGHT", reason: str | None = "WOULD_PREJUDICE_PROTECTION",
                      informed: str | None = "TO_BE_INFORMED_LATER") -> dict[str, Any]:
    """The case's consent facts as the health system records them (docs/adapters.md)."""
    parts = [("consentStatus", status), ("nonConsentReason", reason), ("subjectInformed", informed)]
    return {"url": CONSENT_EXTENSION,
            "extension": [{"url": name, "valueCode": code} for name, code in parts if code is not None]}


def service_request() -> dict[str, Any]:
    """ServiceRequest-example about our child, with a requester (the published one has none, and a
    referral needs a referrer), priority urgent and the case's consent facts."""
    request = published("ServiceRequest-example")
    request |= {"subject": {"reference": "Patient/infant-twin-1"}, "requester": {"reference": "Practitioner/example"},
                "priority": "urgent", "extension": [consent_extension()]}
    return request


def referral_bundle() -> dict[str, Any]:
    return bundle(child(), mother(), *referrer(), service_request())


def answer(request_id: str) -> dict[str, Any]:
    """Communication-example answering a request: inResponseTo names it, the sender is the published
    PractitionerRole (published: a Device) and each payload's id names the question it answers."""
    comm = published("Communication-example")
    comm |= {"inResponseTo": [{"identifier": {"system": MESSAGE_ID, "value": request_id}}],
             "sender": {"reference": "PractitionerRole/example"},
             "extension": [consent_extension("GIVEN", None, "INFORMED")]}
    comm["payload"][0]["id"], comm["payload"][1]["id"] = "q1", "q2"
    return comm
