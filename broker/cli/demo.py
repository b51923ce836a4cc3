"""``sgb demo``: a safeguarding story played through a real broker on an embedded NATS.

Police attend a domestic abuse incident and refer two children to Camden's children's
social care (one with consent, one without, with the reason recorded). The local authority
acknowledges and decides within a working day, asks health for information and health
answers. A school sends a referral with no lawful basis and sees why it was refused. At the
end: what was shared with whom, on which basis, what was refused, and where the audit is.
The second story (:mod:`broker.cli.demo_processes`) follows Ben to a child protection conference
and its chain of clocks, Cleo from early help to a step-up, and a child death to the review partners.

All names and numbers are fictional.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from adapters.sdk import AgencyClient, Delivery
from broker.audit.export import verify_store
from broker.audit.reading import read_audit
from broker.cli import demo_processes
from broker.config import Settings
from broker.errors import BrokerError
from broker.identity.devkeys import init_dev_keys
from broker.identity.keys import load_identity
from broker.pipeline.service import running_broker
from broker.transport.connection import connected, embedded, jetstream
from broker.transport.errors import nats_failures
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry

POLICE, LA, HEALTH, SCHOOL = "police-met", "la-camden", "health-camden", "school-hillside"
WAIT = 20.0


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _say(text: str = "") -> None:
    print(text, flush=True)


def _sharing(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "vocabulary": "sgb-lawful-basis/1", "purpose": "CHILD_PROTECTION", "lawfulBasis": "UKGDPR_6_1_E",
        "specialCategoryCondition": "UKGDPR_9_2_G_SCH1_P18", "statutoryGateways": ["CA1989_S47"],
        "consentStatus": "NOT_SOUGHT", "nonConsentReason": "WOULD_PREJUDICE_PROTECTION",
        "subjectInformed": "TO_BE_INFORMED_LATER", "urgency": "URGENT",
        "decidedBy": {"role": "Social Worker", "staffRef": "LBC-SW-0192"}, "guidanceEdition": "WT2023",
    }
    return {k: v for k, v in (base | over).items() if v is not None}


def _child(given: str, dob: str, nhs: str, upn: str) -> dict[str, Any]:
    return {
        "name": {"given": given, "family": "Okafor-Demo"}, "status": "born", "dateOfBirth": dob,
        "gender": "female" if given == "Ada" else "male", "nhsNumber": nhs, "upn": upn,
        "homeAddress": {"lines": ["14 Example Row"], "town": "London", "postcode": "NW1 0XX"},
        "school": {"name": "Hillside Primary School", "agencyId": SCHOOL},
    }


def _referral(child: dict[str, Any], *, consent: str) -> dict[str, Any]:
    return {
        "child": child,
        "household": [
            {"name": {"given": "Grace", "family": "Okafor-Demo"}, "role": "parent", "parentalResponsibility": True},
            {"name": {"given": "Mark", "family": "Demo-Smith"}, "role": "alleged-perpetrator"},
        ],
        "referrer": {
            "name": {"given": "Sam", "family": "Officer-Demo"}, "role": "Police Constable",
            "organisation": {"name": "Metropolitan Police Service", "agencyId": POLICE},
            "relationshipToChild": "attending officer", "anonymityRequested": False, "atRiskIfIdentified": False,
        },
        "concern": {
            "summary": "Child present during a domestic abuse incident at home last night.",
            "details": "Officers attended a report of shouting and breaking glass. The mother had a facial injury.",
            "categories": ["domestic-abuse", "emotional"],
            "immediateProtectionNeeded": False, "firstHand": True,
        },
        "consent": {"parentsInformed": consent == "given", "consentObtained": "yes" if consent == "given" else "no"},
        "policeReference": "CAD-4471-22NOV",
    }


@dataclass
class Story:
    """What happened, for the closing summary and the exit code."""

    shared: list[tuple[str, str, str, str]] = field(default_factory=list)  # (type, from, to, basis)
    refused: list[tuple[str, str, str]] = field(default_factory=list)     # (type, from, code)
    failures: list[str] = field(default_factory=list)


async def _inbox_until(client: AgencyClient, want: int, *, typ: str | None = None) -> list[Delivery]:
    """Read this agency's deliveries (acking them) until ``want`` of ``typ`` arrived, or time out."""
    got: list[Delivery] = []
    deadline = time.monotonic() + WAIT
    while len(got) < want and time.monotonic() < deadline:
        async for delivery, msg in client.fetch(idle=0.5):
            with nats_failures("acknowledging a delivery"):
                await msg.ack()
            if delivery is not None and (typ is None or delivery.type == typ):
                got.append(delivery)
    if len(got) < want:
        raise BrokerError(f"{client.agency} expected {want} {typ or 'message'}(s), received {len(got)}")
    return got


async def _send(story: Story, client: AgencyClient, *, typ: str, to: list[str], payload: dict[str, Any],
                sharing: dict[str, Any], re: str | None = None, label: str) -> tuple[str, Delivery]:
    jti = await client.send(typ=typ, to=to, payload=payload, sharing=sharing, re=re)
    outcome = await client.wait_outcome(jti, timeout=WAIT)
    basis = sharing.get("lawfulBasis") or sharing.get("lawEnforcementBasis") or "none"
    if outcome.type == "rejection":
        p = outcome.payload
        _say(f"  ✗ {client.agency} → {', '.join(to)}: {label} REFUSED [{p['code']}] {p['reason']}"
             f" (field {p.get('field', '-')}, rule {p.get('rule', '-')})")
        story.refused.append((typ, client.agency, p["code"]))
    else:
        delivered = outcome.payload.get("recipients", [])
        _say(f"  ✓ {client.agency} → {', '.join(delivered)}: {label}  basis={basis}"
             f" consent={sharing.get('consentStatus')}"
             + (f" ({sharing['nonConsentReason']})" if "nonConsentReason" in sharing else ""))
        story.shared.extend((typ, client.agency, r, basis) for r in delivered)
    return jti, outcome


@contextlib.asynccontextmanager
async def _clients(settings: Settings, url: str, registry: Registry, catalogue: Catalogue
                   ) -> AsyncIterator[dict[str, AgencyClient]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for agency in (POLICE, LA, HEALTH, SCHOOL, demo_processes.CDOP):
            nc = await stack.enter_async_context(connected(settings, url, name=f"demo-{agency}", party=agency))
            clients[agency] = AgencyClient(nc, jetstream(nc, settings), registry,
                                           load_identity(settings.home, agency), catalogue)
        yield clients


async def play(story: Story, c: dict[str, AgencyClient]) -> None:
    police, la, health, school = c[POLICE], c[LA], c[HEALTH], c[SCHOOL]

    _say("\n1. 23:40 — Police attend a domestic abuse incident; two children live at the address.")
    police_sharing = _sharing(
        lawfulBasis="UKGDPR_6_1_E", lawEnforcementBasis="DPA_SCH8_P4", specialCategoryCondition="UKGDPR_9_2_G_SCH1_P18",
        criminalOffenceCondition="DPA_SCH1_P18", statutoryGateways=["CA1989_S47", "CDA1998_S115"],
        decidedBy={"role": "Police Constable", "staffRef": "MPS-4471"},
    )
    ada = _referral(_child("Ada", "2017-03-14", "9990001235", "A123456789012"), consent="given")
    ben = _referral(_child("Ben", "2020-09-02", "9990005672", "B123456789012"), consent="refused")
    # with consent given, the conditions are the consent ones (the safeguarding conditions are for
    # sharing without consent: DPA 2018 Sch 1 para 18(1)(c), Sch 8 para 4(1)(c))
    await _send(story, police, typ="referral", to=[LA], payload=ada, label="referral, child 1",
                sharing={k: v for k, v in police_sharing.items() if k != "nonConsentReason"}
                | {"consentStatus": "GIVEN", "subjectInformed": "INFORMED", "lawEnforcementBasis": "DPA_S35_CONSENT",
                   "specialCategoryCondition": "UKGDPR_9_2_A", "criminalOffenceCondition": "DPA_SCH1_CONSENT"})
    await _send(story, police, typ="referral", to=[LA], payload=ben, label="referral, child 2",
                sharing=police_sharing | {"consentStatus": "NOT_SOUGHT",
                                          "nonConsentReason": "WOULD_INCREASE_RISK_OF_HARM",
                                          "subjectInformed": "NOT_INFORMED_UNSAFE"})

    _say("\n2. Next morning — Camden's front door opens both referrals and decides within one working day.")
    referrals = await _inbox_until(la, 2, typ="referral")
    outcomes = {"Ada": "child-and-family-assessment-s17", "Ben": "strategy-discussion-s47"}
    for ref in referrals:
        given = ref.payload["child"]["name"]["given"]
        _say(f"  la-camden opened a referral from {ref.claims['origin']['iss']}: child {given}, "
             f"categories {', '.join(ref.payload['concern']['categories'])}")
        await _send(story, la, typ="referral-outcome", to=[POLICE], re=ref.claims["origin"]["jti"],
                    label=f"referral outcome: {outcomes[given]}",
                    sharing=_sharing(purpose="CASE_COORDINATION", statutoryGateways=["CA1989_S47"]),
                    payload={"referralId": ref.claims["origin"]["jti"], "acknowledgedAt": _now(),
                             "decision": outcomes[given], "decidedAt": _now(),
                             "reasons": "Threshold met; see case record."})
    for out in await _inbox_until(police, 2, typ="referral-outcome"):
        _say(f"  police-met received the outcome of its referral {out.claims['re'][:8]}…: {out.payload['decision']}")

    _say("\n3. Section 47 enquiry — Camden asks health what it knows; health answers.")
    request = {
        "requestReference": "LBC-S47-0042",
        "subject": {"name": {"given": "Ben", "family": "Okafor-Demo"}, "dateOfBirth": "2020-09-02",
                    "nhsNumber": "9990005672"},
        "questions": [{"id": "q1", "topic": "injuries", "text": "Any attendances for injuries in the last 12 months?"},
                      {"id": "q2", "topic": "missed-appointments", "text": "Any missed health appointments?"}],
        "reason": "Strategy discussion held; s47 enquiries under way.", "respondBy": _now(),
        "context": "s47-enquiry",
    }
    req_id, _ = await _send(story, la, typ="information-request", to=[HEALTH], payload=request,
                            label="information request (s47)", sharing=_sharing(statutoryGateways=["CA1989_S47"]))
    (got,) = await _inbox_until(health, 1, typ="information-request")
    _say(f"  health-camden opened the request (sealed with {got.claims['enc']['suite']}): "
         f"{len(got.payload['questions'])} questions")
    await _send(story, health, typ="information-response", to=[LA], re=req_id, label="information response",
                sharing=_sharing(purpose="CHILD_PROTECTION", specialCategoryCondition="UKGDPR_9_2_H_SCH1_P2",
                                 decidedBy={"role": "Named Nurse Safeguarding", "staffRef": "NCL-NN-07"}),
                payload={"requestId": req_id, "respondent": {
                    "name": {"given": "Priya", "family": "Nurse-Demo"}, "role": "Named Nurse Safeguarding",
                    "organisation": {"name": "NHS North Central London ICB", "agencyId": HEALTH}},
                    "answers": [{"questionId": "q1", "answer": "One ED attendance in March for a wrist injury."},
                                {"questionId": "q2", "answer": "Two missed health visitor appointments."}]})
    (answer,) = await _inbox_until(la, 1, typ="information-response")
    _say(f"  la-camden received {len(answer.payload['answers'])} answers from health")

    _say("\n4. A school refers a concern but leaves out the lawful basis.")
    no_basis = _sharing(lawfulBasis=None, statutoryGateways=None, decidedBy={
        "role": "Designated Safeguarding Lead", "staffRef": "HPS-DSL-1"})
    await _send(story, school, typ="referral", to=[LA], payload=_referral(
        _child("Cleo", "2016-05-20", "9990009012", "C123456789012"), consent="given"), sharing=no_basis,
        label="referral")


def _summary(story: Story, settings: Settings, audit: list[dict[str, Any]]) -> None:
    _say("\nSummary")
    _say("  shared:")
    for typ, sender, recipient, basis in story.shared:
        _say(f"    {typ:<29} {sender:>16} → {recipient:<16} lawful basis {basis}")
    _say("  refused:")
    for typ, sender, code in story.refused:
        _say(f"    {typ:<29} {sender:>16}   code {code}")
    events: dict[str, int] = {}
    for record in audit:
        events[record["event"]] = events.get(record["event"], 0) + 1
    _say(f"  audit: {len(audit)} records in JetStream stream SG_AUDIT "
         f"({', '.join(f'{n} {e}' for e, n in sorted(events.items()))}); "
         f"store under {settings.nats_dir}")
    _say(f"         no personal data in them; list with: sgb audit list --home {settings.home}")


async def run_demo(base: Settings) -> int:
    """Play the story in ``<home>/demo`` (made afresh). Returns the process exit code."""
    home = base.home / "demo"
    shutil.rmtree(home, ignore_errors=True)
    settings = Settings(home=home, registry_path=home / "registry.json", instance="demo-1",
                        nats=base.nats, streams=base.streams, pipeline=base.pipeline)
    init_dev_keys(home, settings.registry_path)
    catalogue = Catalogue()
    registry = Registry.load(settings.registry_path, catalogue)
    story = Story()
    _say("Safeguarding Broker demo — a fictional Camden safeguarding partnership")
    _say(f"  data directory {home}; agencies: {', '.join(sorted(a for a in registry.agencies))}")
    try:
        async with contextlib.AsyncExitStack() as stack:
            if settings.nats.url:
                url = settings.nats.url
            else:
                url = await stack.enter_async_context(embedded(settings))
            _say(f"  NATS JetStream at {url}")
            await stack.enter_async_context(running_broker(settings, url))
            clients = await stack.enter_async_context(_clients(settings, url, registry, catalogue))
            await play(story, clients)
            async with connected(settings, url, name="demo-clocks") as nc:  # the broker's view of the clocks
                await demo_processes.play(clients, functools.partial(_send, story), _sharing, _say,
                                          jetstream(nc, settings))
            async with connected(settings, url, name="demo-audit") as nc:
                js = jetstream(nc, settings)
                audit = [r async for r in read_audit(js)]
                integrity = await verify_store(js, registry)
            _summary(story, settings, audit)
            _say(f"         hash-chained and signed in {integrity.blocks} blocks: "
                 + ("verified" if integrity.ok else f"VERIFICATION FAILED ({len(integrity.problems)} problems)")
                 + f"; check with: sgb audit verify --home {settings.home}")
            _say(f"  IG pages: sgb serve --http 127.0.0.1:8080 --home {settings.home}, then open "
                 f"http://127.0.0.1:8080/ig/ with a token from: sgb token --role ig-officer --home {settings.home}")
    except BrokerError as exc:
        _say(f"\nThe demo did not complete: {exc}")
        return 1
    expected_shared, expected_refused = 6 + demo_processes.SHARES, 1 + demo_processes.REFUSALS
    if len(story.shared) != expected_shared or [r[2] for r in story.refused] != ["no-lawful-basis"] * expected_refused:
        _say(f"\nThe demo did not complete as expected: {len(story.shared)} shares (want {expected_shared}), "
             f"refusals {story.refused} (want {expected_refused} no-lawful-basis)")
        return 1
    _say("\nThe story completed: every message reached its recipient or was refused with a reason.")
    return 0
