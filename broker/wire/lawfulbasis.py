"""The lawful-basis vocabulary (``schemas/vocabulary.v2.json``): the codes a sharing block may use,
read once, for the rules that check them and the pages that show them.

Each code has a label and a citation; :func:`label` joins them the way an IG officer reads a
basis ("UK GDPR Art 6(1)(e) Public task"), so a page never shows a bare code.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any, Final

import orjson


@functools.cache
def document() -> dict[str, Any]:
    """The vocabulary file as published (its ``lists`` by sharing-block field, each a list of entries)."""
    doc: dict[str, Any] = orjson.loads((resources.files("schemas") / "vocabulary.v2.json").read_bytes())
    return doc


def lists() -> dict[str, list[dict[str, Any]]]:
    lists_: dict[str, list[dict[str, Any]]] = document()["lists"]
    return lists_


# The lists whose codes are a provision of law: shown with their citation first.
_CITED: Final = ("lawfulBasis", "specialCategoryCondition", "criminalOffenceCondition", "lawEnforcementBasis",
                 "statutoryGateway")


@functools.cache
def _labels() -> dict[str, str]:
    out: dict[str, str] = {}
    for name, entries in lists().items():
        for e in entries:
            cite = e.get("citation", "-").split(";")[0]
            out.setdefault(e["code"], f"{cite} {e['label']}" if name in _CITED and cite != "-" else e["label"])
    return out


def label(code: str | None) -> str:
    """A code as a person reads it (citation and label); an unknown code as itself."""
    if not code:
        return ""
    return _labels().get(code, code)


def choices(*names: str) -> list[tuple[str, str]]:
    """(code, label) for every code of the lists ``names`` (in the vocabulary's order), for a filter."""
    return [(e["code"], label(e["code"])) for name in names for e in lists()[name]]
