"""A day of sharing through a real broker (issue 17, part 1): the review queue holds only what the
rulebook's triage picks plus the reproducible sample; and an IG officer in Chromium triages it,
reviews a sampled item, reviews a filtered set in bulk and escalates it, which the Data Protection
Officer then sees, with axe-core at zero WCAG 2.2 AA violations on every page."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from aiohttp.test_utils import TestClient

from broker.config import Settings
from broker.pipeline.service import Broker
from broker.policy import rulebook as rulebooks
from broker.web import reviews
from broker.web.context import AuditService
from tests.conftest import ClientFactory, make_settings
from tests.helpers import drain, eventually, referral, sharing
from tests.support.axe import assert_accessible
from tests.support.web import auth, snap, token, until_indexed
from tests.support.web import sign_in as sign_in_pages

pytestmark = pytest.mark.timeout(150)
Client = TestClient  # type: ignore[type-arg]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(home: Path, nats_url: str, request: pytest.FixtureRequest) -> Settings:
    """The test broker's settings; a test marked ``own_rulebook`` runs a copy of the shipped
    rulebook that it may change and reload, one marked ``sample_everything`` a copy with the sample
    rate at 1, so that each routine share is sampled (the browser journey needs one)."""
    base, marked = make_settings(home, nats_url), request.node.get_closest_marker
    if marked("sample_everything") is None and marked("own_rulebook") is None:
        return base
    text = rulebooks.DEFAULT_RULEBOOK.read_text()
    if marked("sample_everything") is not None:
        assert "\n    rate: 0.05\n" in text
        text = text.replace("\n    rate: 0.05\n", "\n    rate: 1.0\n")
    (home / "rulebook.yaml").write_text(text)
    return dataclasses.replace(base, rulebook_path=home / "rulebook.yaml")


async def send_day(agency: ClientFactory, routine: int) -> dict[str, list[str]]:
    """Police referrals to the LA: ``routine`` without consent (reason recorded), two with consent
    overridden, one emergency, one after advice, two with consent. Returns the message ids by kind."""
    police, la = await agency("police-met"), await agency("la-camden")
    given = {k: v for k, v in sharing().items() if k != "nonConsentReason"} | {
        "consentStatus": "GIVEN", "lawEnforcementBasis": "DPA_S35_CONSENT", "specialCategoryCondition": "UKGDPR_9_2_A",
        "criminalOffenceCondition": "DPA_SCH1_CONSENT"}
    plan: list[tuple[str, dict[str, Any]]] = (
        [("routine", sharing())] * routine + [("overridden", sharing() | {"consentStatus": "REFUSED_OVERRIDDEN"})] * 2
        + [("emergency", sharing() | {"urgency": "EMERGENCY"}),
           ("advice", sharing() | {"adviceSought": {"from": "IG_OFFICER"}})] + [("given", given)] * 2)
    sent: dict[str, list[str]] = {}
    for kind, share in plan:
        jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=share)
        outcome = await police.wait_outcome(jti, timeout=10)
        assert outcome.type == "receipt", outcome.payload
        sent.setdefault(kind, []).append(jti)
    await drain(la, want=len(plan))
    return sent


async def test_a_days_queue_holds_only_what_the_rules_pick_and_the_sample(client: Client, settings: Settings,
                                                                         agency: ClientFactory, tmp_path: Path) -> None:
    sent = await send_day(agency, routine=40)
    await until_indexed(client, settings, sent["given"][-1], timeout=5)
    h = auth(settings, "auditor")
    received = (await (await client.get("/api/v1/records?event=received&limit=500", headers=h)).json())["items"]
    assert len(received) == 46
    # the sample, as an auditor recomputes it from the records' ids and times alone: every share
    # without consent whose point is under the rate; those the rules pick anyway keep their reason
    drawn = {r["message"] for r in received if "shared-without-consent" in (r.get("flags") or ())
             and int(hashlib.sha256(f"{r['id']}|{r['at']}".encode()).hexdigest(), 16) / 2**256 < 0.05}
    sampled = drawn & set(sent["routine"])
    body = await (await client.get("/api/v1/reviews?limit=500", headers=h)).json()
    queue = {i["message"]: (i["priority"], i["reasons"][0]) for i in body["items"]}
    assert queue == {**{m: ("high", "consent-overridden") for m in sent["overridden"]},
                     sent["emergency"][0]: ("high", "emergency"), sent["advice"][0]: ("medium", "advice-sought"),
                     **{m: ("sample", "sample") for m in sampled}}
    assert body["matching"] == len(queue) < len(received) / 3  # far fewer than the shares without consent
    assert [i["priority"] for i in body["items"]][:3] == ["high"] * 3
    r = await client.get("/api/v1/reviews?priority=sample", headers=h)
    assert {i["message"] for i in (await r.json())["items"]} == sampled
    # docs/information-governance.md's recomputation, run as written over the log's CSV
    csv = await (await client.get("/api/v1/records.csv?event=received&flagged=true", headers=h)).read()
    (tmp_path / "received.csv").write_bytes(csv)
    doc = (ROOT / "docs" / "information-governance.md").read_text()
    script = doc.split("python3 - received.csv <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    proc = await asyncio.create_subprocess_exec(sys.executable, "-I", "-", str(tmp_path / "received.csv"),
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    stdout, _ = await asyncio.wait_for(proc.communicate(script.encode()), 30)
    assert proc.returncode == 0
    assert {line.split()[0] for line in stdout.decode().splitlines() if line.endswith(" sampled")} == drawn
    assert drawn <= queue.keys()
    for bad in ("priority=urgent", "reason=made-up", "state=later", "outcome=fine"):
        r = await client.get(f"/api/v1/reviews?{bad}", headers=h)
        assert r.status == 400 and bad.split("=")[1] not in (await r.json())["detail"]


async def test_bulk_review_through_the_api_records_each_item(client: Client, settings: Settings,
                                                            agency: ClientFactory) -> None:
    sent = await send_day(agency, routine=0)
    await until_indexed(client, settings, sent["given"][-1], timeout=5)
    h = auth(settings, "ig-officer")
    items = [f"flag:{m}" for m in sent["overridden"]]
    r = await client.post("/api/v1/reviews/bulk", json={"items": [*items, items[0]], "outcome": "breach",
                                                        "reference": "DPO-2026/7"}, headers=h)
    assert r.status == 201, await r.text()
    body = await r.json()
    assert sorted(x["item"] for x in body["recorded"]) == sorted(items) and body["skipped"] == 0
    assert {x["event"] for x in body["recorded"]} == {"reviewed"} and len({x["id"] for x in body["recorded"]}) == 2
    r = await client.post("/api/v1/reviews/bulk", json={"items": items, "outcome": "breach"}, headers=h)
    assert (await r.json()) == {"recorded": [], "skipped": 2}  # reviewed already: nothing recorded twice
    escalated = await (await client.get("/api/v1/reviews?state=escalated", headers=h)).json()
    assert sorted(i["item"] for i in escalated["items"]) == sorted(items)
    r = await client.post("/api/v1/reviews/bulk", json={"filters": {"reason": "advice-sought"}, "outcome": "follow-up"},
                          headers=h)  # the whole of a filtered view
    assert [x["message"] for x in (await r.json())["recorded"]] == sent["advice"]
    assert (await r.json())["recorded"][0]["bulk"] == 1
    for bad in ({"items": [], "outcome": "breach"}, {"items": items, "outcome": "fine"}, {"items": "x"},
                {"filters": {"priority": "urgent"}, "outcome": "breach"},
                {"filters": {"reason": 3}, "outcome": "breach"},
                {"items": [f"i{n}" for n in range(201)], "outcome": "breach"}):
        r = await client.post("/api/v1/reviews/bulk", json=bad, headers=h)
        assert r.status == 400, bad
    r = await client.post("/api/v1/reviews/bulk", json={"items": items, "outcome": "breach"},
                          headers=auth(settings, "auditor"))
    assert r.status == 403


async def sign_in(page: Any, live_url: str, settings: Settings, role: str, sub: str) -> None:
    await page.goto(f"{live_url}/ig/login")
    await assert_accessible(page, "sign-in")
    await page.get_by_label("Access token").fill(token(settings, role, sub=sub))
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", level=1).wait_for()


@pytest.mark.sample_everything
async def test_a_reviewer_triages_samples_bulk_reviews_and_escalates_to_the_dpo(
        browser_page: Any, live_url: str, settings: Settings, agency: ClientFactory, client: Client,
        tmp_path: Path) -> None:
    page = browser_page
    sent = await send_day(agency, routine=3)
    await until_indexed(client, settings, sent["given"][-1], timeout=5)
    await sign_in(page, live_url, settings, "ig-officer", "ig-sam")

    # triage: the highest priority first, each with its reason
    await page.get_by_role("link", name="Review queue").click()
    first = page.locator("section.item").first
    assert "high" in (await first.locator(".prio").inner_text()).lower()
    assert "Consent overridden" in await first.inner_text()
    await assert_accessible(page, "the review queue")
    await snap(page, "triage-1-queue.png")

    # a sampled item, through a filter whose address can be shared
    await page.get_by_label("Priority").select_option("sample")
    await page.get_by_role("button", name="Filter").click()
    assert parse_qs(urlparse(page.url).query)["priority"] == ["sample"]
    shared_view = page.url
    assert await page.locator("section.item").count() == 3  # every routine share, at this test's rate of 1
    sample = page.locator("section.item", has_text="Random sample").first
    assert sent["routine"][0] in await sample.get_by_role("link", name="trail").get_attribute("href")
    assert "below the sampling rate" in await sample.inner_text()
    await sample.get_by_label("Lawful, necessary and proportionate").check()
    await sample.get_by_role("button", name="Record review").click()
    await page.locator("#review-done").wait_for()
    assert "priority=sample" in page.url and "outcome" not in page.url  # back to the same view
    assert await page.locator("section.item").count() == 2
    await assert_accessible(page, "the sampled view after a review")

    # bulk: every consent-overridden share to the LA, filtered by choices, selected, escalated at once
    await page.goto(f"{live_url}/ig/reviews")
    await page.get_by_label("Consent status").select_option("REFUSED_OVERRIDDEN")
    await page.get_by_label("Recipient").select_option("la-camden")
    await page.get_by_role("button", name="Filter").click()
    assert parse_qs(urlparse(page.url).query)["consentStatus"] == ["REFUSED_OVERRIDDEN"]
    await page.get_by_role("link", name="select all").click()
    assert await page.locator("input[type=checkbox][name=item]:checked").count() == 2
    bulk = page.locator("form#bulk")
    await bulk.get_by_label("Not proportionate: escalate to the Data Protection Officer").check()
    await bulk.get_by_label("Case or ticket reference").fill("DPO-2026/9")
    await assert_accessible(page, "the bulk review form")
    await bulk.get_by_role("button", name="Record for the selected items").click()
    await page.locator("#review-done").wait_for()
    assert "2 items" in await page.locator("#review-done").inner_text()
    await snap(page, "triage-2-bulk.png")

    await page.get_by_role("link", name="My reviews").click()
    assert await page.locator("section.item").count() == 3
    await assert_accessible(page, "my reviews")
    await page.goto(shared_view)  # the shared link still shows the sample view, less the one reviewed
    assert await page.locator("section.item").count() == 2

    # the DPO: the escalated outcomes, read-only
    await page.get_by_role("button", name="Sign out").click()
    await sign_in(page, live_url, settings, "dpo", "dpo-kim")
    assert "state=escalated" in page.url
    await page.get_by_role("heading", name="Escalated to the Data Protection Officer").wait_for()
    items = page.locator("section.item")
    assert await items.count() == 2
    assert "by ig-sam" in await items.first.inner_text() and "Not proportionate" in await items.first.inner_text()
    assert await page.locator("form.review").count() == 0
    await assert_accessible(page, "the DPO's view")
    await page.goto(f"{live_url}/ig/reviews?state=open")  # the DPO reads the queue, and cannot review
    assert await page.locator("section.item").count() == 4  # 2 sampled, the emergency, the advice sought
    assert await page.locator("main form[method=post], [name=item], [name=outcome]").count() == 0
    await snap(page, "triage-3-dpo.png")


async def test_the_page_reviews_all_of_a_view_and_refuses_a_view_too_large(client: Client, settings: Settings,
                                                                          agency: ClientFactory,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sent = await send_day(agency, routine=0)
    await until_indexed(client, settings, sent["given"][-1], timeout=5)
    csrf = await sign_in_pages(client, settings, "ig-officer")
    form = {"csrf": csrf, "state": "open", "priority": "high", "scope": "all", "outcome": "follow-up"}
    monkeypatch.setattr(reviews, "MAX_BULK", 2)  # three high-priority items: more than a bulk review may cover
    r = await client.post("/ig/reviews/bulk", data=form)
    assert r.status == 400 and "more than 2 items match" in await r.text()
    monkeypatch.undo()
    r = await client.post("/ig/reviews/bulk", data=form, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/ig/reviews?state=open&priority=high&done=3"
    body = await (await client.get("/api/v1/reviews?state=done", headers=auth(settings, "auditor"))).json()
    assert sorted(i["message"] for i in body["items"]) == sorted(sent["overridden"] + sent["emergency"])
    page = await (await client.get("/ig/reviews?done=%3Cb%3Ehello")).text()
    assert "hello" not in page  # the notice says a number, never text from the address


def raise_advice(settings: Settings, broker: Broker) -> None:
    """The rulebook's triage changed (advice sought: medium to high) and reloaded, as SIGHUP does."""
    assert settings.rulebook_path is not None
    text, advice = settings.rulebook_path.read_text(), "    advice-sought:\n      priority: medium\n"
    assert advice in text
    settings.rulebook_path.write_text(text.replace(advice, advice.replace("medium", "high")))
    assert broker.reload_policy()


async def priorities(client: Client, settings: Settings) -> dict[str, str]:
    body = await (await client.get("/api/v1/reviews?limit=500", headers=auth(settings, "auditor"))).json()
    return {i["message"]: i["priority"] for i in body["items"]}


@pytest.mark.own_rulebook
async def test_a_reloaded_triage_derives_the_queue_again_and_keeps_the_outcomes(
        client: Client, settings: Settings, broker: Broker, service: AuditService, agency: ClientFactory) -> None:
    sent = await send_day(agency, routine=0)
    await until_indexed(client, settings, sent["given"][-1], timeout=5)
    reviewed = {"items": [f"flag:{sent['overridden'][0]}"], "outcome": "proportionate"}
    r = await client.post("/api/v1/reviews/bulk", json=reviewed, headers=auth(settings, "ig-officer"))
    assert r.status == 201
    assert (await priorities(client, settings))[sent["advice"][0]] == "medium"
    raise_advice(settings, broker)
    service.retriage()  # as SIGHUP does, after the rulebook

    async def rederived() -> bool:
        return not service.index.deriving and (await priorities(client, settings)).get(sent["advice"][0]) == "high"

    await eventually(rederived, what="the queue derived under the reloaded triage", timeout=10)
    assert await priorities(client, settings) == {
        m: "high" for m in [*sent["overridden"][1:], *sent["emergency"], *sent["advice"]]}
    done = await (await client.get("/api/v1/reviews?state=done", headers=auth(settings, "auditor"))).json()
    assert [i["message"] for i in done["items"]] == sent["overridden"][:1]  # the outcome recorded before stands
    later = await send_day(agency, routine=0)  # indexed under the reloaded triage
    await until_indexed(client, settings, later["given"][-1], timeout=5)
    assert (await priorities(client, settings))[later["advice"][0]] == "high"


@pytest.mark.own_rulebook
async def test_a_derivation_that_fails_is_said_and_tried_again(
        client: Client, settings: Settings, broker: Broker, service: AuditService, agency: ClientFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from broker.audit import index as index_module

    sent = await send_day(agency, routine=0)
    await until_indexed(client, settings, sent["given"][-1], timeout=5)
    broken, step = asyncio.Event(), index_module.rederive_step
    broken.set()

    def buggy(*args: Any, **kwargs: Any) -> Any:
        if broken.is_set():
            raise RuntimeError("a bug")
        return step(*args, **kwargs)

    monkeypatch.setattr(index_module, "rederive_step", buggy)
    raise_advice(settings, broker)
    service.retriage()

    async def warned() -> dict[str, Any] | None:  # (while it runs, the warning says it is deriving)
        check: dict[str, Any] = (await (await client.get("/readyz")).json())["checks"]["audit-index"]
        return check if check["state"] == "warn" and "failed (" in check["detail"] else None

    check = await eventually(warned, what="readiness warning of the failed derivation")
    assert "deriving the review queue again failed (RuntimeError" in check["detail"]
    await sign_in_pages(client, settings, "ig-officer")
    assert 'id="derive-failed"' in await (await client.get("/ig/reviews")).text()  # the queue may be incomplete
    broken.clear()

    async def mended() -> bool:
        check = (await (await client.get("/readyz")).json())["checks"]["audit-index"]
        return check["state"] == "ok" and (await priorities(client, settings)).get(sent["advice"][0]) == "high"

    await eventually(mended, what="the derivation tried again and finished", timeout=15)
    assert 'id="derive-failed"' not in await (await client.get("/ig/reviews")).text()
