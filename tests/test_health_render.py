"""The health adapter's canonical messages out to FHIR R4: bundles that validate with the library's
models and carry the consent facts, round trips back through the mapping, CP-IS flags both ways,
what cannot be valid FHIR left unrendered, and a referral and a CP flag through a real broker.
FHIR into canonical messages: tests/test_health.py."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.flag import Flag

from adapters.formats.consent import agency_wide
from adapters.formats.fhir import TOPIC
from adapters.formats.health import (
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
from adapters.sdk import Delivery
from broker.pipeline.service import Broker
from broker.wire.catalogue import Catalogue
from tests.conftest import ClientFactory
from tests.helpers import drain, example, sharing
from tests.support.fhir import (
    FACTS,
    NHS,
    answer,
    bundle,
    consent_extension,
    health_context,
    published,
    referral_bundle,
    referrer,
)


@pytest.fixture
def context(key_template: Path, catalogue: Catalogue) -> MapContext:
    """The health adapter's mapping context (tests/support/fhir.py)."""
    return health_context(key_template, catalogue)


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
