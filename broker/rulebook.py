"""The information-sharing rulebook: the partnership's agreement as data (``deploy/rulebook.yaml``).

Loading validates the file against ``schemas/rulebook.v1.json`` and then its meaning (every
message type exists, rule ids are unique, each type has at most one rule per sender kind).
A bad rulebook raises :class:`~broker.errors.ConfigError` naming each problem, so a reload
can refuse it and keep the old one in force.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from broker.catalogue import Catalogue
from broker.errors import ConfigError

DEFAULT_RULEBOOK = Path(__file__).resolve().parent.parent / "deploy" / "rulebook.yaml"

# Receipt statuses a deadline may wait for ("delivered" only means the agency's system took the
# message), and those that count when a rule expecting a receipt does not say.
RECEIPT_STATUSES: Final = ("delivered", "accepted", "actioned")
DEFAULT_RECEIPT_STATUS: Final = ("accepted", "actioned")


@dataclass(frozen=True, slots=True)
class Protection:
    fields: tuple[str, ...]
    from_kinds: frozenset[str]


@dataclass(frozen=True, slots=True)
class DeadlineSpec:
    """When the recipient must reply, and with which message types (and, for a ``receipt``, which
    statuses: ``receipt_status``, by default accepted or actioned)."""

    expect: tuple[str, ...]
    says: str
    working_days: int | None = None
    school_day_start: str | None = None   # "HH:MM"
    from_payload: str | None = None       # a top-level date-time field of the payload
    rag_hours: Mapping[str, float] | None = None  # local MASH timescale by the payload's risk.ragRating
    from_sender: bool = False  # the reply is expected from the sender (e.g. a rapid review), not the recipient
    receipt_status: tuple[str, ...] = ()  # receipt statuses that stop the clock; () unless expect has "receipt"


@dataclass(frozen=True, slots=True)
class LateAfter:
    """Flag a message sent more than ``working_days`` after the date in ``field``."""

    field: str
    working_days: int
    says: str


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    says: str
    cite: tuple[str, ...]
    type: str
    senders: frozenset[str]
    fields: Mapping[str, tuple[str, ...] | None]  # recipient kind -> allowed top-level fields (None: all)
    lawful_bases: frozenset[str]
    gateways: frozenset[str]
    protect: Mapping[str, Protection]
    deadline: DeadlineSpec | None = None
    late_after: LateAfter | None = None


@dataclass(frozen=True, slots=True)
class Rulebook:
    edition: str
    title: str
    public_authorities: frozenset[str]
    general: Mapping[str, tuple[str, tuple[str, ...]]]  # id -> (says, cite)
    rules: tuple[Rule, ...]
    source: str

    def rule_for(self, type_name: str, sender_kind: str) -> Rule | None:
        for rule in self.rules:
            if rule.type == type_name and sender_kind in rule.senders:
                return rule
        return None

    def citation(self, rule_id: str) -> tuple[str, ...]:
        if rule_id in self.general:
            return self.general[rule_id][1]
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
        deadline = r.get("deadline") or {}
        if "receiptStatus" in deadline and "receipt" not in deadline["expect"]:
            problems.append(f"{where}: deadline.receiptStatus applies only when deadline.expect includes receipt")
        rules.append(Rule(
            id=r["id"], says=r["says"], cite=tuple(r["cite"]), type=r["type"], senders=frozenset(r["from"]),
            fields={k: None if v["fields"] == "all" else tuple(v["fields"]) for k, v in r["to"].items()},
            lawful_bases=frozenset(r.get("lawfulBasis", ())), gateways=frozenset(r.get("gateways", ())),
            protect={k: Protection(tuple(v["fields"]), frozenset(v["from"])) for k, v in r.get("protect", {}).items()},
            deadline=_deadline(r.get("deadline"), doc.get("localTimescales", {})),
            late_after=LateAfter(r["lateAfter"]["field"], r["lateAfter"]["workingDays"], r["lateAfter"]["says"])
            if "lateAfter" in r else None,
        ))
    if problems:
        raise ConfigError(f"rulebook {source} is invalid: " + "; ".join(problems))
    return Rulebook(
        edition=doc["edition"], title=doc["title"], public_authorities=frozenset(doc["publicAuthorities"]),
        general={g["id"]: (g["says"], tuple(g["cite"])) for g in doc["general"]}, rules=tuple(rules), source=source,
    )


def _deadline(spec: Mapping[str, Any] | None, local: Mapping[str, Any]) -> DeadlineSpec | None:
    if spec is None:
        return None
    rag = None
    if spec.get("localTimescale") == "ragRating":
        rag = {rating: float(v["workingHours"]) for rating, v in local.get("ragRating", {}).items()}
    expect = tuple(spec["expect"])
    statuses = tuple(spec.get("receiptStatus", DEFAULT_RECEIPT_STATUS)) if "receipt" in expect else ()
    return DeadlineSpec(expect=expect, says=spec["says"], working_days=spec.get("workingDays"),
                        school_day_start=spec.get("schoolDayStart"), from_payload=spec.get("fromPayload"),
                        rag_hours=rag, from_sender=spec.get("expectFrom") == "sender", receipt_status=statuses)


def load(path: Path, catalogue: Catalogue) -> Rulebook:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"no rulebook at {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"rulebook {path} is not valid YAML: {exc}") from exc
    return parse(doc, catalogue, source=str(path))
