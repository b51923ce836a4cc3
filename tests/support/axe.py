"""axe-core (through axe-playwright-python) over the page a browser test has open: public-sector
services must meet WCAG 2.2 AA, so any violation of its A and AA rules fails the test, listed so a
reader can find the element without rerunning (rule, impact, help, the first few selectors)."""

from __future__ import annotations

from typing import Any

from axe_playwright_python.async_playwright import Axe  # type: ignore[import-untyped]

# WCAG 2.0, 2.1 and 2.2 levels A and AA; best practices are left out, as they are no part of the standard.
WCAG_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
_OPTIONS = {"runOnly": {"type": "tag", "values": WCAG_AA}, "resultTypes": ["violations"]}
_TARGETS = 3  # the first few elements of each rule are enough to find the pattern
_axe = Axe()


def describe(violations: list[dict[str, Any]]) -> str:
    """One line per rule, then its first few elements' selectors and what axe says of the first."""
    lines = []
    for v in violations:
        nodes = v.get("nodes", [])
        lines.append(f"- {v['id']} ({v.get('impact')}): {v.get('help')} [{len(nodes)} element(s)]")
        for node in nodes[:_TARGETS]:
            summary = (node.get("failureSummary") or "").replace("\n", " ")
            lines.append(f"    {' '.join(str(t) for t in node.get('target', []))}  {summary[:200]}")
    return "\n".join(lines)


async def assert_accessible(page: Any, what: str) -> None:
    """Run axe's WCAG 2.2 A/AA rules on ``page`` as it is now; fail naming ``what`` (e.g. the page's path)."""
    results = await _axe.run(page, options=_OPTIONS)
    violations = results.response["violations"]
    assert not violations, f"{what} ({page.url}): {len(violations)} WCAG 2.2 AA violation(s)\n{describe(violations)}"
