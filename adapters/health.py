"""Health: HL7 FHIR R4 JSON in and out.

Inbound, :func:`fhir_bundle` takes a ``Bundle``: each ``ServiceRequest`` (or ``Communication``
that answers nothing) about a ``Patient`` becomes a ``referral`` to the local authority, and each
``Communication`` whose ``inResponseTo`` names a request this adapter handed over becomes an
``information-response`` to whoever asked. Outbound, :func:`render_fhir` turns a delivery into
what a health system reads: a child-protection-status is a CP-IS-style ``Flag``; every other
type is a ``Bundle`` (``collection``) of ``Patient``/``RelatedPerson``/``Practitioner`` and a
``ServiceRequest`` (referral) or ``Communication`` carrying the content, plus a ``Binary`` with
the canonical message so that no field is lost. The ids a reply needs travel as identifiers:
``Bundle.identifier`` is the delivery id; the ``ServiceRequest``/``Communication`` identifier is
the original message id, which the health system quotes back in ``inResponseTo``.

Validation is the FHIR library's, not ours: ``fhir.resources`` 8.x (pydantic 2). Its default
models are R5 (5.0.0); it also ships R4B (4.3.0) and STU3, and no R4 (4.0.1). R4B changed
none of the elements used here (its changes are in medication, evidence and subscription
resources), so both directions validate with ``fhir.resources.R4B``; the tests run the
published R4 examples through it. The library checks structure and datatypes,
not value sets, so the codes this module reads (gender, priority, its own code systems) are
checked here. Library errors carry the offending input; only their type and location are kept,
so no error from this module ever holds a value from the record.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jsonschema_rs
import orjson
import pydantic
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.flag import Flag
from fhir_core.fhirabstractmodel import FHIRAbstractModel

from adapters.mapping import MapContext, Outbound, Unmappable, checked, local_authority
from adapters.sdk import Delivery
from broker.catalogue import Catalogue
from broker.errors import BrokerError

CONTENT_TYPE: Final = "application/fhir+json"
NHS_NUMBER: Final = "https://fhir.nhs.uk/Id/nhs-number"
ODS_CODE: Final = "https://fhir.nhs.uk/Id/ods-organization-code"
AGENCY_ID: Final = "https://sgb.invalid/agency-id"
MESSAGE_ID: Final = "https://sgb.invalid/message-id"
DELIVERY_ID: Final = "https://sgb.invalid/delivery-id"
REFERENCE: Final = "https://sgb.invalid/reference"  # a partner's own reference for the record
POLICE_REFERENCE: Final = "https://sgb.invalid/police-reference"
CS: Final = "https://sgb.invalid/fhir/CodeSystem/"   # this partnership's own code systems
SD: Final = "https://sgb.invalid/fhir/StructureDefinition/"  # and extensions
MESSAGE_TYPE, CATEGORY, ROLE, PLAN, PURPOSE = (f"{CS}{n}" for n in (
    "message-type", "concern-category", "household-role", "plan-type", "contact-purpose"))
PARENTAL_RESPONSIBILITY, NO_INFORMATION, SOURCE, TOPIC, RESPOND_BY, CONTEXT = (f"{SD}{n}" for n in (
    "parental-responsibility", "no-information-held", "answer-source", "question-topic", "respond-by",
    "request-context"))
_RULE: Final = "fhir-r4"

_URGENCY: Final = {"stat": "EMERGENCY", "asap": "URGENT", "urgent": "URGENT", "routine": "ROUTINE"}
_PRIORITY: Final = {"EMERGENCY": "stat", "URGENT": "urgent", "ROUTINE": "routine"}
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
_PLANS: Final = {"child-protection-plan": "Child protection plan", "looked-after": "Looked after child",
                 "unborn-child-protection-plan": "Unborn child protection plan"}
_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
_POSTCODE: Final = re.compile(r"^[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}$")
_PHONE: Final = re.compile(r"^\+?[0-9 ()-]{6,20}$")
_EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_NHS: Final = re.compile(r"^[0-9]{10}$")
_QUESTION: Final = re.compile(r"^[a-z0-9-]{1,32}$")
_REF: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ./_:-]{0,63}$")
_UUID: Final = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SHARING: Final = Path(__file__).resolve().parent.parent / "schemas" / "sharing.v1.json"
_DECIDED_BY = jsonschema_rs.validator_for(orjson.loads(_SHARING.read_bytes())["properties"]["decidedBy"])


class Unrenderable(BrokerError):
    """A delivery that does not make valid FHIR: a fault in this module, named without values."""


# -- validation ---------------------------------------------------------------------------


def _pointer(loc: Sequence[int | str]) -> str:
    """A pydantic location as a JSON pointer in FHIR's own names (no union tags, no values)."""
    names = {"resource_type": "resourceType"}
    return "".join(f"/{names.get(str(p), p)}" for p in loc if isinstance(p, int) or "[" not in p)


def _validate(cls: type[FHIRAbstractModel], data: Any, where: str) -> FHIRAbstractModel:
    """``cls`` built from ``data`` by the FHIR library, or :class:`Unmappable` at the first fault.
    ``from None``: the library's exception holds the input, so it is not chained."""
    try:
        return cls.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        failure = Unmappable(f"the record is not valid FHIR R4 ({first['type']})",
                             field=f"{where}{_pointer(first['loc'])}" or "/", rule=_RULE)
    except (KeyError, TypeError, ValueError):  # e.g. a contained resource of an unknown type
        failure = Unmappable("the record is not valid FHIR R4", field=where or "/", rule=_RULE)
    raise failure from None


def _resource(data: Any, where: str) -> None:
    kind = data.get("resourceType") if isinstance(data, dict) else None
    try:
        cls = get_fhir_model_class(kind) if isinstance(kind, str) else None
    except ValueError:
        cls = None
    if cls is None:
        raise Unmappable("not a FHIR R4 resource type", field=f"{where}/resourceType", rule=_RULE)
    _validate(cls, data, where)


def _json(body: bytes | Mapping[str, Any], kind: str) -> dict[str, Any]:
    if isinstance(body, Mapping):
        doc: Any = dict(body)
    else:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise Unmappable("the document is not FHIR JSON", field="/", rule=_RULE) from None
    if not isinstance(doc, dict) or doc.get("resourceType") != kind:
        raise Unmappable(f"the document is not a FHIR {kind}", field="/resourceType", rule=_RULE)
    return doc


# -- reading a Bundle ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Res:
    """A resource in the Bundle (or contained in one) and where it is, for error fields."""

    data: dict[str, Any]
    where: str

    @property
    def kind(self) -> str:
        return str(self.data["resourceType"])

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def all(self, key: str) -> Iterator[tuple[str, Any]]:
        """``(where, item)`` for each item of a repeating element."""
        for i, item in enumerate(self.data.get(key) or ()):
            yield f"{self.where}/{key}/{i}", item


def _contained(holder: _Res, local: str) -> _Res | None:
    return next((_Res(c, f"{holder.where}/contained/{i}") for i, c in enumerate(holder.get("contained") or ())
                 if c.get("id") == local), None)


class _Bundle:
    def __init__(self, doc: dict[str, Any]) -> None:
        entries = doc.get("entry")
        shell = doc | {"entry": [{k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
                                 for e in entries]} if isinstance(entries, list) else doc
        _validate(Bundle, shell, "")  # the Bundle itself; each resource next, so faults are named by entry
        self.entries: list[_Res] = []
        self._index: dict[str, _Res] = {}
        for i, entry in enumerate(entries or ()):
            if "resource" not in entry:
                continue
            res = _Res(entry["resource"], f"/entry/{i}/resource")
            _resource(res.data, res.where)
            self.entries.append(res)
            if entry.get("fullUrl"):
                self._index[entry["fullUrl"]] = res
            if res.get("id"):
                self._index[f"{res.kind}/{res.get('id')}"] = res

    def of(self, kind: str) -> list[_Res]:
        return [r for r in self.entries if r.kind == kind]

    def get(self, target: str, holder: _Res) -> _Res | None:
        """The resource a literal reference points at: contained in ``holder``, or in the Bundle
        by full URL or by ``Type/id`` (also as the tail of an absolute URL)."""
        if target.startswith("#"):
            return _contained(holder, target[1:])
        return self._index.get(target) or self._index.get("/".join(target.split("/")[-2:]))

    def find(self, ref: Any, holder: _Res, where: str, *kinds: str) -> _Res | None:
        """The resource ``ref`` points at; None for a reference by identifier or display only;
        :class:`Unmappable` when it is not in the Bundle or is of another kind."""
        target = ref.get("reference") if isinstance(ref, dict) else None
        if not target:
            return None
        found = self.get(target, holder)
        if found is None:
            raise Unmappable("the Bundle does not hold the resource referenced here", field=f"{where}/reference",
                             rule="fhir.reference-resolves")
        if kinds and found.kind not in kinds:
            raise Unmappable(f"this reference is to a {found.kind}, not a {' or '.join(kinds)}",
                             field=f"{where}/reference", rule="fhir.reference-type")
        return found

    def need(self, holder: _Res, key: str, *kinds: str) -> _Res:
        found = self.find(holder.get(key), holder, f"{holder.where}/{key}", *kinds)
        if found is None:
            raise Unmappable(f"the {holder.kind} must reference a {' or '.join(kinds)} in the Bundle",
                             field=f"{holder.where}/{key}", rule="fhir.reference-resolves")
        return found


def _text(concept: Any) -> str | None:
    """A CodeableConcept's words: its text, else the first coding's display."""
    if not isinstance(concept, dict):
        return None
    return concept.get("text") or next((c["display"] for c in concept.get("coding") or () if c.get("display")), None)


def _codes(concepts: Any, system: str) -> Iterator[tuple[int, int, str]]:
    """``(concept index, coding index, code)`` for each coding in ``system``."""
    for i, concept in enumerate(concepts if isinstance(concepts, list) else [concepts] if concepts else []):
        for j, coding in enumerate(concept.get("coding") or ()):
            if coding.get("system") == system and coding.get("code"):
                yield i, j, coding["code"]


def _ext(res: Mapping[str, Any], url: str) -> list[Any]:
    return [next((v for k, v in e.items() if k.startswith("value")), None)
            for e in res.get("extension") or () if e.get("url") == url]


def _name(res: _Res) -> dict[str, Any] | None:
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


def _telecom(*holders: _Res) -> dict[str, str]:
    """The first phone and email that the canonical schema can carry."""
    out: dict[str, str] = {}
    for holder in holders:
        for _, t in holder.all("telecom"):
            value = t.get("value") or ""
            if t.get("system") == "phone" and "phone" not in out and _PHONE.match(value):
                out["phone"] = value
            elif t.get("system") == "email" and "email" not in out and _EMAIL.match(value):
                out["email"] = value
    return out


def _born(res: _Res) -> dict[str, str]:
    """The child's date of birth: required, and a full date (FHIR also allows a year or a month)."""
    value = res.get("birthDate")
    if not isinstance(value, str) or not _DATE.match(value):
        raise Unmappable("the child's birth date must be a full date", field=f"{res.where}/birthDate",
                         rule="referral.child-born")
    return {"dateOfBirth": value}


def _gender(res: _Res) -> dict[str, str]:
    gender = res.get("gender")
    if gender is None:
        return {}
    if gender not in _GENDERS:
        raise Unmappable("gender is not an administrative-gender code", field=f"{res.where}/gender", rule=_RULE)
    return {"gender": gender}


def _child(patient: _Res) -> dict[str, Any]:
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


def _household_role(person: _Res) -> str:
    for i, j, code in _codes(person.get("relationship"), ROLE):
        if code not in _ROLES:
            raise Unmappable("not a household role", field=f"{person.where}/relationship/{i}/coding/{j}/code",
                             rule="referral.household-role")
        return code
    v3 = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
    return next((_V3_ROLES[c] for _, _, c in _codes(person.get("relationship"), v3) if c in _V3_ROLES),
                "household-member")


def _household(bundle: _Bundle, patient: _Res) -> list[dict[str, Any]]:
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
        relationship = next((t for c in person.get("relationship") or () if (t := _text(c))), None)
        if relationship:
            member["relationship"] = relationship
        if person.get("birthDate") and _DATE.match(person.get("birthDate")):
            member["dateOfBirth"] = person.get("birthDate")
        member |= _gender(person)
        if address := _address(person.get("address")):
            member["address"] = address
        if phone := _telecom(person).get("phone"):
            member["phone"] = phone
        for pr in _ext(person.data, PARENTAL_RESPONSIBILITY):
            member["parentalResponsibility"] = bool(pr)
        out.append(member)
    return out


def _organisation(org: _Res) -> dict[str, Any] | None:
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


def _professional(bundle: _Bundle, holder: _Res, key: str) -> _Professional:
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
        title = next((t for c in [*(role.get("code") or ()), *(role.get("specialty") or ())] if (t := _text(c))), None)
    person: dict[str, Any] = {"role": title or ("Health organisation" if practitioner is None
                                                else "Health professional")}
    if practitioner is not None and (name := _name(practitioner)):
        person["name"] = name
    if org is not None and (organisation := _organisation(org)):
        person["organisation"] = organisation
    person |= _telecom(*(r for r in (role, practitioner, org) if r is not None))
    decided: dict[str, Any] = {}
    staff = next(((w, i["value"]) for r in (practitioner, role) if r is not None for w, i in r.all("identifier")
                  if i.get("value")), None)
    if staff is not None:
        decided = {"role": person["role"], "staffRef": staff[1]}
        if next(_DECIDED_BY.iter_errors(decided), None) is not None:
            raise Unmappable("the role or staff identifier of who decided cannot be recorded",
                             field=f"{staff[0]}/value", rule="sharing.v1.json")
    return _Professional(person, decided)


def _overlay(who: _Professional, priority: Any, where: str) -> dict[str, Any]:
    overlay: dict[str, Any] = {"decidedBy": who.decided} if who.decided else {}
    if priority is not None:
        if priority not in _URGENCY:
            raise Unmappable("not a request-priority code", field=f"{where}/priority", rule=_RULE)
        overlay["urgency"] = _URGENCY[priority]
    return overlay


def _recipient(bundle: _Bundle, holder: _Res, key: str, context: MapContext) -> tuple[str, ...]:
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


def _categories(res: _Res) -> list[str]:
    found: list[str] = []
    for i, j, code in _codes(res.get("category"), CATEGORY):
        if code not in _CATEGORIES:
            raise Unmappable("not a concern category", field=f"{res.where}/category/{i}/coding/{j}/code",
                             rule="referral.category")
        if code not in found:
            found.append(code)
    return found or ["other"]


def _referral(bundle: _Bundle, res: _Res, context: MapContext) -> Outbound:
    """A ServiceRequest, or a Communication that answers nothing, as a referral."""
    request = res.kind == "ServiceRequest"
    patient = bundle.need(res, "subject", "Patient")
    who = _professional(bundle, res, "requester" if request else "sender")
    words = [n["text"] for n in res.get("note") or () if n.get("text")] if request else [
        p["contentString"] for p in res.get("payload") or () if p.get("contentString")]
    summary = next((t for c in res.get("reasonCode") or () if (t := _text(c))), None) or (
        _text(res.get("code")) if request else None)
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
                   sharing=_overlay(who, res.get("priority"), res.where))


def _answered(bundle: _Bundle, res: _Res) -> str | None:
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


def _response(bundle: _Bundle, res: _Res, answered: str, context: MapContext) -> Outbound:
    handed = context.handed(answered)
    request_id = handed.message if handed is not None and handed.message else answered
    answers = []
    for where, part in res.all("payload"):
        if not _QUESTION.match(part.get("id") or ""):
            raise Unmappable("each payload answers a question: its id is the question id", field=f"{where}/id",
                             rule="information-response.question")
        answer: dict[str, Any] = {"questionId": part["id"]}
        if any(_ext(part, NO_INFORMATION)):
            answer["noInformationHeld"] = True
        elif "contentString" in part:
            answer["answer"] = part["contentString"]
        elif (part.get("contentReference") or {}).get("display"):
            answer["answer"] = part["contentReference"]["display"]
        else:
            raise Unmappable("an answer is text: attachments are not passed on", field=where,
                             rule="information-response.text")
        if sources := [s for s in _ext(part, SOURCE) if isinstance(s, str)]:
            answer["sources"] = sources
        answers.append(answer)
    who = _professional(bundle, res, "sender")
    payload: dict[str, Any] = {"requestId": request_id, "answers": answers, "respondent": who.person}
    if res.get("status") == "not-done" or res.get("statusReason"):
        payload["declined"] = {"reason": _text(res.get("statusReason")) or "Declined"}
    return checked(context.catalogue, "information-response", (), payload, res.where,
                   sharing=_overlay(who, res.get("priority"), res.where), answers=answered)


def fhir_bundle(body: bytes, context: MapContext) -> list[Outbound]:
    """Mapper: a FHIR R4 Bundle; every ServiceRequest and Communication in it must map, or none is sent."""
    bundle = _Bundle(_json(body, "Bundle"))
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
    res["extension"] = [{"url": RESPOND_BY, "valueDateTime": p["respondBy"]}] + (
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
    return {
        "resourceType": "Flag", "id": delivery.id, "contained": [la],
        "identifier": [{"system": DELIVERY_ID, "value": delivery.id},
                       {"system": MESSAGE_ID, "value": message or delivery.id}],
        "status": "inactive" if ended else "active",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category", "code": "safety",
                                  "display": "Safety"}]}],
        "code": {"coding": [{"system": PLAN, "code": p["planType"], "display": _PLANS[p["planType"]]}],
                 "text": _PLANS[p["planType"]]},
        "subject": {"type": "Patient", "identifier": {"system": NHS_NUMBER, "value": p["nhsNumber"]}},
        "period": {"start": p["startDate"]} | ({"end": p["endDate"]} if p.get("endDate") else {}),
        "author": {"reference": "#la", "display": authority["name"]},
    }


def flag_to_status(body: bytes | Mapping[str, Any], catalogue: Catalogue) -> dict[str, Any]:
    """A CP-IS-style Flag (as :func:`status_flag` writes it) back to a child-protection-status
    payload, checked against its schema; :class:`Unmappable` naming the field otherwise."""
    doc = _json(body, "Flag")
    _validate(Flag, doc, "")
    flag = _Res(doc, "")
    plan = next(((i, j, c) for i, j, c in _codes(flag.get("code"), PLAN)), None)
    if plan is None or plan[2] not in _PLANS:
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
    author = _contained(flag, target[1:]) if target.startswith("#") else None
    if author is None or author.kind != "Organization":
        raise Unmappable("the Flag's author is the local authority, contained in the Flag", field="/author",
                         rule="cp-status.authority")
    authority: dict[str, Any] = {"name": author.get("name")}
    for where, contact in author.all("contact"):
        for _, _, code in _codes(contact.get("purpose"), PURPOSE):
            slot = {"office-hours": "officeHoursPhone", "emergency-duty": "emergencyDutyPhone"}.get(code)
            phone = _telecom(_Res(contact, where)).get("phone")
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
        _validate(cls, resource, "")
    except Unmappable as exc:
        raise Unrenderable(f"the {delivery.type} does not make valid FHIR at {exc.field}") from None
    return orjson.dumps(resource), CONTENT_TYPE
