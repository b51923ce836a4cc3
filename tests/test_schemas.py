"""The schemas: every example validates, typical mistakes are refused, and the sharing
schema speaks exactly the versioned vocabulary."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from broker.wire.catalogue import Catalogue

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
EXAMPLES = SCHEMAS / "examples"


def _load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def _schema_for(example: str) -> str:
    if example.endswith(".sharing.example.json"):
        return "sharing.v1.json"
    if example == "referral-unborn.example.json":
        return "referral.v1.json"
    return example.replace(".example.json", ".v1.json")


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.json")))
def test_every_example_is_valid(example: str, catalogue: Catalogue) -> None:
    issue = catalogue.first_issue(catalogue.validator(_schema_for(example)), _load(EXAMPLES / example))
    assert issue is None, issue


def test_each_message_type_has_payload_and_sharing_examples(catalogue: Catalogue) -> None:
    assert {t for t, _ in catalogue.types} == {
        "referral", "referral-outcome", "information-request", "information-response", "receipt", "rejection",
        "overdue-notice", "encompass-notification", "strategy-discussion", "child-protection-status", "lado-referral",
        "serious-incident-notification", "decision-not-to-share", "rapid-review",
        # the multi-agency processes of Working Together (issue 14)
        "cp-conference-invitation", "cp-conference-report", "cp-conference-outcome", "core-group-meeting",
        "assessment-outcome", "child-death-notification", "early-help-assessment", "early-help-request",
        "early-help-step-up", "early-help-step-down", "contextual-concern", "private-fostering-notification",
        "children-missing-education", "cme-response", "mash-screening", "lcspr-decision", "lcspr-publication"}
    for name, _ in catalogue.types:
        assert (EXAMPLES / f"{name}.example.json").exists()
        assert (EXAMPLES / f"{name}.sharing.example.json").exists()


def _set(path: str, value: Any) -> Callable[[Any], None]:
    def change(doc: Any) -> None:
        *parents, last = path.split("/")
        for p in parents:
            doc = doc[int(p)] if isinstance(doc, list) else doc[p]
        if value is _DELETE:
            del doc[last]
        else:
            doc[last] = value
    return change


_DELETE = object()

MUTATIONS = {
    "extra top-level field": ("referral.example.json", "referral.v1.json", _set("surprise", 1)),
    "extra nested field": ("referral.example.json", "referral.v1.json", _set("child/name/nickname", "x")),
    "bad NHS number": ("referral.example.json", "referral.v1.json", _set("child/nhsNumber", "12345")),
    "born child without date of birth": ("referral.example.json", "referral.v1.json",
                                         _set("child/dateOfBirth", _DELETE)),
    "unborn without due date": ("referral-unborn.example.json", "referral.v1.json",
                                _set("child/expectedDeliveryDate", _DELETE)),
    "no concern": ("referral.example.json", "referral.v1.json", _set("concern", _DELETE)),
    "unknown lawful basis": ("referral.sharing.example.json", "sharing.v1.json", _set("lawfulBasis", "MADE_UP")),
    "a name as decidedBy role": ("referral.sharing.example.json", "sharing.v1.json",
                                 _set("decidedBy/role", "Jane Smith <jane@x>")),
    "unknown rejection code": ("rejection.example.json", "rejection.v1.json", _set("code", "nope")),
    "receipt with personal data field": ("receipt.example.json", "receipt.v1.json", _set("child", "Ada")),
    "hybrid key without pq": ("registry.example.json", "registry.v1.json", _set("agencies/2/keys/1/pq", _DELETE)),
    "bad date-time format": ("referral-outcome.example.json", "referral-outcome.v1.json", _set("decidedAt", "soon")),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_mutation_is_refused(name: str, catalogue: Catalogue) -> None:
    example, schema, change = MUTATIONS[name]
    doc = copy.deepcopy(_load(EXAMPLES / example))
    change(doc)
    assert catalogue.first_issue(catalogue.validator(schema), doc) is not None


def test_registry_example_hybrid_entry_is_the_one_mutated() -> None:
    entry = _load(EXAMPLES / "registry.example.json")["agencies"][2]
    assert entry["keys"][1]["alg"] == "MLKEM768X25519"


def test_sharing_enums_are_exactly_the_vocabulary() -> None:
    doc = _load(SCHEMAS / "vocabulary.v2.json")
    vocab = doc["lists"]
    props = _load(SCHEMAS / "sharing.v1.json")["properties"]
    pairs = {"purpose": "purpose", "lawfulBasis": "lawfulBasis", "specialCategoryCondition": "specialCategoryCondition",
             "criminalOffenceCondition": "criminalOffenceCondition", "lawEnforcementBasis": "lawEnforcementBasis",
             "consentStatus": "consentStatus", "nonConsentReason": "nonConsentReason",
             "subjectInformed": "subjectInformed", "urgency": "urgency", "guidanceEdition": "guidanceEdition"}
    for prop, lst in pairs.items():
        assert props[prop]["enum"] == [e["code"] for e in vocab[lst]], prop
    assert props["statutoryGateways"]["items"]["enum"] == [e["code"] for e in vocab["statutoryGateway"]]
    for lst in vocab.values():
        for entry in lst:
            assert entry["label"] and entry["citation"]
            assert entry.get("since", 1) <= doc["version"]
    assert props["vocabulary"]["enum"] == [f"sgb-lawful-basis/{n}" for n in range(1, doc["version"] + 1)]


def test_a_code_newer_than_the_vocabulary_version_is_refused(catalogue: Catalogue) -> None:
    """A block that says it speaks version 1 may not use a gateway added in version 2."""
    block = _load(EXAMPLES / "information-request.sharing.example.json") | {"statutoryGateways": ["CA2004_S16H"]}
    validator = catalogue.validator("sharing.v1.json")
    assert catalogue.first_issue(validator, block | {"vocabulary": "sgb-lawful-basis/2"}) is None
    issue = catalogue.first_issue(validator, block | {"vocabulary": "sgb-lawful-basis/1"})
    assert issue is not None and issue.pointer == "/statutoryGateways/0"


def test_payload_schemas_are_annotated(catalogue: Catalogue) -> None:
    for (name, version), mtype in catalogue.types.items():
        meta = catalogue.documents[f"{name}.v{version}.json"]["x-sgb"]
        assert meta["type"] == name and meta["version"] == version
        assert mtype.personal_data is (name not in ("receipt", "rejection", "overdue-notice"))
