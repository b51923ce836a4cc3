"""The choices a filter offers, from the registry, the catalogue and the lawful-basis vocabulary,
each with the label a person reads: an IG officer picks an agency by name and a basis by its
citation ("UK GDPR Art 6(1)(e) Public task"), never types an id or a code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from broker.web.context import BROKER_KEY
from broker.wire import lawfulbasis

BASES = ("lawfulBasis", "lawEnforcementBasis")  # what the log's lawful-basis column holds


def filter_choices(app: web.Application) -> dict[str, list[tuple[str, str]]]:
    """(value, label) lists for the log's and the review queue's filters."""
    broker = app[BROKER_KEY]
    agencies = sorted(((a.id, f"{a.name} ({a.kind})") for a in broker.registry.agencies.values()
                       if a.id != broker.registry.broker_id), key=lambda c: c[1].lower())
    types = sorted({name for name, _ in broker.catalogue.types})
    return {"agency": agencies, "recipient": agencies, "type": [(t, t.replace("-", " ")) for t in types],
            "lawfulBasis": lawfulbasis.choices(*BASES), "consentStatus": lawfulbasis.choices("consentStatus")}


def labeller(app: web.Application) -> Mapping[str, Any]:
    """What a template needs to show an agency id or a code as a person reads it."""
    agencies = app[BROKER_KEY].registry.agencies

    def agency(agency_id: str | None) -> str:
        found = agencies.get(agency_id or "")
        return found.name if found is not None else (agency_id or "")

    return {"agency_name": agency, "code_label": lawfulbasis.label}
