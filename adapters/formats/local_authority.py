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
``outcome``                 ``referral-outcome`` answering the referral (closes its deadline)
``answer``                  ``information-response`` answering the information request
``information-request``     ``information-request`` to the partner agencies named
``strategy-discussion``     ``strategy-discussion`` (invitation or record) to the agencies invited
``child-protection-status`` ``child-protection-status`` (CP-IS style) to the health agencies named
==========================  =====================================================================

A reply names in ``inReplyTo`` the delivery it answers (or the original message id); the adapter
must have handed that delivery over, and it must be of the type the reply answers. Each event
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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import jsonschema_rs
import orjson

from adapters.formats import consent
from adapters.formats.mapping import MapContext, Outbound, Unmappable, check_native, checked
from adapters.sdk import Handed, receipt_id
from broker.timestamps import iso
from broker.wire.ids import ADMIN_TYPES

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
_GENDER: Final = {"M": "male", "F": "female", "O": "other", "U": "unknown"}
_URGENCY: Final = {"emergency": "EMERGENCY", "urgent": "URGENT", "routine": "ROUTINE"}
_RECEIPT_STATUS: Final = {"acknowledged": "accepted", "actioned": "actioned"}


def check(document: Any) -> None:
    """Raise :class:`Unmappable` at the first place ``document`` breaks the native schema."""
    check_native(_VALIDATOR, document, "", _RULE)


def _some(record: Mapping[str, Any], *pairs: tuple[str, str]) -> dict[str, Any]:
    """``{target: record[key]}`` for the (key, target) pairs present in ``record``."""
    return {target: record[key] for key, target in pairs if key in record}


def _name(record: Mapping[str, Any]) -> dict[str, Any]:
    return {"family": record["surname"]} | _some(record, ("forename", "given"), ("otherNames", "otherNames"))


def _at(where: str) -> Callable[[str], str]:
    """Names a field of the event at ``where`` for a refusal."""
    return lambda name: f"{where}/{name}"


def _sharing(event: Mapping[str, Any], where: str) -> dict[str, Any]:
    """What the event itself says about the decision: who made it, how urgent it is and, unless it
    is a receipt, the case's consent facts."""
    worker = event["worker"]
    said: dict[str, Any] = {"decidedBy": {"role": worker["role"], "staffRef": worker["staffRef"]}}
    if "urgency" in event:
        said["urgency"] = _URGENCY[event["urgency"]]
    if event["event"] not in _RECEIPT_STATUS:
        said |= consent.native(event, _at(where), emergency=_emergency(event))
    return said


def _emergency(event: Mapping[str, Any]) -> bool:
    """An event marked ``urgency: emergency``: shared even without its consent facts (flagged)."""
    return event.get("urgency") == "emergency"


class _Event:
    """One event being mapped, with where it sits in the document and what the adapter knows."""

    def __init__(self, record: Mapping[str, Any], where: str, context: MapContext) -> None:
        self.record = record
        self.where = where
        self.context = context

    @property
    def organisation(self) -> dict[str, Any]:
        us = self.context.registry.get(self.context.agency)
        return {"name": us.name if us is not None else self.context.agency, "agencyId": self.context.agency}

    def professional(self, staff: Mapping[str, Any] | None) -> dict[str, Any]:
        """A contactable professional from a ``staff`` record; the deciding worker's role without one."""
        if staff is None:
            return {"role": self.record["worker"]["role"], "organisation": self.organisation}
        person: dict[str, Any] = {"role": staff["role"]}
        if "surname" in staff:
            person["name"] = _name(staff)
        return person | {"organisation": self.organisation} | _some(staff, ("phone", "phone"), ("email", "email"))

    def original(self, answers: Iterable[str] | None) -> Handed:
        """The delivery ``inReplyTo`` names, which must be one of the types in ``answers`` (any
        message with personal data when None)."""
        here = f"{self.where}/inReplyTo"
        handed = self.context.handed(self.record["inReplyTo"])
        if handed is None:
            raise Unmappable("the event answers a delivery this adapter never handed over", field=here,
                             rule="la-case-event.reply-to-handed")
        wanted = frozenset(answers) if answers is not None else None
        if handed.type in ADMIN_TYPES or (wanted is not None and handed.type not in wanted):
            what = " or ".join(sorted(wanted)) if wanted else "a message that is not a receipt or notice"
            raise Unmappable(f"a {self.record['event']} event answers {what}; the delivery it names is another type",
                             field=here, rule="la-case-event.reply-type")
        if not handed.sender or not handed.message:
            raise Unmappable("the delivery it names does not say who sent the original message", field=here,
                             rule="la-case-event.reply-to-handed")
        return handed

    def partners(self, key: str, *, kind: str | None = None) -> tuple[str, ...]:
        """The agencies listed under ``key``: known to the trust registry, not this agency, and of
        ``kind`` when given."""
        out = []
        for i, agency_id in enumerate(self.record[key]):
            agency = self.context.registry.get(agency_id)
            if agency is None or agency_id == self.context.agency or (kind is not None and agency.kind != kind):
                wanted = f"a {kind} agency" if kind else "a partner agency"
                raise Unmappable(f"{key} names an agency that is not {wanted} in the trust registry",
                                 field=f"{self.where}/{key}/{i}", rule="la-case-event.recipient-known")
            out.append(agency_id)
        return tuple(out)

    def make(self, typ: str, to: tuple[str, ...], payload: dict[str, Any], **extra: Any) -> Outbound:
        return checked(self.context.catalogue, typ, to, payload, self.where, sharing=_sharing(self.record, self.where),
                       **extra)


def _receipt(e: _Event) -> Outbound:
    handed = e.original(None)
    assert handed.message is not None
    status = _RECEIPT_STATUS[e.record["event"]]
    payload = {"messageId": handed.message, "status": status,
               "at": e.record.get("at") or iso(time.time()), "recipients": [e.context.agency]}
    # One receipt per delivery and status, however often the case system posts the event.
    return e.make("receipt", (), payload, answers=e.record["inReplyTo"],
                  jti=receipt_id(handed.delivery, status))


def _outcome(e: _Event) -> Outbound:
    r = e.record
    handed = e.original(("referral",))
    payload: dict[str, Any] = {"referralId": handed.message, "decision": _DECISION[r["decision"]],
                               "decidedAt": r["decidedAt"]}
    payload |= _some(r, ("acknowledgedAt", "acknowledgedAt"), ("rationale", "reasons"), ("team", "allocatedTeam"),
                     ("nextSteps", "nextSteps"), ("caseNumber", "caseReference"))
    if "allocatedWorker" in r:
        payload["socialWorker"] = e.professional(r["allocatedWorker"])
    return e.make("referral-outcome", (), payload, answers=r["inReplyTo"])


def _answer(e: _Event) -> Outbound:
    r = e.record
    handed = e.original(("information-request",))
    answers = [{"questionId": a["questionId"]}
               | _some(a, ("topic", "topic"), ("text", "answer"), ("nothingHeld", "noInformationHeld"),
                       ("sources", "sources"))
               for a in r.get("answers", [])]
    payload: dict[str, Any] = {"requestId": handed.message, "answers": answers,
                               "respondent": e.professional(r.get("respondent"))}
    if "declined" in r:
        payload["declined"] = dict(r["declined"])
    return e.make("information-response", (), payload, answers=r["inReplyTo"])


def _information_request(e: _Event) -> Outbound:
    r = e.record
    child = r["child"]
    subject = {"name": _name(child)} | _some(child, ("dob", "dateOfBirth"), ("nhsNumber", "nhsNumber"),
                                             ("address", "address"))
    payload: dict[str, Any] = {"subject": subject, "questions": [dict(q) for q in r["questions"]],
                               "reason": r["reason"], "respondBy": r["respondBy"]}
    payload |= _some(r, ("reference", "requestReference"))
    if "stage" in r:
        payload["context"] = _STAGE[r["stage"]]
    return e.make("information-request", e.partners("to"), payload, thread=r.get("thread"))


def _strategy_discussion(e: _Event) -> Outbound:
    r = e.record
    child = r["child"]
    person = {"name": _name(child)} | _some(child, ("dob", "dateOfBirth"), ("nhsNumber", "nhsNumber"), ("upn", "upn"))
    if "gender" in child:
        person["gender"] = _GENDER[child["gender"]]
    invited = e.partners("invited")
    for i, action in enumerate(r.get("actions", [])):
        if e.context.registry.get(action["agency"]) is None:
            raise Unmappable("an action names an agency that is not in the trust registry",
                             field=f"{e.where}/actions/{i}/agency", rule="la-case-event.recipient-known")
    payload: dict[str, Any] = {"kind": r["kind"], "child": person, "scheduledFor": r["scheduledFor"],
                               "convenedBy": e.professional(r.get("convenor")), "invited": list(invited)}
    payload |= _some(r, ("decisions", "decisions"), ("s47Initiated", "s47Initiated"), ("caseNumber", "caseReference"))
    if "actions" in r:
        payload["actions"] = [dict(a) for a in r["actions"]]
    return e.make("strategy-discussion", invited, payload, thread=r.get("thread"))


def _child_protection_status(e: _Event) -> Outbound:
    r = e.record
    if "endDate" in r and r["endDate"] < r["startDate"]:  # ISO dates compare as text
        raise Unmappable("the plan ends before it starts", field=f"{e.where}/endDate", rule="la-case-event.plan-dates")
    authority = {"name": r.get("authorityName") or e.organisation["name"], "officeHoursPhone": r["officeHoursPhone"],
                 "emergencyDutyPhone": r["emergencyDutyPhone"]}
    payload: dict[str, Any] = {"nhsNumber": r["nhsNumber"], "planType": _PLAN[r["plan"]], "startDate": r["startDate"],
                               "responsibleAuthority": authority}
    payload |= _some(r, ("endDate", "endDate"))
    return e.make("child-protection-status", e.partners("to", kind="health"), payload, thread=r.get("thread"))


_MAP: Final[Mapping[str, Callable[[_Event], Outbound]]] = {
    "acknowledged": _receipt, "actioned": _receipt, "outcome": _outcome, "answer": _answer,
    "information-request": _information_request, "strategy-discussion": _strategy_discussion,
    "child-protection-status": _child_protection_status,
}


def case_events(body: bytes, context: MapContext) -> list[Outbound]:
    """Mapper: one case event or a list of them; every one must map before any is returned."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unmappable("the document is not JSON", field="/") from exc
    # The case's consent facts first, so that a refusal names the rule (consent.reason...) as well as the field.
    for i, event in enumerate(document if isinstance(document, list) else [document]):
        if isinstance(event, dict) and event.get("event") in _MAP and event["event"] not in _RECEIPT_STATUS:
            where = f"/{i}" if isinstance(document, list) else ""
            consent.native(event, _at(where), emergency=_emergency(event))
    check(document)
    if isinstance(document, list):
        return [_MAP[r["event"]](_Event(r, f"/{i}", context)) for i, r in enumerate(document)]
    return [_MAP[document["event"]](_Event(document, "", context))]
