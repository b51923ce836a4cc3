"""Scenarios: the rulebook played against the guidance, case by case.

A scenario file (``broker/policy/rulebook.scenarios.yaml`` beside the rulebook) holds worked cases an
IG officer can read: who sends which message to whom, with which sharing block and payload
changes, the rule and the guidance clause it plays, and the decision the officer would sign off
(refused with a code and a field, or shared with these recipients, these fields withheld, these
review flags and this due date). :func:`play` runs one through the same checks the broker makes
(the sharing block's schema, the payload's schema, then the policy) and says what differed. The
test suite plays every scenario; ``sgb policy coverage`` traces them to the guidance.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import yaml

from broker.errors import ConfigError, Malformed, RejectedMessage
from broker.policy.engine import Decision, RulebookPolicy
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Agency


@dataclass(frozen=True, slots=True)
class Expect:
    refuse: str | None = None         # the rejection code, when the whole message is refused
    field: str | None = None          # and the field the refusal names
    shared: tuple[str, ...] = ()      # agency ids that receive it
    withheld: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    flags: tuple[str, ...] = ()
    due: str | None = None            # ISO time the recipient's (or the sender's side's) reply is due
    expect_from: str | None = None    # who owes that reply: recipient, sender or partners
    not_shared: str | None = None     # a decision not to share: the reason code recorded


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    rule: str
    plays: str                      # the guidance clause the scenario plays
    sender: str
    type: str
    to: tuple[str, ...]
    sharing: Mapping[str, Any]      # changes to the base sharing block (None removes)
    payload: Mapping[str, Any]      # JSON pointer -> new value (None removes), on the type's example
    expect: Expect
    clock: str | None = None        # the clock of schemas/guidance.v1.json it tests (by due date or "late")

    def codes(self) -> frozenset[str]:
        """The vocabulary codes this scenario sets on purpose (the ones it tests)."""
        found: set[str] = set()
        for value in self.sharing.values():
            if isinstance(value, str):
                found.add(value)
            elif isinstance(value, list):
                found.update(v for v in value if isinstance(v, str))
        return frozenset(found)


@dataclass(frozen=True, slots=True)
class ScenarioBook:
    at: float                              # when the broker receives every scenario's message
    agencies: Mapping[str, Agency]
    base_sharing: Mapping[str, Any]
    scenarios: tuple[Scenario, ...]
    source: str


def default_path(rulebook: Path) -> Path:
    """The scenarios that go with a rulebook: ``<name>.scenarios.yaml`` beside it."""
    return rulebook.with_name(rulebook.stem + ".scenarios.yaml")


def load(path: Path) -> ScenarioBook:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"no scenarios at {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"scenarios {path} are not valid YAML: {exc}") from exc
    try:
        agencies = {aid: Agency(aid, a["kind"], a.get("name", aid), "X25519-SHA256-AES256GCM", (),
                                public_authority=a["publicAuthority"], organisation_type=a["organisationType"],
                                areas=frozenset(a.get("areas", ()))) for aid, a in doc["agencies"].items()}
        scenarios = []
        names: set[str] = set()
        for s in doc["scenarios"]:
            if s["name"] in names:
                raise ConfigError(f"scenario {s['name']!r} is named twice in {path}")
            names.add(s["name"])
            for aid in (s["from"], *s["to"]):
                if aid not in agencies:
                    raise ConfigError(f"scenario {s['name']!r}: no agency {aid!r} in {path}")
            e = s["expect"]
            scenarios.append(Scenario(
                name=s["name"], rule=s["rule"], plays=s["plays"], sender=s["from"], type=s["type"],
                to=tuple(s["to"]), sharing=s.get("sharing") or {}, payload=s.get("payload") or {},
                expect=Expect(refuse=e.get("refuse"), field=e.get("field"), shared=tuple(e.get("shared", ())),
                              withheld={k: tuple(v) for k, v in (e.get("withheld") or {}).items()},
                              flags=tuple(e.get("flags", ())), due=e.get("due"), expect_from=e.get("expectFrom"),
                              not_shared=e.get("notShared")),
                clock=s.get("clock"),
            ))
        at = dt.datetime.fromisoformat(doc["at"].replace("Z", "+00:00")).timestamp()
        return ScenarioBook(at, agencies, doc["base"]["sharing"], tuple(scenarios), str(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"scenarios {path} are malformed: {type(exc).__name__} {exc}") from exc


def _example(typ: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((resources.files("schemas.examples") / f"{typ}.example.json").read_bytes())
    return data


def _set(doc: dict[str, Any], pointer: str, value: Any) -> None:
    *parents, last = pointer.split("/")[1:]
    node: Any = doc
    for token in parents:
        node = node[int(token)] if isinstance(node, list) else node.setdefault(token, {})
    if isinstance(node, list):
        if value is None:
            del node[int(last)]
        else:
            node[int(last)] = value
    elif value is None:
        node.pop(last, None)
    else:
        node[last] = value


def build(book: ScenarioBook, s: Scenario) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sharing block and payload the scenario sends."""
    sharing = copy.deepcopy(dict(book.base_sharing))
    for key, value in s.sharing.items():
        if value is None:
            sharing.pop(key, None)
        else:
            sharing[key] = copy.deepcopy(value)
    payload = _example(s.type)
    for pointer, value in s.payload.items():
        _set(payload, pointer, copy.deepcopy(value))
    return sharing, payload


@dataclass(frozen=True, slots=True)
class Outcome:
    scenario: Scenario
    problems: tuple[str, ...]   # empty when the decision is the one expected
    decision: Decision | None = None
    refusal: RejectedMessage | None = None

    @property
    def passed(self) -> bool:
        return not self.problems


def decide(policy: RulebookPolicy, catalogue: Catalogue, book: ScenarioBook, s: Scenario) -> Decision:
    """What the broker decides for the scenario; raises :class:`RejectedMessage` as it would."""
    sharing, payload = build(book, s)
    issue = catalogue.first_issue(catalogue.validator("sharing.v1.json"), sharing)
    if issue is not None:
        raise Malformed(f"envelope '{issue.keyword}' check failed", field=f"/sharing{issue.pointer}",
                        rule="envelope.v1.json")
    mtype = catalogue.message_type(s.type, 1)
    if mtype is None:
        raise ConfigError(f"scenario {s.name!r}: no message type {s.type!r}")
    catalogue.check_payload(mtype, payload)
    return policy.decide(book.agencies[s.sender], tuple(book.agencies[a] for a in s.to), mtype, sharing, payload,
                         received=book.at)


def play(policy: RulebookPolicy, catalogue: Catalogue, book: ScenarioBook, s: Scenario) -> Outcome:
    e = s.expect
    try:
        decision = decide(policy, catalogue, book, s)
    except RejectedMessage as exc:
        problems = []
        if e.refuse is None:
            problems.append(f"refused ({exc.code}, {exc.field}, {exc.rule}) but expected to be shared")
        else:
            problems += _differ("code", e.refuse, exc.code) + _differ("rule", s.rule, exc.rule)
            if e.field is not None:
                problems += _differ("field", e.field, exc.field)
        return Outcome(s, tuple(problems), refusal=exc)
    if e.refuse is not None:
        return Outcome(s, (f"shared but expected refusal {e.refuse}",), decision)
    problems = _differ("shared", sorted(e.shared), sorted(d.recipient for d in decision.shared))
    problems += _differ("flags", sorted(e.flags), sorted(decision.flags))
    for rd in decision.shared:
        problems += _differ(f"withheld from {rd.recipient}", list(e.withheld.get(rd.recipient, ())),
                            list(rd.withheld))
        if s.rule not in rd.rules:
            problems.append(f"rule {s.rule} did not apply to {rd.recipient} (applied: {', '.join(rd.rules)})")
    if not decision.shared and s.rule not in decision.rules:
        problems.append(f"rule {s.rule} did not apply (applied: {', '.join(decision.rules)})")
    if e.not_shared is not None:
        problems += _differ("reason not to share", e.not_shared, decision.not_shared_reason)
    if e.due is not None or e.expect_from is not None:
        problems += _due(book, s, decision, e)
    return Outcome(s, tuple(problems), decision)


def _due(book: ScenarioBook, s: Scenario, decision: Decision, e: Expect) -> list[str]:
    """The due date of the clock the scenario names (of the first clock, if it names none)."""
    spec = next((d for d in decision.deadlines if d.clock == s.clock), decision.deadline)
    if spec is None:
        return [f"expected a deadline (due {e.due}) but the rule sets none"]
    _, payload = build(book, s)
    when = spec.due(book.at, payload)
    problems = []
    if e.due is not None:
        want = dt.datetime.fromisoformat(e.due.replace("Z", "+00:00")).timestamp()
        if when is None or abs(when - want) > 0.5:
            got = dt.datetime.fromtimestamp(when, dt.UTC).isoformat() if when is not None else None
            problems.append(f"due: expected {e.due}, got {got}")
    if e.expect_from is not None:
        problems += _differ("reply owed by", e.expect_from, spec.expect_from)
    return problems


def _differ(what: str, want: Any, got: Any) -> list[str]:
    return [] if want == got else [f"{what}: expected {want!r}, got {got!r}"]


def play_all(policy: RulebookPolicy, catalogue: Catalogue, book: ScenarioBook,
             only: Sequence[str] | None = None) -> list[Outcome]:
    return [play(policy, catalogue, book, s) for s in book.scenarios if only is None or s.name in only]
