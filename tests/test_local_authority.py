"""The local authority's case events (acknowledgements, outcomes, answers, and what the LA starts)
into canonical messages; replies resolved through what the adapter handed over; malformed
events refused whole with the field named. End to end through a real broker:
tests/test_local_authority_end_to_end.py."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.formats.local_authority import case_events
from adapters.formats.mapping import MapContext, Outbound, Unmappable
from adapters.sdk import Delivery, SeenStore
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry
from tests.support.casesystem import EVENTS, REFERRAL, REFERRAL_DELIVERY, REQUEST, REQUEST_DELIVERY

pytestmark = pytest.mark.timeout(60)


RECEIPT_DELIVERY = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
PERSONAL = ("Okafor", "9990005672", "2020-09-02", "2017-03-14", "Demo Street", "LBC-SW-0192")


@pytest.fixture
def la_registry(key_template: Path, catalogue: Catalogue) -> Registry:
    """The development trust registry (no nats-server needed for mapping)."""
    return Registry.load(key_template / "registry.json", catalogue)


def _delivery(delivery_id: str, typ: str, sender: str, message: str, thread: str | None = None) -> Delivery:
    """A delivery as the broker makes it: its own id, the type, and the origin it traces to."""
    claims: dict[str, Any] = {"jti": delivery_id, "iss": "sg-broker", "typ": typ, "ver": 1, "to": ["la-camden"],
                              "origin": {"iss": sender, "jti": message, "digest": "x" * 43}}
    if thread:
        claims["thread"] = thread
    return Delivery(claims, {})


@pytest.fixture
def seen(tmp_path: Path) -> Iterator[SeenStore]:
    store = SeenStore(tmp_path / "seen.sqlite")

    async def handed() -> None:
        await store.add(REFERRAL_DELIVERY, _delivery(REFERRAL_DELIVERY, "referral", "police-met", REFERRAL,
                                                     "MPS-2026-7781"))
        await store.add(REQUEST_DELIVERY, _delivery(REQUEST_DELIVERY, "information-request", "health-camden", REQUEST))
        await store.add(RECEIPT_DELIVERY, _delivery(RECEIPT_DELIVERY, "receipt", "police-met", REFERRAL))

    asyncio.run(handed())
    yield store
    store.close()


@pytest.fixture
def context(la_registry: Registry, catalogue: Catalogue, seen: SeenStore) -> MapContext:
    return MapContext(agency="la-camden", registry=la_registry, catalogue=catalogue, handed=seen.handed)


def _map(events: Any, context: MapContext) -> list[Outbound]:
    return case_events(orjson.dumps(events), context)


def test_a_document_of_every_event_maps_one_message_each(context: MapContext) -> None:
    """Seven events, seven canonical messages in order; each payload already matches its schema."""
    messages = _map(EVENTS, context)
    assert [m.typ for m in messages] == ["receipt", "referral-outcome", "information-response", "information-request",
                                         "strategy-discussion", "child-protection-status", "receipt"]
    for m in messages:  # (checked() ran; this is the broker's own check)
        mtype = context.catalogue.message_type(m.typ, 1)
        assert mtype is not None and Catalogue.first_issue(mtype.validator, m.payload) is None
        assert m.sharing is not None and set(m.sharing["decidedBy"]) == {"role", "staffRef"}
        facts = {"consentStatus", "subjectInformed"} & set(m.sharing)
        assert facts == (set() if m.typ == "receipt" else {"consentStatus", "subjectInformed"})  # from the event


def test_the_documented_example_maps(context: MapContext) -> None:
    """docs/examples/case-events.json, the integrator's guide's example."""
    path = Path(__file__).resolve().parent.parent / "docs" / "examples" / "case-events.json"
    receipt, outcome, discussion = case_events(path.read_bytes(), context)
    assert (receipt.typ, outcome.typ, discussion.typ) == ("receipt", "referral-outcome", "strategy-discussion")
    assert "consentStatus" not in (receipt.sharing or {})
    assert outcome.sharing is not None and outcome.sharing["subjectInformed"] == "TO_BE_INFORMED_LATER"
    assert discussion.sharing is not None and discussion.sharing["nonConsentReason"] == "WOULD_PREJUDICE_INVESTIGATION"


def test_acknowledged_is_an_accepted_receipt_for_the_original_message(context: MapContext) -> None:
    """The receipt names the police referral (not the delivery id the case system saw) and is
    addressed through ``answers`` so the framework sets ``re``, ``thread`` and the sender."""
    (receipt,) = _map(EVENTS[0], context)
    assert receipt.typ == "receipt" and receipt.to == () and receipt.answers == REFERRAL_DELIVERY
    assert receipt.payload == {"messageId": REFERRAL, "status": "accepted", "at": "2026-11-23T09:05:00Z",
                               "recipients": ["la-camden"]}
    assert receipt.sharing == {"decidedBy": {"role": "MASH Social Worker", "staffRef": "LBC-SW-0192"}}
    (actioned,) = _map(EVENTS[6], context)  # this one names the original message id instead
    assert actioned.payload["messageId"] == REFERRAL and actioned.payload["status"] == "actioned"
    assert actioned.answers == REFERRAL and actioned.payload["at"].endswith("Z")  # no "at": now


def test_outcome_answers_the_referral_in_canonical_terms(context: MapContext) -> None:
    (outcome,) = _map(EVENTS[1], context)
    assert outcome.typ == "referral-outcome" and outcome.to == () and outcome.answers == REFERRAL_DELIVERY
    assert outcome.payload == {
        "referralId": REFERRAL, "decision": "strategy-discussion-s47", "decidedAt": "2026-11-23T11:30:00Z",
        "acknowledgedAt": "2026-11-23T09:05:00Z", "reasons": "Threshold for s47 enquiries met.",
        "allocatedTeam": "Assessment Team 2", "nextSteps": "Strategy discussion today at 14:00.",
        "caseReference": "LBC-CASE-90210",
        "socialWorker": {"role": "Social Worker", "name": {"family": "Worker-Demo", "given": "Lee"},
                         "phone": "020 7974 3000",
                         "organisation": {"name": "London Borough of Camden Children's Social Care",
                                          "agencyId": "la-camden"}},
    }
    assert outcome.sharing == {"decidedBy": {"role": "Team Manager, Front Door", "staffRef": "LBC-TM-031"},
                               "urgency": "URGENT", "consentStatus": "NOT_SOUGHT",
                               "nonConsentReason": "WOULD_PREJUDICE_PROTECTION",
                               "subjectInformed": "TO_BE_INFORMED_LATER"}


@pytest.mark.parametrize(("code", "decision"), [
    ("NFA", "no-further-action"), ("EH", "early-help"), ("S17", "child-and-family-assessment-s17"),
    ("S47", "strategy-discussion-s47"), ("IPROT", "immediate-protection"), ("SIGN", "signposted-other-agency"),
    ("OPEN", "already-open-case"),
])
def test_every_case_system_outcome_code_has_its_canonical_decision(code: str, decision: str,
                                                                   context: MapContext) -> None:
    (outcome,) = _map(EVENTS[1] | {"decision": code}, context)
    assert outcome.payload["decision"] == decision


def test_answer_is_an_information_response_to_the_request(context: MapContext) -> None:
    """Named by the original message id; the respondent defaults to the worker's role at the LA."""
    (response,) = _map(EVENTS[2], context)
    assert response.typ == "information-response" and response.to == () and response.answers == REQUEST
    assert response.payload == {
        "requestId": REQUEST,
        "answers": [{"questionId": "q1", "topic": "other", "answer": "Child in need plan closed in March.",
                     "sources": ["LCS case record"]},
                    {"questionId": "q2", "noInformationHeld": True}],
        "respondent": {"role": "Senior Practitioner",
                       "organisation": {"name": "London Borough of Camden Children's Social Care",
                                        "agencyId": "la-camden"}},
    }
    declined = EVENTS[2] | {"declined": {"reason": "Legal advice awaited", "questionIds": ["q3"]}}
    del declined["answers"]
    (only,) = _map(declined, context)
    assert only.payload["answers"] == [] and only.payload["declined"]["questionIds"] == ["q3"]


def test_what_the_la_starts_goes_to_the_partners_it_names(context: MapContext) -> None:
    request, discussion, status = _map(EVENTS[3:6], context)
    assert request.to == ("health-camden", "police-met") and request.answers is None
    assert request.thread == "LBC-CASE-90210" and request.payload["context"] == "s47-enquiry"
    assert request.payload["subject"] == {"name": {"family": "Okafor-Demo", "given": "Ben"},
                                          "dateOfBirth": "2020-09-02", "nhsNumber": "9990005672",
                                          "address": EVENTS[3]["child"]["address"]}
    assert request.payload["requestReference"] == "LBC-S47-0042" and len(request.payload["questions"]) == 2
    assert request.sharing == {"decidedBy": {"role": "Social Worker", "staffRef": "LBC-SW-0192"},
                               "urgency": "URGENT", "consentStatus": "NOT_SOUGHT",
                               "nonConsentReason": "WOULD_PREJUDICE_INVESTIGATION",
                               "subjectInformed": "NOT_INFORMED_PREJUDICE_INVESTIGATION"}
    assert discussion.to == ("police-met", "health-camden", "school-hillside")
    assert discussion.payload["invited"] == list(discussion.to) and discussion.payload["kind"] == "invitation"
    assert discussion.payload["child"] == {"name": {"family": "Okafor-Demo", "given": "Ada"},
                                           "dateOfBirth": "2017-03-14", "upn": "A123456789012", "gender": "female"}
    assert discussion.payload["convenedBy"]["role"] == "Team Manager"
    assert {k: discussion.sharing[k] for k in ("consentStatus", "nonConsentReason", "subjectInformed")} == {
        "consentStatus": "REFUSED_OVERRIDDEN", "nonConsentReason": "WOULD_INCREASE_RISK_OF_HARM",
        "subjectInformed": "TO_BE_INFORMED_LATER"}
    assert {k: v for k, v in status.sharing.items() if k != "decidedBy"} == {"consentStatus": "GIVEN",
                                                                           "subjectInformed": "INFORMED"}
    assert status.to == ("health-camden",) and status.payload == {
        "nhsNumber": "9990005672", "planType": "child-protection-plan", "startDate": "2026-12-07",
        "responsibleAuthority": {"name": "London Borough of Camden Children's Social Care",
                                 "officeHoursPhone": "020 7974 0000", "emergencyDutyPhone": "020 7974 1111"}}
    (looked_after,) = _map(EVENTS[5] | {"plan": "CLA", "endDate": "2027-01-01", "authorityName": "LB Camden"},
                           context)
    assert looked_after.payload["planType"] == "looked-after" and looked_after.payload["endDate"] == "2027-01-01"
    assert looked_after.payload["responsibleAuthority"]["name"] == "LB Camden"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(event: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target: Any = event
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return change


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda event: event.pop(key)


UNKNOWN = "00000000-1111-4222-8333-444444444444"


@pytest.mark.parametrize(("index", "change", "field"), [
    (0, _set("inReplyTo", UNKNOWN), "/inReplyTo"),  # never handed over
    (1, _set("inReplyTo", REQUEST_DELIVERY), "/inReplyTo"),  # an outcome answering an information request
    (2, _set("inReplyTo", REFERRAL), "/inReplyTo"),  # an answer to a referral
    (0, _set("inReplyTo", RECEIPT_DELIVERY), "/inReplyTo"),  # acknowledging a receipt
    (1, _set("inReplyTo", "not-a-uuid"), "/inReplyTo"),
    (1, _drop("inReplyTo"), "/inReplyTo"),
    (1, _set("decision", "MAYBE"), "/decision"),
    (1, _drop("worker"), "/worker"),
    (1, _set("worker", {"role": "Social Worker", "staffRef": "Jane Okafor"}), "/worker/staffRef"),  # a name
    (1, _set("worker/role", "9"), "/worker/role"),
    (1, _set("allocatedWorker", {"role": "Social Worker", "forename": "Lee"}), "/allocatedWorker/surname"),
    (2, _set("answers/1", {"questionId": "q2"}), "/answers/1"),
    (3, _set("child/nhsNumber", "99900056"), "/child/nhsNumber"),
    (3, _set("child/dob", "2020-02-31"), "/child/dob"),
    (3, _set("to", ["police-met", "nobody-here"]), "/to/1"),
    (3, _set("to", ["la-camden"]), "/to/0"),  # not to itself
    (3, _set("respondBy", "next Tuesday"), "/respondBy"),
    (4, _set("invited/2", "school-elsewhere"), "/invited/2"),
    (4, _set("actions", [{"agency": "nobody-here", "action": "Visit"}]), "/actions/0/agency"),
    (4, _set("child/gender", "female"), "/child/gender"),
    (5, _set("to", ["police-met"]), "/to/0"),  # CP-IS status goes to health only
    (5, _set("plan", "CP"), "/plan"),
    (5, _set("endDate", "2026-01-01"), "/endDate"),
    (6, _set("event", "closed"), "/event"),
    (6, _set("event", ["outcome"]), "/event"),  # the wrong JSON type: refused, not an internal error
    (1, _set("consent", ["given"]), "/consent"),
    (2, _set("familyInformed", {"told": True}), "/familyInformed"),
    (6, _set("note", "Ben Okafor-Demo seen at home"), ""),  # a receipt carries no personal data
    (0, _set("consent", "given"), ""),  # nor any consent facts
    # every other event carries the case's consent facts
    (1, _drop("consent"), "/consent"),
    (2, _drop("familyInformed"), "/familyInformed"),
    (3, _drop("withoutConsentReason"), "/withoutConsentReason"),
    (4, _set("withoutConsentReason", "Mother said not to"), "/withoutConsentReason"),
    (5, _set("withoutConsentReason", "would-increase-risk-of-harm"), "/withoutConsentReason"),  # consent given
    (5, _set("consent", "GIVEN"), "/consent"),
    (4, _set("familyInformed", "no"), "/familyInformed"),
    (2, _set("answers/0/topic", "gossip"), "/answers/0/topic"),
])
def test_a_bad_event_refuses_the_whole_document_naming_the_field(index: int, change: Any, field: str,
                                                                  context: MapContext) -> None:
    events = copy.deepcopy(EVENTS)
    change(events[index])
    with pytest.raises(Unmappable) as caught:
        _map(events, context)  # the good events are not returned either
    assert caught.value.field == f"/{index}{field}"
    text = f"{caught.value} {caught.value.reason} {caught.value.rule}"
    assert not [p for p in (*PERSONAL, "Jane", "nobody-here", "school-elsewhere", "Mother said", UNKNOWN) if p in text]


@pytest.mark.parametrize(("change", "field", "rule"), [
    (_drop("consent"), "/consent", "consent.recorded"),
    (_drop("withoutConsentReason"), "/withoutConsentReason", "consent.reason"),
    (_set("consent", "given"), "/withoutConsentReason", "consent.consistent"),
    (_drop("familyInformed"), "/familyInformed", "transparency.informed"),
])
def test_an_outcome_must_say_whether_consent_was_given_and_the_family_told(change: Any, field: str, rule: str,
                                                                          context: MapContext) -> None:
    event = copy.deepcopy(EVENTS[1])
    change(event)
    with pytest.raises(Unmappable) as caught:
        _map(event, context)
    assert (caught.value.code, caught.value.field, caught.value.rule) == ("unmappable", field, rule)


@pytest.mark.parametrize("index", [1, 2, 3, 4, 5])
def test_an_emergency_event_is_mapped_without_the_consent_facts_it_lacks(index: int, context: MapContext) -> None:
    """An event marked urgency emergency is never held back for want of consent: it goes without the
    facts it does not give (the broker shares it and flags it); a routine one is refused."""
    event = {k: v for k, v in EVENTS[index].items() if k not in ("consent", "withoutConsentReason",
                                                                  "familyInformed")}
    (m,) = _map(event | {"urgency": "emergency"}, context)
    assert m.sharing is not None and m.sharing["urgency"] == "EMERGENCY"
    assert {k: m.sharing[k] for k in ("consentStatus", "nonConsentReason", "subjectInformed") if k in m.sharing} == {
        "consentStatus": "NOT_APPLICABLE"}
    with pytest.raises(Unmappable) as caught:
        _map(event | {"urgency": "urgent"}, context)
    assert (caught.value.field, caught.value.rule) == ("/consent", "consent.recorded")


def test_a_single_event_is_named_from_the_root_and_a_bad_document_is_refused(context: MapContext) -> None:
    with pytest.raises(Unmappable) as caught:
        _map(EVENTS[1] | {"inReplyTo": UNKNOWN}, context)
    assert caught.value.field == "/inReplyTo" and "never handed over" in caught.value.reason
    for body, field in ((b"{", "/"), (b"[]", "/"), (b'"outcome"', "/"), (orjson.dumps(EVENTS[:1] * 101), "/")):
        with pytest.raises(Unmappable) as bad:
            case_events(body, context)
        assert bad.value.field == field


async def test_a_handed_delivery_without_its_origin_cannot_be_answered(context: MapContext,
                                                                       seen: SeenStore) -> None:
    """A delivery remembered without a sender (an old store) gives no one to reply to."""
    bare = "2b3c4d5e-6f70-4812-9a3b-4c5d6e7f8091"
    await seen.add(bare, Delivery({"jti": bare, "typ": "referral"}, {}))
    with pytest.raises(Unmappable) as caught:
        _map([EVENTS[0] | {"inReplyTo": bare}], context)
    assert caught.value.field == "/0/inReplyTo"
