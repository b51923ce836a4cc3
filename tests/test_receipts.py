"""Receipts through a real broker and nats-server: a deadline waiting for a receipt stops only on
the statuses its rule counts (an adapter's automatic ``delivered`` is not an acknowledgement),
other deadlines stop on their own reply as before, the original sender receives every receipt,
and the audit trail shows where a message stands with each recipient."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from adapters.sdk import AgencyClient
from broker.audit.reading import read_audit
from broker.config import Settings
from broker.errors import ConfigError
from broker.pipeline import deadlines
from broker.pipeline.service import Broker
from broker.policy import rulebook as rulebooks
from broker.transport.connection import connected, jetstream
from broker.web import openapi
from broker.wire.catalogue import Catalogue
from tests.conftest import ClientFactory
from tests.helpers import drain, eventually, example, referral, sharing
from tests.support.pipeline import settled
from tests.support.web import auth, sign_in

pytestmark = pytest.mark.timeout(60)
Client = TestClient[web.Request, web.Application]
MONTH = 30 * 86400.0


# -- helpers ------------------------------------------------------------------------------------


async def send_receipt(sender: AgencyClient, to: str, message: str, status: str) -> str:
    """What an agency's adapter (or its staff, through it) sends about ``message``: ``re`` names it."""
    body = {"messageId": message, "status": status, "recipients": [sender.agency],
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
    rid = await sender.send(typ="receipt", to=[to], payload=body, sharing=sharing("receipt"), re=message)
    assert (await sender.wait_outcome(rid, timeout=10)).payload["status"] == "routed"
    return rid


async def deadline_entry(broker: Broker, message: str, replier: str) -> dict[str, Any] | None:
    """The deadline's KV entry, or None once a reply closed it."""
    last = await broker.js.get_last_msg("KV_SG_DEADLINES", f"$KV.SG_DEADLINES.{message}.{replier}")
    if (last.headers or {}).get("KV-Operation") == "DEL":
        return None
    record: dict[str, Any] = orjson.loads(last.data or b"{}")
    return record


async def scan_a_month_later(broker: Broker) -> int:
    """One deadline pass with the clock a month ahead: every deadline still open is overdue then."""
    scanner = deadlines.Scanner(broker.js, broker.pipeline.on_overdue, clock=lambda: time.time() + MONTH)
    return await scanner.scan_once()


async def audit(settings: Settings) -> list[dict[str, Any]]:
    async with connected(settings, settings.nats.url or "", name="audit") as nc:
        return [r async for r in read_audit(jetstream(nc, settings))]


async def receipts_about(client: AgencyClient, message: str, want: set[str]) -> dict[str, Any]:
    """The receipts ``client`` receives about ``message``, by status, until it has ``want``."""
    got: dict[str, Any] = {}

    async def all_wanted() -> bool:
        for delivery in await drain(client, want=1):
            if delivery.type == "receipt" and delivery.payload["messageId"] == message:
                got[delivery.payload["status"]] = delivery
        return want <= set(got)

    await eventually(all_wanted, what=f"receipts {sorted(want)} about {message}", every=0)
    return got


# -- deadlines stop on the right reply ------------------------------------------------------------


@pytest.mark.parametrize(("status", "stops"), [("delivered", False), ("accepted", True), ("actioned", True)])
async def test_encompass_deadline_stops_only_when_the_school_acknowledges(
        status: str, stops: bool, broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    police, school = await agency("police-met"), await agency("school-hillside")
    jti = await police.send(typ="encompass-notification", to=["school-hillside"],
                            payload=example("encompass-notification.example.json"),
                            sharing=sharing("encompass-notification"))
    assert (await police.wait_outcome(jti, timeout=10)).payload["status"] == "routed"
    (notice,) = await drain(school, want=1)
    await settled(broker.js)
    opened = await deadline_entry(broker, jti, "school-hillside")
    assert opened is not None and opened["receiptStatus"] == ["accepted", "actioned"]  # the rule, kept with the entry
    assert "designated safeguarding lead" in opened["says"]

    await send_receipt(school, "police-met", notice.claims["origin"]["jti"], status)
    await settled(broker.js)
    entry = await deadline_entry(broker, jti, "school-hillside")
    assert (entry is None) is stops, entry
    assert await scan_a_month_later(broker) == (0 if stops else 1)

    records = await audit(settings)
    overdue = [r for r in records if r["event"] == "overdue"]
    assert len(overdue) == (0 if stops else 1)
    (school_receipt,) = [r for r in records if r["event"] == "received" and r["type"] == "receipt"]
    assert school_receipt["receiptStatus"] == status and school_receipt["receiptFor"] == jti
    assert school_receipt["re"] == jti and school_receipt["sender"] == "school-hillside"
    assert school_receipt.get("meetsDeadline", False) is stops
    notices = [d for d in await drain(police, want=1) if d.type == "overdue-notice"]
    assert len(notices) == (0 if stops else 1)
    assert broker.pipeline.counters.overdue == (0 if stops else 1)


async def test_lado_deadline_waits_for_the_lados_acknowledgement(broker: Broker, agency: ClientFactory,
                                                                 settings: Settings) -> None:
    health, la = await agency("health-camden"), await agency("la-camden")
    jti = await health.send(typ="lado-referral", to=["la-camden"], payload=example("lado-referral.example.json"),
                            sharing=sharing("lado-referral"))
    await health.wait_outcome(jti, timeout=10)
    await drain(la, want=1)
    await send_receipt(la, "health-camden", jti, "delivered")  # the adapter's automatic receipt
    await settled(broker.js)
    entry = await deadline_entry(broker, jti, "la-camden")
    assert entry is not None and entry["state"] == "open" and entry["receiptStatus"] == ["accepted", "actioned"]
    await send_receipt(la, "health-camden", jti, "actioned")
    await settled(broker.js)
    assert await deadline_entry(broker, jti, "la-camden") is None
    assert await scan_a_month_later(broker) == 0
    assert not [r for r in await audit(settings) if r["event"] == "overdue"]


async def test_a_late_acknowledgement_still_stops_an_overdue_deadline(broker: Broker, agency: ClientFactory,
                                                                      settings: Settings) -> None:
    police, school = await agency("police-met"), await agency("school-hillside")
    jti = await police.send(typ="encompass-notification", to=["school-hillside"],
                            payload=example("encompass-notification.example.json"),
                            sharing=sharing("encompass-notification"))
    await police.wait_outcome(jti, timeout=10)
    await drain(school, want=1)
    await settled(broker.js)
    assert await scan_a_month_later(broker) == 1
    assert (await deadline_entry(broker, jti, "school-hillside") or {}).get("state") == "overdue"
    await send_receipt(school, "police-met", jti, "accepted")
    await settled(broker.js)
    assert await deadline_entry(broker, jti, "school-hillside") is None
    assert await scan_a_month_later(broker) == 0
    assert len([r for r in await audit(settings) if r["event"] == "overdue"]) == 1


async def test_referral_deadline_closes_on_the_outcome_not_on_receipts(broker: Broker, agency: ClientFactory,
                                                                       settings: Settings) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    await police.wait_outcome(jti, timeout=10)
    await drain(la, want=1)
    for status in ("delivered", "accepted", "actioned"):  # receipts are not the decision the rule waits for
        await send_receipt(la, "police-met", jti, status)
    await settled(broker.js)
    entry = await deadline_entry(broker, jti, "la-camden")
    assert entry is not None and entry["expect"] == ["referral-outcome"] and "receiptStatus" not in entry
    outcome = example("referral-outcome.example.json") | {"referralId": jti}
    oid = await la.send(typ="referral-outcome", to=["police-met"], payload=outcome,
                        sharing=sharing("referral-outcome"), re=jti)
    await la.wait_outcome(oid, timeout=10)
    await settled(broker.js)
    assert await deadline_entry(broker, jti, "la-camden") is None
    assert await scan_a_month_later(broker) == 0
    records = await audit(settings)
    assert not [r for r in records if r["event"] == "overdue"]
    (received,) = [r for r in records if r["event"] == "received" and r["message"] == oid]
    assert received["meetsDeadline"] is True and "receiptStatus" not in received


# -- the sender sees it; the trail shows it --------------------------------------------------------


async def test_the_sender_receives_each_receipt_from_the_recipient(broker: Broker, agency: ClientFactory) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    assert (await police.wait_outcome(jti, timeout=10)).payload["status"] == "routed"
    await drain(la, want=1)
    for status in ("accepted", "actioned"):
        await send_receipt(la, "police-met", jti, status)
    got = await receipts_about(police, jti, {"accepted", "actioned"})
    assert set(got) == {"accepted", "actioned"}
    for status, delivery in got.items():
        assert delivery.claims["iss"] == broker.registry.broker_id  # relayed, signed and sealed by the broker
        assert delivery.claims["re"] == jti and delivery.claims["origin"]["iss"] == "la-camden"
        assert delivery.payload["recipients"] == ["la-camden"] and delivery.payload["status"] == status


async def test_trail_shows_where_a_referral_stands_with_each_recipient(
        client: Client, broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    police, la = await agency("police-met"), await agency("la-camden")
    jti = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing())
    await police.wait_outcome(jti, timeout=10)
    await drain(la, want=1)
    h = auth(settings, "auditor")

    async def summary(want: str, replies: int) -> dict[str, Any]:
        """The trail once it is indexed up to ``replies`` receipts, standing at ``want``."""
        async def shown() -> dict[str, Any] | None:
            body = await (await client.get(f"/api/v1/messages/{jti}/trail", headers=h)).json()
            (la_entry,) = body["summary"]["recipients"]
            done = len(body["summary"]["replies"]) == replies and la_entry["standing"] == want
            return body if done else None  # type: ignore[no-any-return]

        return await eventually(shown, what=f"the trail to show {want} after {replies} receipts", timeout=5)

    body = await summary("shared", 0)
    assert [step["status"] for step in body["summary"]["recipients"][0]["progress"]] == ["shared"]
    for n, status in enumerate(("delivered", "accepted", "actioned"), start=1):
        await send_receipt(la, "police-met", jti, status)
        body = await summary(status, n)
    await send_receipt(la, "police-met", jti, "delivered")  # a late duplicate does not move it back
    body = await summary("actioned", 4)

    (la_entry,) = body["summary"]["recipients"]  # the receipts' deliveries to police are not recipients
    assert la_entry["recipient"] == "la-camden" and la_entry["decision"] == "share" and la_entry["due"]
    steps = la_entry["progress"]
    assert [s["status"] for s in steps] == ["shared", "delivered", "accepted", "actioned"]
    times = [s["at"] for s in steps]
    assert times == sorted(times) and all(t.endswith("Z") for t in times)
    assert [r.get("receiptStatus") for r in body["summary"]["replies"]] == [
        "delivered", "accepted", "actioned", "delivered"]
    receipts = [r for r in body["records"] if r.get("type") == "receipt" and r["event"] == "received"]
    assert {r["receiptFor"] for r in receipts} == {jti} and {r["sender"] for r in receipts} == {"la-camden"}
    assert "Okafor" not in orjson.dumps(body).decode()  # metadata only

    await sign_in(client, settings, "auditor")
    page = await (await client.get(f"/ig/messages/{jti}")).text()
    table = page.split('aria-label="Decision per recipient"')[1].split("</table>")[0]
    assert "<strong>actioned</strong>" in table
    listed = table.split('aria-label="Where it stands with la-camden"')[1].split("</ol>")[0]
    assert [li.split(" <time")[0] for li in listed.split("<li>")[1:]] == ["shared", "delivered", "accepted",
                                                                         "actioned"]
    assert "receipt (accepted) from la-camden" in page


async def test_trail_shows_not_delivered_and_one_recipient_behind_another(
        client: Client, broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    police, school, la = await agency("police-met"), await agency("school-hillside"), await agency("la-camden")
    jti = await police.send(typ="encompass-notification", to=["school-hillside", "la-camden"],  # the LA: home-educated
                            payload=example("encompass-notification.example.json") | {"electivelyHomeEducated": True},
                            sharing=sharing("encompass-notification"))
    await police.wait_outcome(jti, timeout=10)
    await drain(school, want=1)
    await drain(la, want=1)
    await send_receipt(school, "police-met", jti, "accepted")
    await send_receipt(la, "police-met", jti, "not-delivered")
    await settled(broker.js)
    h = auth(settings, "ig-officer")
    async def both_indexed() -> dict[str, Any] | None:
        body = await (await client.get(f"/api/v1/messages/{jti}/trail", headers=h)).json()
        standing = {r["recipient"]: r["standing"] for r in body["summary"]["recipients"]}
        return body if standing == {"school-hillside": "accepted", "la-camden": "not-delivered"} else None  # type: ignore[no-any-return]

    body = await eventually(both_indexed, what="both receipts in the trail", timeout=5)
    by = {r["recipient"]: r for r in body["summary"]["recipients"]}
    assert by["school-hillside"]["deadlineMet"] and "deadlineMet" not in by["la-camden"]
    assert await deadline_entry(broker, jti, "la-camden") is not None  # not-delivered stops nothing


# -- the rulebook -------------------------------------------------------------------------------


def _rulebook_with(tmp_path: Any, old: str, new: str) -> Any:
    text = rulebooks.DEFAULT_RULEBOOK.read_text()
    assert text.count(old) == 1
    path = tmp_path / "rulebook.yaml"
    path.write_text(text.replace(old, new))
    return path


def _lado_statuses(book: rulebooks.Rulebook) -> tuple[str, ...]:
    rule = book.rule_for("lado-referral", "health")
    assert rule is not None and rule.deadline is not None
    return rule.deadline.receipt_status


def test_rulebook_receipt_status_defaults_and_validation(tmp_path: Any) -> None:
    book = rulebooks.load(rulebooks.DEFAULT_RULEBOOK, Catalogue())
    specs = {r.id: r.deadline for r in book.rules if r.deadline}
    assert specs["encompass.police-to-school"].receipt_status == ("accepted", "actioned")
    assert specs["lado.referral"].receipt_status == ("accepted", "actioned")
    assert specs["referral.to-local-authority"].receipt_status == ()

    lado = 'deadline: {workingDays: 1, expect: [receipt], receiptStatus: [accepted, actioned],'
    default = rulebooks.load(_rulebook_with(tmp_path, lado, "deadline: {workingDays: 1, expect: [receipt],"),
                             Catalogue())
    assert _lado_statuses(default) == ("accepted", "actioned")  # absent: acknowledged or acted on, not delivered
    explicit = rulebooks.load(_rulebook_with(
        tmp_path, lado, "deadline: {workingDays: 1, expect: [receipt], receiptStatus: [delivered],"), Catalogue())
    assert _lado_statuses(explicit) == ("delivered",)

    for statuses in ("[accepted, read]", "[not-delivered]", "[routed]", "[]", "[accepted, accepted]"):
        bad = _rulebook_with(tmp_path, lado,
                             f"deadline: {{workingDays: 1, expect: [receipt], receiptStatus: {statuses},")
        with pytest.raises(ConfigError, match="receiptStatus") as info:
            rulebooks.load(bad, Catalogue())
        assert "/rules/" in str(info.value), statuses
    referral_deadline = "ragRating, expect: [referral-outcome],"  # the referral's (a step-up has one too)
    bad = _rulebook_with(tmp_path, referral_deadline,
                         "ragRating, expect: [referral-outcome], receiptStatus: [accepted],")
    with pytest.raises(ConfigError, match=r"applies only when deadline\.expect includes receipt"):
        rulebooks.load(bad, Catalogue())


def test_answers_reads_the_status_the_entry_records() -> None:
    entry = {"state": "open", "expect": ["receipt"], "receiptStatus": ["delivered"]}
    assert deadlines.answers(entry, "receipt", {"status": "delivered"})
    assert not deadlines.answers(entry, "receipt", {"status": "accepted"})  # the entry's rule, not today's default
    legacy = {"state": "overdue", "expect": ["receipt"]}  # written before statuses were recorded
    assert deadlines.answers(legacy, "receipt", {"status": "accepted"})
    assert not deadlines.answers(legacy, "receipt", {"status": "delivered"})
    assert not deadlines.answers({"state": "closed", "expect": ["receipt"]}, "receipt", {"status": "actioned"})
    assert deadlines.answers({"state": "open", "expect": ["referral-outcome"]}, "referral-outcome", {})
    assert not deadlines.answers({"state": "open", "expect": ["referral-outcome"]}, "receipt", {"status": "actioned"})


def test_the_openapi_document_offers_exactly_the_receipt_schemas_statuses() -> None:
    """Every ``receiptStatus`` the published OpenAPI document describes allows what a receipt may
    carry (schemas/receipt.v1.json, read here as a file), in its order; and the statuses the
    rulebook lets stop a clock are among them."""
    schema = orjson.loads((Path(__file__).resolve().parent.parent / "schemas" / "receipt.v1.json").read_bytes())
    statuses = schema["properties"]["status"]["enum"]
    found: list[object] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("receiptStatus"), dict):
                found.append(node["receiptStatus"].get("enum"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(openapi.document())
    assert len(found) >= 2 and all(enum == statuses for enum in found), found
    assert set(rulebooks.RECEIPT_STATUSES) <= set(statuses)
