"""One local authority case event being mapped: what every mapper of
:mod:`adapters.formats.local_authority` and :mod:`adapters.formats.la_processes` consults (the
deciding worker, the case's consent facts, the delivery a reply answers, the agency's own message
an event follows up, the partner agencies it names) and the helpers they share.

A refusal names the event's field (a JSON pointer) and a rule, never a value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from adapters.formats import consent
from adapters.formats.mapping import MapContext, Outbound, Sent, Unmappable, checked
from adapters.sdk import Handed
from broker.wire.ids import ADMIN_TYPES

GENDER: Final = {"M": "male", "F": "female", "O": "other", "U": "unknown"}
URGENCY: Final = {"emergency": "EMERGENCY", "urgent": "URGENT", "routine": "ROUTINE"}
RECEIPT_STATUS: Final = {"acknowledged": "accepted", "actioned": "actioned"}


def some(record: Mapping[str, Any], *pairs: tuple[str, str]) -> dict[str, Any]:
    """``{target: record[key]}`` for the (key, target) pairs present in ``record``."""
    return {target: record[key] for key, target in pairs if key in record}


def name(record: Mapping[str, Any]) -> dict[str, Any]:
    return {"family": record["surname"]} | some(record, ("forename", "given"), ("otherNames", "otherNames"))


def at(where: str) -> Callable[[str], str]:
    """Names a field of the event at ``where`` for a refusal."""
    return lambda field: f"{where}/{field}"


def emergency(event: Mapping[str, Any]) -> bool:
    """An event marked ``urgency: emergency``: shared even without its consent facts (flagged)."""
    return event.get("urgency") == "emergency"


def sharing(event: Mapping[str, Any], where: str) -> dict[str, Any]:
    """What the event itself says about the decision: who made it, how urgent it is and, unless it
    is a receipt, the case's consent facts."""
    worker = event["worker"]
    said: dict[str, Any] = {"decidedBy": {"role": worker["role"], "staffRef": worker["staffRef"]}}
    if "urgency" in event:
        said["urgency"] = URGENCY[event["urgency"]]
    if event["event"] not in RECEIPT_STATUS:
        said |= consent.native(event, at(where), emergency=emergency(event))
    return said


class Event:
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
            person["name"] = name(staff)
        return person | {"organisation": self.organisation} | some(staff, ("phone", "phone"), ("email", "email"))

    def child(self, key: str = "child") -> dict[str, Any]:
        """The child as the canonical schemas have it (name, date of birth, UPN, NHS number, gender)."""
        child = self.record[key]
        person = {"name": name(child)} | some(child, ("dob", "dateOfBirth"), ("nhsNumber", "nhsNumber"),
                                              ("upn", "upn"))
        if "gender" in child:
            person["gender"] = GENDER[child["gender"]]
        return person

    def original(self, answers: Iterable[str] | None, key: str = "inReplyTo") -> Handed:
        """The delivery ``key`` names, which must be one of the types in ``answers`` (any message
        with personal data when None)."""
        here = f"{self.where}/{key}"
        handed = self.context.handed(self.record[key])
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

    def own(self, follows: str, key: str = "inReplyTo") -> Sent:
        """The agency's own message ``key`` names (its id, as the adapter answered when the case
        system posted the event that made it), which must be a ``follows``."""
        here = f"{self.where}/{key}"
        sent = self.context.sent(self.record[key])
        if sent is None:
            wrong = self.context.handed(self.record[key]) is not None  # a delivery to us, not ours
            raise Unmappable(f"a {self.record['event']} event follows up a {follows} this agency sent"
                             + ("; it names a delivery to it" if wrong else "; this adapter sent no such message"),
                             field=here, rule="la-case-event.reply-type" if wrong else "la-case-event.follows-own")
        if sent.type != follows:
            raise Unmappable(f"a {self.record['event']} event follows up a {follows}; the message it names is "
                             "another type", field=here, rule="la-case-event.reply-type")
        return sent

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

    def known(self, agency_id: str, field: str) -> str:
        """``agency_id`` (the event's ``field``, a pointer below the event) if the trust registry
        knows it; this agency may be named (a core group, a meeting's attendees include it)."""
        if self.context.registry.get(agency_id) is None:
            raise Unmappable("it names an agency that is not in the trust registry", field=f"{self.where}/{field}",
                             rule="la-case-event.recipient-known")
        return agency_id

    def make(self, typ: str, to: tuple[str, ...], payload: dict[str, Any], **extra: Any) -> Outbound:
        return checked(self.context.catalogue, typ, to, payload, self.where, sharing=sharing(self.record, self.where),
                       **extra)
