"""The rulebook's traceability (``sgb policy coverage``) as the API and the IG page show it,
against a running broker: the rulebook in force, its scenario file beside it (missing, changed,
failing or broken), computed once per rulebook load, and the page in a real Chromium, by keyboard.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.config import Settings
from broker.pipeline.service import Broker, running_broker
from broker.policy import scenarios
from broker.policy.rulebook import DEFAULT_RULEBOOK
from broker.policy.rulebook import load as load_rulebook
from broker.web import traceability
from broker.web.app import audit_service, make_app
from broker.wire.catalogue import Catalogue
from tests.support.web import auth, sign_in, snap, token

pytestmark = pytest.mark.timeout(120)
Client = TestClient  # type: ignore[type-arg]
SCENARIOS = scenarios.default_path(DEFAULT_RULEBOOK)
FAILING_ONE = "a decision not to share reaches no one and keeps its reason"


def row(view: dict[str, Any], kind: str, ident: str) -> dict[str, Any]:
    (found,) = [r for r in view["rows"] if r["kind"] == kind and r["id"] == ident]
    return found  # type: ignore[no-any-return]


async def coverage(client: Client, settings: Settings, role: str = "auditor") -> dict[str, Any]:
    r = await client.get("/api/v1/rulebook/coverage", headers=auth(settings, role))
    assert r.status == 200, await r.text()
    return await r.json()  # type: ignore[no-any-return]


async def test_coverage_api_traces_the_rulebook_in_force(client: Client, settings: Settings) -> None:
    view = await coverage(client, settings, "operator")
    assert view["rulebook"]["file"] == "rulebook.yaml" and view["rulebook"]["edition"]
    assert view["scenarios"]["state"] == "played" and view["scenarios"]["file"] == SCENARIOS.name
    assert view["scenarios"]["count"] > 100 and view["scenarios"]["failing"] == 0 == len(view["failing"])
    golden = [r for r in view["rows"] if r["kind"] == "golden-rule"]
    assert len(golden) == 14 and {r["id"][:4] for r in golden} == {"2018", "2024"}
    consent = row(view, "golden-rule", "2024/3")
    assert "consent.reason" in consent["rules"] and consent["scenarios"] and consent["gap"] is None
    assert view["rules"]["consent.reason"]["cite"] and view["rules"]["consent.reason"]["says"]
    assert all(rid in view["rules"] for r in view["rows"] for rid in r["rules"])
    death = row(view, "clock", "child-death-notification")
    assert death["gap"] is None and death["rules"] == ["child-death.notification"] and death["scenarios"]
    assert view["gaps"] == 0 == sum(1 for r in view["rows"] if r["gap"]) and view["total"] == len(view["rows"])
    assert any(r["kind"] == "code" and r["id"] == "UKGDPR_6_1_E" and r["rules"] for r in view["rows"])
    again = await coverage(client, settings, "ig-officer")
    assert again["computedAt"] == view["computedAt"]  # computed once for this rulebook, not per request
    assert client.server.app[traceability.CACHE].builds == 1


# -- a rulebook of our own, to change its scenario file ------------------------------------------


@pytest.fixture
def rulebook_copy(tmp_path: Path) -> Path:
    path = tmp_path / "agreement" / "camden.yaml"
    path.parent.mkdir()
    shutil.copy(DEFAULT_RULEBOOK, path)
    return path


@pytest.fixture
def rulebook_with_a_gap(rulebook_copy: Path) -> Path:
    """The copy without the child death notification's own clock (and the scenarios that test it):
    the guidance's clock ``child-death-notification`` then has no rule."""
    text = rulebook_copy.read_text(encoding="utf-8")
    clock = ("    lateAfter: {field: /becameAware, orField: /dateTimeOfDeath, clockHours: 24, "
             "clock: child-death-notification,\n"
             "                says: \"Notify the child death review partners within 24 hours of learning of "
             "the death\"}\n")
    assert text.count(clock) == 1
    rulebook_copy.write_text(text.replace(clock, ""), encoding="utf-8")
    cases = SCENARIOS.read_text(encoding="utf-8").split("\n  - name: ")
    gone = ("a child's death notified after 24 hours is flagged late", "a learning time after the notification")
    kept = [c for c in cases if not c.startswith(gone)]
    assert len(kept) == len(cases) - 2
    scenarios.default_path(rulebook_copy).write_text("\n  - name: ".join(kept), encoding="utf-8")
    return rulebook_copy


@pytest.fixture
async def own(settings: Settings, topology: None, rulebook_copy: Path,
              aiohttp_client: Callable[..., Awaitable[Client]]) -> AsyncIterator[tuple[Broker, Client]]:
    """A broker on a copy of the rulebook, with no scenario file beside it yet."""
    mine = dataclasses.replace(settings, rulebook_path=rulebook_copy)
    async with running_broker(mine, mine.nats.url or "") as broker, audit_service(broker) as service:
        yield broker, await aiohttp_client(make_app(broker, service))


async def test_a_clock_without_a_rule_is_a_gap(rulebook_with_a_gap: Path, own: tuple[Broker, Client],
                                                settings: Settings) -> None:
    _, client = own
    view = await coverage(client, settings)
    assert view["scenarios"]["state"] == "played" and view["scenarios"]["failing"] == 0
    death = row(view, "clock", "child-death-notification")
    assert death["gap"] == "no rule" and death["rules"] == [] and death["failing"] == []
    assert view["gaps"] == 1
    await sign_in(client, settings, "auditor")
    page = await (await client.get("/ig/rulebook")).text()
    assert f'<h2 id="gaps">{view["total"]} items, 1 gap</h2>' in page
    assert 'href="#clock-child-death-notification"' in page


async def test_without_scenarios_the_page_says_so(own: tuple[Broker, Client], settings: Settings,
                                                  rulebook_copy: Path) -> None:
    broker, client = own
    view = await coverage(client, settings)
    assert view["scenarios"] == {"state": "missing", "file": "camden.scenarios.yaml", "count": 0, "failing": 0,
                                 "detail": None}
    assert all(r["gap"] == ("no scenario" if r["rules"] else "no rule") for r in view["rows"] if r["id"] != "2024/7")
    assert row(view, "golden-rule", "2024/7")["gap"] is None  # not verified, so not cited: no gap
    assert "not cited until checked" in row(view, "golden-rule", "2024/7")["note"]
    assert "consent.reason" in row(view, "golden-rule", "2024/3")["rules"]
    await sign_in(client, settings, "ig-officer")
    r = await client.get("/ig/rulebook")
    page = await r.text()
    assert r.status == 200 and "No scenarios:" in page and "camden.scenarios.yaml" in page
    assert str(rulebook_copy.parent) not in page  # the file's name, not where the server keeps it

    # a scenario file appears, with one scenario that no longer holds: played at the next look
    text = SCENARIOS.read_text(encoding="utf-8")
    holds = "expect: {shared: [], notShared: NOT_PROPORTIONATE}"
    assert text.count(holds) == 1
    broken = text.replace(holds, holds.replace("NOT_PROPORTIONATE", "NOT_NECESSARY"))
    scenarios.default_path(rulebook_copy).write_text(broken, encoding="utf-8")
    view = await coverage(client, settings)
    assert view["scenarios"]["state"] == "played" and view["scenarios"]["failing"] == 1
    (failing,) = view["failing"]
    assert failing["scenario"] == FAILING_ONE and failing["rule"] == "decision-not-to-share.record"
    assert "NOT_NECESSARY" in "; ".join(failing["problems"])
    assert FAILING_ONE in row(view, "golden-rule", "2018/7")["failing"]
    page = await (await client.get("/ig/rulebook")).text()
    assert "Failing scenarios" in page and FAILING_ONE in page and "1 failing" in page

    # the same rulebook and file: no new computation; a reload: once more
    builds = client.server.app[traceability.CACHE].builds
    await coverage(client, settings)
    assert client.server.app[traceability.CACHE].builds == builds
    assert broker.reload_policy()
    await coverage(client, settings)
    assert client.server.app[traceability.CACHE].builds == builds + 1

    # a file that is not valid YAML: said, not a failure
    scenarios.default_path(rulebook_copy).write_text("scenarios: [", encoding="utf-8")
    view = await coverage(client, settings)
    assert view["scenarios"]["state"] == "invalid" and "not valid YAML" in view["scenarios"]["detail"]
    assert str(rulebook_copy.parent) not in view["scenarios"]["detail"]
    page = await (await client.get("/ig/rulebook")).text()
    assert "could not be played" in page


async def test_the_rulebook_page_is_for_ig_officers_and_auditors(client: Client, settings: Settings) -> None:
    await sign_in(client, settings, "operator")
    assert (await client.get("/ig/rulebook")).status == 403
    assert 'href="/ig/rulebook"' not in await (await client.get("/ig/integrity")).text()
    client.session.cookie_jar.clear()
    await sign_in(client, settings, "auditor")
    r = await client.get("/ig/rulebook")
    assert r.status == 200 and "default-src 'none'" in r.headers["Content-Security-Policy"]
    page = await r.text()
    assert 'href="/ig/rulebook" aria-current="page"' in page and "<script" not in page
    view = await coverage(client, settings)
    assert f'<h2 id="gaps">{view["total"]} items, {view["gaps"]} gaps</h2>' in page
    assert page.count('<tr id="clock-') == sum(1 for r in view["rows"] if r["kind"] == "clock")
    # the review queue's triage, each reason with its priority and source, from the rulebook in force
    book = load_rulebook(DEFAULT_RULEBOOK, Catalogue())
    assert page.count('<tr id="triage-') == len(book.triage["reasons"])
    row = page.split('<tr id="triage-consent-overridden">', 1)[1].split("</tr>", 1)[0]
    assert "Consent overridden" in row and "<td>high</td>" in row and "golden rule 4" in row
    assert "sampled at 5 %" in page


# -- a real browser -------------------------------------------------------------------------------


async def test_an_auditor_reads_the_traceability_table_by_keyboard(
        rulebook_with_a_gap: Path, own: tuple[Broker, Client], browser_page: Any, settings: Settings,
        tmp_path: Path) -> None:
    """On a rulebook with one gap (the shipped one has none): the gap list links to its row."""
    page = browser_page
    live_url = str(own[1].server.make_url("")).rstrip("/")
    await page.goto(f"{live_url}/ig/login")
    await page.get_by_label("Access token").fill(token(settings, "auditor"))
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", name="Sharing log").wait_for()

    for _ in range(12):  # the navigation link, by keyboard alone
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.textContent") == "Rulebook":
            break
    else:
        raise AssertionError("the Rulebook link is not reachable by keyboard")
    await page.keyboard.press("Enter")
    await page.get_by_role("heading", name="Rulebook traceability").wait_for()
    assert page.url == f"{live_url}/ig/rulebook"

    def item(ident: str) -> Any:
        return page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=ident, exact=True))

    consent = item("2024/3")
    assert "consent.reason" in await consent.inner_text()
    assert "Gap" not in await consent.inner_text()
    death = item("child-death-notification")
    assert "Gap: no rule" in await death.inner_text() and "gap" in (await death.get_attribute("class") or "")
    await snap(page, "rulebook.png")

    for _ in range(60):  # the gap list links to each gap's row
        await page.keyboard.press("Tab")
        if (await page.evaluate("document.activeElement.getAttribute('href')") or "").endswith(
                "#clock-child-death-notification"):
            break
    else:
        raise AssertionError("the gap list is not reachable by keyboard")
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{live_url}/ig/rulebook#clock-child-death-notification")
    summary = consent.locator("summary")
    await summary.focus()
    await page.keyboard.press("Enter")  # a long list of scenarios opens without JavaScript
    assert await consent.locator("details").get_attribute("open") is not None
    outline = await summary.evaluate("e => getComputedStyle(e).outlineStyle")
    assert outline != "none"  # focus is visible
    unlabelled = await page.evaluate("""() => [...document.querySelectorAll('table')]
        .filter(t => !t.getAttribute('aria-labelledby') && !t.getAttribute('aria-label')).length""")
    assert unlabelled == 0
