"""The adapter configurations shipped in deploy/adapters/ load, their sharing blocks are valid and
hold only what is agency-wide, and what each adapter would send with them — its agency's native
records mapped, with each record's own consent facts laid over the defaults — passes the default
rulebook; settings problems, consent facts in configuration among them, are named."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
import structlog.testing

from adapters.formats.consent import CASE_FACTS
from adapters.formats.health import fhir_bundle
from adapters.formats.local_authority import case_events
from adapters.formats.mapping import MapContext, Outbound
from adapters.formats.police import ppn_json
from adapters.runtime.service import AdapterSettings, check_sharing
from adapters.sdk import Handed
from broker.errors import ConfigError
from broker.policy import rulebook as rulebooks
from broker.policy.engine import RulebookPolicy
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry
from tests.helpers import example
from tests.support.casesystem import EVENTS, REFERRAL, REFERRAL_DELIVERY, REQUEST, REQUEST_DELIVERY
from tests.support.fhir import answer, bundle, referral_bundle, referrer
from tests.support.police import PPN

SHIPPED = sorted((Path(__file__).resolve().parent.parent / "deploy" / "adapters").glob("*.toml"))


def load(path: Path) -> AdapterSettings:
    section: dict[str, Any] = tomllib.loads(path.read_text())["adapter"]
    return AdapterSettings.from_sources(path.stem, section)


def shipped(agency: str) -> AdapterSettings:
    return load(next(p for p in SHIPPED if p.stem == agency))


@pytest.fixture
def policy(catalogue: Catalogue) -> RulebookPolicy:
    return RulebookPolicy(rulebooks.load(rulebooks.DEFAULT_RULEBOOK, catalogue))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_configuration_loads_with_valid_agency_wide_sharing_blocks(path: Path, catalogue: Catalogue) -> None:
    adapter = load(path)
    assert adapter.sharing, "an adapter that sends needs its sharing defaults"
    check_sharing(adapter.sharing, catalogue)  # what the adapter checks at start
    for typ, block in adapter.sharing.items():
        assert not set(CASE_FACTS) & set(block), typ  # consent facts come from each record
        assert block["vocabulary"] == "sgb-lawful-basis/2", typ


# What records may say of consent and informing the family: the configuration's agency-wide
# conditions must hold for each (the rulebook may flag, as it does a safeguarding condition
# claimed with consent given, but must not refuse).
CASES = {
    "consent given, family informed": {"consentStatus": "GIVEN", "subjectInformed": "INFORMED"},
    "refused and overridden, to be told later": {"consentStatus": "REFUSED_OVERRIDDEN",
                                                 "nonConsentReason": "WOULD_INCREASE_RISK_OF_HARM",
                                                 "subjectInformed": "TO_BE_INFORMED_LATER"},
    "not sought, not told": {"consentStatus": "NOT_SOUGHT", "nonConsentReason": "WOULD_PREJUDICE_INVESTIGATION",
                             "subjectInformed": "NOT_INFORMED_PREJUDICE_INVESTIGATION"},
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("config", "typ", "to"), [
    ("health-camden", "referral", "la-camden"),
    ("health-camden", "information-response", "la-camden"),
    ("la-camden", "referral-outcome", "police-met"),
    ("la-camden", "information-request", "health-camden"),
    ("la-camden", "information-response", "police-met"),
    ("la-camden", "strategy-discussion", "police-met"),
    ("la-camden", "child-protection-status", "health-camden"),
    ("school-hillside", "referral", "la-camden"),
    ("school-hillside", "lado-referral", "la-camden"),
    ("police-met", "referral", "la-camden"),
    ("police-met", "encompass-notification", "school-hillside"),
])
def test_each_default_with_the_records_facts_passes_the_rulebook_for_its_example(
        config: str, typ: str, to: str, case: str, registry: Registry, catalogue: Catalogue,
        policy: RulebookPolicy) -> None:
    """The canonical example of each type (a referral naming an alleged perpetrator and a police
    reference, a LADO referral of a possible offence: criminal offence data), with each case's facts."""
    mtype = catalogue.message_type(typ, 1)
    assert mtype is not None
    payload = example(f"{typ}.example.json")
    if typ == "information-response":
        payload["answers"][0]["topic"] = "police-history"  # criminal offence data too
    sharing = dict(shipped(config).sharing[typ]) | CASES[case]
    decision = policy.decide(registry.agencies[config], (registry.agencies[to],), mtype, sharing, payload)
    assert decision.recipients[0].share, decision.recipients[0].code


def _decide(policy: RulebookPolicy, registry: Registry, catalogue: Catalogue, agency: str, messages: list[Outbound],
            handed: dict[str, Handed] | None = None) -> None:
    """Each message as the adapter would send it (its default, the record's facts laid over it)
    must be shared with every recipient."""
    defaults = shipped(agency).sharing
    assert messages
    for m in messages:
        if m.typ == "receipt":
            continue
        mtype = catalogue.message_type(m.typ, 1)
        assert mtype is not None and m.sharing is not None
        assert set(CASE_FACTS) & set(m.sharing), m.typ  # the record said
        to = m.to or ((handed or {})[m.answers or ""].sender or "",)
        decision = policy.decide(registry.agencies[agency], tuple(registry.agencies[r] for r in to), mtype,
                                 dict(defaults[m.typ]) | dict(m.sharing), m.payload)
        assert [r.share for r in decision.recipients] == [True] * len(to), (m.typ, decision.recipients)


def test_the_police_adapter_sends_what_the_rulebook_accepts(registry: Registry, catalogue: Catalogue,
                                                           policy: RulebookPolicy) -> None:
    context = MapContext(agency="police-met", registry=registry, catalogue=catalogue,
                         options={"local_authority": shipped("police-met").local_authority})
    _decide(policy, registry, catalogue, "police-met", ppn_json(orjson.dumps(PPN), context))


def test_the_local_authority_adapter_sends_what_the_rulebook_accepts(registry: Registry, catalogue: Catalogue,
                                                                    policy: RulebookPolicy) -> None:
    handed = {REFERRAL_DELIVERY: Handed(REFERRAL_DELIVERY, "referral", "police-met", REFERRAL, None, 0.0),
              REQUEST: Handed(REQUEST_DELIVERY, "information-request", "health-camden", REQUEST, None, 0.0)}
    context = MapContext(agency="la-camden", registry=registry, catalogue=catalogue, handed=handed.get)
    events = [e for e in EVENTS if e["event"] not in ("acknowledged", "actioned")]
    events[1] = events[1] | {"answers": [events[1]["answers"][0] | {"topic": "police-history"}]}
    _decide(policy, registry, catalogue, "la-camden", case_events(orjson.dumps(events), context), handed)


def test_the_health_adapter_sends_what_the_rulebook_accepts(registry: Registry, catalogue: Catalogue,
                                                           policy: RulebookPolicy) -> None:
    context = MapContext(agency="health-camden", registry=registry, catalogue=catalogue,
                         options={"local_authority": shipped("health-camden").local_authority})
    doc = referral_bundle()
    doc["entry"][-1]["resource"]["category"] = [{"coding": [{"system": "https://sgb.invalid/fhir/CodeSystem/"
                                                                       "concern-category", "code": "physical"}]}]
    _decide(policy, registry, catalogue, "health-camden", fhir_bundle(orjson.dumps(doc), context))
    request = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
    handed = {request: Handed(request, "information-request", "la-camden", request, None, 0.0)}
    reply = answer(request)
    reply["payload"][0]["extension"] = [{"url": "https://sgb.invalid/fhir/StructureDefinition/question-topic",
                                         "valueCode": "police-history"}]
    context = MapContext(agency="health-camden", registry=registry, catalogue=catalogue, handed=handed.get)
    _decide(policy, registry, catalogue, "health-camden",
            fhir_bundle(orjson.dumps(bundle(*referrer(), reply)), context), handed)


@pytest.mark.parametrize("fact", CASE_FACTS)
def test_consent_facts_in_configuration_are_refused_at_start(fact: str, catalogue: Catalogue) -> None:
    block = dict(shipped("police-met").sharing["referral"]) | {fact: example("referral.sharing.example.json")[fact]}
    with pytest.raises(ConfigError) as caught:
        check_sharing({"referral": block}, catalogue)
    assert f"[adapter.sharing.referral] sets {fact}" in str(caught.value)
    assert "facts of each case" in str(caught.value)
    with pytest.raises(ConfigError, match="not a valid sharing block at /lawfulBasis"):
        check_sharing({"referral": shipped("police-met").sharing["referral"] | {"lawfulBasis": "BECAUSE"}}, catalogue)
    with pytest.raises(ConfigError, match="no such message type"):
        check_sharing({"referal": shipped("police-met").sharing["referral"]}, catalogue)


def test_settings_problems_are_named() -> None:
    with pytest.raises(ConfigError) as caught:
        AdapterSettings.from_sources("police-met", {"webhok": "x", "retry_for": "an hour", "timeout": 0,
                                                    "sharing": {"referral": 3}})
    text = str(caught.value)
    assert "webhok" in text and "retry_for must be a number" in text and "one table per message type" in text
    assert "timeout must be more than 0" in text
    with pytest.raises(ConfigError, match="not both"):
        AdapterSettings.from_sources("la-camden", {"webhook": "https://x.example/", "drop_folder": "/tmp/x"}).check(
            "local-authority")
    with pytest.raises(ConfigError, match="webhook URL"):
        AdapterSettings.from_sources("la-camden", {}).check("local-authority")
    adapter = AdapterSettings.from_sources("la-camden", {"timeout": 3, "drop_folder": "/srv/x"}, timeout=9)
    assert adapter.timeout == 9 and adapter.drop_folder == Path("/srv/x")  # the command line wins


def test_the_retry_window_is_time_and_an_old_attempt_count_is_only_warned_about() -> None:
    """A delivery is retried for ``retry_for`` seconds (an hour by default), pausing at most
    ``backoff_max``; the retired ``attempts`` of older files is accepted with a warning."""
    default = AdapterSettings.from_sources("la-camden", {"drop_folder": "/srv/x"})
    assert (default.retry_for, default.backoff_max) == (3600.0, 60.0)
    assert (default.retry.retry_for, default.retry.backoff_max) == (3600.0, 60.0)
    with structlog.testing.capture_logs() as logs:
        old = AdapterSettings.from_sources("la-camden", {"attempts": 6, "retry_for": 7200, "backoff_max": 0.2,
                                                         "drop_folder": "/srv/x"})
    assert (old.retry.retry_for, old.retry.backoff_max, old.retry.backoff_base) == (7200.0, 0.2, 0.2)
    assert [e["setting"] for e in logs if e["event"].startswith("adapter setting no longer used")] == ["attempts"]
    for name in ("health-camden", "la-camden", "police-met", "school-hillside"):  # the shipped files say so
        assert shipped(name).retry_for == 3600.0
