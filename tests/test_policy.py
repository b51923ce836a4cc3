"""The rulebook policy, scenario by scenario from the guidance, and its invariants.

The scenarios are data (broker/policy/rulebook.scenarios.yaml), so an IG officer reads the same cases the
suite plays: each names the rule it exercises and the guidance clause it plays; the expectation
is the decision the officer would sign off.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.errors import ConfigError
from broker.policy import coverage, pointer, scenarios
from broker.policy import rulebook as rulebooks
from broker.policy.engine import Decision, RulebookPolicy
from broker.wire import lawfulbasis
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Agency
from tests.helpers import example

KIND_OF = {"police": "police-met", "health": "health-camden", "local-authority": "la-camden",
           "school": "school-hillside", "voluntary-sector": "vol-camden", "probation": "probation-london",
           "national-panel": "cscpr-panel"}
CATALOGUE = Catalogue()
BOOK = rulebooks.load(rulebooks.DEFAULT_RULEBOOK, CATALOGUE)
SCENARIOS = scenarios.load(scenarios.default_path(rulebooks.DEFAULT_RULEBOOK))
NAMES = [s.name for s in SCENARIOS.scenarios]
# Clocks the rulebook does not run yet: their processes have no message type (issue 14). A new gap fails.
KNOWN_CLOCK_GAPS: set[str] = set()  # every clock of the guidance has a rule and a scenario


def _agency(kind: str) -> Agency:
    return SCENARIOS.agencies[KIND_OF[kind]]


@pytest.fixture(scope="module")
def policy() -> RulebookPolicy:
    return RulebookPolicy(BOOK)


BASE_SHARING: dict[str, Any] = dict(SCENARIOS.base_sharing)


@pytest.mark.parametrize("name", NAMES)
def test_scenario(name: str, policy: RulebookPolicy) -> None:
    """Every scenario in broker/policy/rulebook.scenarios.yaml gets the decision it says (code, field and
    rule of a refusal; recipients, withheld fields, flags and due date of a share)."""
    s = next(s for s in SCENARIOS.scenarios if s.name == name)
    outcome = scenarios.play(policy, CATALOGUE, SCENARIOS, s)
    assert outcome.passed, outcome.problems


def test_each_scenario_names_its_rule_and_the_guidance_it_plays() -> None:
    known = set(BOOK.general) | {r.id for r in BOOK.rules}
    clocks = {c["id"] for c in coverage.guidance()["clocks"]}
    for s in SCENARIOS.scenarios:
        assert s.plays.strip(), s.name
        assert s.rule in known or s.rule.startswith("route.") or s.rule == "envelope.v1.json", s.name
        judged = s.expect.due or {"late", "clock-unjudged"} & set(s.expect.flags)
        assert s.clock is None or (s.clock in clocks and judged), s.name
    assert len(SCENARIOS.scenarios) >= 80


def test_scenarios_cover_every_rule_in_the_rulebook() -> None:
    exercised = {s.rule for s in SCENARIOS.scenarios}
    assert {r.id for r in BOOK.rules} <= exercised
    assert set(BOOK.general) <= exercised


def test_every_golden_rule_clock_and_code_is_covered() -> None:
    """The traceability table (sgb policy coverage): each golden rule (2018 and 2024), each lawful-basis
    code and each clock the rulebook runs has a rule and a passing scenario; nothing else is a gap."""
    report = coverage.report(BOOK, SCENARIOS, CATALOGUE)
    assert not report.failing
    kinds = {kind: {r.id for r in report.rows if r.kind == kind} for kind in ("golden-rule", "clock", "code")}
    assert len(kinds["golden-rule"]) == 14
    assert len(kinds["code"]) == sum(len(lawfulbasis.lists()[n]) for n, _ in coverage.CODE_LISTS)
    gaps = {(r.kind, r.id): r.gap for r in report.gaps}
    assert gaps == {("clock", c): "no rule" for c in KNOWN_CLOCK_GAPS}


def test_a_scenario_that_stops_holding_is_reported() -> None:
    """Coverage counts only scenarios that pass: break one rule and its items lose the scenario."""
    text = rulebooks.DEFAULT_RULEBOOK.read_text().replace(
        "    gateways: [DAA2021_S49A]\n", "    gateways: [DAA2021_S49A, CA1989_S47]\n")
    book = rulebooks.parse(yaml.safe_load(text), CATALOGUE)
    report = coverage.report(book, SCENARIOS, CATALOGUE)
    assert [name for name, _ in report.failing] == ["Operation Encompass without the s49A gateway"]


@settings(max_examples=150, deadline=None)
@given(extra=st.dictionaries(st.from_regex(r"[a-z][A-Za-z]{0,12}", fullmatch=True), st.integers(), max_size=8),
       kind=st.sampled_from(["school", "voluntary-sector", "probation", "police"]))
def test_no_field_outside_the_allow_list_reaches_a_recipient(extra: dict[str, int], kind: str) -> None:
    """Whatever the payload holds, a recipient gets only its allow-list."""
    policy = RulebookPolicy(BOOK)
    mtype = CATALOGUE.message_type("referral-outcome", 1)
    assert mtype is not None
    payload = example("referral-outcome.example.json") | extra
    decision = policy.decide(_agency("local-authority"), (_agency(kind),), mtype, BASE_SHARING, payload)
    (rd,) = decision.shared
    allowed = BOOK.rule_for("referral-outcome", "local-authority").to[kind].fields  # type: ignore[union-attr]
    received = set(payload) if rd.fields is None else set(rd.fields)
    if allowed is not None:
        assert received <= set(allowed)
    assert received | set(rd.withheld) == set(payload)


def test_a_bad_rulebook_is_refused_naming_each_problem(tmp_path: Any) -> None:
    bad = tmp_path / "bad.yaml"
    text = rulebooks.DEFAULT_RULEBOOK.read_text().replace("type: receipt", "type: parking-fine")
    text = text.replace("id: receipt.any", "id: referral.to-local-authority")
    bad.write_text(text)
    with pytest.raises(ConfigError) as info:
        rulebooks.load(bad, Catalogue())
    assert "parking-fine" in str(info.value) and "used twice" in str(info.value)
    holder = "      CA1989_S27: [local-authority]\n"
    assert holder in rulebooks.DEFAULT_RULEBOOK.read_text()  # a power held for a gateway the rule does not list
    extra = holder + "      CA2004_S16C: [police-force]\n"
    bad.write_text(rulebooks.DEFAULT_RULEBOOK.read_text().replace(holder, extra))
    with pytest.raises(ConfigError, match="gatewaysFrom/CA2004_S16C: not one of the rule's gateways"):
        rulebooks.load(bad, Catalogue())
    bad.write_text("rulebook: sgb-rulebook\nversion: 1\n")
    with pytest.raises(ConfigError, match="invalid"):
        rulebooks.load(bad, Catalogue())
    bad.write_text("rules: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        rulebooks.load(bad, Catalogue())
    bad.write_bytes(b"rulebook: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        rulebooks.load(bad, Catalogue())
    for text in ("? [x]\n: 1\n", "1: a\n", "null: b\n"):  # mapping keys that are not strings
        bad.write_text(text)
        with pytest.raises(ConfigError):
            rulebooks.load(bad, Catalogue())


async def test_reload_swaps_a_good_rulebook_and_refuses_a_bad_one(tmp_path: Any) -> None:
    from broker.policy.engine import ReloadablePolicy

    path = tmp_path / "rulebook.yaml"
    path.write_text(rulebooks.DEFAULT_RULEBOOK.read_text())
    live = ReloadablePolicy(path, Catalogue())
    s = next(s for s in SCENARIOS.scenarios if s.name == "referral to the LA and a school is narrowed")
    assert live.current.rulebook.rule_for("referral", "health") is not None
    path.write_text("rulebook: [broken")
    with pytest.raises(ConfigError):
        live.reload()
    assert {d.recipient for d in _decide(live.current, s).shared} == {"la-camden"}  # old one in force
    bases = "    lawfulBasis: [UKGDPR_6_1_E, UKGDPR_6_1_C, UKGDPR_6_1_D, UKGDPR_6_1_A"
    path.write_text(rulebooks.DEFAULT_RULEBOOK.read_text().replace(
        "      local-authority: {fields: all}\n" + bases,
        "      local-authority: {fields: all}\n      school: {fields: [child, concern]}\n" + bases))
    assert live.reload().rule_for("referral", "health") is not None
    decision = _decide(live.current, s)
    assert {d.recipient for d in decision.shared} == {"la-camden", "school-hillside"}
    school = next(d for d in decision.shared if d.recipient == "school-hillside")
    assert school.fields == ("child", "concern")


def _decide(policy: RulebookPolicy, s: scenarios.Scenario) -> Decision:
    return scenarios.decide(policy, CATALOGUE, SCENARIOS, s)


@settings(max_examples=100, deadline=None)
@given(child=st.dictionaries(st.sampled_from(["name", "dateOfBirth", "upn", "nhsNumber", "gender"]),
                             st.just("x"), min_size=1))
def test_the_school_gets_only_the_members_of_the_child_it_is_allowed(child: dict[str, str]) -> None:
    """Operation Encompass: of the child, the key adult gets the name and date of birth, nothing else."""
    payload = example("encompass-notification.example.json") | {"child": child}
    rule = BOOK.rule_for("encompass-notification", "police")
    assert rule is not None and rule.to["school"].fields is not None
    kept, withheld = pointer.narrow(payload, rule.to["school"].fields)
    sent = pointer.project(payload, kept)
    assert set(sent.get("child", {})) == set(child) & {"name", "dateOfBirth"}
    assert "adultsInvolved" not in sent and "adultsInvolved" in withheld
    assert {f"child/{k}" for k in child} == {n for n in (*kept, *withheld) if n.startswith("child/")}


def test_pointer_conditions_reach_into_arrays() -> None:
    doc = {"household": [{"role": "parent"}, {"role": "alleged-perpetrator"}], "flag": False, "n": None}
    assert pointer.Condition("/household/*/role", frozenset({"alleged-perpetrator"})).holds(doc)
    assert not pointer.Condition("/household/*/role", frozenset({"sibling"})).holds(doc)
    assert pointer.Condition("/flag").holds(doc) and not pointer.Condition("/n").holds(doc)
    assert not pointer.Condition("/missing/deeper").holds(doc)
    assert pointer.Condition("/flag", frozenset({False})).holds(doc)


def test_every_flag_a_decision_can_raise_reaches_the_review_queue() -> None:
    """A flag without a review label would be dropped by the audit index's review queue."""
    from broker.audit.index import REVIEW_FLAGS

    raised = {f for s in SCENARIOS.scenarios for f in s.expect.flags}
    declared = {f for g in BOOK.general.values() for f in g.flags} | {
        "late", "clock-unjudged", "recipient-missing", "recipient-unreachable"}  # the last: the pipeline's
    assert raised <= declared <= set(REVIEW_FLAGS)
