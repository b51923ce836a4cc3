"""Issue 14 through a real broker: each multi-agency process of Working Together as messages, with
its clocks opened, chained and closed by the replies the guidance expects.

The rulebook's decisions for these types are played case by case in the scenarios (test_policy.py);
these tests check what only a running broker shows: who receives what, which clocks sit in the
deadline store under which party, and which reply closes which clock.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest
from nats.js.errors import NotFoundError

from adapters.sdk import AgencyClient, Delivery
from broker.audit.reading import read_audit
from broker.config import Settings
from broker.pipeline import deadlines
from broker.pipeline.service import Broker
from broker.transport.connection import connected, jetstream
from broker.wire.subjects import DEADLINES_BUCKET
from tests.conftest import ClientFactory
from tests.helpers import drain, example, sharing
from tests.support.web import Client, auth, sign_in, until_recorded

pytestmark = pytest.mark.timeout(60)
CONSENT = {"consentStatus": "GIVEN", "nonConsentReason": None, "subjectInformed": "INFORMED"}


def _sharing(typ: str, **changes: Any) -> dict[str, Any]:
    """The type's example sharing block with ``changes`` (a None removes a field)."""
    block = sharing(typ) | changes
    return {k: v for k, v in block.items() if v is not None}


def _iso(when: dt.datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


async def _send(client: AgencyClient, typ: str, to: list[str], payload: dict[str, Any], *,
                re: str | None = None, **changes: Any) -> tuple[str, Delivery]:
    jti = await client.send(typ=typ, to=to, payload=payload, sharing=_sharing(typ, **changes), re=re)
    return jti, await client.wait_outcome(jti, timeout=10)


async def _routed(client: AgencyClient, typ: str, to: list[str], payload: dict[str, Any], *,
                  re: str | None = None, **changes: Any) -> str:
    jti, outcome = await _send(client, typ, to, payload, re=re, **changes)
    assert outcome.type == "receipt" and outcome.payload["recipients"] == to, outcome.payload
    return jti


async def _entry(settings: Settings, key: str) -> dict[str, Any] | None:
    """The deadline entry under ``key`` (``<message>.<party>[.<clock>]``), or None once closed."""
    async with connected(settings, settings.nats.url or "", name="kv") as nc:
        js = jetstream(nc, settings)
        try:
            last = await js.get_last_msg(f"KV_{DEADLINES_BUCKET}", f"$KV.{DEADLINES_BUCKET}.{key}")
        except NotFoundError:  # never opened
            return None
    if (last.headers or {}).get("KV-Operation") == "DEL" or not last.data:
        return None
    entry: dict[str, Any] = orjson.loads(last.data)
    return entry


async def _got(client: AgencyClient, want: int) -> dict[str, Delivery]:
    """The deliveries an agency receives, by type (receipts and notices aside)."""
    return {d.type: d for d in await drain(client, want=want)
            if d.type not in ("receipt", "rejection", "overdue-notice")}


async def test_a_child_protection_conference_chains_its_clocks(broker: Broker, agency: ClientFactory,
                                                               settings: Settings) -> None:
    """Strategy discussion (s47) -> initial conference within 15 working days -> a plan opens the core
    group's clock (10 working days), the first review's (3 months) and health's CP-IS update; each
    reply closes only its own clock, and the review opens the next (6 months)."""
    la, health = await agency("la-camden"), await agency("health-camden")
    record = example("strategy-discussion.example.json") | {"kind": "record", "s47Initiated": True}
    sd = await _routed(la, "strategy-discussion", ["police-met", "health-camden"], record)
    icpc = await _entry(settings, f"{sd}.la-camden")
    assert icpc is not None and icpc["expect"] == ["cp-conference-outcome"] and icpc["clock"] == \
        "initial-child-protection-conference"

    due = _iso(dt.datetime.now(dt.UTC) + dt.timedelta(days=3))
    invitation = example("cp-conference-invitation.example.json") | {"strategyDiscussionId": sd, "reportsDueBy": due}
    inv = await _routed(la, "cp-conference-invitation", ["police-met", "health-camden", "school-hillside"], invitation)
    assert await _entry(settings, f"{inv}.health-camden") is not None  # each agency owes its report
    report = example("cp-conference-report.example.json") | {"conferenceId": inv}
    await _routed(health, "cp-conference-report", ["la-camden"], report, re=inv)
    assert await _entry(settings, f"{inv}.health-camden") is None
    assert await _entry(settings, f"{inv}.police-met") is not None  # the police's report is still owed

    outcome = example("cp-conference-outcome.example.json") | {"strategyDiscussionId": sd,
                                                                "heldAt": _iso(dt.datetime.now(dt.UTC))}
    out = await _routed(la, "cp-conference-outcome", ["police-met", "health-camden", "school-hillside"],
                        outcome, re=sd)
    assert await _entry(settings, f"{sd}.la-camden") is None  # the conference was held: its clock stops
    core = await _entry(settings, f"{out}.la-camden")
    review = await _entry(settings, f"{out}.la-camden.review-child-protection-conference")
    cpis = await _entry(settings, f"{out}.la-camden.cp-status-update")
    assert core is not None and core["expect"] == ["core-group-meeting"]
    assert review is not None and review["expect"] == ["cp-conference-outcome"]
    assert cpis is not None and cpis["expect"] == ["child-protection-status"]
    held = dt.datetime.now(dt.UTC)
    assert 89 * 86400 <= review["due"] - held.timestamp() <= 93 * 86400  # three calendar months

    # a core group meeting closes the core group's clock, and only it
    meeting = example("core-group-meeting.example.json") | {"conferenceId": out}
    await _routed(la, "core-group-meeting", ["health-camden", "school-hillside"], meeting, re=out)
    assert await _entry(settings, f"{out}.la-camden") is None
    assert await _entry(settings, f"{out}.la-camden.review-child-protection-conference") is not None
    # health hears of the plan as CP-IS does; that closes the update's clock
    status = example("child-protection-status.example.json")
    await _routed(la, "child-protection-status", ["health-camden"], status, re=out)
    assert await _entry(settings, f"{out}.la-camden.cp-status-update") is None
    # the review conference closes the first review's clock and opens the next, six months on
    again = outcome | {"conferenceKind": "review", "decision": "plan-continues", "previousConferenceId": out}
    rev = await _routed(la, "cp-conference-outcome", ["police-met", "health-camden"], again, re=out)
    assert await _entry(settings, f"{out}.la-camden.review-child-protection-conference") is None
    nxt = await _entry(settings, f"{rev}.la-camden.review-child-protection-conference")
    assert nxt is not None and 180 * 86400 <= nxt["due"] - held.timestamp() <= 186 * 86400
    assert await _entry(settings, f"{rev}.la-camden") is None  # no new core group clock for a review

    got = await _got(health, want=5)
    assert {"strategy-discussion", "cp-conference-invitation", "cp-conference-outcome", "core-group-meeting",
            "child-protection-status"} <= set(got)
    assert got["cp-conference-outcome"].payload["decision"] in ("plan", "plan-continues")


async def test_two_clocks_of_one_message_fall_due_apart(broker: Broker, agency: ClientFactory,
                                                        settings: Settings) -> None:
    """Four months after a plan with no core group, no review and no CP-IS update, each of the three
    clocks is overdue once, and each notice names its own expected reply."""
    la = await agency("la-camden")
    outcome = example("cp-conference-outcome.example.json") | {"heldAt": _iso(dt.datetime.now(dt.UTC))}
    out = await _routed(la, "cp-conference-outcome", ["health-camden"], outcome)
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=125)).timestamp()
    async with connected(settings, settings.nats.url or "", name="scan") as nc:
        scanner = deadlines.Scanner(jetstream(nc, settings), broker.pipeline.on_overdue, clock=lambda: later)
        assert await scanner.scan_once() == 3
        assert await scanner.scan_once() == 0
    notices = [d for d in await drain(la, want=3) if d.type == "overdue-notice" and d.payload["messageId"] == out]
    assert sorted(n.payload["expected"][0] for n in notices) == [
        "child-protection-status", "core-group-meeting", "cp-conference-outcome"]


async def test_an_assessment_runs_45_working_days_from_the_referral(broker: Broker, agency: ClientFactory,
                                                                    settings: Settings) -> None:
    """The referral outcome that starts an assessment opens the LA's clock from the referral; the
    assessment outcome closes it. One sent late needs its reason, and is flagged and counted."""
    la = await agency("la-camden")
    referred = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    decision = example("referral-outcome.example.json") | {"decision": "child-and-family-assessment-s17",
                                                           "referralReceivedAt": _iso(referred)}
    ro = await _routed(la, "referral-outcome", ["police-met"], decision)
    entry = await _entry(settings, f"{ro}.la-camden")
    assert entry is not None and entry["expect"] == ["assessment-outcome"]
    assert 62 * 86400 <= entry["due"] - referred.timestamp() <= 72 * 86400  # 45 working days: about 9 weeks
    result = example("assessment-outcome.example.json") | {"referralReceivedAt": _iso(referred),
                                                           "completedAt": _iso(dt.datetime.now(dt.UTC))}
    await _routed(la, "assessment-outcome", ["police-met"], result, re=ro)
    assert await _entry(settings, f"{ro}.la-camden") is None

    late = result | {"referralReceivedAt": _iso(dt.datetime.now(dt.UTC) - dt.timedelta(days=120))}
    jti, refused = await _send(la, "assessment-outcome", ["police-met"], late)
    assert refused.type == "rejection" and refused.payload["code"] == "not-permitted"
    assert refused.payload["field"] == "/timescaleExceededReason" and refused.payload["rule"] == "assessment.outcome"
    with_reason = await _routed(la, "assessment-outcome", ["police-met"],
                                late | {"timescaleExceededReason": "awaiting-information"})
    async with connected(settings, settings.nats.url or "", name="audit") as nc:
        records = [r async for r in read_audit(jetstream(nc, settings))]
    (shared,) = [r for r in records if r["message"] == with_reason and r["event"] == "shared"]
    assert "late" in shared["flags"] and shared["lateReason"] == "awaiting-information"  # the IG officer sees why
    assert any(r["message"] == jti and r["event"] == "rejected" for r in records)
    assert broker.pipeline.metrics.registry.get_sample_value(
        "sgb_messages_late_total", {"type": "assessment-outcome"}) == 1


async def test_a_child_death_reaches_the_review_partners_and_links_to_a_serious_incident(
        broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    """The police notify the LA, the ICB and the CDOP; a death that meets the serious incident criteria
    opens the LA's clock, which its serious incident notification closes. A CDR partner's s16N request
    to the school is answered, and the answer closes it."""
    police, la, school = await agency("police-met"), await agency("la-camden"), await agency("school-hillside")
    death = example("child-death-notification.example.json") | {
        "dateTimeOfDeath": _iso(dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)), "meetsSeriousIncidentCriteria": True}
    cdn = await _routed(police, "child-death-notification", ["la-camden", "health-camden", "cdop-ncl"], death,
                        lawEnforcementBasis="DPA_SCH8_P1", specialCategoryCondition=None)
    entry = await _entry(settings, f"{cdn}.la-camden")
    assert entry is not None and entry["expect"] == ["serious-incident-notification"]
    assert await _entry(settings, f"{cdn}.cdop-ncl") is None  # the clock is the LA's alone
    assert "child-death-notification" in await _got(await agency("cdop-ncl"), want=1)

    sin = example("serious-incident-notification.example.json")
    await _routed(la, "serious-incident-notification", ["cscpr-panel", "ofsted"], sin, re=cdn)
    assert await _entry(settings, f"{cdn}.la-camden") is None

    due = _iso(dt.datetime.now(dt.UTC) + dt.timedelta(days=5))
    request = example("information-request.example.json") | {"respondBy": due}
    rq = await _routed(la, "information-request", ["school-hillside"], request, re=cdn,
                       statutoryGateways=["CA2004_S16N"], purpose="CHILD_DEATH_REVIEW")
    assert await _entry(settings, f"{rq}.school-hillside") is not None
    answer = example("information-response.example.json") | {"requestId": rq}
    await _routed(school, "information-response", ["la-camden"], answer, re=rq)
    assert await _entry(settings, f"{rq}.school-hillside") is None


async def test_early_help_needs_the_family_but_a_step_up_does_not(broker: Broker, agency: ClientFactory,
                                                                  settings: Settings) -> None:
    school, la, health = await agency("school-hillside"), await agency("la-camden"), await agency("health-camden")
    assessment = example("early-help-assessment.example.json")
    _, refused = await _send(school, "early-help-assessment", ["health-camden"], assessment,
                             consentStatus="NOT_SOUGHT", nonConsentReason="WOULD_PREJUDICE_PROTECTION",
                             specialCategoryCondition=None)
    assert refused.type == "rejection" and refused.payload["field"] == "/sharing/consentStatus"
    assert refused.payload["rule"] == "early-help.assessment"
    await _routed(school, "early-help-assessment", ["health-camden"], assessment, **CONSENT)
    request = await _routed(school, "early-help-request", ["health-camden"],
                            example("early-help-request.example.json"), **CONSENT)
    assert await _entry(settings, f"{request}.health-camden") is not None
    assert {"early-help-assessment", "early-help-request"} <= set(await _got(health, want=2))
    accepted = {"messageId": request, "status": "accepted", "at": _iso(dt.datetime.now(dt.UTC))}
    await _routed(health, "receipt", ["school-hillside"], accepted, re=request)  # health joins the team
    assert await _entry(settings, f"{request}.health-camden") is None

    up = await _routed(school, "early-help-step-up", ["la-camden"], example("early-help-step-up.example.json"))
    assert await _entry(settings, f"{up}.la-camden") is not None  # decided within a working day, like a referral
    answer = example("referral-outcome.example.json") | {"referralId": up}
    await _routed(la, "referral-outcome", ["school-hillside"], answer, re=up)
    assert await _entry(settings, f"{up}.la-camden") is None
    await _routed(la, "early-help-step-down", ["school-hillside"], example("early-help-step-down.example.json"),
                  **CONSENT)
    got = await _got(school, want=2)
    assert {"referral-outcome", "early-help-step-down"} <= set(got)


async def test_a_contextual_concern_reaches_the_community_safety_partnership_without_children(
        broker: Broker, agency: ClientFactory) -> None:
    police = await agency("police-met")
    concern = example("contextual-concern.example.json")
    assert concern.get("children")  # the example names children: the CSP must not see them
    await _routed(police, "contextual-concern", ["la-camden", "csp-camden"], concern,
                  lawEnforcementBasis="DPA_SCH8_P1")
    csp = (await _got(await agency("csp-camden"), want=1))["contextual-concern"]
    assert set(csp.payload) == {"context", "categories"}
    la = (await _got(await agency("la-camden"), want=1))["contextual-concern"]
    assert la.payload["children"] == concern["children"]
    unnamed = {k: v for k, v in concern.items() if k != "children"}  # a place, with no child identified
    await _routed(police, "contextual-concern", ["la-camden"], unnamed, lawEnforcementBasis="DPA_SCH8_P1")


async def test_private_fostering_missing_education_and_mash(broker: Broker, agency: ClientFactory,
                                                            settings: Settings) -> None:
    school, la = await agency("school-hillside"), await agency("la-camden")
    pf = await _routed(school, "private-fostering-notification", ["la-camden"],
                       example("private-fostering-notification.example.json"))
    visit = await _entry(settings, f"{pf}.la-camden")
    assert visit is not None and visit["receiptStatus"] == ["actioned"]  # the visit, not the acknowledgement
    cme = await _routed(school, "children-missing-education", ["la-camden"],
                        example("children-missing-education.example.json"))
    await _routed(la, "cme-response", ["school-hillside"], example("cme-response.example.json") | {"noticeId": cme},
                  re=cme)
    screening = example("mash-screening.example.json") | {"contactReceivedAt": _iso(dt.datetime.now(dt.UTC))}
    await _routed(la, "mash-screening", ["police-met", "school-hillside"], screening)
    got = await _got(school, want=2)
    assert got["cme-response"].payload["noticeId"] == cme
    assert "agenciesAsked" not in got["mash-screening"].payload and got["mash-screening"].payload["ragRating"]
    assert "private-fostering-notification" in await _got(la, want=2)


async def test_a_local_review_decision_is_owed_its_publication_by_every_partner(
        broker: Broker, agency: ClientFactory, settings: Settings) -> None:
    la, police = await agency("la-camden"), await agency("police-met")
    decision = example("lcspr-decision.example.json") | {"decidedAt": _iso(dt.datetime.now(dt.UTC))}
    lcspr = await _routed(la, "lcspr-decision", ["cscpr-panel"], decision)
    owed = {p: await _entry(settings, f"{lcspr}.{p}") for p in ("la-camden", "health-camden", "police-met")}
    assert all(e is not None and e["expect"] == ["lcspr-publication"] for e in owed.values())
    publication = example("lcspr-publication.example.json") | {"decisionId": lcspr}
    await _routed(police, "lcspr-publication", ["cscpr-panel", "dfe-sos"], publication, re=lcspr,
                  lawEnforcementBasis="DPA_SCH8_P1")
    assert all([await _entry(settings, f"{lcspr}.{p}") is None for p in owed])
    got = await _got(await agency("cscpr-panel"), want=2)
    assert {"lcspr-decision", "lcspr-publication"} <= set(got)


async def test_the_ig_officer_sees_why_an_assessment_was_late(broker: Broker, agency: ClientFactory,
                                                              settings: Settings, client: Client) -> None:
    """The late flag, the reason code (never free text) and the count reach the record, the trail and the page."""
    la = await agency("la-camden")
    late = example("assessment-outcome.example.json") | {
        "referralReceivedAt": _iso(dt.datetime.now(dt.UTC) - dt.timedelta(days=120)),
        "completedAt": _iso(dt.datetime.now(dt.UTC)), "timescaleExceededReason": "family-not-available"}
    jti = await _routed(la, "assessment-outcome", ["police-met"], late)
    record = await until_recorded(client, settings, jti, "shared")
    assert "late" in record["flags"] and record["lateReason"] == "family-not-available"
    r = await client.get(f"/api/v1/messages/{jti}/trail", headers=auth(settings, "ig-officer"))
    (police,) = (await r.json())["summary"]["recipients"]
    assert police["lateReason"] == "family-not-available"
    await sign_in(client, settings, "ig-officer")
    page = await (await client.get(f"/ig/messages/{jti}")).text()
    assert "Late, because:" in page and "family-not-available" in page
