"""A day of sharing through a real broker (issue 17, part 1): the review queue holds only what the
rulebook's triage picks plus the reproducible sample; and an IG officer in Chromium triages it,
reviews a sampled item, reviews a filtered set in bulk and escalates it, which the Data Protection
Officer then sees, with axe-core at zero WCAG 2.2 AA violations on every page."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from aiohttp.test_utils import TestClient

from broker.audit.triage import sample_point
from broker.config import Settings
from broker.wire.ids import derived_id
from tests.conftest import ClientFactory
from tests.helpers import drain, referral, sharing
from tests.support.axe import assert_accessible
from tests.support.web import auth, shots, token, until_indexed

pytestmark = pytest.mark.timeout(150)
Client = TestClient  # type: ignore[type-arg]
ROOT = Path(__file__).resolve().parent.parent


def chosen_jti(*, sampled: bool) -> str:
    """A message id whose received record the 5 % sample does (or does not) pick."""
    while True:
        jti = str(uuid.uuid4())
        if (sample_point(derived_id("audit", jti, "received")) < 0.05) is sampled:
            return jti


async def send_day(agency: ClientFactory, routine: int, *, sampled: int = 1) -> dict[str, list[str]]:
    """Police referrals to the LA: ``routine`` without consent (reason recorded), ``sampled`` of them
    with ids the sample picks; two with consent overridden, one emergency, one after advice, two
    with consent. Returns the message ids by kind."""
    police, la = await agency("police-met"), await agency("la-camden")
    given = {k: v for k, v in sharing().items() if k != "nonConsentReason"} | {
        "consentStatus": "GIVEN", "lawEnforcementBasis": "DPA_S35_CONSENT", "specialCategoryCondition": "UKGDPR_9_2_A",
        "criminalOffenceCondition": "DPA_SCH1_CONSENT"}
    plan: list[tuple[str, dict[str, Any], str | None]] = (
        [("routine", sharing(), None)] * routine + [("routine", sharing(), chosen_jti(sampled=True))] * sampled
        + [("overridden", sharing() | {"consentStatus": "REFUSED_OVERRIDDEN"}, None)] * 2
        + [("emergency", sharing() | {"urgency": "EMERGENCY"}, None),
           ("advice", sharing() | {"adviceSought": {"from": "IG_OFFICER"}}, None)]
        + [("given", given, None)] * 2)
    sent: dict[str, list[str]] = {}
    for kind, share, jti in plan:
        jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=share,
                                **({"jti": jti} if jti else {}))
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
    assert len(received) == 47
    # the sample, as an auditor recomputes it from the record ids alone
    sampled = {r["message"] for r in received if r["message"] in sent["routine"]
               and int(hashlib.sha256(r["id"].encode()).hexdigest(), 16) / 2**256 < 0.05}
    assert sent["routine"][-1] in sampled
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
    assert {line.split()[0] for line in stdout.decode().splitlines() if line.endswith(" sampled")} == sampled
    for bad in ("priority=urgent", "reason=made-up", "state=later", "outcome=fine"):
        r = await client.get(f"/api/v1/reviews?{bad}", headers=h)
        assert r.status == 400 and bad.split("=")[1] not in (await r.json())["detail"]


async def test_bulk_review_through_the_api_records_each_item(client: Client, settings: Settings,
                                                            agency: ClientFactory) -> None:
    sent = await send_day(agency, routine=0, sampled=0)
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
    for bad in ({"items": [], "outcome": "breach"}, {"items": items, "outcome": "fine"}, {"items": "x"},
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


async def test_a_reviewer_triages_samples_bulk_reviews_and_escalates_to_the_dpo(
        browser_page: Any, live_url: str, settings: Settings, agency: ClientFactory, client: Client,
        tmp_path: Path) -> None:
    page, out = browser_page, shots(tmp_path)
    sent = await send_day(agency, routine=3)
    await until_indexed(client, settings, sent["given"][-1], timeout=5)
    await sign_in(page, live_url, settings, "ig-officer", "ig-sam")

    # triage: the highest priority first, each with its reason
    await page.get_by_role("link", name="Review queue").click()
    first = page.locator("section.item").first
    assert "high" in await first.locator(".prio").inner_text()
    assert "Consent overridden" in await first.inner_text()
    await assert_accessible(page, "the review queue")
    await page.screenshot(path=str(out / "triage-1-queue.png"), full_page=True)

    # a sampled item, through a filter whose address can be shared
    await page.get_by_label("Priority").select_option("sample")
    await page.get_by_role("button", name="Filter").click()
    assert parse_qs(urlparse(page.url).query)["priority"] == ["sample"]
    shared_view = page.url
    sample = page.locator("section.item", has_text="Random sample")
    assert sent["routine"][-1] in await sample.get_by_role("link", name="trail").first.get_attribute("href")
    assert "below the sampling rate" in await sample.inner_text()
    await sample.get_by_label("Lawful, necessary and proportionate").check()
    await sample.get_by_role("button", name="Record review").click()
    await page.locator("#review-done").wait_for()
    assert "priority=sample" in page.url  # back to the same view
    await assert_accessible(page, "the sampled view after a review")

    # bulk: every consent-overridden share, selected, escalated to the DPO at once
    await page.goto(f"{live_url}/ig/reviews?state=open&reason=consent-overridden")
    await page.get_by_role("link", name="select all").click()
    assert await page.locator("input[type=checkbox][name=item]:checked").count() == 2
    bulk = page.locator("form#bulk")
    await bulk.get_by_label("Not proportionate: escalate to the Data Protection Officer").check()
    await bulk.get_by_label("Case or ticket reference").fill("DPO-2026/9")
    await assert_accessible(page, "the bulk review form")
    await bulk.get_by_role("button", name="Record for the selected items").click()
    await page.locator("#review-done").wait_for()
    assert "2 items" in await page.locator("#review-done").inner_text()
    await page.screenshot(path=str(out / "triage-2-bulk.png"), full_page=True)

    await page.get_by_role("link", name="My reviews").click()
    assert await page.locator("section.item").count() == 3
    await assert_accessible(page, "my reviews")
    await page.goto(shared_view)  # the shared link still shows the sample view, now empty
    assert await page.locator("section.item").count() == 0

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
    await page.screenshot(path=str(out / "triage-3-dpo.png"), full_page=True)
