"""The rulebook policy, scenario by scenario from the guidance, and its invariants.

Each scenario names the rule it exercises; the expectation is the decision an IG officer would
sign off: refuse (with code and rule), or share per recipient with the fields and review flags.
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import rulebook as rulebooks
from broker.catalogue import Catalogue
from broker.errors import ConfigError, RejectedMessage
from broker.policy import Decision, RulebookPolicy
from broker.registry import Agency
from tests.helpers import example

KIND_OF = {"police": "police-met", "health": "health-camden", "local-authority": "la-camden",
           "school": "school-hillside", "voluntary-sector": "vol-camden", "probation": "probation-london",
           "national-panel": "cscpr-panel"}


def _agency(kind: str) -> Agency:
    return Agency(KIND_OF[kind], kind, kind, "X25519-SHA256-AES256GCM", ())


@pytest.fixture(scope="module")
def policy() -> RulebookPolicy:
    return RulebookPolicy(rulebooks.load(rulebooks.DEFAULT_RULEBOOK, Catalogue()), clock=lambda: NOW)


BASE_SHARING: dict[str, Any] = {
    "vocabulary": "sgb-lawful-basis/1", "purpose": "CHILD_PROTECTION", "lawfulBasis": "UKGDPR_6_1_E",
    "specialCategoryCondition": "UKGDPR_9_2_G_SCH1_P18", "statutoryGateways": ["CA1989_S47"],
    "consentStatus": "NOT_SOUGHT", "nonConsentReason": "WOULD_INCREASE_RISK_OF_HARM",
    "subjectInformed": "NOT_INFORMED_UNSAFE", "urgency": "URGENT",
    "decidedBy": {"role": "Social Worker", "staffRef": "X-1"}, "guidanceEdition": "WT2023",
}
POLICE = {"lawEnforcementBasis": "DPA_SCH8_P4", "criminalOffenceCondition": "DPA_SCH1_P18"}
DROP = object()
NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC).timestamp()  # scenarios are judged at a fixed time


@dataclass(frozen=True)
class Scenario:
    rule: str                       # the rule the scenario exercises
    sender: str
    type: str
    to: tuple[str, ...]
    sharing: dict[str, Any] = field(default_factory=dict)  # changes to BASE_SHARING (DROP removes)
    payload: dict[str, Any] = field(default_factory=dict)  # top-level changes to the type's example
    refuse: str | None = None       # expected rejection code
    shared: tuple[str, ...] = ()    # kinds that receive it
    withheld: dict[str, tuple[str, ...]] = field(default_factory=dict)
    flags: tuple[str, ...] = ()


S = Scenario
SCENARIOS: dict[str, Scenario] = {
    "police refer a child under Part 3": S("referral.to-local-authority", "police", "referral", ("local-authority",),
                                           POLICE, shared=("local-authority",), flags=("shared-without-consent",)),
    "police without a Sch 8 condition": S("basis.law-enforcement", "police", "referral", ("local-authority",),
                                          refuse="no-lawful-basis"),
    "health refer with public task and Art 9": S("basis.special-category", "health", "referral", ("local-authority",),
                                                 shared=("local-authority",), flags=("shared-without-consent",)),
    "health refer without an Art 9 condition": S("basis.special-category", "health", "referral", ("local-authority",),
                                                 {"specialCategoryCondition": DROP}, refuse="no-lawful-basis"),
    "school relies on legitimate interests": S("basis.public-authority", "school", "referral", ("local-authority",),
                                               {"lawfulBasis": "UKGDPR_6_1_F"}, refuse="no-lawful-basis"),
    "school relies on recognised legitimate interest": S("basis.public-authority", "school", "referral",
                                                         ("local-authority",),
                                                         {"lawfulBasis": "UKGDPR_6_1_EA_SAFEGUARDING"},
                                                         refuse="no-lawful-basis"),
    "charity relies on recognised legitimate interest": S("referral.to-local-authority", "voluntary-sector",
                                                          "referral", ("local-authority",),
                                                          {"lawfulBasis": "UKGDPR_6_1_EA_SAFEGUARDING"},
                                                          shared=("local-authority",),
                                                          flags=("shared-without-consent",)),
    "no Art 6 basis": S("basis.present", "health", "referral", ("local-authority",), {"lawfulBasis": DROP},
                        refuse="no-lawful-basis"),
    "referral addressed only to a school": S("referral.to-local-authority", "health", "referral", ("school",),
                                             refuse="not-permitted"),
    "referral to the LA and a school is narrowed": S("referral.to-local-authority", "health", "referral",
                                                     ("local-authority", "school"), shared=("local-authority",),
                                                     flags=("shared-without-consent",)),
    "no consent and no reason": S("consent.reason", "health", "referral", ("local-authority",),
                                  {"nonConsentReason": DROP}, refuse="no-lawful-basis"),
    "emergency without a consent reason is shared and flagged": S(
        "urgent.never-held", "health", "referral", ("local-authority",),
        {"nonConsentReason": DROP, "urgency": "EMERGENCY"}, shared=("local-authority",),
        flags=("emergency-without-consent-reason", "shared-without-consent")),
    "consent refused but overridden": S("consent.override-review", "health", "referral", ("local-authority",),
                                        {"consentStatus": "REFUSED_OVERRIDDEN"}, shared=("local-authority",),
                                        flags=("consent-overridden",)),
    "consent given": S("referral.to-local-authority", "health", "referral", ("local-authority",),
                       {"consentStatus": "GIVEN", "nonConsentReason": DROP}, shared=("local-authority",)),
    "consent as the basis": S("referral.to-local-authority", "health", "referral", ("local-authority",),
                              {"lawfulBasis": "UKGDPR_6_1_A", "consentStatus": "GIVEN", "nonConsentReason": DROP},
                              shared=("local-authority",)),
    "family informed not recorded": S("transparency.informed", "health", "referral", ("local-authority",),
                                      {"subjectInformed": DROP}, refuse="no-lawful-basis"),
    "emergency with family informed not recorded": S(
        "urgent.never-held", "health", "referral", ("local-authority",),
        {"subjectInformed": DROP, "urgency": "EMERGENCY"}, shared=("local-authority",),
        flags=("shared-without-consent", "emergency-family-informed-unrecorded")),
    "advice sought is queued for review": S("referral.to-local-authority", "health", "referral", ("local-authority",),
                                            {"adviceSought": {"from": "CALDICOTT_GUARDIAN"}},
                                            shared=("local-authority",),
                                            flags=("shared-without-consent", "advice-sought")),
    "outcome to a school is minimised": S(
        "referral-outcome.to-referrer", "local-authority", "referral-outcome", ("school",),
        shared=("school",), withheld={"school": ("allocatedTeam", "reasons")}, flags=("shared-without-consent",)),
    "outcome to police in full": S("referral-outcome.to-referrer", "local-authority", "referral-outcome",
                                   ("police",), shared=("police",), flags=("shared-without-consent",)),
    "outcome from police is not a route": S("route.referral-outcome", "police", "referral-outcome",
                                            ("local-authority",), POLICE, refuse="not-permitted"),
    "outcome from the LA on legal obligation": S("referral-outcome.to-referrer", "local-authority",
                                                 "referral-outcome", ("health",), {"lawfulBasis": "UKGDPR_6_1_C"},
                                                 shared=("health",), flags=("shared-without-consent",)),
    "outcome on a basis the agreement does not accept": S("referral-outcome.to-referrer", "local-authority",
                                                          "referral-outcome", ("health",),
                                                          {"lawfulBasis": "UKGDPR_6_1_D"}, refuse="no-lawful-basis"),
    "s47 request to health": S("information-request.between-partners", "local-authority", "information-request",
                               ("health",), shared=("health",), flags=("shared-without-consent",)),
    "request without a statutory gateway": S("information-request.between-partners", "local-authority",
                                             "information-request", ("health",), {"statutoryGateways": DROP},
                                             refuse="no-lawful-basis"),
    "request from a school": S("route.information-request", "school", "information-request",
                               ("health",), refuse="not-permitted"),
    "police request to a school": S("information-request.between-partners", "police", "information-request",
                                    ("school",), POLICE, shared=("school",), flags=("shared-without-consent",)),
    "answer to the LA": S("information-response.to-requester", "health", "information-response",
                          ("local-authority",), shared=("local-authority",), flags=("shared-without-consent",)),
    "answer protects an at-risk informant": S("identity.protect", "health", "information-response",
                                              ("local-authority",), {"protectedIdentities": ["other-person"]},
                                              shared=("local-authority",),
                                              withheld={"local-authority": ("respondent",)},
                                              flags=("shared-without-consent",)),
    "answer addressed to a school": S("information-response.to-requester", "health", "information-response",
                                      ("school",), refuse="not-permitted"),
    "answer from a school on legitimate interests": S("basis.public-authority", "school", "information-response",
                                                      ("local-authority",), {"lawfulBasis": "UKGDPR_6_1_F"},
                                                      refuse="no-lawful-basis"),
    "answer from a charity on legitimate interests": S("information-response.to-requester", "voluntary-sector",
                                                       "information-response", ("local-authority",),
                                                       {"lawfulBasis": "UKGDPR_6_1_F"}, shared=("local-authority",),
                                                       flags=("shared-without-consent",)),
    "Operation Encompass to the school is minimised": S(
        "encompass.police-to-school", "police", "encompass-notification", ("school",),
        POLICE | {"statutoryGateways": ["DAA2021_S49A"], "purpose": "DOMESTIC_ABUSE_NOTIFICATION"}, shared=("school",),
        withheld={"school": ("adultsInvolved", "circumstances", "incidentLocation", "voiceOfChild")},
        flags=("shared-without-consent",)),
    "Operation Encompass in full for a home-educated child": S(
        "encompass.police-to-school", "police", "encompass-notification", ("local-authority",),
        POLICE | {"statutoryGateways": ["DAA2021_S49A"]}, shared=("local-authority",),
        flags=("shared-without-consent",)),
    "Operation Encompass without the s49A gateway": S("encompass.police-to-school", "police",
                                                      "encompass-notification", ("school",), POLICE,
                                                      refuse="no-lawful-basis"),
    "Operation Encompass from health": S("route.encompass-notification", "health", "encompass-notification",
                                         ("school",), refuse="not-permitted"),
    "strategy discussion invitation to the school": S("strategy-discussion.la-to-partners", "local-authority",
                                                      "strategy-discussion", ("school", "police", "health"),
                                                      shared=("school", "police", "health"),
                                                      flags=("shared-without-consent",)),
    "child protection status to health": S("cp-status.la-to-health", "local-authority", "child-protection-status",
                                           ("health",), shared=("health",), flags=("shared-without-consent",)),
    "child protection status to police": S("cp-status.la-to-health", "local-authority", "child-protection-status",
                                           ("police",), refuse="not-permitted"),
    "allegation against a coach to the LADO": S("lado.referral", "school", "lado-referral", ("local-authority",),
                                                shared=("local-authority",), flags=("shared-without-consent",)),
    "serious incident notified to the panel": S("sin.la-to-panel", "local-authority",
                                                "serious-incident-notification", ("national-panel",),
                                                {"statutoryGateways": ["CA2004_S16C"]}, shared=("national-panel",),
                                                flags=("shared-without-consent",)),
    "serious incident notification without s16C": S("sin.la-to-panel", "local-authority",
                                                     "serious-incident-notification", ("national-panel",),
                                                     refuse="no-lawful-basis"),
    "serious incident notified late is flagged": S("sin.la-to-panel", "local-authority",
                                                    "serious-incident-notification", ("national-panel",),
                                                    {"statutoryGateways": ["CA2004_S16C"]},
                                                    {"becameAware": "2026-11-02"}, shared=("national-panel",),
                                                    flags=("shared-without-consent", "late")),
    "rapid review to the panel": S("rapid-review.to-panel", "local-authority", "rapid-review", ("national-panel",),
                                   {"statutoryGateways": ["CA2004_S16C"]}, shared=("national-panel",),
                                   flags=("shared-without-consent",)),
    "a decision not to share reaches no one": S("decision-not-to-share.record", "health", "decision-not-to-share",
                                                ("local-authority",), {"lawfulBasis": DROP}),
    "receipt needs no basis": S("receipt.any", "school", "receipt", ("police",),
                                {"lawfulBasis": DROP, "consentStatus": "NOT_APPLICABLE"}, shared=("police",)),
    "agencies may not send rejections": S("route.rejection", "health", "rejection", ("police",),
                                          refuse="not-permitted"),
}


def _apply(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _decide(policy: RulebookPolicy, s: Scenario) -> Decision:
    catalogue = Catalogue()
    mtype = catalogue.message_type(s.type, 1)
    assert mtype is not None
    payload = _apply(example(f"{s.type}.example.json"), s.payload)
    return policy.decide(_agency(s.sender), tuple(_agency(k) for k in s.to), mtype,
                         _apply(BASE_SHARING, s.sharing), payload)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario(name: str, policy: RulebookPolicy) -> None:
    s = SCENARIOS[name]
    if s.refuse:
        with pytest.raises(RejectedMessage) as info:
            _decide(policy, s)
        assert info.value.code == s.refuse
        assert info.value.rule == s.rule
        return
    decision = _decide(policy, s)
    shared = {KIND_OF[k] for k in s.shared}
    assert {d.recipient for d in decision.shared} == shared
    for d in decision.shared:
        kind = next(k for k, v in KIND_OF.items() if v == d.recipient)
        assert d.withheld == s.withheld.get(kind, ())
        assert s.rule in d.rules
    assert decision.flags == s.flags


def test_scenarios_cover_every_rule_in_the_rulebook() -> None:
    book = rulebooks.load(rulebooks.DEFAULT_RULEBOOK, Catalogue())
    exercised = {s.rule for s in SCENARIOS.values()}
    assert {r.id for r in book.rules} <= exercised
    assert set(book.general) <= exercised | {"basis.present"}  # basis.present: every share


@settings(max_examples=150, deadline=None)
@given(extra=st.dictionaries(st.from_regex(r"[a-z][A-Za-z]{0,12}", fullmatch=True), st.integers(), max_size=8),
       kind=st.sampled_from(["school", "voluntary-sector", "probation", "police"]))
def test_no_field_outside_the_allow_list_reaches_a_recipient(extra: dict[str, int], kind: str) -> None:
    """Whatever the payload holds, a recipient gets only its allow-list."""
    book = rulebooks.load(rulebooks.DEFAULT_RULEBOOK, Catalogue())
    policy = RulebookPolicy(book)
    mtype = Catalogue().message_type("referral-outcome", 1)
    assert mtype is not None
    payload = example("referral-outcome.example.json") | extra
    decision = policy.decide(_agency("local-authority"), (_agency(kind),), mtype, BASE_SHARING, payload)
    (rd,) = decision.shared
    allowed = book.rule_for("referral-outcome", "local-authority").fields[kind]  # type: ignore[union-attr]
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
    bad.write_text("rulebook: sgb-rulebook\nversion: 1\n")
    with pytest.raises(ConfigError, match="invalid"):
        rulebooks.load(bad, Catalogue())
    bad.write_text("rules: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        rulebooks.load(bad, Catalogue())


async def test_reload_swaps_a_good_rulebook_and_refuses_a_bad_one(tmp_path: Any) -> None:
    from broker.policy import ReloadablePolicy

    path = tmp_path / "rulebook.yaml"
    path.write_text(rulebooks.DEFAULT_RULEBOOK.read_text())
    live = ReloadablePolicy(path, Catalogue())
    s = SCENARIOS["referral to the LA and a school is narrowed"]
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
