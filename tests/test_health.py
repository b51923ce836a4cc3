"""The health adapter's FHIR R4 mapping: published HL7 examples in and out, and refusals that
name the field without repeating what the record says."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.flag import Flag

from adapters.formats.consent import agency_wide
from adapters.formats.fhir import TOPIC
from adapters.formats.health import (
    AGENCY_ID,
    CONTENT_TYPE,
    DELIVERY_ID,
    MESSAGE_ID,
    NHS_NUMBER,
    PLAN,
    PURPOSE,
    Unrenderable,
    fhir_bundle,
    flag_to_status,
    render_fhir,
)
from adapters.formats.mapping import MapContext, Outbound, Unmappable
from adapters.sdk import Delivery, Handed
from broker.pipeline.service import Broker
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry
from tests.conftest import ClientFactory
from tests.helpers import drain, example, sharing
from tests.support.fhir import (
    DATA,
    NHS,
    answer,
    bundle,
    child,
    consent_extension,
    published,
    referral_bundle,
    referrer,
    service_request,
)

FACTS = {"consentStatus": "NOT_SOUGHT", "nonConsentReason": "WOULD_PREJUDICE_PROTECTION",
         "subjectInformed": "TO_BE_INFORMED_LATER"}


@pytest.fixture
def context(key_template: Path, catalogue: Catalogue) -> MapContext:
    """The development registry without a nats-server: mapping needs neither NATS nor keys."""
    return MapContext(agency="health-camden", registry=Registry.load(key_template / "registry.json", catalogue),
                      catalogue=catalogue, options={"local_authority": "la-camden"})


def delivered(typ: str, payload: dict[str, Any], *, to: str = "health-camden", sender: str = "la-camden",
              urgency: str = "URGENT", re: str | None = None) -> Delivery:
    """A delivery as the SDK hands it over (the mapping needs no broker)."""
    claims: dict[str, Any] = {"jti": str(uuid.uuid4()), "iss": "sg-broker", "iat": 1795312862, "typ": typ, "ver": 1,
                              "to": [to], "sharing": {"urgency": urgency} | FACTS,
                              "origin": {"iss": sender, "jti": str(uuid.uuid4())}}
    if re:
        claims["re"] = re
    return Delivery(claims, payload)


def rendered(delivery: Delivery) -> dict[str, Any]:
    body, content_type = render_fhir(delivery)
    assert content_type == CONTENT_TYPE
    return orjson.loads(body)  # type: ignore[no-any-return]


def resources(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == kind]


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


def test_the_senders_consent_facts_are_rendered_for_the_health_system() -> None:
    """What a health system receives says whether consent was given and whether the family knows;
    a receipt (no personal data) says nothing of consent."""
    doc = rendered(delivered("referral", example("referral.example.json")))
    (request,) = resources(doc, "ServiceRequest")
    assert request["extension"] == [consent_extension()]
    flag = rendered(delivered("child-protection-status", example("child-protection-status.example.json")))
    assert flag["extension"] == [consent_extension()]
    receipt = delivered("receipt", example("receipt.example.json"))
    receipt.claims["sharing"] = {"consentStatus": "NOT_APPLICABLE", "urgency": "ROUTINE"}
    (comm,) = resources(rendered(receipt), "Communication")
    assert "extension" not in comm


def test_an_answers_topic_travels_both_ways(context: MapContext) -> None:
    """police-history marks an answer as criminal offence data for the broker: it survives FHIR."""
    original = example("information-response.example.json")
    original["answers"][0]["topic"] = "police-history"
    doc = rendered(delivered("information-response", original, to="la-camden", sender="health-camden"))
    (comm,) = resources(doc, "Communication")
    assert {"url": TOPIC, "valueCode": "police-history"} in comm["payload"][0]["extension"]
    (m,) = fhir_bundle(orjson.dumps(doc), context)
    assert m.payload == original
    comm["payload"][0]["extension"] = [{"url": TOPIC, "valueCode": "gossip"}]
    with pytest.raises(Unmappable) as caught:
        fhir_bundle(orjson.dumps(doc), context)
    assert caught.value.field.endswith("/payload/0/extension") and "gossip" not in str(caught.value)


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


def test_a_referral_round_trips_through_fhir(context: MapContext) -> None:
    (first,) = fhir_bundle(orjson.dumps(referral_bundle()), context)
    delivery = delivered("referral", first.payload, to="la-camden", sender="health-camden")
    doc = rendered(delivery)
    Bundle.model_validate(doc)
    assert doc["identifier"] == {"system": DELIVERY_ID, "value": delivery.id}
    (request,) = resources(doc, "ServiceRequest")
    assert {"system": MESSAGE_ID, "value": delivery.origin[1]} in request["identifier"]
    assert request["priority"] == "urgent"
    (again,) = fhir_bundle(orjson.dumps(doc), context)
    assert again.payload == first.payload and again.typ == "referral"


def test_the_canonical_referral_example_keeps_its_key_fields_through_fhir(context: MapContext) -> None:
    original = example("referral.example.json")
    (back,) = fhir_bundle(orjson.dumps(rendered(delivered("referral", original))), context)
    child = {k: v for k, v in original["child"].items() if k not in ("upn", "school")}  # no FHIR home here
    assert back.payload["child"] == child
    assert back.payload["household"] == original["household"]
    assert back.payload["concern"] == {k: v for k, v in original["concern"].items() if k != "firstHand"}
    assert back.payload["referrer"] == {k: original["referrer"][k] for k in ("name", "role", "organisation")}
    assert back.payload["policeReference"] == original["policeReference"] and "referralReference" not in back.payload


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


def test_an_information_request_is_rendered_so_that_health_can_answer_it(context: MapContext) -> None:
    request = delivered("information-request", example("information-request.example.json"))
    doc = rendered(request)
    Bundle.model_validate(doc)
    (comm,) = resources(doc, "Communication")
    assert [(p["id"], p["contentString"]) for p in comm["payload"]] == [
        ("q1", "Any attendances for injuries in the last 12 months?"), ("q2", "Any missed health appointments?")]
    (patient,) = resources(doc, "Patient")
    assert patient["identifier"] == [{"system": NHS_NUMBER, "value": "9990005672"}]
    # The health system answers by quoting the Communication's identifier.
    reply = answer("unused") | {"inResponseTo": [{"identifier": comm["identifier"][0]}]}
    (m,) = fhir_bundle(orjson.dumps(bundle(*referrer(), reply)), context)
    assert m.answers == request.origin[1] == m.payload["requestId"]
    # ...or by reference to the request itself, sent back with the answer: that is context, not a new referral.
    reply["inResponseTo"] = [{"reference": doc["entry"][-2]["fullUrl"]}]
    assert doc["entry"][-2]["resource"] is comm
    both = bundle(*referrer(), reply)
    both["entry"] += doc["entry"]
    (m,) = fhir_bundle(orjson.dumps(both), context)
    assert m.typ == "information-response" and m.answers == request.origin[1]


def test_an_information_response_round_trips_through_fhir(context: MapContext) -> None:
    original = example("information-response.example.json")
    doc = rendered(delivered("information-response", original, to="la-camden", sender="health-camden"))
    (m,) = fhir_bundle(orjson.dumps(doc), context)
    assert m.typ == "information-response" and m.answers == original["requestId"]
    assert m.payload == original


def test_a_child_protection_status_is_a_cp_is_flag_and_back(catalogue: Catalogue) -> None:
    status = example("child-protection-status.example.json")
    delivery = delivered("child-protection-status", status)
    flag = rendered(delivery)
    Flag.model_validate(flag)
    assert flag["code"]["coding"][0] == {"system": PLAN, "code": "child-protection-plan",
                                         "display": "Child protection plan"}
    assert flag["subject"]["identifier"] == {"system": NHS_NUMBER, "value": "9990005672"}
    assert flag["period"] == {"start": "2026-12-07"} and flag["status"] == "active"
    assert {"system": MESSAGE_ID, "value": delivery.origin[1]} in flag["identifier"]
    (la,) = flag["contained"]
    assert flag["author"]["reference"] == f"#{la['id']}" and la["identifier"][0]["value"] == "la-camden"
    assert flag_to_status(orjson.dumps(flag), catalogue) == status


def test_the_published_flag_example_round_trips_once_it_is_a_cp_plan(catalogue: Catalogue) -> None:
    flag = published("Flag-example")
    with pytest.raises(Unmappable) as caught:
        flag_to_status(flag, catalogue)  # a safety flag about a dog is not a child protection plan
    assert caught.value.field == "/code" and "dog" not in str(caught.value)
    # What a CP-IS flag adds: the plan-type code, the child by NHS number, the LA and its numbers.
    flag |= {"code": {"coding": [{"system": PLAN, "code": "looked-after"}]},
             "subject": {"identifier": {"system": NHS_NUMBER, "value": NHS}},
             "contained": [{"resourceType": "Organization", "id": "la", "name": "London Borough of Camden",
                            "contact": [{"purpose": {"coding": [{"system": PURPOSE, "code": code}]},
                                         "telecom": [{"system": "phone", "value": phone}]}
                                        for code, phone in (("office-hours", "020 7974 0000"),
                                                            ("emergency-duty", "020 7974 1111"))]}],
             "author": {"reference": "#la"}}
    status = flag_to_status(flag, catalogue)
    assert status == {"nhsNumber": NHS, "planType": "looked-after", "startDate": "2015-01-17",
                      "endDate": "2016-12-01",
                      "responsibleAuthority": {"name": "London Borough of Camden", "officeHoursPhone": "020 7974 0000",
                                               "emergencyDutyPhone": "020 7974 1111"}}
    again = rendered(delivered("child-protection-status", status))
    assert again["status"] == "inactive" and again["period"] == flag["period"]
    assert flag_to_status(again, catalogue) == status


@pytest.mark.parametrize("typ", ["referral-outcome", "strategy-discussion", "encompass-notification",
                                 "decision-not-to-share", "lado-referral", "rapid-review",
                                 "serious-incident-notification", "receipt", "rejection", "overdue-notice"])
def test_every_other_type_renders_as_a_valid_bundle_carrying_the_canonical_message(typ: str) -> None:
    payload = example(f"{typ}.example.json")
    delivery = delivered(typ, payload, re=str(uuid.uuid4()))
    doc = rendered(delivery)
    Bundle.model_validate(doc)
    (comm,) = resources(doc, "Communication")
    assert comm["category"][0]["coding"][0]["code"] == typ
    assert comm["inResponseTo"][0]["identifier"]["value"] == delivery.claims["re"]
    (binary,) = resources(doc, "Binary")
    assert orjson.loads(base64.b64decode(binary["data"]))["payload"] == payload
    person = payload.get("child") or payload.get("subject")
    assert len(resources(doc, "Patient")) == (1 if person and "name" in person else 0)  # receipts: no person


def test_a_trimmed_payload_still_renders_with_every_field_it_has() -> None:
    payload = {k: v for k, v in example("referral.example.json").items() if k in ("child", "household")}
    doc = rendered(delivered("referral", payload))
    Bundle.model_validate(doc)
    assert not resources(doc, "ServiceRequest") and len(resources(doc, "Patient")) == 1
    (comm,) = resources(doc, "Communication")
    assert [p["contentString"].split(":")[0] for p in comm["payload"]] == ["child", "household"]


def test_what_cannot_be_valid_fhir_is_not_rendered_and_the_error_holds_no_value() -> None:
    status = example("child-protection-status.example.json") | {"startDate": "7th December"}  # not schema-valid
    with pytest.raises(Unrenderable) as caught:
        render_fhir(delivered("child-protection-status", status))
    assert "/period/start" in str(caught.value) and "December" not in str(caught.value)


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


async def test_health_refers_through_the_broker_and_receives_a_cp_flag(broker: Broker, agency: ClientFactory,
                                                                       context: MapContext,
                                                                       catalogue: Catalogue) -> None:
    health, la = await agency("health-camden"), await agency("la-camden")
    (m,) = fhir_bundle(orjson.dumps(referral_bundle()), context)
    assert isinstance(m, Outbound) and m.sharing is not None
    block = agency_wide(sharing()) | {"specialCategoryCondition": "UKGDPR_9_2_H_SCH1_P2"} | dict(m.sharing)
    block.pop("lawEnforcementBasis")  # health is not a police force
    jti = await health.send(typ=m.typ, to=list(m.to), payload=m.payload, sharing=block)
    assert (await health.wait_outcome(jti, timeout=10)).payload["status"] == "routed"
    (referral,) = await drain(la, want=1)
    assert referral.payload["child"] == m.payload["child"]
    assert referral.claims["sharing"]["decidedBy"] == {"role": "General medical practice", "staffRef": "23"}

    status = example("child-protection-status.example.json")
    jti = await la.send(typ="child-protection-status", to=["health-camden"], payload=status,
                        sharing=sharing("child-protection-status"))
    assert (await la.wait_outcome(jti, timeout=10)).payload["status"] == "routed"
    (delivery,) = await drain(health, want=1)
    flag = rendered(delivery)
    Flag.model_validate(flag)
    assert flag_to_status(flag, catalogue) == status
    assert {"system": MESSAGE_ID, "value": jti} in flag["identifier"]
