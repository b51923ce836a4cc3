"""The rulebook in force traced to the guidance, for ``GET /api/v1/rulebook/coverage`` and the
IG page ``/ig/rulebook``: the table ``sgb policy coverage`` prints (:mod:`broker.policy.coverage`), with
each rule's citations from the rulebook in force and the failing scenarios by the item they test.

The report plays every scenario (a few hundred milliseconds), so it is computed once per
rulebook load, in a worker thread, and kept while the same rulebook (and the same scenario file)
is in force. The scenario file is ``<rulebook>.scenarios.yaml`` beside the rulebook
(:func:`broker.policy.scenarios.default_path`); without it every item shows as untested and the view
says why. Nothing here is personal data: codes, rule ids, citations and scenario names.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import web

from broker.errors import ConfigError
from broker.policy import coverage, scenarios
from broker.policy.rulebook import Rulebook
from broker.policy.scenarios import ScenarioBook
from broker.timestamps import iso
from broker.web.context import BROKER_KEY
from broker.wire.catalogue import Catalogue

log = structlog.get_logger("sgb.traceability")

KINDS: Final = (("golden-rule", "Golden rules"), ("clock", "Clocks"), ("code", "Lawful-basis codes"))
SCENARIO_STATES: Final = ("played", "missing", "invalid")  # what became of the scenario file
_PLAYED, _MISSING, _INVALID = SCENARIO_STATES


def rulebook_in_force(policy: object) -> Rulebook | None:
    """The rulebook a broker's policy applies (a reloadable policy's current one), if it has one."""
    book = getattr(getattr(policy, "current", policy), "rulebook", None)
    return book if isinstance(book, Rulebook) else None


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _scenarios(path: Path) -> tuple[ScenarioBook, str, str | None]:
    """The scenario book and its state: played, missing or invalid (with what is wrong)."""
    if not path.exists():
        return _none(path), _MISSING, None
    try:
        return scenarios.load(path), _PLAYED, None
    except ConfigError as exc:
        return _none(path), _INVALID, _detail(exc, path)


def _none(path: Path) -> ScenarioBook:
    return ScenarioBook(0.0, {}, {}, (), str(path))


def _detail(exc: Exception, path: Path) -> str:
    return str(exc).replace(str(path), path.name)  # the file's name, not where the server keeps it


def build(book: Rulebook, catalogue: Catalogue, scenario_path: Path) -> dict[str, Any]:
    """The traceability view of ``book`` (synchronous; plays every scenario)."""
    played, state, detail = _scenarios(scenario_path)
    try:
        report = coverage.report(book, played, catalogue)
    except ConfigError as exc:  # a scenario the broker cannot build at all (e.g. an unknown message type)
        played, state, detail = _none(scenario_path), _INVALID, _detail(exc, scenario_path)
        report = coverage.report(book, played, catalogue)
    by_name = {s.name: s for s in played.scenarios}
    rows = [r.as_json() for r in report.rows]
    rule_ids = dict.fromkeys(rid for r in report.rows for rid in r.rules)
    return {
        "rulebook": {"edition": book.edition, "title": book.title, "file": Path(book.source).name},
        "scenarios": {"state": state, "file": scenario_path.name, "count": len(played.scenarios),
                      "failing": len(report.failing), "detail": detail},
        "computedAt": iso(time.time()),
        "total": len(report.rows), "gaps": len(report.gaps),
        "rows": rows,
        "rules": {rid: {"says": _says(book, rid), "cite": list(book.citation(rid))} for rid in rule_ids},
        "failing": [{"scenario": name, "rule": by_name[name].rule if name in by_name else None,
                     "problems": list(problems)} for name, problems in report.failing],
    }


def _says(book: Rulebook, rule_id: str) -> str:
    if rule_id in book.general:
        return book.general[rule_id].says
    return next((r.says for r in book.rules if r.id == rule_id), "")


class CoverageCache:
    """One view per rulebook load: rebuilt when the rulebook in force is another object (a reload)
    or its scenario file changed; concurrent first requests wait for one build."""

    def __init__(self) -> None:
        self._book: Rulebook | None = None
        self._stamp: tuple[int, int] | None = None
        self._view: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self.builds = 0

    async def view(self, policy: object, catalogue: Catalogue) -> dict[str, Any] | None:
        book = rulebook_in_force(policy)
        if book is None:
            return None
        path = scenarios.default_path(Path(book.source))
        async with self._lock:
            stamp = _stamp(path)
            if self._view is None or self._book is not book or self._stamp != stamp:
                started = time.perf_counter()
                self._view = await asyncio.to_thread(build, book, catalogue, path)
                self._book, self._stamp = book, stamp
                self.builds += 1
                log.info("rulebook coverage computed", edition=book.edition, items=self._view["total"],
                         gaps=self._view["gaps"], scenarios=self._view["scenarios"]["state"],
                         seconds=round(time.perf_counter() - started, 3))
            return self._view


CACHE: Final = web.AppKey("coverage_cache", CoverageCache)


def install(app: web.Application) -> None:
    """Give the app its cache (the API and the pages share it); called by their ``add_routes``."""
    if CACHE not in app:
        app[CACHE] = CoverageCache()


async def current(app: web.Application) -> dict[str, Any] | None:
    """The view for the broker the app serves (None when its policy is not a rulebook)."""

    broker = app[BROKER_KEY]
    return await app[CACHE].view(broker.policy, broker.catalogue)
