"""Police: Public Protection Notices (vulnerability records) from a records management system,
as JSON or CSV, into canonical messages.

One incident with several children becomes one ``referral`` per child to the local authority
and, for each child with a school in the trust registry, an ``encompass-notification`` to that
school (the broker's rulebook then trims it to what a school may see). Every record is checked
against ``adapters/native/police-ppn.v1.json`` and every message built from it against its
canonical schema *before* anything is sent, so a record that cannot be mapped is refused whole,
with the field named, and nothing is half-sent.

Consent is a fact of the case, not of the adapter: each PPN says whether consent to share was
given, refused and overridden, or not sought (``consent``), why it is shared without it
(``withoutConsentReason``) and whether the family was told (``familyInformed``); they become the
sharing block of every message the PPN makes (:mod:`adapters.formats.consent`), and the referral's own
``consent`` block says the same. ``doNotContactParents`` and ``circumstances`` go to each school.

CSV: one row per child; the incident columns repeat on each row of an incident (and must agree:
consent, informing the family and contacting the parents are refused, by row and column, when a
later row of the incident says otherwise); ``categories`` is ``;``-separated; ``adults`` is
``;``-separated ``given|family|role|relationship``; booleans are ``yes``/``no``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jsonschema_rs
import orjson

from adapters.formats import consent
from adapters.formats.mapping import MapContext, Outbound, Unmappable, check_native, checked, local_authority
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry

_SCHEMA: Final = Path(__file__).parent / "native" / "police-ppn.v1.json"
_VALIDATOR = jsonschema_rs.validator_for(orjson.loads(_SCHEMA.read_bytes()), validate_formats=True)
_RAG: Final = {"high": "red", "medium": "amber", "standard": "green"}
_OBTAINED: Final = {"given": "yes", "refused-overridden": "no", "not-sought": "not-sought"}


def _name(given: str | None, family: str) -> dict[str, str]:
    return {"family": family} | ({"given": given} if given else {})


def check(record: Any, where: str = "") -> None:
    check_native(_VALIDATOR, record, where, "police-ppn.v1.json")


def emergency(record: Mapping[str, Any]) -> bool:
    """A PPN that needs immediate protection: shared even without its consent facts (flagged)."""
    return record.get("immediateProtectionNeeded") is True


def _consent(record: Mapping[str, Any], field: Callable[[str], str]) -> dict[str, Any]:
    """The referral's ``consent`` block, agreeing with the sharing block's facts (checked before);
    ``field(name)`` names where a field is. An emergency's block says only what the record does."""
    block: dict[str, Any] = {}
    if record.get("familyInformed") is not None:
        informed = record["familyInformed"] == "yes"
        if record.get("parentsInformed", informed) != informed:
            raise Unmappable("parentsInformed contradicts familyInformed", field=field("parentsInformed"),
                             rule="consent.consistent")
        if informed and "reasonNotInformed" in record:
            raise Unmappable("the family was informed, so there is no reason for not informing them",
                             field=field("reasonNotInformed"), rule="consent.consistent")
        block["parentsInformed"] = informed
    elif isinstance(record.get("parentsInformed"), bool):
        block["parentsInformed"] = record["parentsInformed"]
    if record.get("consent") is not None:
        block["consentObtained"] = _OBTAINED[record["consent"]]
    if record.get("reasonNotInformed"):
        block["reasonNotInformed"] = record["reasonNotInformed"]
    if record.get("consent") == "not-sought" and record.get("withoutConsentReason") is not None:
        block["reasonNotSought"] = consent.REASON_LABEL[record["withoutConsentReason"]]
    return block


def map_incident(record: Mapping[str, Any], *, local_authority: str, registry: Registry,
                 catalogue: Catalogue, where: str = "") -> list[Outbound]:
    """All the messages one PPN makes, each checked against its schema; raises :class:`Unmappable`."""
    def field(name: str) -> str:
        return f"{where}/{name}"

    if not isinstance(record, Mapping):
        raise Unmappable("a PPN is an object", field=where or "/", rule="police-ppn.v1.json")
    # The case's consent facts first, so that a refusal names the rule (consent.reason...) as well as the field.
    facts, agreed = consent.native(record, field, emergency=emergency(record)), _consent(record, field)
    check(record, where)
    officer = record["officer"]
    referrer: dict[str, Any] = {"name": _name(officer.get("given"), officer["family"]),
                                "role": f"Police officer {officer['collarNumber']}"}
    if officer.get("phone"):
        referrer["phone"] = officer["phone"]
    household = [{"name": _name(a.get("given"), a["family"]), "role": a["role"]}
                 | ({"relationship": a["relationship"]} if a.get("relationship") else {})
                 | ({"dateOfBirth": a["dateOfBirth"]} if a.get("dateOfBirth") else {})
                 for a in record.get("adults", [])]
    concern: dict[str, Any] = {"summary": record["summary"], "categories": list(record["categories"]),
                               "incidentDateTime": record["occurredAt"],
                               "immediateProtectionNeeded": record.get("immediateProtectionNeeded", False)}
    for key, target in (("details", "details"), ("location", "incidentLocation")):
        if record.get(key):
            concern[target] = record[key]
    # What the record itself says about the decision; the rest comes from the adapter's sharing defaults.
    decided: dict[str, Any] = {"decidedBy": {"role": "Police officer", "staffRef": officer["collarNumber"]}} | facts
    if record.get("immediateProtectionNeeded"):
        decided["urgency"] = "EMERGENCY"
    out: list[Outbound] = []
    for i, child in enumerate(record["children"]):
        here = f"{where}/children/{i}"
        person: dict[str, Any] = {"name": _name(child.get("given"), child["family"]), "status": "born"}
        for key in ("dateOfBirth", "nhsNumber"):
            if child.get(key):
                person[key] = child[key]
        referral: dict[str, Any] = {"child": person, "referrer": referrer, "concern": concern,
                                    "policeReference": record["incidentReference"]}
        if agreed:
            referral["consent"] = agreed
        if household:
            referral["household"] = household
        if record.get("riskLevel"):
            referral["risk"] = {"ragRating": _RAG[record["riskLevel"]]}
        out.append(checked(catalogue, "referral", (local_authority,), referral, here, sharing=decided))
        school = child.get("schoolAgencyId")
        if school:
            agency = registry.get(school)
            if agency is None or agency.kind != "school":
                raise Unmappable("the child's school is not a school in the trust registry",
                                 field=f"{here}/schoolAgencyId", rule="encompass.school-known")
            notice: dict[str, Any] = {"child": {k: v for k, v in person.items() if k != "status"},
                                      "incidentDateTime": record["occurredAt"], "childPresent": child["present"],
                                      "policeReference": record["incidentReference"]}
            for key, target in (("whereChildWas", "whereChildWas"), ("voice", "voiceOfChild")):
                if child.get(key):
                    notice[target] = child[key]
            for key, target in (("location", "incidentLocation"), ("circumstances", "circumstances"),
                                ("advice", "keyAdultAdvice"), ("doNotContactParents", "doNotContactParents")):
                if key in record:
                    notice[target] = record[key]
            # A school's notice takes the configured urgency, unless the emergency's consent facts are
            # incomplete: then it is an emergency share too, so that the broker shares it and flags it.
            complete = facts["consentStatus"] != consent.UNRECORDED and "subjectInformed" in facts and (
                facts["consentStatus"] not in consent.WITHOUT_CONSENT or "nonConsentReason" in facts)
            out.append(checked(catalogue, "encompass-notification", (school,), notice, here,
                               sharing={k: v for k, v in decided.items() if k != "urgency" or not complete}))
    return out


def map_json(data: bytes, **kwargs: Any) -> list[Outbound]:
    """One PPN object or a list of them; every one must map before any is returned."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise Unmappable("the file is not JSON", field="/") from exc
    if isinstance(doc, list):
        return [m for i, r in enumerate(doc) for m in map_incident(r, where=f"/{i}", **kwargs)]
    return map_incident(doc, **kwargs)


_BOOL: Final = {"yes": True, "no": False, "true": True, "false": False}


@dataclass(frozen=True, slots=True)
class _Row:
    number: int
    cells: Mapping[str, str | None]

    def at(self, column: str) -> str:
        """Where a cell is, for a refusal: ``row <n>/<column>``."""
        return f"row {self.number}/{column}"

    def cell(self, column: str) -> str | None:
        value = (self.cells.get(column) or "").strip()
        return value or None

    def flag(self, column: str) -> bool | None:
        value = self.cell(column)
        if value is None:
            return None
        if value.lower() not in _BOOL:
            raise Unmappable(f"row {self.number}: {column} is yes or no", field=f"row {self.number}/{column}")
        return _BOOL[value.lower()]

    def some(self, *pairs: tuple[str, str]) -> dict[str, str]:
        """``{key: cell(column)}`` for the (key, column) pairs whose cell is not empty."""
        return {key: value for key, column in pairs if (value := self.cell(column)) is not None}


# Columns of the incident that each row repeats and that must agree: a different value on a
# later row (consent for one child and not another) is refused rather than silently dropped.
_AGREE: Final = (*consent.NATIVE_FIELDS, "parentsInformed", "reasonNotInformed", "doNotContactParents",
                 "immediateProtectionNeeded")


# The CSV columns of a child's and the officer's fields (the incident's own columns are the JSON names).
_CHILD_COLUMNS: Final = {"given": "childGiven", "family": "childFamily", "dateOfBirth": "childDateOfBirth",
                         "nhsNumber": "childNhsNumber", "whereChildWas": "childWhereChildWas", "voice": "childVoice",
                         "schoolAgencyId": "childSchoolAgencyId", "present": "childPresent"}
_OFFICER_COLUMNS: Final = {"given": "officerGiven", "family": "officerFamily", "collarNumber": "officerCollarNumber",
                           "phone": "officerPhone"}
_INCIDENT_COLUMNS: Final = frozenset({
    "incidentReference", "occurredAt", "summary", "categories", "location", "details", "riskLevel", "reasonNotInformed",
    "advice", "circumstances", "parentsInformed", "doNotContactParents", "immediateProtectionNeeded", "adults",
    *consent.NATIVE_FIELDS})


def _incident(row: _Row, reference: str) -> dict[str, Any]:
    incident: dict[str, Any] = {
        "incidentReference": reference, "occurredAt": row.cell("occurredAt"), "summary": row.cell("summary"),
        "categories": [c.strip() for c in (row.cell("categories") or "").split(";") if c.strip()],
        "officer": row.some(*_OFFICER_COLUMNS.items()),
        "children": [],
    } | row.some(*((c, c) for c in ("location", "details", "riskLevel", "reasonNotInformed", "advice",
                                    "circumstances", *consent.NATIVE_FIELDS)))
    for column in ("parentsInformed", "doNotContactParents", "immediateProtectionNeeded"):
        flag = row.flag(column)
        if flag is not None:
            incident[column] = flag
    adults = []
    for entry in (row.cell("adults") or "").split(";"):
        if entry.strip():
            parts = [*entry.split("|"), "", "", ""][:4]
            adults.append({k: v.strip() for k, v in zip(("given", "family", "role", "relationship"), parts,
                                                         strict=True) if v.strip()})
    if adults:
        incident["adults"] = adults
    return incident


def records_from_csv(text: str) -> list[tuple[dict[str, Any], list[int]]]:
    """Group the rows (one per child) into PPN records, each with the numbers of its rows (one per
    child, in order); a bad cell is named by row and column."""
    incidents: dict[str, dict[str, Any]] = {}
    rows: dict[str, list[int]] = {}
    for number, cells in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        row = _Row(number, cells)
        reference = row.cell("incidentReference")
        if reference is None:
            raise Unmappable(f"row {number}: incidentReference is empty", field=f"row {number}/incidentReference")
        this = _incident(row, reference)
        consent.native(this, row.at, emergency=emergency(this))
        _consent(this, row.at)
        first = incidents.get(reference)
        if first is None:
            incidents[reference] = first = this
        else:
            for column in _AGREE:
                if this.get(column) != first.get(column):
                    raise Unmappable(f"row {number}: {column} differs from the incident's first row",
                                     field=f"row {number}/{column}", rule="ppn-csv.incident-agrees")
        incident = first
        child: dict[str, Any] = row.some(*((key, column) for key, column in _CHILD_COLUMNS.items() if key != "present"))
        present = row.flag(_CHILD_COLUMNS["present"])
        if present is not None:
            child["present"] = present
        incident["children"].append(child)
        rows.setdefault(reference, []).append(number)
    return [(incident, rows[reference]) for reference, incident in incidents.items()]


def _cell(pointer: str, rows: Sequence[int]) -> str:
    """The row and column a pointer into a CSV incident's record comes from (never a value from it)."""
    parts = pointer.split("/")[1:] if pointer.startswith("/") else []
    first = rows[0]
    if len(parts) >= 2 and parts[0] == "children" and parts[1].isdigit() and int(parts[1]) < len(rows):
        row = rows[int(parts[1])]
        return f"row {row}/{_CHILD_COLUMNS[parts[2]]}" if len(parts) > 2 and parts[2] in _CHILD_COLUMNS \
            else f"row {row}"
    if len(parts) >= 2 and parts[0] == "officer" and parts[1] in _OFFICER_COLUMNS:
        return f"row {first}/{_OFFICER_COLUMNS[parts[1]]}"
    if parts and parts[0] in _INCIDENT_COLUMNS:
        return f"row {first}/{parts[0]}"
    return f"row {first}"


def map_csv(text: str, **kwargs: Any) -> list[Outbound]:
    out: list[Outbound] = []
    for record, rows in records_from_csv(text):
        try:
            out += map_incident(record, **kwargs)
        except Unmappable as exc:  # named by row and column, as the export has them
            raise Unmappable(exc.reason, field=_cell(exc.field or "", rows), rule=exc.rule) from None
    return out


def recipients(messages: Sequence[Outbound]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in messages:
        counts[m.typ] = counts.get(m.typ, 0) + 1
    return counts


def ppn_json(body: bytes, context: MapContext) -> list[Outbound]:
    """Mapper: PPN JSON (one object or a list)."""
    return map_json(body, local_authority=local_authority(context), registry=context.registry,
                    catalogue=context.catalogue)


def ppn_csv(body: bytes, context: MapContext) -> list[Outbound]:
    """Mapper: a records management system's CSV export (UTF-8, a header row)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Unmappable("the CSV export is not UTF-8", field="/") from exc
    return map_csv(text, local_authority=local_authority(context), registry=context.registry,
                   catalogue=context.catalogue)
