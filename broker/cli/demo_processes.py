"""The demo's second story: the multi-agency processes that follow, with their clocks.

Ben's strategy discussion starts s47 enquiries, which opens the clock for the initial child
protection conference; the conference decides on a plan, which opens the core group's, the
first review's and health's CP-IS update's clocks, and each reply closes its own. The school's
early help for Cleo needs the family's agreement (refused without it) and, when needs grow,
steps up to children's social care, which decides within a working day. A child dies: the
police notify the child death review partners (the LA and the ICB) and the child death overview
panel. All names and numbers are fictional.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

import orjson
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from adapters.sdk import AgencyClient, Delivery
from broker.transport.errors import nats_failures
from broker.wire.subjects import DEADLINES_BUCKET

POLICE, LA, HEALTH, SCHOOL, CDOP = "police-met", "la-camden", "health-camden", "school-hillside", "cdop-ncl"
SHARES, REFUSALS = 18, 1  # what this story shares (deliveries) and refuses, for the demo's closing check
BEN = {"name": {"given": "Ben", "family": "Okafor-Demo"}, "dateOfBirth": "2020-09-02", "nhsNumber": "9990005672"}
CLEO = {"name": {"given": "Cleo", "family": "Okafor-Demo"}, "dateOfBirth": "2016-05-20", "upn": "C123456789012"}
LEAD_SW = {"name": {"given": "Lee", "family": "Worker-Demo"}, "role": "Social Worker",
           "organisation": {"name": "London Borough of Camden", "agencyId": LA}}
DSL = {"name": {"given": "Ola", "family": "Lead-Demo"}, "role": "Designated Safeguarding Lead",
       "organisation": {"name": "Hillside Primary School", "agencyId": SCHOOL}}


class Send(Protocol):
    async def __call__(self, client: AgencyClient, *, typ: str, to: list[str], payload: dict[str, Any],
                       sharing: dict[str, Any], re: str | None = None, label: str) -> tuple[str, Delivery]: ...


class Sharing(Protocol):
    def __call__(self, **over: Any) -> dict[str, Any]: ...


def _now(days: float = 0) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


async def _clock(js: JetStreamContext, key: str) -> str:
    """The due date of the open clock under ``key``, or "closed" (read as the broker: agencies may not)."""
    with nats_failures("the deadline store"):
        try:
            last = await js.get_last_msg(f"KV_{DEADLINES_BUCKET}", f"$KV.{DEADLINES_BUCKET}.{key}")
        except NotFoundError:
            return "closed"
    if not last.data or (last.headers or {}).get("KV-Operation") == "DEL":
        return "closed"
    entry = orjson.loads(last.data)
    return dt.datetime.fromtimestamp(entry["due"], dt.UTC).strftime("%a %d %b %Y %H:%M UTC")


async def play(c: dict[str, AgencyClient], send: Send, base: Sharing, say: Any, js: JetStreamContext) -> None:
    """Play the story with the demo's ``send`` (which prints each outcome) and sharing block ``base``;
    ``js`` reads the deadline store to show each clock."""
    police, la, health, school = c[POLICE], c[LA], c[HEALTH], c[SCHOOL]

    def sharing(**over: Any) -> dict[str, Any]:  # the codes of these processes are in the vocabulary's v2
        return base(**({"vocabulary": "sgb-lawful-basis/2"} | over))

    cp = sharing(criminalOffenceCondition="DPA_SCH1_P18")

    say("\n5. Ben's strategy discussion starts s47 enquiries: the conference clock opens (15 working days).")
    sd, _ = await send(la, typ="strategy-discussion", to=[POLICE, HEALTH], sharing=cp, label="strategy discussion",
                       payload={"kind": "record", "child": BEN, "scheduledFor": _now(), "s47Initiated": True,
                                "decisions": "Section 47 enquiries; initial conference to be convened."})
    say(f"  initial child protection conference due by {await _clock(js, f'{sd}.{LA}')}")
    inv, _ = await send(la, typ="cp-conference-invitation", to=[POLICE, HEALTH, SCHOOL], sharing=cp,
                        label="conference invitation", payload={
                            "conferenceKind": "initial", "child": BEN, "scheduledFor": _now(7),
                            "strategyDiscussionId": sd, "reportsDueBy": _now(5), "venue": "Crowndale Centre, room 3"})
    await send(health, typ="cp-conference-report", to=[LA], re=inv, label="health's report for the conference",
               sharing=cp | {"specialCategoryCondition": "UKGDPR_9_2_H_SCH1_P2"},
               payload={"conferenceId": inv, "child": BEN, "recommendation": "plan",
                        "summary": "Two missed health visitor appointments; one ED attendance for a wrist injury."})

    say("\n6. The conference decides on a plan: the core group, review and CP-IS clocks open; its own clock stops.")
    out, _ = await send(la, typ="cp-conference-outcome", to=[POLICE, HEALTH, SCHOOL], re=sd, sharing=cp,
                        label="conference outcome: plan (neglect)", payload={
                            "conferenceKind": "initial", "conferenceId": inv, "strategyDiscussionId": sd,
                            "heldAt": _now(), "child": BEN, "decision": "plan", "category": "neglect",
                            "leadSocialWorker": LEAD_SW,
                            "coreGroup": [{"agency": LA, "role": "lead social worker"},
                                          {"agency": HEALTH, "role": "health visitor"},
                                          {"agency": SCHOOL, "role": "designated safeguarding lead"}]})
    say(f"  conference clock: {await _clock(js, f'{sd}.{LA}')}")
    for label, key in (("core group", f"{out}.{LA}"),
                       ("first review", f"{out}.{LA}.review-child-protection-conference"),
                       ("CP-IS update", f"{out}.{LA}.cp-status-update")):
        say(f"  {label} due by {await _clock(js, key)}")
    await send(la, typ="core-group-meeting", to=[HEALTH, SCHOOL], re=out, sharing=cp, label="core group meeting",
               payload={"conferenceId": out, "heldAt": _now(), "child": BEN, "attendees": [LA, HEALTH, SCHOOL],
                        "actions": [{"agency": HEALTH, "action": "Health visitor to visit weekly."}]})
    await send(la, typ="child-protection-status", to=[HEALTH], re=out, label="CP status to health (CP-IS)",
               sharing=sharing(specialCategoryCondition="UKGDPR_9_2_H_SCH1_P2", statutoryGateways=["CA2004_S11"]),
               payload={"nhsNumber": BEN["nhsNumber"], "planType": "child-protection-plan", "startDate": _now()[:10],
                        "responsibleAuthority": {"name": "London Borough of Camden",
                                                 "officeHoursPhone": "020 7974 0000",
                                                 "emergencyDutyPhone": "020 7974 1111"}})
    say(f"  core group clock: {await _clock(js, f'{out}.{LA}')}; CP-IS clock: "
        f"{await _clock(js, f'{out}.{LA}.cp-status-update')}; first review still due by "
        f"{await _clock(js, f'{out}.{LA}.review-child-protection-conference')}")

    say("\n7. Cleo's school leads her early help; without the family's agreement it is refused; then escalated.")
    early = sharing(purpose="EARLY_HELP", specialCategoryCondition=None, statutoryGateways=["CA2004_S10"],
                    urgency="ROUTINE", decidedBy={"role": "Designated Safeguarding Lead", "staffRef": "HPS-DSL-1"})
    assessment = {"child": CLEO, "leadPractitioner": DSL, "needs": ["attendance", "emotional-wellbeing"],
                  "summary": "Attendance has fallen; Cleo is withdrawn in class.", "agreedAt": _now()[:10]}
    await send(school, typ="early-help-assessment", to=[HEALTH], payload=assessment, sharing=early,
               label="early help assessment, consent not sought")
    agreed = early | {"consentStatus": "GIVEN", "subjectInformed": "INFORMED"}
    agreed.pop("nonConsentReason", None)
    await send(school, typ="early-help-assessment", to=[HEALTH], payload=assessment, sharing=agreed,
               label="early help assessment, with the family's agreement")
    up, _ = await send(school, typ="early-help-step-up", to=[LA], label="step-up to children's social care",
                       sharing=early | {"purpose": "CHILD_PROTECTION", "statutoryGateways": ["CA1989_S47"],
                                        "specialCategoryCondition": "UKGDPR_9_2_G_SCH1_P18"},
                       payload={"child": CLEO, "leadPractitioner": DSL, "immediateProtectionNeeded": False,
                                "reason": "Disclosure at school; early help is no longer enough."})
    say(f"  decision due by {await _clock(js, f'{up}.{LA}')}")
    ro, _ = await send(la, typ="referral-outcome", to=[SCHOOL], re=up, label="decision on the step-up: assessment",
               sharing=sharing(purpose="CASE_COORDINATION"),
               payload={"referralId": up, "referralReceivedAt": _now(), "decision": "child-and-family-assessment-s17",
                        "decidedAt": _now(), "reasons": "Threshold met for a child and family assessment."})
    say(f"  decision clock: {await _clock(js, f'{up}.{LA}')}; assessment due by {await _clock(js, f'{ro}.{LA}')}")

    say("\n8. A child dies: the police notify the child death review partners (the LA and the ICB) and the CDOP.")
    await send(police, typ="child-death-notification", to=[LA, HEALTH, CDOP], label="child death notification",
               sharing=sharing(purpose="CHILD_DEATH_REVIEW", lawEnforcementBasis="DPA_SCH8_P1",
                               specialCategoryCondition=None, statutoryGateways=["CA2004_S16M"],
                               decidedBy={"role": "Detective Sergeant", "staffRef": "MPS-DS-0311"}),
               payload={"child": {"name": {"given": "Dan", "family": "Example-Demo"}, "dateOfBirth": "2025-01-09"},
                        "dateTimeOfDeath": _now(-0.2), "placeOfDeath": "home", "expected": "unexpected",
                        "circumstances": "Sudden unexpected death in infancy; police attended with the ambulance.",
                        "notifier": {"name": {"given": "Kim", "family": "Detective-Demo"}, "role": "Detective Sergeant",
                                     "organisation": {"name": "Metropolitan Police Service", "agencyId": POLICE}}})
