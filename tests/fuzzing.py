"""Fuzzing native documents from their JSON Schemas (hypothesis-jsonschema), one fault at a time,
and the properties every adapter answer to them must have: used by ``test_adapter_fuzz.py``."""

from __future__ import annotations

import copy
import types
from typing import Any, Final

import jsonschema_rs
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import utils as conjecture

from adapters.formats import consent

RUNS: Final = 60  # examples per strategy


def bridge_hypothesis_jsonschema(monkeypatch: pytest.MonkeyPatch) -> None:
    """hypothesis-jsonschema 0.23 (the latest) draws object members through ``many.more()``, which
    recent Hypothesis (6.170 here) replaced with ``with many(...): for _ in``: bridge the two for
    its one call (without it, every object schema fails with AttributeError)."""
    import hypothesis_jsonschema._from_schema as generator

    if hasattr(conjecture.many, "more"):
        return

    class Many:
        def __init__(self, data: Any, **kwargs: Any) -> None:
            self._many = conjecture.many(data, **kwargs)
            self._many.__enter__()
            self._next = iter(self._many)

        def more(self) -> bool:
            if next(self._next, False) is None:
                return True
            self._many.__exit__(None, None, None)
            return False

        def reject(self) -> None:
            self._many.reject()

    monkeypatch.setattr(generator, "cu", types.SimpleNamespace(many=Many))


def without_local_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hypothesis mixes in constants from the source of every project module loaded so far, so the
    documents would depend on which tests ran before; without them, every run draws the same."""
    from hypothesis.internal.conjecture import providers

    if hasattr(providers, "Constants"):
        monkeypatch.setattr(providers, "_get_local_constants", providers.Constants, raising=False)


def examples(strategy: st.SearchStrategy[Any], n: int = RUNS) -> list[Any]:
    """``n`` examples of ``strategy``, the same every run."""
    found: list[Any] = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found


def generating(document: dict[str, Any]) -> dict[str, Any]:
    """A schema for generating: without the consent conditions (drawn consistently below, much
    faster than filtering), nothing else changed."""
    document = copy.deepcopy(document)
    document.pop("$id", None)
    document.pop("allOf", None)
    for definition in document.get("$defs", {}).values():
        if isinstance(definition, dict) and definition.get("allOf") == [{"$ref": "#/$defs/consentReason"}]:
            definition.pop("allOf")
        if isinstance(definition, dict) and "dependentRequired" in definition:  # the generator knows draft 7's name
            definition["dependencies"] = definition.pop("dependentRequired")
    return document


# -- the case's consent facts, drawn consistently (or, for an emergency, incompletely) ----------------------

def _facts(c: str, reason: str, informed: str, emergency: bool,
           drop: frozenset[str]) -> tuple[dict[str, Any], bool]:
    """The facts and whether the record is an emergency (which may leave some out)."""
    facts: dict[str, Any] = {"consent": c, "familyInformed": informed}
    if c != "given":
        facts["withoutConsentReason"] = reason
    return {k: v for k, v in facts.items() if not emergency or k not in drop}, emergency


FACTS = st.builds(_facts, st.sampled_from(sorted(consent.CONSENT)), st.sampled_from(sorted(consent.REASON)),
                  st.sampled_from(sorted(consent.INFORMED)), st.booleans(),
                  st.frozensets(st.sampled_from(consent.NATIVE_FIELDS)))
CONSENT_KEYS = (*consent.NATIVE_FIELDS, "parentsInformed", "reasonNotInformed", "immediateProtectionNeeded", "urgency")

# -- one fault at a time ----------------------------------------------------------------------------------

JUNK = st.text("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789", min_size=8, max_size=12).map(
    lambda t: f"Zq!{t}")  # never a code, an id or a pattern's match: refused wherever it lands


def _places(value: Any, here: str = "") -> list[tuple[str, Any, Any]]:
    """``(pointer, container, key)`` of every member and item under ``value``."""
    out: list[tuple[str, Any, Any]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        pointer = f"{here}/{key}"
        out.append((pointer, value, key))
        out += _places(inner, pointer)
    return out


def mutate(args: tuple[Any, int, int, str]) -> tuple[Any, str, str]:
    """``(document, where the fault is, the injected value)``."""
    document, kind, pick, junk = args
    document, pick = copy.deepcopy(document), (pick * 2654435761 + 40503) % 2**31  # small draws spread too
    places = _places(document)
    leaves = [p for p in places if not isinstance(p[1][p[2]], (dict, list))]
    if kind == 0 and (members := [p for p in places if isinstance(p[1], dict)]):
        pointer, holder, key = members[pick % len(members)]
        del holder[key]
        return document, pointer, junk
    if kind == 1 and leaves:
        pointer, holder, key = leaves[pick % len(leaves)]
        holder[key] = 7_000_000 + pick % 1000 if isinstance(holder[key], str) else junk
        return document, pointer, junk if not isinstance(holder[key], int) else str(holder[key])
    if kind == 2 and (texts := [p for p in leaves if isinstance(p[1][p[2]], str)]):
        pointer, holder, key = texts[pick % len(texts)]
        holder[key] = junk if pick % 2 else junk * 1000  # outside its codes, or overlong
        return document, pointer, junk
    if kind == 3:
        objects = [("", document, None)] + [p for p in places if isinstance(p[1][p[2]], dict)]
        pointer, holder, key = objects[pick % len(objects)]
        (holder if key is None else holder[key])["unknownMember"] = junk
        return document, pointer, junk
    return ([junk] if pick % 2 else junk), "", junk


def related(field: str, fault: str) -> bool:
    """The field named is the fault's place, an ancestor or descendant of it, or a sibling (the
    consent facts are judged together)."""
    field, fault = field.rstrip("/"), fault.rstrip("/")
    return (field == fault or fault.startswith(field + "/") or field.startswith(fault + "/")
            or field.rpartition("/")[0] == fault.rpartition("/")[0])


def resolves(document: Any, pointer: str) -> bool:
    """``pointer`` names a place in ``document``, or a member missing from an object there."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.strip("/").split("/")] if pointer.strip("/") \
        else []
    node = document
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return i == len(parts) - 1 and isinstance(node, dict)
    return True


def values(document: Any, schema_text: str) -> set[str]:
    """The document's texts worth looking for in an answer: 8 characters or more, not the schema's own."""
    found: set[str] = set()
    for _, holder, key in [*_places(document), ("", {"": document}, "")]:
        value = holder[key]
        if isinstance(value, str) and len(value.strip()) >= 8 and value not in schema_text:
            found.add(value[:64])
    return found


class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def __str__(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))


def judge(tally: Tally, label: str, status: int, answer: dict[str, Any], valid: bool | None, document: Any,
          fault: str | None, seen: set[str], text: str) -> None:
    """The assertions every answer meets; ``valid`` None: no schema to say (FHIR)."""
    assert status != 500 and answer.get("code") != "internal", (label, answer)
    leaked = [v for v in seen if v in text]
    assert not leaked, (label, leaked[:3], answer)
    if status in (200, 202):
        assert valid is not False, (label, fault, answer)
        tally.add(f"{label} taken" + (" (a fault that left it valid)" if fault is not None and valid else ""))
        return
    assert (status, answer.get("code")) == (422, "unmappable") and answer.get("field") is not None, (label, answer)
    field = answer["field"]
    if valid:
        tally.add(f"{label} valid, refused {answer.get('rule')}")
        return
    tally.add(f"{label} refused")
    if field.startswith("row "):
        return  # CSV: the caller compares row and column
    assert field == "/" or resolves(document, field), (label, field, fault)
    if fault is not None:
        shown = orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS)[:2000]
        assert related(field, fault), (label, field, fault, answer.get("rule"), shown)


def faults(documents: st.SearchStrategy[Any],
           validator: jsonschema_rs.Validator | None = None) -> st.SearchStrategy[tuple[Any, str, str]]:
    """One fault in a document the schema takes (so that the refusal has one thing to name)."""
    valid = documents.filter(validator.is_valid) if validator is not None else documents
    return st.tuples(valid, st.integers(0, 4), st.integers(0, 10**6), JUNK).map(mutate)


def cases(valid: list[Any], faulty: list[tuple[Any, str, str]], text: str,
          validator: jsonschema_rs.Validator | None) -> list[tuple[Any, str | None, set[str], bool | None]]:
    out: list[tuple[Any, str | None, set[str], bool | None]] = [
        (d, None, values(d, text), validator.is_valid(d) if validator else None) for d in valid]
    out += [(d, fault, values(d, text) | {junk[:64]}, validator.is_valid(d) if validator else None)
            for d, fault, junk in faulty]
    return out




def judged(tally: Tally, label: str, answers: list[tuple[int, dict[str, Any], str]],
           cases: list[tuple[Any, str | None, set[str], bool | None]]) -> None:
    for (status, answer, text), (document, fault, seen, valid) in zip(answers, cases, strict=True):
        judge(tally, label, status, answer, valid, document, fault, seen, text)
