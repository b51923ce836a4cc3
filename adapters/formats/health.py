"""Health: HL7 FHIR R4 JSON in and out.

Inbound, :func:`fhir_bundle` takes a ``Bundle``: each ``ServiceRequest`` (or ``Communication``
that answers nothing) about a ``Patient`` becomes a ``referral`` to the local authority, and each
``Communication`` whose ``inResponseTo`` names a request this adapter handed over becomes an
``information-response`` to whoever asked. Each of them carries the case's consent facts in the
``sharing-consent`` extension (:mod:`adapters.formats.fhir`); without it the Bundle is refused.
Outbound, :func:`render_fhir` (:mod:`adapters.formats.health_render`) turns a delivery into what a
health system reads: a child-protection-status is a CP-IS-style ``Flag``; every other type is a
``Bundle``; :func:`flag_to_status` reads such a Flag back. Validation is the FHIR library's
(``fhir.resources``, R4B models; see :mod:`adapters.formats.fhir`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import jsonschema_rs
import orjson

from adapters.formats.fhir import (
    AGENCY_ID,
    CATEGORY,
    CONTENT_TYPE,
    DELIVERY_ID,
    MESSAGE_ID,
    NHS_NUMBER,
    NO_INFORMATION,
    ODS_CODE,
    PARENTAL_RESPONSIBILITY,
    PLAN,
    POLICE_REFERENCE,
    PURPOSE,
    ROLE,
    RULE,
    SOURCE,
    TOPIC,
    FhirBundle,
    Res,
    Unrenderable,
    coded,
    concept_text,
    extension_values,
    load_document,
    read_consent,
    telecom,
)
from adapters.formats.health_render import flag_to_status, render_fhir, status_flag
from adapters.formats.mapping import MapContext, Outbound, Unmappable, checked, local_authority

__all__ = ["AGENCY_ID", "CONTENT_TYPE", "DELIVERY_ID", "MESSAGE_ID", "NHS_NUMBER", "PLAN", "PURPOSE", "Unrenderable",
           "fhir_bundle", "flag_to_status", "render_fhir", "status_flag"]

_URGENCY: Final = {"stat": "EMERGENCY", "asap": "URGENT", "urgent": "URGENT", "routine": "ROUTINE"}
_GENDERS: Final = frozenset({"female", "male", "other", "unknown"})
_CATEGORIES: Final = frozenset({
    "physical", "emotional", "sexual", "neglect", "domestic-abuse", "criminal-exploitation", "sexual-exploitation",
    "online-harm", "radicalisation", "female-genital-mutilation", "other"})
_ROLES: Final = frozenset({"parent", "carer", "sibling", "household-member", "regular-visitor",
                           "alleged-perpetrator", "extended-family"})
_V3_ROLES: Final = {  # HL7 v3 RoleCode → the referral's household role
    **dict.fromkeys(("MTH", "FTH", "PRN", "NMTH", "NFTH", "NPRN", "ADOPTMTH", "ADOPTFTH", "ADOPTP"), "parent"),
    **dict.fromkeys(("GUARD", "FMRSPS", "STPMTH", "STPFTH", "STPPRN"), "carer"),
    **dict.fromkeys(("SIB", "BRO", "SIS", "NSIB", "NBRO", "NSIS", "HSIB", "HBRO", "HSIS", "STPSIB", "STPBRO",
                     "STPSIS", "TWIN", "TWINBRO", "TWINSIS"), "sibling"),
    **dict.fromkeys(("GRMTH", "GRFTH", "GRPRN", "GGRMTH", "GGRFTH", "GGRPRN", "AUNT", "UNCLE", "MAUNT", "PAUNT",
                     "MUNCLE", "PUNCLE", "COUSN", "NIECE", "NEPHEW", "EXT"), "extended-family"),
}
_TOPICS: Final = frozenset({"health-history", "attendance", "injuries", "medication", "mental-health",
                            "missed-appointments", "household-members", "police-history", "school-concerns", "other"})
_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
_POSTCODE: Final = re.compile(r"^[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}$")
_NHS: Final = re.compile(r"^[0-9]{10}$")
_QUESTION: Final = re.compile(r"^[a-z0-9-]{1,32}$")
_REF: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ./_:-]{0,63}$")
_UUID: Final = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SHARING: Final = orjson.loads((resources.files("schemas") / "sharing.v1.json").read_bytes())
_DECIDED_BY = jsonschema_rs.validator_for(_SHARING["properties"]["decidedBy"])


# -- reading a Bundle ---------------------------------------------------------------------


def _name(res: Res) -> dict[str, Any] | None:
    """The person's name as the schema has it: official, else usual, else any with a family name."""
    names = [n for n in res.get("name") or () if n.get("family")]
    names.sort(key=lambda n: {"official": 0, "usual": 1}.get(n.get("use"), 2))
    if not names:
        return None
    given = names[0].get("given") or []
    return ({"family": names[0]["family"]} | ({"given": given[0]} if given else {})
            | ({"otherNames": given[1:]} if given[1:] else {}))


def _address(addresses: Any) -> dict[str, Any] | None:
    """The home (else first) address with lines; a postcode only if it is a UK one."""
    usable = sorted((a for a in addresses or () if a.get("line")), key=lambda a: a.get("use") != "home")
    if not usable:
        return None
    a = usable[0]
    out: dict[str, Any] = {"lines": a["line"][:5]}
    if a.get("city"):
        out["town"] = a["city"]
    postcode = (a.get("postalCode") or "").upper()
    if _POSTCODE.match(postcode):
        out["postcode"] = postcode
    return out


def _born(res: Res) -> dict[str, str]:
    """The child's date of birth: required, and a full date (FHIR also allows a year or a month)."""
    value = res.get("birthDate")
    if not isinstance(value, str) or not _DATE.match(value):
        raise Unmappable("the child's birth date must be a full date", field=f"{res.where}/birthDate",
                         rule="referral.child-born")
    return {"dateOfBirth": value}


def _gender(res: Res) -> dict[str, str]:
    gender = res.get("gender")
    if gender is None:
        return {}
    if gender not in _GENDERS:
        raise Unmappable("gender is not an administrative-gender code", field=f"{res.where}/gender", rule=RULE)
    return {"gender": gender}


def _child(patient: Res) -> dict[str, Any]:
    name = _name(patient)
    if name is None:
        raise Unmappable("the child's Patient has no name with a family name", field=f"{patient.where}/name",
                         rule="referral.child-named")
    child: dict[str, Any] = {"name": name, "status": "born"}
    child |= _born(patient) | _gender(patient)
    for where, ident in patient.all("identifier"):
        if ident.get("system") == NHS_NUMBER:
            if not _NHS.match(ident.get("value") or ""):
                raise Unmappable("an NHS number is 10 digits", field=f"{where}/value", rule="nhs-number")
            child["nhsNumber"] = ident["value"]
    if address := _address(patient.get("address")):
        child["homeAddress"] = address
    return child


def _household_role(person: Res) -> str:
    for i, j, code in coded(person.get("relationship"), ROLE):
        if code not in _ROLES:
            raise Unmappable("not a household role", field=f"{person.where}/relationship/{i}/coding/{j}/code",
                             rule="referral.household-role")
        return code
    v3 = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
    return next((_V3_ROLES[c] for _, _, c in coded(person.get("relationship"), v3) if c in _V3_ROLES),
                "household-member")


def _household(bundle: FhirBundle, patient: Res) -> list[dict[str, Any]]:
    """The RelatedPersons of this child (those of another Patient in the Bundle are not)."""
    out = []
    for person in bundle.of("RelatedPerson"):
        if bundle.need(person, "patient", "Patient") is not patient:
            continue
        name = _name(person)
        if name is None:
            raise Unmappable("a RelatedPerson has no name with a family name", field=f"{person.where}/name",
                             rule="referral.household-named")
        member: dict[str, Any] = {"name": name, "role": _household_role(person)}
        relationship = next((t for c in person.get("relationship") or () if (t := concept_text(c))), None)
        if relationship:
            member["relationship"] = relationship
        if person.get("birthDate") and _DATE.match(person.get("birthDate")):
            member["dateOfBirth"] = person.get("birthDate")
        member |= _gender(person)
        if address := _address(person.get("address")):
            member["address"] = address
        if phone := telecom(person).get("phone"):
            member["phone"] = phone
        for pr in extension_values(person.data, PARENTAL_RESPONSIBILITY):
            member["parentalResponsibility"] = bool(pr)
        out.append(member)
    return out


def _organisation(org: Res) -> dict[str, Any] | None:
    if not org.get("name"):
        return None
    out: dict[str, Any] = {"name": org.get("name")}
    for _, ident in org.all("identifier"):
        key = {ODS_CODE: "odsCode", AGENCY_ID: "agencyId"}.get(ident.get("system"))
        if key and ident.get("value"):
            out[key] = ident["value"]
    return out


@dataclass(frozen=True, slots=True)
class _Professional:
    person: dict[str, Any]        # the schema's professional: name, role, organisation, phone, email
    decided: dict[str, Any]       # the sharing overlay's decidedBy, when the record names the person


def _professional(bundle: FhirBundle, holder: Res, key: str) -> _Professional:
    """Who a ServiceRequest's requester or a Communication's sender is: a Practitioner (with the
    PractitionerRole in the Bundle that names them), a PractitionerRole, or an Organization."""
    found = bundle.need(holder, key, "Practitioner", "PractitionerRole", "Organization")
    role, practitioner, org = None, None, None
    if found.kind == "Organization":
        org = found
    elif found.kind == "PractitionerRole":
        role = found
    else:
        practitioner = found
        role = next((r for r in bundle.of("PractitionerRole")
                     if bundle.find(r.get("practitioner"), r, f"{r.where}/practitioner") is found), None)
    if role is not None:
        practitioner = practitioner or bundle.find(role.get("practitioner"), role, f"{role.where}/practitioner",
                                                   "Practitioner")
        org = bundle.find(role.get("organization"), role, f"{role.where}/organization", "Organization")
    title = None
    if role is not None:
        concepts = [*(role.get("code") or ()), *(role.get("specialty") or ())]
        title = next((t for c in concepts if (t := concept_text(c))), None)
    person: dict[str, Any] = {"role": title or ("Health organisation" if practitioner is None
                                                else "Health professional")}
    if practitioner is not None and (name := _name(practitioner)):
        person["name"] = name
    if org is not None and (organisation := _organisation(org)):
        person["organisation"] = organisation
    person |= telecom(*(r for r in (role, practitioner, org) if r is not None))
    decided: dict[str, Any] = {}
    staff = next(((w, i["value"]) for r in (practitioner, role) if r is not None for w, i in r.all("identifier")
                  if i.get("value")), None)
    if staff is not None:
        decided = {"role": person["role"], "staffRef": staff[1]}
        if next(_DECIDED_BY.iter_errors(decided), None) is not None:
            raise Unmappable("the role or staff identifier of who decided cannot be recorded",
                             field=f"{staff[0]}/value", rule="sharing.v1.json")
    return _Professional(person, decided)


def _overlay(who: _Professional, res: Res) -> dict[str, Any]:
    """What the record says about the decision: who made it, how urgent it is, and the case's
    consent facts (the ``sharing-consent`` extension, which it must carry)."""
    overlay: dict[str, Any] = {"decidedBy": who.decided} if who.decided else {}
    priority = res.get("priority")
    if priority is not None:
        if priority not in _URGENCY:
            raise Unmappable("not a request-priority code", field=f"{res.where}/priority", rule=RULE)
        overlay["urgency"] = _URGENCY[priority]
    return overlay | read_consent(res, emergency=overlay.get("urgency") == "EMERGENCY")


def _recipient(bundle: FhirBundle, holder: Res, key: str, context: MapContext) -> tuple[str, ...]:
    """The agency named by the performer/recipient Organization, else the configured local authority."""
    for where, ref in holder.all(key):
        org = bundle.find(ref, holder, where)
        idents = (org.get("identifier") or []) if org is not None and org.kind == "Organization" else [
            ref.get("identifier") or {}]
        for ident in idents:
            agency = ident.get("value") or ""
            if ident.get("system") == AGENCY_ID and agency != context.agency and context.registry.get(agency):
                return (agency,)
    return (local_authority(context),)


def _categories(res: Res) -> list[str]:
    found: list[str] = []
    for i, j, code in coded(res.get("category"), CATEGORY):
        if code not in _CATEGORIES:
            raise Unmappable("not a concern category", field=f"{res.where}/category/{i}/coding/{j}/code",
                             rule="referral.category")
        if code not in found:
            found.append(code)
    return found or ["other"]


def _referral(bundle: FhirBundle, res: Res, context: MapContext) -> Outbound:
    """A ServiceRequest, or a Communication that answers nothing, as a referral."""
    request = res.kind == "ServiceRequest"
    patient = bundle.need(res, "subject", "Patient")
    who = _professional(bundle, res, "requester" if request else "sender")
    words = [n["text"] for n in res.get("note") or () if n.get("text")] if request else [
        p["contentString"] for p in res.get("payload") or () if p.get("contentString")]
    summary = next((t for c in res.get("reasonCode") or () if (t := concept_text(c))), None) or (
        concept_text(res.get("code")) if request else None)
    if summary is None:
        if not words:
            raise Unmappable(f"the {res.kind} says nothing about the concern",
                             field=f"{res.where}/{'reasonCode' if request else 'payload'}", rule="referral.concern")
        summary, words = words[0], words[1:]
    concern: dict[str, Any] = {"summary": summary, "categories": _categories(res),
                               "immediateProtectionNeeded": res.get("priority") == "stat"}
    if words:
        concern["details"] = "\n\n".join(words)
    if request and _DATETIME.match(res.get("occurrenceDateTime") or ""):
        concern["incidentDateTime"] = res.get("occurrenceDateTime")
    referral: dict[str, Any] = {"child": _child(patient), "referrer": who.person, "concern": concern}
    if household := _household(bundle, patient):
        referral["household"] = household
    for _, ident in res.all("identifier"):  # the record's own reference, and a police one it quotes
        key = "policeReference" if ident.get("system") == POLICE_REFERENCE else "referralReference"
        if ident.get("system") != MESSAGE_ID and key not in referral and _REF.match(ident.get("value") or ""):
            referral[key] = ident["value"]
    to = _recipient(bundle, res, "performer" if request else "recipient", context)
    return checked(context.catalogue, "referral", to, referral, res.where,
                   sharing=_overlay(who, res))


def _answered(bundle: FhirBundle, res: Res) -> str | None:
    """The id of the message a Communication answers: an ``inResponseTo`` (or ``basedOn``) that
    names it by identifier (message or delivery id), directly or through the resource it
    references, or as ``Communication/<id>``. Other ``basedOn`` (a care plan) answer nothing."""
    for key in ("inResponseTo", "basedOn"):
        for _, ref in res.all(key):
            target = ref.get("reference") or ""
            held = bundle.get(target, res) if target else None
            for ident in [ref.get("identifier") or {}, *((held.get("identifier") or []) if held else [])]:
                if ident.get("system") in (MESSAGE_ID, DELIVERY_ID) and ident.get("value"):
                    return str(ident["value"])
            kind, _, tail = target.rpartition("/")
            if held is None and _UUID.match(tail) and kind.endswith(("Communication", "CommunicationRequest")):
                return tail
        if key == "inResponseTo" and res.get(key):
            raise Unmappable("inResponseTo names no message this adapter handed over", field=f"{res.where}/{key}",
                             rule="adapter.reply-to-known")
    return None


def _response(bundle: FhirBundle, res: Res, answered: str, context: MapContext) -> Outbound:
    handed = context.handed(answered)
    request_id = handed.message if handed is not None and handed.message else answered
    answers = []
    for where, part in res.all("payload"):
        if not _QUESTION.match(part.get("id") or ""):
            raise Unmappable("each payload answers a question: its id is the question id", field=f"{where}/id",
                             rule="information-response.question")
        answer: dict[str, Any] = {"questionId": part["id"]}
        if any(extension_values(part, NO_INFORMATION)):
            answer["noInformationHeld"] = True
        elif "contentString" in part:
            answer["answer"] = part["contentString"]
        elif (part.get("contentReference") or {}).get("display"):
            answer["answer"] = part["contentReference"]["display"]
        else:
            raise Unmappable("an answer is text: attachments are not passed on", field=where,
                             rule="information-response.text")
        for topic in extension_values(part, TOPIC):
            if topic not in _TOPICS:
                raise Unmappable("not a question topic", field=f"{where}/extension", rule="information-response.topic")
            answer["topic"] = topic
        if sources := [s for s in extension_values(part, SOURCE) if isinstance(s, str)]:
            answer["sources"] = sources
        answers.append(answer)
    who = _professional(bundle, res, "sender")
    payload: dict[str, Any] = {"requestId": request_id, "answers": answers, "respondent": who.person}
    if res.get("status") == "not-done" or res.get("statusReason"):
        payload["declined"] = {"reason": concept_text(res.get("statusReason")) or "Declined"}
    return checked(context.catalogue, "information-response", (), payload, res.where,
                   sharing=_overlay(who, res), answers=answered)


def fhir_bundle(body: bytes, context: MapContext) -> list[Outbound]:
    """Mapper: a FHIR R4 Bundle; every ServiceRequest and Communication in it must map, or none is sent."""
    bundle = FhirBundle(load_document(body, "Bundle"))
    # A request that a Communication in the Bundle answers is there as context, not as a new referral.
    answered_here = {id(held) for res in bundle.of("Communication") for key in ("inResponseTo", "basedOn")
                     for _, ref in res.all(key) if (held := bundle.get(ref.get("reference") or "", res))}
    out: list[Outbound] = []
    for res in bundle.entries:
        if id(res) in answered_here:
            continue
        if res.kind == "ServiceRequest":
            out.append(_referral(bundle, res, context))
        elif res.kind == "Communication":
            answered = _answered(bundle, res)
            out.append(_response(bundle, res, answered, context) if answered else _referral(bundle, res, context))
    if not out:
        raise Unmappable("the Bundle holds no ServiceRequest or Communication", field="/entry",
                         rule="health.bundle-content")
    return out
