"""Local authority: case events from children's social care's case management system (of the
kind of Liquidlogic LCS or Mosaic) into canonical messages.

The case system takes referrals and requests by the adapter's hand-over (canonical JSON, each
with its ``X-SGB-Delivery-Id``) and posts back, as ``adapters/native/la-case-event.v1.json``
describes, what its workers did:

==========================  =====================================================================
case event                  canonical message
==========================  =====================================================================
``acknowledged``            ``receipt`` (``accepted``) for the original message, to its sender
``actioned``                ``receipt`` (``actioned``) for the original message, to its sender
``outcome``                 ``referral-outcome`` answering the referral or step-up (closes its
                            deadline; ``referralReceivedAt`` starts the assessment's 45 working days)
``answer``                  ``information-response`` answering the information request
``information-request``     ``information-request`` to the partner agencies named
``strategy-discussion``     ``strategy-discussion`` (invitation or record) to the agencies invited
``child-protection-status`` ``child-protection-status`` (CP-IS style) to the health agencies named
``conference-invitation``   ``cp-conference-invitation`` to the agencies invited, following the
                            strategy discussion record (initial) or the last outcome (review)
``conference-outcome``      ``cp-conference-outcome`` to the agencies named (closes the strategy
                            discussion's or the last review's clock)
``core-group``              ``core-group-meeting`` following the conference outcome (closes its clock)
``assessment-outcome``      ``assessment-outcome`` to the referrer and the agencies named, following
                            the referral outcome (closes its 45 working days)
``step-down``               ``early-help-step-down`` to the agencies named (consent given only)
``mash-screening``          ``mash-screening`` to the agencies named
``cme-response``            ``cme-response`` answering the school's children-missing-education notice
==========================  =====================================================================

The processes' events, their codes and what they follow are in :mod:`adapters.formats.la_processes`;
the event being mapped, with what it may consult, is :class:`adapters.formats.la_event.Event`.
A reply names in ``inReplyTo`` the delivery it answers (or the original message id); the adapter
must have handed that delivery over, and it must be of the type the reply answers. A follow-up of
the LA's own message names in ``inReplyTo`` that message's id (the adapter's answer when it was
posted); the adapter must have sent it, and it must be of the type followed. Each event
names the ``worker`` who decided (a role and a staff reference, never a name), which becomes the
sharing block's ``decidedBy``. Every event but a receipt shares personal data, so it carries the
case's consent facts (``consent``, ``withoutConsentReason`` unless consent was given,
``familyInformed``; :mod:`adapters.formats.consent`), unless it is an emergency (``urgency: emergency``),
which is shared without those it lacks and flagged; the rest of the block is the adapter's configured,
agency-wide default for the type. The whole document is checked against the native schema, and
every message made from it against its canonical schema, before anything is returned: one bad
event refuses the lot, with the field named and no value repeated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import jsonschema_rs
import orjson

from adapters.formats import consent, la_processes
from adapters.formats.la_event import RECEIPT_STATUS, Event, at, emergency, name, some
from adapters.formats.mapping import MapContext, Outbound, Unmappable, check_native
from adapters.sdk import receipt_id
from broker.timestamps import iso

_SCHEMA: Final = Path(__file__).parent / "native" / "la-case-event.v1.json"
_VALIDATOR = jsonschema_rs.validator_for(orjson.loads(_SCHEMA.read_bytes()), validate_formats=True)
_RULE: Final = "la-case-event.v1.json"

# Case-system codes → canonical vocabulary.
_DECISION: Final = {
    "NFA": "no-further-action", "EH": "early-help", "S17": "child-and-family-assessment-s17",
    "S47": "strategy-discussion-s47", "IPROT": "immediate-protection", "SIGN": "signposted-other-agency",
    "OPEN": "already-open-case",
}
_STAGE: Final = {
    "S47": "s47-enquiry", "S17": "s17-assessment", "STRAT": "strategy-discussion", "CDR": "child-death-review",
    "EH": "early-help", "MASH": "mash-screening",
}
_PLAN: Final = {"CPP": "child-protection-plan", "CLA": "looked-after", "UCPP": "unborn-child-protection-plan"}


def check(document: Any) -> None:
    """Raise :class:`Unmappable` at the first place ``document`` breaks the native schema."""
    check_native(_VALIDATOR, document, "", _RULE)


def _receipt(e: Event) -> Outbound:
    handed = e.original(None)
    assert handed.message is not None
    status = RECEIPT_STATUS[e.record["event"]]
    payload = {"messageId": handed.message, "status": status,
               "at": e.record.get("at") or iso(time.time()), "recipients": [e.context.agency]}
    # One receipt per delivery and status, however often the case system posts the event.
    return e.make("receipt", (), payload, answers=e.record["inReplyTo"],
                  jti=receipt_id(handed.delivery, status))


def _outcome(e: Event) -> Outbound:
    r = e.record
    handed = e.original(("referral", "early-help-step-up"))
    payload: dict[str, Any] = {"referralId": handed.message, "decision": _DECISION[r["decision"]],
                               "decidedAt": r["decidedAt"]}
    payload |= some(r, ("referralReceivedAt", "referralReceivedAt"), ("acknowledgedAt", "acknowledgedAt"),
                    ("rationale", "reasons"), ("team", "allocatedTeam"), ("nextSteps", "nextSteps"),
                    ("caseNumber", "caseReference"))
    if "allocatedWorker" in r:
        payload["socialWorker"] = e.professional(r["allocatedWorker"])
    return e.make("referral-outcome", (), payload, answers=r["inReplyTo"])


def _answer(e: Event) -> Outbound:
    r = e.record
    handed = e.original(("information-request",))
    answers = [{"questionId": a["questionId"]}
               | some(a, ("topic", "topic"), ("text", "answer"), ("nothingHeld", "noInformationHeld"),
                       ("sources", "sources"))
               for a in r.get("answers", [])]
    payload: dict[str, Any] = {"requestId": handed.message, "answers": answers,
                               "respondent": e.professional(r.get("respondent"))}
    if "declined" in r:
        payload["declined"] = dict(r["declined"])
    return e.make("information-response", (), payload, answers=r["inReplyTo"])


def _information_request(e: Event) -> Outbound:
    r = e.record
    child = r["child"]
    subject = {"name": name(child)} | some(child, ("dob", "dateOfBirth"), ("nhsNumber", "nhsNumber"),
                                             ("address", "address"))
    payload: dict[str, Any] = {"subject": subject, "questions": [dict(q) for q in r["questions"]],
                               "reason": r["reason"], "respondBy": r["respondBy"]}
    payload |= some(r, ("reference", "requestReference"))
    if "stage" in r:
        payload["context"] = _STAGE[r["stage"]]
    return e.make("information-request", e.partners("to"), payload, thread=r.get("thread"))


def _strategy_discussion(e: Event) -> Outbound:
    r = e.record
    person = e.child()
    invited = e.partners("invited")
    for i, action in enumerate(r.get("actions", [])):
        e.known(action["agency"], f"actions/{i}/agency")
    payload: dict[str, Any] = {"kind": r["kind"], "child": person, "scheduledFor": r["scheduledFor"],
                               "convenedBy": e.professional(r.get("convenor")), "invited": list(invited)}
    payload |= some(r, ("decisions", "decisions"), ("s47Initiated", "s47Initiated"), ("caseNumber", "caseReference"))
    if "actions" in r:
        payload["actions"] = [dict(a) for a in r["actions"]]
    return e.make("strategy-discussion", invited, payload, thread=r.get("thread"))


def _child_protection_status(e: Event) -> Outbound:
    r = e.record
    if "endDate" in r and r["endDate"] < r["startDate"]:  # ISO dates compare as text
        raise Unmappable("the plan ends before it starts", field=f"{e.where}/endDate", rule="la-case-event.plan-dates")
    authority = {"name": r.get("authorityName") or e.organisation["name"], "officeHoursPhone": r["officeHoursPhone"],
                 "emergencyDutyPhone": r["emergencyDutyPhone"]}
    payload: dict[str, Any] = {"nhsNumber": r["nhsNumber"], "planType": _PLAN[r["plan"]], "startDate": r["startDate"],
                               "responsibleAuthority": authority}
    payload |= some(r, ("endDate", "endDate"))
    return e.make("child-protection-status", e.partners("to", kind="health"), payload, thread=r.get("thread"))


_MAP: Final[Mapping[str, Callable[[Event], Outbound]]] = {
    "acknowledged": _receipt, "actioned": _receipt, "outcome": _outcome, "answer": _answer,
    "information-request": _information_request, "strategy-discussion": _strategy_discussion,
    "child-protection-status": _child_protection_status, **la_processes.MAP,
}


def case_events(body: bytes, context: MapContext) -> list[Outbound]:
    """Mapper: one case event or a list of them; every one must map before any is returned."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unmappable("the document is not JSON", field="/") from exc
    # The case's consent facts first, so that a refusal names the rule (consent.reason...) as well as the field.
    for i, event in enumerate(document if isinstance(document, list) else [document]):
        kind = event.get("event") if isinstance(event, dict) else None
        if isinstance(kind, str) and kind in _MAP and kind not in RECEIPT_STATUS:  # (else the schema check says)
            where = f"/{i}" if isinstance(document, list) else ""
            consent.native(event, at(where), emergency=emergency(event))
    check(document)
    if isinstance(document, list):
        return [_MAP[r["event"]](Event(r, f"/{i}", context)) for i, r in enumerate(document)]
    return [_MAP[document["event"]](Event(document, "", context))]
