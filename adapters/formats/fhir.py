"""HL7 FHIR R4 as the health adapter reads and writes it: the partnership's identifier systems,
code systems and extensions, validation by the FHIR library, and a Bundle's resources with
where each one is (for refusals that name the field).

Validation is the FHIR library's, not ours: ``fhir.resources`` 8.x (pydantic 2). Its default
models are R5 (5.0.0); it also ships R4B (4.3.0) and STU3, and no R4 (4.0.1). R4B changed
none of the elements used here (its changes are in medication, evidence and subscription
resources), so both directions validate with ``fhir.resources.R4B``; the tests run the
published R4 examples through it. The library checks structure and datatypes,
not value sets, so the codes the adapter reads (gender, priority, its own code systems, the
consent codes) are checked by the adapter. Library errors carry the offending input; only their
type and location are kept, so no error from these modules ever holds a value from the record.

The case's consent facts travel in one complex extension, ``sharing-consent``
(:data:`CONSENT_EXTENSION`), on the ``ServiceRequest`` or ``Communication`` that makes the
message: sub-extensions ``consentStatus``, ``nonConsentReason`` and ``subjectInformed``, each a
``valueCode`` from the sharing vocabulary (``schemas/vocabulary.v2.json``). A FHIR ``Consent``
resource records a person's own choice to permit or deny; it has no place for "not sought,
because asking would increase the risk" nor for whether the family was told, so it is not used.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import pydantic
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir_core.fhirabstractmodel import FHIRAbstractModel

from adapters.formats.consent import CASE_FACTS, INFORMED, REASON, UNRECORDED, WITHOUT_CONSENT
from adapters.formats.mapping import Unmappable
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
RULE: Final = "fhir-r4"
# The case facts of consent and informing the family, on the ServiceRequest or Communication.
CONSENT_EXTENSION: Final = f"{SD}sharing-consent"

PLANS: Final = {"child-protection-plan": "Child protection plan", "looked-after": "Looked after child",
                "unborn-child-protection-plan": "Unborn child protection plan"}

_PHONE: Final = re.compile(r"^\+?[0-9 ()-]{6,20}$")
_EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Unrenderable(BrokerError):
    """A delivery that does not make valid FHIR: a fault in this module, named without values."""


# -- validation ---------------------------------------------------------------------------


def _pointer(loc: Sequence[int | str]) -> str:
    """A pydantic location as a JSON pointer in FHIR's own names (no union tags, no values)."""
    names = {"resource_type": "resourceType"}
    return "".join(f"/{names.get(str(p), p)}" for p in loc if isinstance(p, int) or "[" not in p)


def validate(cls: type[FHIRAbstractModel], data: Any, where: str) -> FHIRAbstractModel:
    """``cls`` built from ``data`` by the FHIR library, or :class:`Unmappable` at the first fault.
    ``from None``: the library's exception holds the input, so it is not chained."""
    try:
        return cls.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        failure = Unmappable(f"the record is not valid FHIR R4 ({first['type']})",
                             field=f"{where}{_pointer(first['loc'])}" or "/", rule=RULE)
    except (KeyError, TypeError, ValueError):  # e.g. a contained resource of an unknown type
        failure = Unmappable("the record is not valid FHIR R4", field=where or "/", rule=RULE)
    raise failure from None


def validate_resource(data: Any, where: str) -> None:
    kind = data.get("resourceType") if isinstance(data, dict) else None
    try:
        cls = get_fhir_model_class(kind) if isinstance(kind, str) else None
    except ValueError:
        cls = None
    if cls is None:
        raise Unmappable("not a FHIR R4 resource type", field=f"{where}/resourceType", rule=RULE)
    validate(cls, data, where)


def load_document(body: bytes | Mapping[str, Any], kind: str) -> dict[str, Any]:
    if isinstance(body, Mapping):
        doc: Any = dict(body)
    else:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise Unmappable("the document is not FHIR JSON", field="/", rule=RULE) from None
    if not isinstance(doc, dict) or doc.get("resourceType") != kind:
        raise Unmappable(f"the document is not a FHIR {kind}", field="/resourceType" if isinstance(doc, dict) else "/",
                         rule=RULE)
    return doc


# -- reading a Bundle ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Res:
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


def find_contained(holder: Res, local: str) -> Res | None:
    return next((Res(c, f"{holder.where}/contained/{i}") for i, c in enumerate(holder.get("contained") or ())
                 if c.get("id") == local), None)


class FhirBundle:
    def __init__(self, doc: dict[str, Any]) -> None:
        entries = doc.get("entry")
        shell = doc | {"entry": [{k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
                                 for e in entries]} if isinstance(entries, list) else doc
        validate(Bundle, shell, "")  # the Bundle itself; each resource next, so faults are named by entry
        self.entries: list[Res] = []
        self._index: dict[str, Res] = {}
        for i, entry in enumerate(entries or ()):
            if "resource" not in entry:
                continue
            res = Res(entry["resource"], f"/entry/{i}/resource")
            validate_resource(res.data, res.where)
            self.entries.append(res)
            if entry.get("fullUrl"):
                self._index[entry["fullUrl"]] = res
            if res.get("id"):
                self._index[f"{res.kind}/{res.get('id')}"] = res

    def of(self, kind: str) -> list[Res]:
        return [r for r in self.entries if r.kind == kind]

    def get(self, target: str, holder: Res) -> Res | None:
        """The resource a literal reference points at: contained in ``holder``, or in the Bundle
        by full URL or by ``Type/id`` (also as the tail of an absolute URL)."""
        if target.startswith("#"):
            return find_contained(holder, target[1:])
        return self._index.get(target) or self._index.get("/".join(target.split("/")[-2:]))

    def find(self, ref: Any, holder: Res, where: str, *kinds: str) -> Res | None:
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

    def need(self, holder: Res, key: str, *kinds: str) -> Res:
        found = self.find(holder.get(key), holder, f"{holder.where}/{key}", *kinds)
        if found is None:
            raise Unmappable(f"the {holder.kind} must reference a {' or '.join(kinds)} in the Bundle",
                             field=f"{holder.where}/{key}", rule="fhir.reference-resolves")
        return found


def concept_text(concept: Any) -> str | None:
    """A CodeableConcept's words: its text, else the first coding's display."""
    if not isinstance(concept, dict):
        return None
    return concept.get("text") or next((c["display"] for c in concept.get("coding") or () if c.get("display")), None)


def coded(concepts: Any, system: str) -> Iterator[tuple[int, int, str]]:
    """``(concept index, coding index, code)`` for each coding in ``system``."""
    for i, concept in enumerate(concepts if isinstance(concepts, list) else [concepts] if concepts else []):
        for j, coding in enumerate(concept.get("coding") or ()):
            if coding.get("system") == system and coding.get("code"):
                yield i, j, coding["code"]


def extension_values(res: Mapping[str, Any], url: str) -> list[Any]:
    return [next((v for k, v in e.items() if k.startswith("value")), None)
            for e in res.get("extension") or () if e.get("url") == url]


def telecom(*holders: Res) -> dict[str, str]:
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



# -- the case's consent facts -------------------------------------------------------------

_CONSENT_CODES: Final[Mapping[str, frozenset[str]]] = {
    "consentStatus": frozenset({"GIVEN", "REFUSED_OVERRIDDEN", "NOT_SOUGHT"}),
    "nonConsentReason": frozenset(REASON.values()),
    "subjectInformed": frozenset(INFORMED.values()),
}


def read_consent(res: Res, *, emergency: bool = False) -> dict[str, str]:
    """The sharing block's case facts from the ``sharing-consent`` extension of ``res``; refused,
    naming the place, when it is missing, incomplete or contradicts itself. In an ``emergency``
    (priority ``stat``) what it does not say is left out, consent as ``NOT_APPLICABLE`` (the broker
    shares it and flags it); a wrong code or a contradiction is refused all the same."""
    found = [(f"{res.where}/extension/{i}", e) for i, e in enumerate(res.get("extension") or ())
             if e.get("url") == CONSENT_EXTENSION]
    if not found:
        if emergency:
            return {"consentStatus": UNRECORDED}
        raise Unmappable(f"the {res.kind} has no sharing-consent extension saying whether consent was given, "
                         "refused or not sought and whether the family was informed", field=f"{res.where}/extension",
                         rule="consent.recorded")
    if len(found) > 1:
        raise Unmappable("a resource carries one sharing-consent extension", field=found[1][0],
                         rule="consent.recorded")
    where, extension = found[0]
    facts: dict[str, str] = {}
    for j, part in enumerate(extension.get("extension") or ()):
        here, name, value = f"{where}/extension/{j}", part.get("url"), part.get("valueCode")
        if name not in _CONSENT_CODES or name in facts:
            raise Unmappable("the sharing-consent extension holds consentStatus, nonConsentReason and "
                             "subjectInformed, once each", field=f"{here}/url", rule="consent.recorded")
        if value == UNRECORDED and name == "consentStatus" and emergency:
            facts[name] = value
            continue
        if value == UNRECORDED:
            raise Unmappable("consent is applicable to a message carrying personal data: say whether it was "
                             "given, refused or not sought", field=f"{here}/valueCode", rule="consent.not-applicable")
        if value not in _CONSENT_CODES[name]:
            raise Unmappable(f"{name} is a valueCode from the sharing vocabulary", field=f"{here}/valueCode",
                             rule="consent.recorded" if name == "consentStatus" else
                             "consent.reason" if name == "nonConsentReason" else "transparency.informed")
        facts[name] = value
    inside = f"{where}/extension"
    if "consentStatus" not in facts:
        if not emergency:
            raise Unmappable("the sharing-consent extension has no consentStatus", field=inside,
                             rule="consent.recorded")
        facts["consentStatus"] = UNRECORDED
    if facts["consentStatus"] == "GIVEN" and "nonConsentReason" in facts:
        raise Unmappable("consent was given, so there is no reason for sharing without it", field=inside,
                         rule="consent.consistent")
    if facts["consentStatus"] in WITHOUT_CONSENT and "nonConsentReason" not in facts and not emergency:
        raise Unmappable("sharing without consent needs a nonConsentReason in the sharing-consent extension",
                         field=inside, rule="consent.reason")
    if "subjectInformed" not in facts and not emergency:
        raise Unmappable("the sharing-consent extension has no subjectInformed", field=inside,
                         rule="transparency.informed")
    return facts


def consent_extension(sharing: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``sharing-consent`` extension for a delivery's sharing block (None when consent does
    not apply: receipts, rejections, notices)."""
    if sharing.get("consentStatus") not in _CONSENT_CODES["consentStatus"]:
        return None
    return {"url": CONSENT_EXTENSION, "extension": [{"url": name, "valueCode": sharing[name]} for name in CASE_FACTS
                                                    if sharing.get(name) in _CONSENT_CODES[name]]}
