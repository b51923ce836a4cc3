"""The information-sharing rulebook: the partnership's agreement as data (``broker/policy/rulebook.yaml``).

Loading validates the file against ``schemas/rulebook.v1.json`` and then its meaning (every
message type exists, rule ids are unique, each type has at most one rule per sender kind).
A bad rulebook raises :class:`~broker.errors.ConfigError` naming each problem, so a reload
can refuse it and keep the old one in force.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from broker.errors import ConfigError
from broker.policy import pointer
from broker.policy.pointer import Condition, in_schema
from broker.policy.workdays import add_working_hours, due_after, parse_date
from broker.wire.catalogue import Catalogue

DEFAULT_RULEBOOK = Path(__file__).resolve().parent / "rulebook.yaml"  # package data

# Receipt statuses a deadline may wait for ("delivered" only means the agency's system took the
# message), and those that count when a rule expecting a receipt does not say.
RECEIPT_STATUSES: Final = ("delivered", "accepted", "actioned")
DEFAULT_RECEIPT_STATUS: Final = ("accepted", "actioned")

# The general rules the policy applies by id: a rulebook must say (and cite) each of them, so that
# no decision in the audit log names a rule the agreement does not contain.
GENERAL_RULES: Final = (
    "basis.present", "basis.public-authority", "basis.special-category", "basis.criminal-offence",
    "basis.law-enforcement", "basis.gateway-available", "consent.basis-needs-consent", "consent.not-the-basis",
    "consent.condition-without-consent", "consent.consistent", "consent.not-applicable", "consent.reason",
    "consent.override-review", "transparency.informed", "urgent.never-held", "advice.sought", "identity.protect",
    "necessity.per-recipient",
)


@dataclass(frozen=True, slots=True)
class Protection:
    fields: tuple[str, ...]
    from_kinds: frozenset[str]


@dataclass(frozen=True, slots=True)
class DeadlineSpec:
    """When the recipient must reply, and with which message types (and, for a ``receipt``, which
    statuses: ``receipt_status``, by default accepted or actioned). A rule may run several clocks
    (a conference outcome opens the core group's and the review's); each after the first is kept
    under its own key (``key_suffix``) so that one reply closes only its own clock."""

    expect: tuple[str, ...]
    says: str
    working_days: int | None = None
    school_day_start: str | None = None   # "HH:MM"
    clock_hours: int | None = None        # hours on the clock, nights and weekends included
    months: int | None = None             # calendar months
    from_payload: str | None = None       # a top-level date-time field of the payload
    start_from: str | None = None         # a pointer to the date the clock runs from (default: receipt)
    when: tuple[Condition, ...] = ()      # the clock runs only when every condition holds on the payload
    key_suffix: str = ""                  # "" for a rule's first clock, else ".<clock>"
    rag_hours: Mapping[str, float] | None = None  # local MASH timescale by the payload's risk.ragRating
    expect_from: str = "recipient"  # who owes the reply: the recipient, the sender, or the sender's partners
    receipt_status: tuple[str, ...] = ()  # receipt statuses that stop the clock; () unless expect has "receipt"
    clock: str = ""  # the clock of schemas/guidance.v1.json this implements
    owed_to: str | None = None  # a clock the sender's side owes: the recipient kind the reply goes to

    @property
    def from_sender(self) -> bool:
        return self.expect_from != "recipient"

    def applies(self, payload: Mapping[str, Any]) -> bool:
        return all(c.holds(payload) for c in self.when)

    def due(self, received: float, payload: Mapping[str, Any]) -> float | None:
        """When the reply to a message received at ``received`` (epoch seconds) is due, or None if
        the payload does not give the date the rule asks for."""
        if self.from_payload is not None:
            given = parse_date(payload.get(self.from_payload))
            return given.timestamp() if given else None
        started = parse_date(next(pointer.values(payload, self.start_from), None)) if self.start_from else None
        at = started or dt.datetime.fromtimestamp(received, dt.UTC)  # a missing start date: from receipt
        due = due_after(at, working_days=self.working_days, school_day_start=self.school_day_start,
                        clock_hours=self.clock_hours, months=self.months)
        if due is None:
            return None
        risk = payload.get("risk")
        rating = risk.get("ragRating") if isinstance(risk, Mapping) else None
        if self.rag_hours and isinstance(rating, str) and rating in self.rag_hours:
            return min(due.timestamp(), add_working_hours(at, self.rag_hours[rating]).timestamp())
        return due.timestamp()


@dataclass(frozen=True, slots=True)
class LateAfter:
    """Flag a message the sender owed earlier: received more than ``working_days`` after the date at
    ``field`` (a JSON pointer), or after the start of the school day following it."""

    field: str
    says: str
    clock: str
    working_days: int | None = None
    school_day_start: str | None = None  # "HH:MM"
    clock_hours: int | None = None  # hours on the clock, nights and weekends included
    reason_field: str | None = None  # a late message must say why here (a pointer), or it is refused
    rag_field: str | None = None  # a pointer to a RAG rating: the local timescale for that rating applies
    rag_hours: Mapping[str, float] | None = None
    or_field: str | None = None  # where the start is when the payload has none at ``field``

    def starts(self) -> tuple[str, ...]:
        """The pointers the clock's start is read from, first present wins."""
        return (self.field,) if self.or_field is None else (self.field, self.or_field)


@dataclass(frozen=True, slots=True)
class Recipient:
    """What one recipient kind may receive: the allowed fields (None: all) and, if given, the
    conditions on the payload under which it needs the message at all."""

    fields: tuple[str, ...] | None
    when: tuple[Condition, ...] = ()
    organisation_types: frozenset[str] = frozenset()  # only agencies of these registry types (empty: any)


@dataclass(frozen=True, slots=True)
class MustNotify:
    kinds: frozenset[str]
    when: tuple[Condition, ...]
    says: str


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    says: str
    cite: tuple[str, ...]
    type: str
    senders: frozenset[str]
    to: Mapping[str, Recipient]  # by recipient kind
    lawful_bases: frozenset[str]
    gateways: frozenset[str]
    protect: Mapping[str, Protection]
    deadlines: tuple[DeadlineSpec, ...] = ()
    late_after: LateAfter | None = None
    special_conditions: frozenset[str] = frozenset()  # acceptable Art 9 conditions (empty: any)
    offence_conditions: frozenset[str] = frozenset()  # acceptable Art 10 conditions (empty: any)
    law_enforcement_bases: frozenset[str] = frozenset()  # acceptable Sch 8 conditions (empty: any)
    golden_rules: tuple[str, ...] = ()
    must_notify: tuple[MustNotify, ...] = ()
    partners_only: bool = False  # only a statutory safeguarding partner may send it
    consent_required: bool = False  # shared only with the family's consent (consentStatus GIVEN)
    gateways_from: Mapping[str, frozenset[str]] = field(default_factory=dict)  # gateway -> organisationTypes holding it

    @property
    def deadline(self) -> DeadlineSpec | None:
        return self.deadlines[0] if self.deadlines else None


@dataclass(frozen=True, slots=True)
class General:
    """A rule applied to every message that carries personal data."""

    says: str
    cite: tuple[str, ...]
    golden_rules: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rulebook:
    edition: str
    title: str
    general: Mapping[str, General]
    rules: tuple[Rule, ...]
    source: str
    # message type -> the conditions under which it carries criminal offence data (() : always)
    offence_data: Mapping[str, tuple[Condition, ...]] = field(default_factory=dict)
    # message type -> key suffixes of the clocks after a rule's first that it may close (worked out once)
    later_clocks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # the IG review queue's triage, as the (schema-checked) section reads: the audit index applies it
    triage: Mapping[str, Any] = field(default_factory=dict)

    def rule_for(self, type_name: str, sender_kind: str) -> Rule | None:
        for rule in self.rules:
            if rule.type == type_name and sender_kind in rule.senders:
                return rule
        return None

    def clocks_answered_by(self, type_name: str) -> tuple[str, ...]:
        """The key suffixes of every clock after a rule's first that a message of ``type_name`` may
        close: where a reply looks beyond the first clock's key."""
        return self.later_clocks.get(type_name, ())

    def citation(self, rule_id: str) -> tuple[str, ...]:
        if rule_id in self.general:
            return self.general[rule_id].cite
        return next((r.cite for r in self.rules if r.id == rule_id), ())


def parse(doc: Any, catalogue: Catalogue, *, source: str = "<rulebook>") -> Rulebook:
    problems: list[str] = []
    for err in catalogue.validator("rulebook.v1.json").iter_errors(doc):
        pointer = "/" + "/".join(str(p) for p in err.instance_path)
        problems.append(f"{pointer}: '{err.kind.name}' check failed")
    if problems:
        raise ConfigError(f"rulebook {source} is invalid: " + "; ".join(problems[:20]))
    known_types = {name for name, _ in catalogue.types}
    seen_ids: set[str] = {g["id"] for g in doc["general"]}
    senders_by_type: dict[str, set[str]] = {}
    rules = []
    for i, r in enumerate(doc["rules"]):
        where = f"/rules/{i} ({r['id']})"
        if r["id"] in seen_ids:
            problems.append(f"{where}: rule id is used twice")
        seen_ids.add(r["id"])
        if r["type"] not in known_types:
            problems.append(f"{where}: no schema for message type {r['type']!r}")
        overlap = senders_by_type.setdefault(r["type"], set()) & set(r["from"])
        if overlap:
            problems.append(f"{where}: another rule already covers {r['type']} from {sorted(overlap)}")
        senders_by_type[r["type"]] |= set(r["from"])
        specs = ([r["deadline"]] if "deadline" in r else []) + list(r.get("deadlines", ()))
        if "deadline" in r and "deadlines" in r:
            problems.append(f"{where}: give deadline or deadlines, not both")
        for spec in specs:
            if "receiptStatus" in spec and "receipt" not in spec["expect"]:
                problems.append(f"{where}: deadline.receiptStatus applies only when deadline.expect includes receipt")
        rules.append(Rule(
            id=r["id"], says=r["says"], cite=tuple(r["cite"]), type=r["type"], senders=frozenset(r["from"]),
            to={k: Recipient(None if v["fields"] == "all" else tuple(v["fields"]), _conditions(v.get("when", ())),
                             frozenset(v.get("organisationTypes", ())))
                for k, v in r["to"].items()},
            lawful_bases=frozenset(r.get("lawfulBasis", ())), gateways=frozenset(r.get("gateways", ())),
            protect={k: Protection(tuple(v["fields"]), frozenset(v["from"])) for k, v in r.get("protect", {}).items()},
            deadlines=tuple(_deadline(spec, doc.get("localTimescales", {}), i) for i, spec in enumerate(specs)),
            late_after=_late_after(r["lateAfter"], doc.get("localTimescales", {})) if "lateAfter" in r else None,
            special_conditions=frozenset(r.get("specialCategoryConditions", ())),
            offence_conditions=frozenset(r.get("criminalOffenceConditions", ())),
            law_enforcement_bases=frozenset(r.get("lawEnforcementBases", ())),
            golden_rules=tuple(r.get("goldenRules", ())),
            must_notify=tuple(MustNotify(frozenset(m["kinds"]), _conditions(m["when"]), m["says"])
                              for m in r.get("mustNotify", ())),
            partners_only=r.get("fromPartnersOnly", False),
            consent_required=r.get("consentRequired", False),
            gateways_from={k: frozenset(v) for k, v in r.get("gatewaysFrom", {}).items()},
        ))
        problems += [f"{where}/gatewaysFrom/{code}: not one of the rule's gateways"
                     for code in r.get("gatewaysFrom", {}) if code not in r.get("gateways", ())]
        problems += _unknown_pointers(catalogue, r["type"], where, _pointers(r))
    offences = doc["criminalOffenceData"]
    for typ, spec in offences["types"].items():
        if typ not in known_types:
            problems.append(f"/criminalOffenceData/types/{typ}: no schema for that message type")
        elif spec != "always":
            problems += _unknown_pointers(catalogue, typ, f"/criminalOffenceData/types/{typ}",
                                          [c["field"] for c in spec])
    defined = {g["id"] for g in doc["general"]}
    problems += [f"/general: the policy applies {rid}, which the rulebook does not define"
                 for rid in GENERAL_RULES if rid not in defined]
    if problems:
        raise ConfigError(f"rulebook {source} is invalid: " + "; ".join(problems))
    return Rulebook(
        edition=doc["edition"], title=doc["title"],
        general={g["id"]: General(g["says"], tuple(g["cite"]), tuple(g.get("goldenRules", ())),
                                  tuple(g.get("flags", ()))) for g in doc["general"]},
        rules=tuple(rules), source=source,
        offence_data={t: () if v == "always" else _conditions(v) for t, v in offences["types"].items()},
        later_clocks=_later_clocks(rules), triage=doc.get("triage", {}),
    )


def _later_clocks(rules: list[Rule]) -> dict[str, tuple[str, ...]]:
    found: dict[str, dict[str, None]] = {}
    for rule in rules:
        for spec in rule.deadlines[1:]:
            for typ in spec.expect:
                found.setdefault(typ, {})[spec.key_suffix] = None
    return {typ: tuple(suffixes) for typ, suffixes in found.items()}


def _pointers(rule: Mapping[str, Any]) -> list[str]:
    """Every payload pointer a rule names."""
    found = [c["field"] for v in rule["to"].values() for c in v.get("when", ())]
    found += [c["field"] for m in rule.get("mustNotify", ()) for c in m["when"]]
    late = rule.get("lateAfter", {})
    found += [late[k] for k in ("field", "orField", "reasonField", "ragField") if k in late]
    for spec in ([rule["deadline"]] if "deadline" in rule else []) + list(rule.get("deadlines", ())):
        found += [c["field"] for c in spec.get("when", ())] + ([spec["startFrom"]] if "startFrom" in spec else [])
    return found


def _unknown_pointers(catalogue: Catalogue, type_name: str, where: str, pointers: list[str]) -> list[str]:
    """Pointers the message type's schema does not declare: a misspelt one would match nothing."""
    name = f"{type_name}.v1.json"
    schema = catalogue.documents.get(name)
    if schema is None:
        return []
    return [f"{where}: {p} is not a field of {type_name}" for p in pointers
            if not in_schema(schema, p, catalogue.documents)]


def _conditions(items: Any) -> tuple[Condition, ...]:
    return tuple(Condition(c["field"], frozenset(c["anyOf"]) if "anyOf" in c else None) for c in items)


def _rag_hours(spec: Mapping[str, Any], local: Mapping[str, Any]) -> dict[str, float] | None:
    if spec.get("localTimescale") != "ragRating":
        return None
    return {rating: float(v["workingHours"]) for rating, v in local.get("ragRating", {}).items()}


def _late_after(spec: Mapping[str, Any], local: Mapping[str, Any]) -> LateAfter:
    return LateAfter(field=spec["field"], says=spec["says"], clock=spec["clock"],
                     working_days=spec.get("workingDays"), school_day_start=spec.get("schoolDayStart"),
                     clock_hours=spec.get("clockHours"), reason_field=spec.get("reasonField"),
                     rag_field=spec.get("ragField"), or_field=spec.get("orField"),
                     rag_hours=_rag_hours(spec, local))


def _deadline(spec: Mapping[str, Any], local: Mapping[str, Any], index: int) -> DeadlineSpec:
    expect = tuple(spec["expect"])
    statuses = tuple(spec.get("receiptStatus", DEFAULT_RECEIPT_STATUS)) if "receipt" in expect else ()
    return DeadlineSpec(expect=expect, says=spec["says"], working_days=spec.get("workingDays"),
                        school_day_start=spec.get("schoolDayStart"), clock_hours=spec.get("clockHours"),
                        months=spec.get("months"), from_payload=spec.get("fromPayload"),
                        start_from=spec.get("startFrom"), when=_conditions(spec.get("when", ())),
                        key_suffix="" if index == 0 else "." + spec["clock"],
                        rag_hours=_rag_hours(spec, local), expect_from=spec.get("expectFrom", "recipient"),
                        receipt_status=statuses, clock=spec["clock"], owed_to=spec.get("owedTo"))


def load(path: Path, catalogue: Catalogue) -> Rulebook:
    """The rulebook in ``path``; whatever is wrong with the file is a :class:`ConfigError` naming it,
    so ``sgb policy check`` says so and a reload keeps the old rulebook."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"no rulebook at {path}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"rulebook {path} is not UTF-8 text") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"rulebook {path} is not valid YAML: {exc}") from exc
    try:
        return parse(doc, catalogue, source=str(path))
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. a mapping key that is not a string
        raise ConfigError(f"rulebook {path} is not a rulebook (its structure cannot be read: "
                          f"{type(exc).__name__})") from exc
