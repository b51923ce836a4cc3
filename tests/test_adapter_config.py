"""The adapter configurations shipped in deploy/adapters/ load, their sharing blocks are valid,
and what each adapter would send with them passes the default rulebook; settings problems are
named."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.mapping import MapContext
from adapters.police import ppn_json
from adapters.service import AdapterSettings
from broker import rulebook as rulebooks
from broker.catalogue import Catalogue
from broker.errors import ConfigError
from broker.policy import RulebookPolicy
from broker.registry import Registry
from tests.helpers import example
from tests.test_police import PPN

SHIPPED = sorted((Path(__file__).resolve().parent.parent / "deploy" / "adapters").glob("*.toml"))


def load(path: Path) -> AdapterSettings:
    section: dict[str, Any] = tomllib.loads(path.read_text())["adapter"]
    return AdapterSettings.from_sources(path.stem, section)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_configuration_loads_with_valid_sharing_blocks(path: Path, catalogue: Catalogue) -> None:
    adapter = load(path)
    assert adapter.sharing, "an adapter that sends needs its sharing defaults"
    validator = catalogue.validator("sharing.v1.json")
    for typ, block in adapter.sharing.items():
        assert catalogue.message_type(typ, 1) is not None, typ
        assert Catalogue.first_issue(validator, block) is None, typ


def test_the_police_defaults_pass_the_rulebook(registry: Registry, catalogue: Catalogue) -> None:
    adapter = load(next(p for p in SHIPPED if p.stem == "police-met"))
    context = MapContext(agency="police-met", registry=registry, catalogue=catalogue,
                         options={"local_authority": adapter.local_authority})
    policy = RulebookPolicy(rulebooks.load(rulebooks.DEFAULT_RULEBOOK, catalogue))
    police = registry.get("police-met")
    assert police is not None
    for m in ppn_json(orjson.dumps(PPN), context):
        mtype = catalogue.message_type(m.typ, 1)
        assert mtype is not None
        sharing = dict(adapter.sharing[m.typ]) | dict(m.sharing or {})
        decision = policy.decide(police, tuple(registry.agencies[r] for r in m.to), mtype, sharing, m.payload)
        assert [r.share for r in decision.recipients] == [True] * len(m.to), m.typ


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
])
def test_each_default_passes_the_rulebook_for_its_example(config: str, typ: str, to: str, registry: Registry,
                                                         catalogue: Catalogue) -> None:
    adapter = load(next(p for p in SHIPPED if p.stem == config))
    policy = RulebookPolicy(rulebooks.load(rulebooks.DEFAULT_RULEBOOK, catalogue))
    mtype = catalogue.message_type(typ, 1)
    assert mtype is not None
    decision = policy.decide(registry.agencies[config], (registry.agencies[to],), mtype, adapter.sharing[typ],
                             example(f"{typ}.example.json"))
    assert decision.recipients[0].share, decision.recipients[0].code


def test_settings_problems_are_named() -> None:
    with pytest.raises(ConfigError) as caught:
        AdapterSettings.from_sources("police-met", {"webhok": "x", "attempts": "many", "sharing": {"referral": 3}})
    text = str(caught.value)
    assert "webhok" in text and "attempts must be a number" in text and "one table per message type" in text
    with pytest.raises(ConfigError, match="not both"):
        AdapterSettings.from_sources("la-camden", {"webhook": "https://x.example/", "drop_folder": "/tmp/x"}).check(
            "local-authority")
    with pytest.raises(ConfigError, match="webhook URL"):
        AdapterSettings.from_sources("la-camden", {}).check("local-authority")
    adapter = AdapterSettings.from_sources("la-camden", {"attempts": 3, "drop_folder": "/srv/x"}, attempts=9)
    assert adapter.attempts == 9 and adapter.drop_folder == Path("/srv/x")  # the command line wins
