"""Health, outbound: a delivery as the HL7 FHIR R4 a health system reads.

A child-protection-status is a CP-IS-style ``Flag``; every other type is a ``Bundle``
(``collection``) of ``Patient``/``RelatedPerson``/``Practitioner`` and a ``ServiceRequest``
(referral) or ``Communication`` carrying the content, plus a ``Binary`` with the canonical
message so that no field is lost. The ids a reply needs travel as identifiers:
``Bundle.identifier`` is the delivery id; the ``ServiceRequest``/``Communication`` identifier is
the original message id, which the health system quotes back in ``inResponseTo``
(:func:`flag_to_status` reads a CP-IS Flag back). The sender's
consent facts (given, refused or not sought, and whether the family was informed) ride on the
``ServiceRequest``/``Communication`` in the ``sharing-consent`` extension, so that the health
system knows, for one, not to tell a family that has not been told.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from collections.abc import Mapping
from typing import Any, Final

import orjson
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.flag import Flag
from fhir_core.fhirabstractmodel import FHIRAbstractModel

from adapters.formats.fhir import (
    AGENCY_ID,
    CATEGORY,
    CONTENT_TYPE,
    CONTEXT,
    DELIVERY_ID,
    MESSAGE_ID,
    MESSAGE_TYPE,
    NHS_NUMBER,
    NO_INFORMATION,
    ODS_CODE,
    PARENTAL_RESPONSIBILITY,
    PLAN,
    PLANS,
    POLICE_REFERENCE,
    PURPOSE,
    REFERENCE,
    RESPOND_BY,
    ROLE,
    SOURCE,
    TOPIC,
    Res,
    Unrenderable,
    coded,
    consent_extension,
    find_contained,
    load_document,
    telecom,
    validate,
)
from adapters.formats.mapping import Unmappable, checked
from adapters.sdk import Delivery
from broker.wire.catalogue import Catalogue

_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NHS: Final = re.compile(r"^[0-9]{10}$")

_PRIORITY: Final = {"EMERGENCY": "stat", "URGENT": "urgent", "ROUTINE": "routine"}

# -- rendering ----------------------------------------------------------------------------


def _instant(seconds: Any) -> str:
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _human(name: Mapping[str, Any]) -> dict[str, Any]:
    given = ([name["given"]] if name.get("given") else []) + list(name.get("otherNames") or ())
    return {"family": name["family"]} | ({"given": given} if given else {})


def _fhir_address(address: Mapping[str, Any]) -> dict[str, Any]:
    return ({"line": list(address["lines"])} | ({"city": address["town"]} if address.get("town") else {})
            | ({"postalCode": address["postcode"]} if address.get("postcode") else {}))


def _agency(agency: str) -> dict[str, Any]:
    """A reference to a partner agency by its id (the health system may not hold it as a resource)."""
    return {"type": "Organization", "identifier": {"system": AGENCY_ID, "value": agency}, "display": agency}


class _Doc:
    """The Bundle being rendered: entries with stable ``urn:uuid`` full URLs derived from the delivery id."""

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.entries: list[dict[str, Any]] = []
        self._ns = uuid.uuid5(uuid.NAMESPACE_URL, f"{DELIVERY_ID}/{delivery.id}")

    def add(self, name: str, resource: dict[str, Any]) -> dict[str, str]:
        rid = str(uuid.uuid5(self._ns, name))
        self.entries.append({"fullUrl": f"urn:uuid:{rid}", "resource": {"id": rid} | resource})
        return {"reference": f"urn:uuid:{rid}"}

    def patient(self, child: Mapping[str, Any]) -> dict[str, str]:
        res: dict[str, Any] = {"resourceType": "Patient"}
        if child.get("nhsNumber"):
            res["identifier"] = [{"system": NHS_NUMBER, "value": child["nhsNumber"]}]
        if child.get("name"):
            res["name"] = [_human(child["name"]) | {"use": "official"}]
        res |= {k: child[c] for k, c in (("gender", "gender"), ("birthDate", "dateOfBirth")) if child.get(c)}
        address = child.get("homeAddress") or child.get("address")
        if address:
            res["address"] = [_fhir_address(address) | {"use": "home"}]
        return self.add("child", res)

    def related(self, i: int, person: Mapping[str, Any], child: Mapping[str, str]) -> None:
        role = person.get("role", "household-member")
        relationship: dict[str, Any] = {"coding": [{"system": ROLE, "code": role}]}
        if person.get("relationship"):
            relationship["text"] = person["relationship"]
        res: dict[str, Any] = {"resourceType": "RelatedPerson", "patient": child, "relationship": [relationship],
                               "name": [_human(person["name"])]}
        if "parentalResponsibility" in person:
            res["extension"] = [{"url": PARENTAL_RESPONSIBILITY, "valueBoolean": person["parentalResponsibility"]}]
        res |= {k: person[c] for k, c in (("gender", "gender"), ("birthDate", "dateOfBirth")) if person.get(c)}
        if person.get("phone"):
            res["telecom"] = [{"system": "phone", "value": person["phone"]}]
        if person.get("address"):
            res["address"] = [_fhir_address(person["address"])]
        self.add(f"related-{i}", res)

    def professional(self, name: str, who: Mapping[str, Any]) -> dict[str, str]:
        """Practitioner + Organization + the PractitionerRole joining them; returns the role's reference."""
        role: dict[str, Any] = {"resourceType": "PractitionerRole", "code": [{"text": who["role"]}]}
        if who.get("name"):
            role["practitioner"] = self.add(f"{name}-practitioner", {"resourceType": "Practitioner",
                                                                     "name": [_human(who["name"])]})
        org = who.get("organisation")
        if org:
            idents = [{"system": s, "value": org[k]} for k, s in (("odsCode", ODS_CODE), ("agencyId", AGENCY_ID))
                      if org.get(k)]
            role["organization"] = self.add(f"{name}-organization", {"resourceType": "Organization",
                                                                     "name": org["name"]}
                                            | ({"identifier": idents} if idents else {}))
        telecom = [{"system": s, "value": who[s]} for s in ("phone", "email") if who.get(s)]
        if telecom:
            role["telecom"] = telecom
        return self.add(name, role)

    def header(self, typ: str) -> dict[str, Any]:
        """What every ServiceRequest/Communication carries: the original message id, its type, and,
        for a reply, the message it answers."""
        claims = self.delivery.claims
        message = self.delivery.origin[1]
        out: dict[str, Any] = {"identifier": [{"system": MESSAGE_ID, "value": message or self.delivery.id}],
                               "category": [{"coding": [{"system": MESSAGE_TYPE, "code": typ}]}]}
        if claims.get("re"):
            out["inResponseTo"] = [{"type": "Communication",
                                    "identifier": {"system": MESSAGE_ID, "value": claims["re"]}}]
        consent = consent_extension(claims.get("sharing") or {})
        if consent is not None:  # whether consent was given, and whether the family knows
            out["extension"] = [consent]
        return out

    def bundle(self) -> dict[str, Any]:
        claims = self.delivery.claims
        envelope = orjson.dumps(self.delivery.as_json())
        self.add("canonical", {"resourceType": "Binary", "contentType": "application/json",
                               "data": base64.b64encode(envelope).decode()})
        return {"resourceType": "Bundle", "id": self.delivery.id,
                "meta": {"tag": [{"system": MESSAGE_TYPE, "code": self.delivery.type}]},
                "identifier": {"system": DELIVERY_ID, "value": self.delivery.id}, "type": "collection",
                "timestamp": _instant(claims["iat"]), "entry": self.entries}


def _priority(delivery: Delivery, immediate: bool = False) -> dict[str, str]:
    urgency = (delivery.claims.get("sharing") or {}).get("urgency")
    return {"priority": "stat"} if immediate else ({"priority": _PRIORITY[urgency]} if urgency in _PRIORITY else {})


def _render_referral(doc: _Doc, p: Mapping[str, Any]) -> None:
    child = doc.patient(p["child"])
    for i, person in enumerate(p.get("household") or ()):
        doc.related(i, person, child)
    if p["child"].get("mother"):
        doc.related(len(p.get("household") or ()), {**p["child"]["mother"], "role": "parent"}, child)
    concern = p["concern"]
    head = doc.header("referral")
    for key, system in (("referralReference", REFERENCE), ("policeReference", POLICE_REFERENCE)):
        if p.get(key):
            head["identifier"].append({"system": system, "value": p[key]})
    request: dict[str, Any] = head | {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": child,
        "category": [{"coding": [{"system": CATEGORY, "code": c}]} for c in concern["categories"]],
        "code": {"text": "Safeguarding referral"}, "reasonCode": [{"text": concern["summary"]}],
        "authoredOn": _instant(doc.delivery.claims["iat"]), "requester": doc.professional("referrer", p["referrer"]),
        "performer": [_agency(doc.delivery.claims["to"][0])],
    } | _priority(doc.delivery, concern.get("immediateProtectionNeeded", False))
    if concern.get("details"):
        request["note"] = [{"text": concern["details"]}]
    if concern.get("incidentDateTime"):
        request["occurrenceDateTime"] = concern["incidentDateTime"]
    doc.add("request", request)


def _communication(doc: _Doc, typ: str, *, subject: dict[str, str] | None = None,
                   sender: dict[str, str] | None = None, payload: list[dict[str, Any]] | None = None,
                   **extra: Any) -> dict[str, Any]:
    claims = doc.delivery.claims
    res: dict[str, Any] = doc.header(typ) | {
        "resourceType": "Communication", "status": "completed", "sent": _instant(claims["iat"]),
        "recipient": [_agency(claims["to"][0])], "sender": sender or _agency(doc.delivery.origin[0] or claims["iss"])}
    if subject:
        res["subject"] = subject
    if payload:
        res["payload"] = payload
    return res | extra


def _render_request(doc: _Doc, p: Mapping[str, Any]) -> None:
    parts = [{"id": q["id"], "contentString": q["text"],
              "extension": [{"url": TOPIC, "valueCode": q["topic"]}]} for q in p["questions"]]
    res = _communication(doc, "information-request", subject=doc.patient(p["subject"]), payload=parts,
                         reasonCode=[{"text": p["reason"]}])
    res["extension"] = [*res.get("extension", ()), {"url": RESPOND_BY, "valueDateTime": p["respondBy"]}] + (
        [{"url": CONTEXT, "valueCode": p["context"]}] if p.get("context") else [])
    if p.get("requestReference"):
        res["identifier"].append({"system": REFERENCE, "value": p["requestReference"]})
    res |= _priority(doc.delivery)
    doc.add("request", res)


def _render_response(doc: _Doc, p: Mapping[str, Any]) -> None:
    parts = []
    for a in p["answers"]:
        part: dict[str, Any] = {"id": a["questionId"],
                                "contentString": a.get("answer") or "No information held"}
        ext = [{"url": NO_INFORMATION, "valueBoolean": True}] if a.get("noInformationHeld") else []
        ext += [{"url": TOPIC, "valueCode": a["topic"]}] if a.get("topic") else []
        part |= {"extension": ext + [{"url": SOURCE, "valueString": s} for s in a.get("sources") or ()]}
        parts.append({k: v for k, v in part.items() if v})
    res = _communication(doc, "information-response", sender=doc.professional("respondent", p["respondent"]),
                         payload=parts)
    res["inResponseTo"] = [{"type": "Communication", "identifier": {"system": MESSAGE_ID, "value": p["requestId"]}}]
    if p.get("declined"):
        res |= {"status": "not-done", "statusReason": {"text": p["declined"]["reason"]}}
    doc.add("response", res | _priority(doc.delivery))


def _render_other(doc: _Doc, p: Mapping[str, Any]) -> None:
    """Any other type: the subject as a Patient (when the payload has one) and the fields as text."""
    person = p.get("child") or p.get("subject")
    subject = doc.patient(person) if isinstance(person, Mapping) and person.get("name") else None
    lines = [{"contentString": f"{k}: {v if isinstance(v, str) else orjson.dumps(v).decode()}"}
             for k, v in p.items()]
    doc.add("content", _communication(doc, doc.delivery.type, subject=subject, payload=lines))


def status_flag(delivery: Delivery) -> dict[str, Any]:
    """A child-protection-status as a CP-IS-style Flag: the plan type and dates on the child's NHS
    number, authored by the responsible local authority with its office-hours and emergency numbers."""
    p = delivery.payload
    authority = p["responsibleAuthority"]
    sender, message = delivery.origin
    contacts = [{"purpose": {"coding": [{"system": PURPOSE, "code": code}], "text": text},
                 "telecom": [{"system": "phone", "value": authority[key]}]}
                for code, text, key in (("office-hours", "Office hours", "officeHoursPhone"),
                                        ("emergency-duty", "Emergency duty", "emergencyDutyPhone"))]
    la: dict[str, Any] = {"resourceType": "Organization", "id": "la", "name": authority["name"], "contact": contacts}
    if sender:
        la["identifier"] = [{"system": AGENCY_ID, "value": sender}]
    ended = p.get("endDate") and p["endDate"] < dt.datetime.now(dt.UTC).date().isoformat()
    consent = consent_extension(delivery.claims.get("sharing") or {})
    return {
        "resourceType": "Flag", "id": delivery.id, "contained": [la], **({"extension": [consent]} if consent else {}),
        "identifier": [{"system": DELIVERY_ID, "value": delivery.id},
                       {"system": MESSAGE_ID, "value": message or delivery.id}],
        "status": "inactive" if ended else "active",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category", "code": "safety",
                                  "display": "Safety"}]}],
        "code": {"coding": [{"system": PLAN, "code": p["planType"], "display": PLANS[p["planType"]]}],
                 "text": PLANS[p["planType"]]},
        "subject": {"type": "Patient", "identifier": {"system": NHS_NUMBER, "value": p["nhsNumber"]}},
        "period": {"start": p["startDate"]} | ({"end": p["endDate"]} if p.get("endDate") else {}),
        "author": {"reference": "#la", "display": authority["name"]},
    }



def flag_to_status(body: bytes | Mapping[str, Any], catalogue: Catalogue) -> dict[str, Any]:
    """A CP-IS-style Flag (as :func:`status_flag` writes it) back to a child-protection-status
    payload, checked against its schema; :class:`Unmappable` naming the field otherwise."""
    doc = load_document(body, "Flag")
    validate(Flag, doc, "")
    flag = Res(doc, "")
    plan = next(((i, j, c) for i, j, c in coded(flag.get("code"), PLAN)), None)
    if plan is None or plan[2] not in PLANS:
        raise Unmappable("the Flag is not a child protection plan or looked after child flag", field="/code",
                         rule="cp-status.plan-type")
    ident = (flag.get("subject") or {}).get("identifier") or {}
    if ident.get("system") != NHS_NUMBER or not _NHS.match(ident.get("value") or ""):
        raise Unmappable("the Flag's subject is a Patient named by NHS number", field="/subject/identifier",
                         rule="cp-status.nhs-number")
    period = flag.get("period") or {}
    dates: dict[str, str] = {}
    for key, target in (("start", "startDate"), ("end", "endDate")):
        value = str(period.get(key) or "")[:10]
        if value and _DATE.match(value):
            dates[target] = value
        elif key == "start":
            raise Unmappable("the plan's start is a date", field="/period/start", rule="cp-status.dates")
    target = str((flag.get("author") or {}).get("reference") or "")
    author = find_contained(flag, target[1:]) if target.startswith("#") else None
    if author is None or author.kind != "Organization":
        raise Unmappable("the Flag's author is the local authority, contained in the Flag", field="/author",
                         rule="cp-status.authority")
    authority: dict[str, Any] = {"name": author.get("name")}
    for where, contact in author.all("contact"):
        for _, _, code in coded(contact.get("purpose"), PURPOSE):
            slot = {"office-hours": "officeHoursPhone", "emergency-duty": "emergencyDutyPhone"}.get(code)
            phone = telecom(Res(contact, where)).get("phone")
            if slot is not None and phone is not None:
                authority[slot] = phone
    payload = {"nhsNumber": ident["value"], "planType": plan[2], **dates, "responsibleAuthority": authority}
    return checked(catalogue, "child-protection-status", (), payload, "/").payload


_RENDER: Final = {"referral": _render_referral, "information-request": _render_request,
                  "information-response": _render_response}


def render_fhir(delivery: Delivery) -> tuple[bytes, str]:
    """The health system's native format: a Flag for a child-protection-status, else a Bundle
    (receipts, rejections and overdue notices too: a Communication with their fields as text, as
    for any type without its own resources, or a payload trimmed below what those resources need).
    Everything rendered is validated by the FHIR library first; :class:`Unrenderable` if not."""
    cls: type[FHIRAbstractModel] = Flag
    if delivery.type == "child-protection-status":
        resource = status_flag(delivery)
    else:
        doc = _Doc(delivery)
        try:
            _RENDER.get(delivery.type, _render_other)(doc, delivery.payload)
        except (KeyError, TypeError):  # a payload the rulebook trimmed: every field it has, as text
            doc = _Doc(delivery)
            _render_other(doc, delivery.payload)
        resource, cls = doc.bundle(), Bundle
    try:
        validate(cls, resource, "")
    except Unmappable as exc:
        raise Unrenderable(f"the {delivery.type} does not make valid FHIR at {exc.field}") from None
    return orjson.dumps(resource), CONTENT_TYPE
