"""Traceability from the guidance to the rulebook: for each golden rule (2018 and 2024 editions),
each statutory or agreed clock and each lawful-basis code, the rules that implement it and the
scenarios that test it (only scenarios that pass count). Anything without either is a gap.

``sgb policy coverage`` prints the table and ``/ig/rulebook`` shows it; the test suite fails on
a gap an IG officer has not been told about.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import orjson

from broker.policy.engine import RulebookPolicy
from broker.policy.rulebook import Rule, Rulebook
from broker.policy.scenarios import Scenario, ScenarioBook, play_all
from broker.wire import lawfulbasis
from broker.wire.catalogue import Catalogue

# The vocabulary list each sharing field takes its codes from, and the general rule that checks it.
CODE_LISTS: Final = (("lawfulBasis", "basis.present"), ("specialCategoryCondition", "basis.special-category"),
                 ("criminalOffenceCondition", "basis.criminal-offence"),
                 ("lawEnforcementBasis", "basis.law-enforcement"), ("statutoryGateway", None))


@dataclass(frozen=True, slots=True)
class Row:
    kind: str                      # golden-rule | clock | code
    id: str
    label: str
    source: str                    # the citation or the edition it comes from
    rules: tuple[str, ...]         # rules that implement it
    scenarios: tuple[str, ...]     # passing scenarios that test it
    note: str = ""                 # e.g. a citation not yet verified
    failing: tuple[str, ...] = ()  # scenarios that would test it, but do not pass

    @property
    def gap(self) -> str | None:
        if not self.rules:  # a text not verified is not cited, so no rule implementing it is no gap
            return None if self.kind == "golden-rule" and self.note else "no rule"
        if not self.scenarios:
            return "no scenario"
        return None

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "label": self.label, "source": self.source, "note": self.note,
                "rules": list(self.rules), "scenarios": list(self.scenarios), "gap": self.gap,
                "failing": list(self.failing)}


@dataclass(frozen=True, slots=True)
class Report:
    rows: tuple[Row, ...]
    failing: tuple[tuple[str, tuple[str, ...]], ...]  # scenario name -> what differed

    @property
    def gaps(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.gap)


def guidance() -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((resources.files("schemas") / "guidance.v1.json").read_bytes())
    return doc


def clocks_of(rule: Rule) -> set[str]:
    """The clocks a rule runs: its deadlines', the local RAG timescale laid over one, its lateAfter's."""
    found = set()
    for spec in rule.deadlines:
        found.add(spec.clock)
        if spec.rag_hours:
            found.add("rag-rating")
    if rule.late_after is not None:
        found.add(rule.late_after.clock)
        if rule.late_after.rag_hours:
            found.add("rag-rating")
    return found


def _codes_of(rule: Rule) -> frozenset[str]:
    return (rule.lawful_bases | rule.special_conditions | rule.offence_conditions | rule.law_enforcement_bases
            | rule.gateways)


def _general_for(entry: dict[str, Any], list_name: str) -> list[str]:
    """The general rules that read a code's vocabulary attributes."""
    general = dict(CODE_LISTS).get(list_name)
    found = [general] if general else []
    if entry.get("notForPublicAuthorities"):
        found.append("basis.public-authority")
    if entry.get("consentBased"):
        found.append("consent.basis-needs-consent")
    if entry.get("withoutConsent"):
        found.append("consent.condition-without-consent")
    if entry.get("notFromKinds"):
        found.append("basis.gateway-available")
    return found


def _tests(kind: str, item: str, rule_ids: Sequence[str], scenario: Scenario) -> bool:
    """Whether ``scenario`` tests the item: by its rule (a golden rule), its rule and clock (a
    clock), or a code it sets on purpose (a lawful-basis code)."""
    if kind == "golden-rule":
        return scenario.rule in rule_ids
    if kind == "clock":
        return scenario.clock == item and scenario.rule in rule_ids
    return item in scenario.codes()


def report(book: Rulebook, scenarios: ScenarioBook, catalogue: Catalogue) -> Report:
    outcomes = play_all(RulebookPolicy(book), catalogue, scenarios)
    passing = [o.scenario for o in outcomes if o.passed]
    failing = [o.scenario for o in outcomes if not o.passed]

    def row(kind: str, item: str, label: str, source: str, rule_ids: Sequence[str], note: str = "") -> Row:
        rule_ids = tuple(dict.fromkeys(rule_ids))
        return Row(kind, item, label, source, rule_ids,
                   tuple(s.name for s in passing if _tests(kind, item, rule_ids, s)), note,
                   tuple(s.name for s in failing if _tests(kind, item, rule_ids, s)))

    rows: list[Row] = []
    for g in guidance()["goldenRules"]:
        rule_ids = [rid for rid, gen in book.general.items() if g["id"] in gen.golden_rules]
        rule_ids += [r.id for r in book.rules if g["id"] in r.golden_rules]
        rows.append(row("golden-rule", g["id"], g["text"], g["source"], rule_ids, g.get("unverified", "")))
    for c in guidance()["clocks"]:
        note = "; ".join(n for n in (c["kind"], c.get("unverified", "")) if n)
        rows.append(row("clock", c["id"], c["says"], c["cite"], [r.id for r in book.rules if c["id"] in clocks_of(r)],
                        note))
    lists = lawfulbasis.lists()
    for list_name, _ in CODE_LISTS:
        for entry in lists[list_name]:
            code = entry["code"]
            rule_ids = _general_for(entry, list_name) + [r.id for r in book.rules if code in _codes_of(r)]
            rows.append(row("code", code, entry["label"], entry["citation"], rule_ids, entry.get("unverified", "")))
    return Report(tuple(rows), tuple((o.scenario.name, o.problems) for o in outcomes if not o.passed))


def table(rep: Report, *, width: int = 3) -> str:
    """The report as plain text: one line per item, then the gaps and any failing scenario."""
    out: list[str] = []
    for kind, title in (("golden-rule", "Golden rules"), ("clock", "Clocks"), ("code", "Lawful-basis codes")):
        out.append(f"{title}")
        for r in (row for row in rep.rows if row.kind == kind):
            scen = _some(r.scenarios, width)
            out.append(f"  {r.id:<36} rules: {', '.join(r.rules) or '-'}")
            out.append(f"  {'':<36} scenarios: {scen}{'   GAP: ' + r.gap if r.gap else ''}")
            if r.note:
                out.append(f"  {'':<36} note: {r.note}")
        out.append("")
    gaps = rep.gaps
    out.append(f"{len(rep.rows)} items, {len(gaps)} gap(s)" + (": " + ", ".join(f"{g.id} ({g.gap})" for g in gaps)
                                                             if gaps else ""))
    for name, problems in rep.failing:
        out.append(f"FAILING scenario {name!r}: {'; '.join(problems)}")
    return "\n".join(out)


def _some(names: Sequence[str], width: int) -> str:
    if not names:
        return "-"
    shown = ", ".join(repr(n) for n in names[:width])
    return shown + (f" and {len(names) - width} more" if len(names) > width else "")
