"""The health adapter's FHIR R4 mapping into canonical messages: HL7's published examples in, the
case's consent facts read from the sharing-consent extension, and refusals that name the field
without repeating what the record says. Canonical messages out to FHIR: tests/test_health_render.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from adapters.formats.health import AGENCY_ID, MESSAGE_ID, fhir_bundle
from adapters.formats.mapping import MapContext, Unmappable
from adapters.sdk import Handed
from broker.wire.catalogue import Catalogue
from tests.support.fhir import (
    DATA,
    FACTS,
    NHS,
    answer,
    bundle,
    child,
    consent_extension,
    health_context,
    published,
    referral_bundle,
    referrer,
    service_request,
)


@pytest.fixture
def context(key_template: Path, catalogue: Catalogue) -> MapContext:
    """The health adapter's mapping context (tests/support/fhir.py)."""
    return health_context(key_template, catalogue)


def test_the_published_r4_examples_validate_with_the_library_models() -> None:
    """The claim the module rests on: R4 (4.0.1) JSON of these resources is valid for the R4B models."""
    files = sorted(DATA.glob("*.json"))
    assert len(files) == 10
    for path in files:
        doc = orjson.loads(path.read_bytes())
        get_fhir_model_class(doc["resourceType"]).model_validate(doc)


def test_a_service_request_bundle_becomes_a_referral_to_the_local_authority(context: MapContext) -> None:
    (m,) = fhir_bundle(orjson.dumps(referral_bundle()), context)
    assert (m.typ, m.to, m.answers) == ("referral", ("la-camden",), None)
    assert m.payload["child"] == {"name": {"family": "Solo", "given": "Jaina"}, "status": "born",
                                  "dateOfBirth": "2017-05-15", "gender": "female", "nhsNumber": NHS}
    assert m.payload["household"] == [{"name": {"family": "Everywoman", "given": "Eve"}, "role": "parent",
                                       "relationship": "Natural Mother", "dateOfBirth": "1973-05-31",
                                       "gender": "female", "address": {"lines": ["2222 Home Street"]},
                                       "phone": "555-555-2003"}]
    assert m.payload["referrer"] == {"role": "General medical practice", "name": {"family": "Careful", "given": "Adam"},
                                     "organisation": {"name": "Burgers University Medical Center"},
                                     "phone": "(03) 5555 6473", "email": "adam.southern@example.org"}
    assert m.payload["concern"] == {"summary": "Computed tomography of head", "categories": ["other"],
                                    "immediateProtectionNeeded": False}
    assert m.sharing == {"decidedBy": {"role": "General medical practice", "staffRef": "23"},
                         "urgency": "URGENT"} | FACTS


@pytest.mark.parametrize(("parts", "facts"), [
    (("GIVEN", None, "INFORMED"), {"consentStatus": "GIVEN", "subjectInformed": "INFORMED"}),
    (("REFUSED_OVERRIDDEN", "WOULD_INCREASE_RISK_OF_HARM", "NOT_INFORMED_UNSAFE"),
     {"consentStatus": "REFUSED_OVERRIDDEN", "nonConsentReason": "WOULD_INCREASE_RISK_OF_HARM",
      "subjectInformed": "NOT_INFORMED_UNSAFE"}),
    (("NOT_SOUGHT", "CANNOT_BE_GIVEN", "NOT_INFORMED_PREJUDICE_INVESTIGATION"),
     {"consentStatus": "NOT_SOUGHT", "nonConsentReason": "CANNOT_BE_GIVEN",
      "subjectInformed": "NOT_INFORMED_PREJUDICE_INVESTIGATION"}),
])
def test_the_consent_extension_is_valid_fhir_and_carries_the_case_facts(parts: tuple[str, str | None, str],
                                                                         facts: dict[str, str],
                                                                         context: MapContext) -> None:
    """The sharing-consent extension validates with the library's R4B models, on a ServiceRequest and
    on a Communication, and becomes the sharing block's consent facts (the vocabulary's codes)."""
    doc = referral_bundle()
    request = doc["entry"][-1]["resource"]
    request["extension"] = [consent_extension(*parts)]
    get_fhir_model_class("ServiceRequest").model_validate(request)
    (m,) = fhir_bundle(orjson.dumps(doc), context)
    assert {k: v for k, v in (m.sharing or {}).items() if k in FACTS} == facts
    comm = answer("x") | {"extension": [consent_extension(*parts)]}
    get_fhir_model_class("Communication").model_validate(comm)
    request_id = str(uuid.uuid4())
    handed = Handed(request_id, "information-request", "la-camden", request_id, None, 0.0)
    ctx = MapContext(agency="health-camden", registry=context.registry, catalogue=context.catalogue,
                     handed=lambda ref: handed if ref == request_id else None)
    comm["inResponseTo"] = [{"identifier": {"system": MESSAGE_ID, "value": request_id}}]
    (reply,) = fhir_bundle(orjson.dumps(bundle(*referrer(), comm)), ctx)
    assert {k: v for k, v in (reply.sharing or {}).items() if k in FACTS} == facts


Ext = Callable[[dict[str, Any]], Any]


def _parts(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["entry"][-1]["resource"]["extension"][0]["extension"]  # type: ignore[no-any-return]


WHERE = "/entry/5/resource/extension"


@pytest.mark.parametrize(("change", "field", "rule"), [
    (lambda d: d["entry"][-1]["resource"].pop("extension"), WHERE, "consent.recorded"),
    (lambda d: d["entry"][-1]["resource"]["extension"].append(consent_extension()), f"{WHERE}/1", "consent.recorded"),
    (lambda d: _parts(d).pop(0), f"{WHERE}/0/extension", "consent.recorded"),
    (lambda d: _parts(d).pop(1), f"{WHERE}/0/extension", "consent.reason"),
    (lambda d: _parts(d).pop(2), f"{WHERE}/0/extension", "transparency.informed"),
    (lambda d: _parts(d)[0].update(valueCode="GIVEN"), f"{WHERE}/0/extension", "consent.consistent"),
    (lambda d: _parts(d)[0].update(valueCode="NOT_APPLICABLE"), f"{WHERE}/0/extension/0/valueCode",
     "consent.not-applicable"),
    (lambda d: _parts(d)[0].update(valueCode="not-sought"), f"{WHERE}/0/extension/0/valueCode", "consent.recorded"),
    (lambda d: _parts(d)[1].update(valueCode="MUM_SAID_NO"), f"{WHERE}/0/extension/1/valueCode", "consent.reason"),
    (lambda d: _parts(d)[2].update(valueCode="PARTLY"), f"{WHERE}/0/extension/2/valueCode", "transparency.informed"),
    (lambda d: _parts(d)[2].update(url="familyToldBy"), f"{WHERE}/0/extension/2/url", "consent.recorded"),
    (lambda d: _parts(d).append(_parts(d)[0]), f"{WHERE}/0/extension/3/url", "consent.recorded"),
])
def test_a_record_without_the_cases_consent_facts_is_refused(change: Ext, field: str, rule: str,
                                                            context: MapContext) -> None:
    doc = referral_bundle()
    change(doc)
    with pytest.raises(Unmappable) as caught:
        fhir_bundle(orjson.dumps(doc), context)
    assert (caught.value.code, caught.value.field, caught.value.rule) == ("unmappable", field, rule)
    assert "MUM_SAID_NO" not in str(caught.value) and "PARTLY" not in str(caught.value)


@pytest.mark.parametrize(("change", "facts"), [
    (lambda d: d["entry"][-1]["resource"].pop("extension"), {"consentStatus": "NOT_APPLICABLE"}),
    (lambda d: _parts(d).pop(1), {"consentStatus": "NOT_SOUGHT", "subjectInformed": "TO_BE_INFORMED_LATER"}),
    (lambda d: _parts(d).pop(2), {"consentStatus": "NOT_SOUGHT", "nonConsentReason": "WOULD_PREJUDICE_PROTECTION"}),
    (lambda d: _parts(d).pop(0), {"consentStatus": "NOT_APPLICABLE", "nonConsentReason": "WOULD_PREJUDICE_PROTECTION",
                                  "subjectInformed": "TO_BE_INFORMED_LATER"}),
])
def test_a_stat_request_is_mapped_without_the_consent_facts_it_lacks(change: Ext, facts: dict[str, str],
                                                                    context: MapContext) -> None:
    """An emergency (priority stat) is never held back for want of consent: what the extension
    does not say is left out, for the broker to share and flag."""
    doc = referral_bundle()
    doc["entry"][-1]["resource"]["priority"] = "stat"
    change(doc)
    (m,) = fhir_bundle(orjson.dumps(doc), context)
    assert m.sharing is not None and m.sharing["urgency"] == "EMERGENCY"
    assert {k: m.sharing[k] for k in (*FACTS, "consentStatus") if k in m.sharing} == facts
    doc["entry"][-1]["resource"]["extension"] = [consent_extension("GIVEN")]  # a contradiction still refuses
    with pytest.raises(Unmappable) as caught:
        fhir_bundle(orjson.dumps(doc), context)
    assert caught.value.rule == "consent.consistent"

def test_the_documented_example_bundle_maps(context: MapContext) -> None:
    """docs/examples/fhir-referral.json, the integrator's guide's example, as its text says."""
    doc = orjson.loads((Path(__file__).resolve().parent.parent / "docs" / "examples" / "fhir-referral.json")
                       .read_bytes())
    (m,) = fhir_bundle(orjson.dumps(doc), context)
    assert (m.typ, m.to) == ("referral", ("la-camden",))
    assert m.sharing == {"decidedBy": {"role": "Named Nurse Safeguarding", "staffRef": "NCL-NN-07"},
                         "urgency": "URGENT", "consentStatus": "NOT_SOUGHT",
                         "nonConsentReason": "WOULD_INCREASE_RISK_OF_HARM", "subjectInformed": "NOT_INFORMED_UNSAFE"}
    assert m.payload["concern"]["categories"] == ["physical"] and m.payload["referralReference"] == "ED-2026-11-0042"


def test_the_performer_names_the_local_authority_and_stat_is_an_emergency(context: MapContext) -> None:
    doc = referral_bundle()
    request = doc["entry"][-1]["resource"]
    request |= {"priority": "stat", "performer": [{"identifier": {"system": AGENCY_ID, "value": "la-camden"}}],
                "reasonCode": [{"text": "Unexplained bruising"}], "note": [{"text": "Seen in ED"}],
                "occurrenceDateTime": "2026-11-21T23:40:00Z",
                "category": [{"coding": [{"system": "https://sgb.invalid/fhir/CodeSystem/concern-category",
                                          "code": "physical"}]}]}
    (m,) = fhir_bundle(orjson.dumps(doc), MapContext(agency="health-camden", registry=context.registry,
                                                     catalogue=context.catalogue))  # no configured LA needed
    assert m.to == ("la-camden",) and m.sharing is not None and m.sharing["urgency"] == "EMERGENCY"
    assert m.payload["concern"] == {"summary": "Unexplained bruising", "details": "Seen in ED",
                                    "categories": ["physical"], "immediateProtectionNeeded": True,
                                    "incidentDateTime": "2026-11-21T23:40:00Z"}


def test_a_communication_answering_a_request_becomes_an_information_response(context: MapContext) -> None:
    request_id, delivery_id = str(uuid.uuid4()), str(uuid.uuid4())
    handed = Handed(delivery_id, "information-request", "la-camden", request_id, "thread-1", 0.0)
    ctx = MapContext(agency="health-camden", registry=context.registry, catalogue=context.catalogue,
                     handed=lambda ref: handed if ref in (request_id, delivery_id) else None)
    comm = answer(delivery_id)  # quoting the delivery's id works too: the request's id is looked up
    (m,) = fhir_bundle(orjson.dumps(bundle(child(), *referrer(), comm)), ctx)
    assert (m.typ, m.to, m.answers) == ("information-response", (), delivery_id)
    assert m.payload["requestId"] == request_id
    assert m.payload["answers"] == [
        {"questionId": "q1",
         "answer": "Patient 1 has a very high serum potassium value (7.2 mmol/L on 2014-Dec-12 at 5:55 pm)"},
        {"questionId": "q2", "answer": "Serum Potassium Observation"}]
    assert m.payload["respondent"]["name"] == {"family": "Careful", "given": "Adam"}


Change = Callable[[dict[str, Any]], Any]


def _entry(kind: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda doc: next(e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == kind)


patient, request, practitioner = _entry("Patient"), _entry("ServiceRequest"), _entry("Practitioner")


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: patient(d).update(birthDate="2017-13-45"), "/entry/0/resource/birthDate"),
    (lambda d: patient(d).update(birthDate="2017"), "/entry/0/resource/birthDate"),  # FHIR yes, a referral no
    (lambda d: patient(d).update(resourceType="Patientx"), "/entry/0/resource/resourceType"),
    (lambda d: patient(d).update(nickname="Jaina"), "/entry/0/resource/nickname"),
    (lambda d: patient(d).update(gender="girl"), "/entry/0/resource/gender"),
    (lambda d: patient(d)["identifier"][2].update(value="999 000 1235"), "/entry/0/resource/identifier/2/value"),
    (lambda d: patient(d).pop("name"), "/entry/0/resource/name"),
    (lambda d: d["entry"].pop(0), "/entry/4/resource/subject/reference"),  # the Patient is missing
    (lambda d: d["entry"].pop(2), "/entry/4/resource/requester/reference"),  # so is the Practitioner
    (lambda d: d["entry"].pop(4), "/entry/3/resource/organization/reference"),  # and the referrer's Organization
    (lambda d: request(d).pop("requester"), "/entry/5/resource/requester"),
    (lambda d: request(d).update(subject={"reference": "Practitioner/example"}),
     "/entry/5/resource/subject/reference"),
    (lambda d: request(d).update(priority="whenever"), "/entry/5/resource/priority"),
    (lambda d: practitioner(d)["identifier"][0].update(value="staff #23 (Solo)"),
     "/entry/2/resource/identifier/0/value"),
    (lambda d: d.update(type=["collection"]), "/type"),
    (lambda d: d.update(entry=[e for e in d["entry"] if e["resource"]["resourceType"] != "ServiceRequest"]),
     "/entry"),
])
def test_a_malformed_bundle_is_refused_naming_the_field_and_no_value(change: Change, field: str,
                                                                     context: MapContext) -> None:
    doc = referral_bundle()
    change(doc)
    with pytest.raises(Unmappable) as caught:
        fhir_bundle(orjson.dumps(doc), context)
    assert caught.value.field == field
    said = f"{caught.value} {caught.value.reason} {caught.value!r}"
    for value in ("Jaina", "Solo", "Everywoman", "Careful", "2017-13-45", "2017-05-15", "9990001235", "999 000",
                  "girl", "whenever", "staff #23"):
        assert value not in said
    assert caught.value.__cause__ is None  # the library's error (which holds the input) is not chained


def test_the_published_newborn_with_no_name_cannot_be_referred(context: MapContext) -> None:
    newborn, request = published("Patient-newborn"), service_request()
    request["subject"] = {"reference": "Patient/newborn"}
    with pytest.raises(Unmappable) as caught:
        fhir_bundle(orjson.dumps(bundle(newborn, *referrer(), request)), context)
    assert caught.value.field == "/entry/0/resource/name"


@pytest.mark.parametrize(("body", "field"), [
    (b"MSH|^~\\&|not FHIR", "/"),
    (b'{"hello": "world"}', "/resourceType"),
    (b"[1, 2]", "/"),  # not an object: no member to name
    (orjson.dumps(published("Patient-example")), "/resourceType"),  # a resource, not a Bundle
])
def test_a_body_that_is_not_a_fhir_bundle_is_refused(body: bytes, field: str, context: MapContext) -> None:
    with pytest.raises(Unmappable) as caught:
        fhir_bundle(body, context)
    assert caught.value.field == field and "Chalmers" not in str(caught.value)


def test_an_answer_that_names_no_known_request_is_refused(context: MapContext) -> None:
    comm = answer("x") | {"inResponseTo": [{"reference": "Communication/not-ours"}]}
    doc = bundle(*referrer(), comm)
    with pytest.raises(Unmappable) as caught:
        fhir_bundle(orjson.dumps(doc), context)
    assert caught.value.field == "/entry/3/resource/inResponseTo"
    comm["inResponseTo"] = [{"identifier": {"system": "urn:oid:1.2.3", "value": "secret-ref"}}]
    with pytest.raises(Unmappable) as caught:
        fhir_bundle(orjson.dumps(doc), context)
    assert caught.value.field == "/entry/3/resource/inResponseTo" and "secret-ref" not in str(caught.value)


def test_nothing_is_returned_unless_the_whole_bundle_maps(context: MapContext) -> None:
    good = referral_bundle()
    bad = service_request() | {"id": "second", "priority": "whenever"}
    good["entry"].append({"fullUrl": "http://hl7.org/fhir/ServiceRequest/second", "resource": bad})
    with pytest.raises(Unmappable) as caught:
        fhir_bundle(orjson.dumps(good), context)
    assert caught.value.field == "/entry/6/resource/priority"
