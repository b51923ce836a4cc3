"""Issue 11 through a real broker: the clocks sit on the party that owes the action, and what the
rulebook decides reaches the audit log, the metrics and the recipients.

The policy's decisions themselves are played case by case in test_policy.py (the scenarios);
these tests check what only a running broker shows.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from broker.audit.reading import read_audit
from broker.config import Settings
from broker.pipeline import deadlines
from broker.pipeline.service import Broker
from broker.policy.workdays import add_working_days
from broker.transport.connection import connected, jetstream
from broker.wire.subjects import DEADLINES_BUCKET
from tests.conftest import ClientFactory
from tests.helpers import drain, example, sharing

pytestmark = pytest.mark.timeout(60)
PARTNERS = ("la-camden", "health-camden", "police-met")  # the notifier, then the area's other partners


async def _audit(settings: Settings) -> list[dict[str, Any]]:
    async with connected(settings, settings.nats.url or "", name="audit") as nc:
        return [r async for r in read_audit(jetstream(nc, settings))]


async def _deadline(settings: Settings, message: str, party: str) -> dict[str, Any] | None:
    """The deadline entry under ``<message>.<party>``, or None once deleted."""
    import orjson

    async with connected(settings, settings.nats.url or "", name="kv") as nc:
        last = await jetstream(nc, settings).get_last_msg(f"KV_{DEADLINES_BUCKET}",
                                                          f"$KV.{DEADLINES_BUCKET}.{message}.{party}")
    if (last.headers or {}).get("KV-Operation") == "DEL" or not last.data:
        return None
    entry: dict[str, Any] = orjson.loads(last.data)
    return entry


async def _notify(agency: ClientFactory) -> str:
    la = await agency("la-camden")
    sin = await la.send(typ="serious-incident-notification", to=["ofsted", "cscpr-panel"],
                        payload=example("serious-incident-notification.example.json"),
                        sharing=sharing("serious-incident-notification"))
    assert (await la.wait_outcome(sin, timeout=10)).payload["recipients"] == ["ofsted", "cscpr-panel"]
    return sin


async def test_a_rapid_review_from_any_partner_of_the_area_stops_the_clock(
        broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    """The notifying LA's clock is owed by all three partners; the police send the review and it closes
    for everyone (Working Together 2023 ch. 5)."""
    sin = await _notify(agency)
    entries = {p: await _deadline(settings, sin, p) for p in PARTNERS}
    assert all(e is not None and e["owedBy"] == list(PARTNERS) for e in entries.values())
    assert [p for p, e in entries.items() if e and e["primary"]] == ["la-camden"]
    police = await agency("police-met")
    review = example("rapid-review.example.json") | {"notificationId": sin}
    rid = await police.send(typ="rapid-review", to=["cscpr-panel"], payload=review, re=sin,
                            sharing=sharing("rapid-review") | {"lawEnforcementBasis": "DPA_SCH8_P4",
                                                               "statutoryGateways": ["CA2004_S16F"],
                                                               "vocabulary": "sgb-lawful-basis/2"})
    assert (await police.wait_outcome(rid, timeout=10)).type == "receipt"
    for party in PARTNERS:
        assert await _deadline(settings, sin, party) is None, party
    records = [r for r in await _audit(settings) if r["message"] == rid and r["event"] == "shared"]
    assert records and all(r.get("meetsDeadline") for r in records)


async def test_a_rapid_review_that_never_comes_is_overdue_for_every_partner(
        broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    """Fifteen working days on (the scanner's clock driven forward), the LA, the police, health and the
    Panel each hear once; the copies under the other partners do not fire again."""
    sin = await _notify(agency)
    received = dt.datetime.now(dt.UTC)
    later = add_working_days(received, 16).timestamp()
    async with connected(settings, settings.nats.url or "", name="scan") as nc:
        scanner = deadlines.Scanner(jetstream(nc, settings), broker.pipeline.on_overdue, clock=lambda: later)
        assert await scanner.scan_once() == 1
        assert await scanner.scan_once() == 0
    for party in (*PARTNERS, "cscpr-panel"):
        client = await agency(party)
        got = [d for d in await drain(client, want=1) if d.type == "overdue-notice"]
        assert len(got) == 1 and got[0].payload["messageId"] == sin, party
        assert got[0].payload["expected"] == ["rapid-review"] and got[0].payload["recipient"] == "cscpr-panel"
    # Ofsted was sent the notification first, but the review is owed to the Panel: no notice for Ofsted
    assert [d.type for d in await drain(await agency("ofsted"), want=1)] == ["serious-incident-notification"]
    overdue = [r for r in await _audit(settings) if r["event"] == "overdue"]
    assert len(overdue) == 1 and overdue[0]["rules"] == ["sin.la-to-panel"]


async def test_a_late_lado_referral_is_flagged_and_counted(broker: Broker, agency: ClientFactory,
                                                           settings: Settings) -> None:
    """The employer owes the referral within one working day of becoming aware (judged from the
    allegation's own date, when the broker received it); the LADO's acknowledgement is a second clock."""
    school = await agency("school-hillside")
    aware = dt.datetime.now(dt.UTC) - dt.timedelta(days=9)
    payload = example("lado-referral.example.json")
    payload["allegation"]["becameAware"] = aware.isoformat(timespec="seconds").replace("+00:00", "Z")
    jti = await school.send(typ="lado-referral", to=["la-camden"], payload=payload, sharing=sharing("lado-referral"))
    assert (await school.wait_outcome(jti, timeout=10)).type == "receipt"
    (shared,) = [r for r in await _audit(settings) if r["message"] == jti and r["event"] == "shared"]
    assert "late" in shared["flags"] and shared["due"]  # flagged, and the LADO's own clock still runs
    late = broker.pipeline.metrics.registry.get_sample_value("sgb_messages_late_total", {"type": "lado-referral"})
    assert late == 1
    on_time = await school.send(typ="lado-referral", to=["la-camden"], payload=example("lado-referral.example.json")
                                | {"allegation": payload["allegation"] | {"becameAware": dt.datetime.now(dt.UTC)
                                                                          .isoformat(timespec="seconds")}},
                                sharing=sharing("lado-referral"))
    assert (await school.wait_outcome(on_time, timeout=10)).type == "receipt"
    (record,) = [r for r in await _audit(settings) if r["message"] == on_time and r["event"] == "shared"]
    assert "late" not in record.get("flags", [])
    assert broker.pipeline.metrics.registry.get_sample_value("sgb_messages_late_total",
                                                             {"type": "lado-referral"}) == 1


async def test_an_offence_in_a_schools_referral_without_an_art_10_condition_is_rejected_by_field(
        broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    school = await agency("school-hillside")
    block = sharing() | {"lawEnforcementBasis": None, "criminalOffenceCondition": None}
    jti = await school.send(typ="referral", to=["la-camden"], payload=example("referral.example.json"),
                            sharing={k: v for k, v in block.items() if v is not None})
    outcome = await school.wait_outcome(jti, timeout=10)
    assert outcome.type == "rejection"
    assert (outcome.payload["code"], outcome.payload["field"], outcome.payload["rule"]) == (
        "no-lawful-basis", "/sharing/criminalOffenceCondition", "basis.criminal-offence")
    assert "CAD-4471" not in str(outcome.payload)  # names the field that carries it, never its value
    (rejected,) = [r for r in await _audit(settings) if r["event"] == "rejected"]
    assert rejected["rule"] == "basis.criminal-offence" and "CAD-4471" not in str(rejected)
