"""The LA case system producing the multi-agency processes (adapters.formats.la_processes): mapped
alone (codes; refusals naming the field and rule, never a value), then through a real broker and
the LA's adapter: each event reaches the agencies it names, and a follow-up of the LA's own
message closes the clock that message opened on the LA in SG_DEADLINES."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from nats.js.errors import NotFoundError

from adapters.formats.consent import agency_wide
from adapters.formats.local_authority import case_events
from adapters.formats.mapping import MapContext, Outbound, Sent, Unmappable
from adapters.runtime.deliverer import DeadLetters, Deliverer
from adapters.runtime.inbound import Submitter
from adapters.runtime.service import AdapterSettings
from adapters.runtime.sinks import WebhookSettings, WebhookSink
from adapters.sdk import AgencyClient, Delivery, Handed
from broker.config import Settings
from broker.pipeline.service import Broker
from broker.policy import rulebook as rulebooks
from broker.policy.engine import RulebookPolicy
from broker.transport.connection import connected, jetstream
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry
from broker.wire.subjects import DEADLINES_BUCKET
from tests.conftest import ClientFactory
from tests.helpers import drain, eventually, example, referral, sharing
from tests.support.casesystem import SECRET, CaseSystem, serve

pytestmark = pytest.mark.timeout(60)

SD = "2a6e4c1d-8f3b-4e2a-9c5d-7b1e0f3a4c5d"  # the LA's strategy discussion record (its message id)
INVITATION = "3b7f5d2e-9a4c-4f3b-8d6e-8c2f1a4b5d6e"
OUTCOME = "5b7c9d1e-2f3a-4b5c-8d6e-7f8091a2b3c4"  # the LA's initial conference outcome
DECIDED = "6c8daf2f-3a4b-4c5d-9e7f-8091a2b3c4d5"  # the LA's referral outcome, answering REFERRAL
REFERRAL = "0b6f3c2e-8d1a-4c5e-9f7b-2a3d4e5f6a7b"
REFERRAL_DELIVERY = "5d0c6a2e-1f3b-4c8d-9e7a-0b1c2d3e4f50"
CME = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"  # the school's children-missing-education notice
CME_DELIVERY = "7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b"
UNKNOWN = "00000000-1111-4222-8333-444444444444"
PERSONAL = ("Okafor", "9990001235", "2017-03-14", "Worker-Demo", "nobody-here", UNKNOWN)

WORKER = {"role": "Conference Chair", "staffRef": "LBC-IRO-004"}
GIVEN = {"consent": "given", "familyInformed": "yes"}
NOT_SOUGHT = {"consent": "not-sought", "withoutConsentReason": "would-prejudice-protection", "familyInformed": "later"}
CHILD = {"forename": "Ada", "surname": "Okafor-Demo", "dob": "2017-03-14", "nhsNumber": "9990001235", "gender": "F"}
LEAD = {"role": "Social Worker", "forename": "Lee", "surname": "Worker-Demo", "phone": "020 7974 3000"}
EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "case-events-processes.json"


def _now(days: float = 0) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).isoformat(timespec="seconds").replace("+00:00", "Z")


def invitation(follows: str = SD, kind: str = "initial") -> dict[str, Any]:
    return {"event": "conference-invitation", "worker": WORKER, "kind": kind, "inReplyTo": follows, "child": CHILD,
            "scheduledFor": _now(10), "venue": "Crowndale Centre, room 3", "reportsDueBy": _now(7),
            "invited": ["police-met", "health-camden", "school-hillside"], "chair": {"role": "Conference Chair"},
            "caseNumber": "LBC-CASE-90210"} | GIVEN


def outcome(follows: str = SD, invited: str = INVITATION, kind: str = "initial",
            decision: str = "CPP") -> dict[str, Any]:
    return {"event": "conference-outcome", "worker": WORKER, "kind": kind, "inReplyTo": follows,
            "invitation": invited, "to": ["police-met", "health-camden", "school-hillside"], "heldAt": _now(),
            "child": CHILD, "decision": decision, "category": "NEG", "leadSocialWorker": LEAD,
            "coreGroup": [{"agency": "la-camden", "role": "lead social worker"},
                          {"agency": "health-camden", "role": "health visitor"}],
            "nextReviewBy": "2027-03-07", "caseNumber": "LBC-CASE-90210"} | GIVEN


def core_group(follows: str = OUTCOME) -> dict[str, Any]:
    return {"event": "core-group", "worker": WORKER | {"role": "Social Worker"}, "inReplyTo": follows,
            "to": ["health-camden", "school-hillside"], "heldAt": _now(), "child": CHILD,
            "attendees": ["la-camden", "health-camden"], "actions": [{"agency": "health-camden", "action": "Visit."}]
            } | GIVEN


def assessment(follows: str = DECIDED, **more: Any) -> dict[str, Any]:
    return {"event": "assessment-outcome", "worker": {"role": "Social Worker", "staffRef": "LBC-SW-0192"},
            "inReplyTo": follows, "referralReceivedAt": _now(-2), "completedAt": _now(), "child": CHILD,
            "outcome": "CIN", "summary": "Needs met through a child in need plan.", "socialWorker": LEAD} | GIVEN | more


def step_down() -> dict[str, Any]:
    return {"event": "step-down", "worker": {"role": "Social Worker", "staffRef": "LBC-SW-0192"},
            "to": ["school-hillside", "health-camden"], "child": CHILD, "earlyHelpLead": "school-hillside",
            "reason": "Child in need plan completed; early help to support attendance."} | GIVEN


def screening() -> dict[str, Any]:
    return {"event": "mash-screening", "worker": {"role": "MASH Social Worker", "staffRef": "LBC-SW-0192"},
            "to": ["police-met", "school-hillside"], "contact": REFERRAL_DELIVERY, "child": CHILD, "rag": "A",
            "decision": "INFO", "decidedAt": _now(), "contactReceivedAt": _now(-0.05),
            "asked": ["health-camden", "school-hillside"]} | NOT_SOUGHT


def cme_response(answers: str = CME_DELIVERY) -> dict[str, Any]:
    return {"event": "cme-response", "worker": {"role": "Education Welfare Officer", "staffRef": "LBC-EWO-11"},
            "inReplyTo": answers, "action": "TRACED", "at": _now()} | GIVEN


SENT = {m.message: m for m in (Sent(SD, "strategy-discussion", "LBC-CASE-90210"),
                               Sent(INVITATION, "cp-conference-invitation", "LBC-CASE-90210", SD),
                               Sent(OUTCOME, "cp-conference-outcome", "LBC-CASE-90210", SD),
                               Sent(DECIDED, "referral-outcome", "MPS-2026-7781", REFERRAL))}
HANDED = {h.delivery: h for h in (Handed(REFERRAL_DELIVERY, "referral", "police-met", REFERRAL, "MPS-2026-7781", 0.0),
                                  Handed(CME_DELIVERY, "children-missing-education", "school-hillside", CME, None,
                                         0.0))}


def _handed(ref: str) -> Handed | None:  # by delivery id or original message id, as the seen store finds it
    return HANDED.get(ref) or next((h for h in HANDED.values() if h.message == ref), None)


@pytest.fixture
def context(key_template: Path, catalogue: Catalogue) -> MapContext:
    return MapContext(agency="la-camden", registry=Registry.load(key_template / "registry.json", catalogue),
                      catalogue=catalogue, handed=_handed, sent=SENT.get)


def _map(events: Any, context: MapContext) -> list[Outbound]:
    return case_events(orjson.dumps(events), context)


def test_each_process_event_makes_its_canonical_message(context: MapContext, catalogue: Catalogue) -> None:
    """Seven events, seven messages, each valid against its schema; a follow-up of the LA's own
    message names it in ``re`` (``follows``) and keeps its thread; a reply answers the delivery.
    With deploy/adapters/la-camden.toml's default for its type under the event's own facts, the
    rulebook shares each with every recipient."""
    events = [invitation(), outcome(), core_group(), assessment(), step_down(), screening(), cme_response()]
    inv, out, core, done, down, mash, cme = messages = _map(events, context)
    assert inv.to == ("police-met", "health-camden", "school-hillside") and inv.follows == SD
    assert inv.payload["strategyDiscussionId"] == SD and inv.thread == "LBC-CASE-90210"
    assert out.follows == SD and out.payload["strategyDiscussionId"] == SD and out.payload["conferenceId"] == INVITATION
    assert (out.payload["decision"], out.payload["category"]) == ("plan", "neglect")
    assert out.payload["child"] == {"name": {"family": "Okafor-Demo", "given": "Ada"}, "dateOfBirth": "2017-03-14",
                                    "nhsNumber": "9990001235", "gender": "female"}
    assert out.payload["leadSocialWorker"]["organisation"]["agencyId"] == "la-camden"
    assert core.follows == OUTCOME and core.payload["conferenceId"] == OUTCOME and down.payload["earlyHelpLead"]
    assert (done.to, done.follows, done.answers, done.thread) == (("police-met",), DECIDED, None, "MPS-2026-7781")
    assert done.payload["referralId"] == REFERRAL and done.payload["outcome"] == "child-in-need-plan"
    assert mash.payload["contactId"] == REFERRAL and mash.payload["agenciesAsked"] == screening()["asked"]
    assert (cme.to, cme.answers, cme.payload["noticeId"]) == ((), CME_DELIVERY, CME)
    documented = case_events(EXAMPLE.read_bytes(), context)  # the integrator's guide's example, its ids as here
    assert [m.typ for m in documented] == ["referral-outcome", *[m.typ for m in (inv, out, core, done, cme)]]
    path = Path(__file__).resolve().parent.parent / "deploy" / "adapters" / "la-camden.toml"
    defaults = AdapterSettings.from_sources("la-camden", tomllib.loads(path.read_text())["adapter"]).sharing
    policy, agencies = RulebookPolicy(rulebooks.load(rulebooks.DEFAULT_RULEBOOK, catalogue)), context.registry.agencies
    for m in messages:
        mtype = catalogue.message_type(m.typ, 1)
        assert mtype is not None and m.sharing is not None and "subjectInformed" in m.sharing
        to = m.to or (HANDED[m.answers or ""].sender or "",)
        decision = policy.decide(agencies["la-camden"], tuple(agencies[r] for r in to), mtype,
                                 dict(defaults[m.typ]) | dict(m.sharing), m.payload)
        assert [r.share for r in decision.recipients] == [True] * len(to), (m.typ, decision.recipients)


CODES = {  # (event, field): the case system's codes, each followed by its canonical word
    (outcome, "decision"): "CPP plan NOCPP no-plan",
    (lambda: outcome(OUTCOME, kind="review"), "decision"): "CONT plan-continues END plan-ends",
    (outcome, "category"): "NEG neglect PHY physical-abuse EMO emotional-abuse SAB sexual-abuse MUL multiple",
    (assessment, "outcome"): "NFA no-further-action EH early-help CIN child-in-need-plan S47 strategy-discussion-s47 "
                             "SPEC specialist-assessment OPEN already-open-case",
    (assessment, "timescaleExceededReason"): "COMPLEX complex-needs FAMILY family-not-available INFO "
                                             "awaiting-information CHANGE change-of-circumstances OTHER other",
    (screening, "rag"): "R red A amber G green B blue",
    (screening, "decision"): "INFO information-gathering NFA no-further-action EH early-help S17 "
                             "child-and-family-assessment-s17 S47 strategy-discussion-s47 SIGN signposted-other-agency",
    (cme_response, "action"): "TRACED traced-enrolled-elsewhere EHE home-education-confirmed ENQ enquiries-continuing "
                              "CSC referred-to-childrens-social-care NONE no-action-needed",
}


def test_every_case_system_code_has_its_canonical_word(context: MapContext) -> None:
    for (event, field), pairs in CODES.items():
        words = pairs.split()
        for code, word in zip(words[::2], words[1::2], strict=True):
            (m,) = _map(event() | {field: code}, context)
            assert m.payload[{"rag": "ragRating"}.get(field, field)] == word, code


R = "la-case-event.recipient-known"
T = "la-case-event.reply-type"
N = "la-case-event.v1.json"  # the native schema
NOBODY = ["police-met", "nobody-here"]


@pytest.mark.parametrize(("event", "change", "field", "rule"), [  # a None in ``change`` removes the member
    # an agency the registry does not know, or the LA itself as a recipient
    (outcome, {"to": NOBODY}, "/to/1", R),
    (invitation, {"invited": ["la-camden"]}, "/invited/0", R),
    (outcome, {"coreGroup": [{"agency": "la-camden"}, {"agency": "nobody-here"}]}, "/coreGroup/1/agency", R),
    (core_group, {"actions": [{"agency": "nobody-here", "action": "Visit"}]}, "/actions/0/agency", R),
    (core_group, {"attendees": NOBODY}, "/attendees/1", R),
    (screening, {"asked": NOBODY}, "/asked/1", R),
    (step_down, {"earlyHelpLead": "police-met"}, "/earlyHelpLead", "la-case-event.lead-told"),
    # a follow-up of the wrong thing: a delivery to the LA, another of its own types, nothing it sent
    (outcome, {"inReplyTo": REFERRAL_DELIVERY}, "/inReplyTo", T),
    (outcome, {"inReplyTo": DECIDED}, "/inReplyTo", T),
    (outcome, {"kind": "review", "decision": "CONT"}, "/inReplyTo", T),  # a review follows the last outcome
    (outcome, {"invitation": OUTCOME}, "/invitation", T),
    (outcome, {"inReplyTo": UNKNOWN}, "/inReplyTo", "la-case-event.follows-own"),
    (invitation, {"inReplyTo": OUTCOME}, "/inReplyTo", T),
    (core_group, {"inReplyTo": SD}, "/inReplyTo", T),
    (assessment, {"inReplyTo": REFERRAL}, "/inReplyTo", T),
    (cme_response, {"inReplyTo": REFERRAL_DELIVERY}, "/inReplyTo", T),
    (cme_response, {"inReplyTo": UNKNOWN}, "/inReplyTo", "la-case-event.reply-to-handed"),
    (screening, {"contact": UNKNOWN}, "/contact", "la-case-event.reply-to-handed"),
    # the case's consent facts
    (assessment, {"consent": None}, "/consent", "consent.recorded"),
    (core_group, {"familyInformed": None}, "/familyInformed", "transparency.informed"),
    (screening, {"withoutConsentReason": None}, "/withoutConsentReason", "consent.reason"),
    (cme_response, {"withoutConsentReason": "would-prejudice-protection"}, "/withoutConsentReason",
     "consent.consistent"),
    (step_down, {"consent": "refused-overridden", "withoutConsentReason": "would-increase-risk-of-harm"},
     "/consent", "la-case-event.step-down-consent"),  # early help is voluntary
    # codes and shapes the native schema holds
    (outcome, {"decision": "CONT"}, "/decision", N),  # an initial conference: CPP or NOCPP
    (outcome, {"coreGroup": None}, "/coreGroup", N),  # a plan names its core group
    (outcome, {"invitation": None}, "/invitation", N),
    (outcome, {"category": "neglect"}, "/category", N),
    (assessment, {"timescaleExceededReason": "late"}, "/timescaleExceededReason", N),
    (assessment, {"referralReceivedAt": None}, "/referralReceivedAt", N),
    (screening, {"rag": "RED"}, "/rag", N),
    (cme_response, {"at": None}, "/at", N),
    # times in the wrong order
    (assessment, {"completedAt": "2020-01-01T00:00:00Z"}, "/completedAt", "la-case-event.assessment-dates"),
    (invitation, {"reportsDueBy": "2099-01-01T00:00:00Z"}, "/reportsDueBy", "la-case-event.conference-dates"),
])
def test_a_bad_process_event_is_refused_naming_the_field_and_rule(
        event: Callable[[], dict[str, Any]], change: dict[str, Any], field: str, rule: str,
        context: MapContext) -> None:
    bad = {k: v for k, v in (event() | change).items() if v is not None}
    with pytest.raises(Unmappable) as caught:
        _map([cme_response(), bad], context)  # the good event before it is not returned either
    assert (caught.value.code, caught.value.field, caught.value.rule) == ("unmappable", f"/1{field}", rule)
    text = f"{caught.value} {caught.value.reason}"
    assert not [p for p in PERSONAL if p in text]


# -- end to end: the case system posts events to the LA's adapter, through a real broker ------------------------

TYPES = ("strategy-discussion", "referral-outcome", "cp-conference-invitation", "cp-conference-outcome",
         "core-group-meeting", "assessment-outcome", "early-help-step-down", "mash-screening", "cme-response")


@contextlib.asynccontextmanager
async def _adapter(la: AgencyClient, registry: Registry, catalogue: Catalogue,
                   state: Path) -> AsyncIterator[tuple[CaseSystem, Submitter]]:
    """The LA's adapter both ways: deliveries to a webhook case system, its events back in."""
    assert la.seen is not None
    context = MapContext(agency="la-camden", registry=registry, catalogue=catalogue, handed=la.seen.handed)
    async with contextlib.AsyncExitStack() as stack:
        submitter = Submitter(la, context, {t: agency_wide(sharing(t)) for t in TYPES}, state / "inbound")
        stack.callback(submitter.close)
        system = CaseSystem()
        server = await serve(system)
        stack.push_async_callback(server.close)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        sink = WebhookSink(session, WebhookSettings(url=str(server.make_url("/referrals")), secret=SECRET, timeout=2.0))
        stop = asyncio.Event()
        running = asyncio.create_task(Deliverer(la, sink, DeadLetters(state / "dead"), idle=0.2).run(stop))
        try:
            yield system, submitter
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)


async def _post(submitter: Submitter, events: Any) -> list[str]:  # the message ids, as the adapter answers
    return list((await submitter.submit(orjson.dumps(events), case_events)).messages)


async def _entry(settings: Settings, key: str) -> dict[str, Any] | None:
    """The deadline entry under ``key`` (``<message>.<party>[.<clock>]``), or None (never opened, or closed)."""
    async with connected(settings, settings.nats.url or "", name="kv") as nc:
        try:
            last = await jetstream(nc, settings).get_last_msg(f"KV_{DEADLINES_BUCKET}", f"$KV.{DEADLINES_BUCKET}.{key}")
        except NotFoundError:
            return None
    closed = (last.headers or {}).get("KV-Operation") == "DEL" or not last.data
    return None if closed else dict(orjson.loads(last.data or b"{}"))


async def _clock(settings: Settings, key: str, *, closed: bool = False) -> Any:
    """The deadline entry once it is open, or (``closed``) once it is closed."""
    async def probe() -> Any:
        entry = await _entry(settings, key)
        return entry is None if closed else entry
    return await eventually(probe, what=f"the clock {key} to {'close' if closed else 'open'}")


async def _received(client: AgencyClient, *types: str) -> dict[str, Delivery]:
    """What ``client`` receives (acked), by type, once it has each of ``types``."""
    got: dict[str, Delivery] = {}

    async def all_in() -> bool:
        got.update({d.type: d for d in await drain(client, want=0)})
        return set(types) <= set(got)
    await eventually(all_in, what=f"{client.agency} to receive {types}")
    return got


async def test_a_conference_chain_from_the_case_system_closes_each_clock(
        broker: Broker, agency: ClientFactory, settings: Settings, registry: Registry, catalogue: Catalogue,
        tmp_path: Path) -> None:
    """Strategy discussion (s47) -> invitation -> initial conference outcome (closes the 15 working
    days) -> core group (closes the 10) -> review invitation and outcome (closes the 3 months)."""
    la, health = await agency("la-camden"), await agency("health-camden")
    record = {"event": "strategy-discussion", "worker": WORKER, "kind": "record", "s47Initiated": True,
              "child": CHILD, "scheduledFor": _now(-0.1), "invited": ["police-met", "health-camden"],
              "thread": "LBC-CASE-90210"} | NOT_SOUGHT
    async with _adapter(la, registry, catalogue, tmp_path) as (_, submitter):
        (sd,) = await _post(submitter, record)
        icpc = await _clock(settings, f"{sd}.la-camden")
        assert icpc["expect"] == ["cp-conference-outcome"]
        (inv,) = await _post(submitter, invitation(sd))
        await _clock(settings, f"{inv}.health-camden")  # each agency owes its report
        (out,) = await _post(submitter, outcome(sd, inv))
        await _clock(settings, f"{sd}.la-camden", closed=True)  # the conference was held
        assert (await _clock(settings, f"{out}.la-camden"))["expect"] == ["core-group-meeting"]
        await _clock(settings, f"{out}.la-camden.review-child-protection-conference")

        # a core group refused as a follow-up of the strategy discussion sends nothing, the rest with it
        sent = submitter.counts.messages
        with pytest.raises(Unmappable) as caught:
            await _post(submitter, [core_group(out), core_group(sd)])
        assert (caught.value.field, caught.value.rule) == ("/1/inReplyTo", "la-case-event.reply-type")
        assert submitter.counts.messages == sent

        (core,) = await _post(submitter, core_group(out))
        await _clock(settings, f"{out}.la-camden", closed=True)
        assert await _entry(settings, f"{out}.la-camden.review-child-protection-conference") is not None
        (review_inv,) = await _post(submitter, invitation(out, kind="review"))
        (rev,) = await _post(submitter, outcome(out, review_inv, kind="review", decision="CONT"))
        await _clock(settings, f"{out}.la-camden.review-child-protection-conference", closed=True)
        await _clock(settings, f"{rev}.la-camden.review-child-protection-conference")  # the next, six months on
    got = await drain(health, want=6)  # the record, two invitations, two outcomes, the core group
    first = [d for d in got if d.type == "cp-conference-outcome" and d.claims["re"] == sd]
    assert len(first) == 1 and first[0].payload["conferenceId"] == inv and first[0].payload["decision"] == "plan"
    assert first[0].origin == ("la-camden", out) and first[0].claims["thread"] == "LBC-CASE-90210"
    (meeting,) = [d for d in got if d.type == "core-group-meeting"]
    assert meeting.origin == ("la-camden", core) and meeting.claims["re"] == out
    assert meeting.payload["conferenceId"] == out
    invited = [d for d in got if d.type == "cp-conference-invitation"]
    assert {d.payload.get("strategyDiscussionId") or d.payload["previousConferenceId"] for d in invited} == {sd, out}


async def test_an_assessment_and_a_missing_pupil_answered_from_the_case_system(
        broker: Broker, agency: ClientFactory, settings: Settings, registry: Registry, catalogue: Catalogue,
        tmp_path: Path) -> None:
    """A police referral decided S17 with when it was received (the 45 working days open on the LA),
    then the assessment's outcome to the referrer (closing them); a school's deletion notice answered;
    a MASH screening and a step-down to the agencies named."""
    police, school, la = await agency("police-met"), await agency("school-hillside"), await agency("la-camden")
    async with _adapter(la, registry, catalogue, tmp_path) as (system, submitter):
        referral_id = await police.send(typ="referral", to=["la-camden"], payload=referral(), sharing=sharing(),
                                        thread="MPS-2026-7781")
        cme_id = await school.send(typ="children-missing-education", to=["la-camden"],
                                   payload=example("children-missing-education.example.json"),
                                   sharing=sharing("children-missing-education"))

        def delivered(typ: str) -> str | None:
            return next((k for k, v in system.taken.items() if v["envelope"]["typ"] == typ), None)

        referral_delivery = await eventually(lambda: delivered("referral"), what="the referral in the case system")
        cme_delivery = await eventually(lambda: delivered("children-missing-education"), what="the CME notice")
        decided = {"event": "outcome", "inReplyTo": referral_delivery, "worker": WORKER, "decision": "S17",
                   "decidedAt": _now(), "referralReceivedAt": _now(-1)} | GIVEN
        (ro,) = await _post(submitter, decided)
        assert (await _clock(settings, f"{ro}.la-camden"))["expect"] == ["assessment-outcome"]
        done, answer, mash, down = await _post(submitter, [
            assessment(ro), cme_response(cme_delivery), screening() | {"contact": referral_delivery}, step_down()])
        await _clock(settings, f"{ro}.la-camden", closed=True)
    to_police = await _received(police, "referral-outcome", "assessment-outcome", "mash-screening")
    result = to_police["assessment-outcome"]
    assert result.origin == ("la-camden", done) and result.claims["re"] == ro
    assert result.payload["referralId"] == referral_id and result.payload["outcome"] == "child-in-need-plan"
    assert result.claims["thread"] == "MPS-2026-7781"
    assert to_police["referral-outcome"].payload["referralReceivedAt"] == decided["referralReceivedAt"]
    assert to_police["mash-screening"].payload["contactId"] == referral_id
    to_school = await _received(school, "cme-response", "mash-screening", "early-help-step-down")
    answered = to_school["cme-response"]
    assert answered.origin == ("la-camden", answer) and answered.claims["re"] == cme_id
    assert answered.payload == {"noticeId": cme_id, "action": "traced-enrolled-elsewhere", "at": answered.payload["at"]}
    assert to_school["mash-screening"].origin == ("la-camden", mash)
    assert to_school["early-help-step-down"].origin == ("la-camden", down)
