"""The local authority's case events for the multi-agency processes of Working Together 2023,
ch. 3: child protection conferences and their core groups, child and family assessments,
step-down to early help, MASH screening, and the answer to a school's children-missing-education
notice. :mod:`adapters.formats.local_authority` maps them with its other events (``MAP``).

Most of these follow up a message the local authority itself sent, and name it in ``inReplyTo``
by the message id the adapter answered with when the case system posted the event that made it
(the adapter remembers what it sent: :attr:`~adapters.formats.mapping.MapContext.sent`). The new
message's ``re`` is that message, so the broker stops the clock it opened on the LA:

=========================  ==============================  ==============================================
case event                 canonical message               ``inReplyTo`` names (and the clock it stops)
=========================  ==============================  ==============================================
``conference-invitation``  ``cp-conference-invitation``    initial: the strategy discussion record;
                                                           review: the last conference's outcome
``conference-outcome``     ``cp-conference-outcome``       initial: the strategy discussion record (the
                                                           initial conference's 15 working days); review:
                                                           the last outcome (the review's 3 or 6 months)
``core-group``             ``core-group-meeting``          the conference outcome (the core group's 10
                                                           working days)
``assessment-outcome``     ``assessment-outcome``          the referral outcome (the assessment's 45
                                                           working days)
``step-down``              ``early-help-step-down``        (starts something: to the agencies in ``to``)
``mash-screening``         ``mash-screening``              (starts something; ``contact`` may name the
                                                           delivery the contact came as)
``cme-response``           ``cme-response``                the school's ``children-missing-education``
                                                           delivery (a reply, to the school)
=========================  ==============================  ==============================================

Case-system codes and the canonical vocabulary they stand for:

=============================  ========================================================================
field                          codes
=============================  ========================================================================
conference ``decision``        initial: ``CPP`` plan, ``NOCPP`` no-plan; review: ``CONT``
                               plan-continues, ``END`` plan-ends
conference ``category``        (the children in need census's) ``NEG`` neglect, ``PHY`` physical-abuse,
                               ``EMO`` emotional-abuse, ``SAB`` sexual-abuse, ``MUL`` multiple
assessment ``outcome``         ``NFA`` no-further-action, ``EH`` early-help, ``CIN``
                               child-in-need-plan, ``S47`` strategy-discussion-s47, ``SPEC``
                               specialist-assessment, ``OPEN`` already-open-case
``timescaleExceededReason``    ``COMPLEX`` complex-needs, ``FAMILY`` family-not-available, ``INFO``
                               awaiting-information, ``CHANGE`` change-of-circumstances, ``OTHER`` other
screening ``rag``              ``R`` red, ``A`` amber, ``G`` green, ``B`` blue
screening ``decision``         ``INFO`` information-gathering, ``NFA``, ``EH``, ``S17``, ``S47``,
                               ``SIGN`` (as a referral outcome's)
CME ``action``                 ``TRACED`` traced-enrolled-elsewhere, ``EHE`` home-education-confirmed,
                               ``ENQ`` enquiries-continuing, ``CSC`` referred-to-childrens-social-care,
                               ``NONE`` no-action-needed
=============================  ========================================================================
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any, Final

from adapters.formats.la_event import Event, some
from adapters.formats.mapping import Outbound, Unmappable

_CONFERENCE_DECISION: Final = {"CPP": "plan", "NOCPP": "no-plan", "CONT": "plan-continues", "END": "plan-ends"}
_CATEGORY: Final = {"NEG": "neglect", "PHY": "physical-abuse", "EMO": "emotional-abuse", "SAB": "sexual-abuse",
                    "MUL": "multiple"}
_ASSESSMENT: Final = {"NFA": "no-further-action", "EH": "early-help", "CIN": "child-in-need-plan",
                      "S47": "strategy-discussion-s47", "SPEC": "specialist-assessment", "OPEN": "already-open-case"}
_EXCEEDED: Final = {"COMPLEX": "complex-needs", "FAMILY": "family-not-available", "INFO": "awaiting-information",
                    "CHANGE": "change-of-circumstances", "OTHER": "other"}
_RAG: Final = {"R": "red", "A": "amber", "G": "green", "B": "blue"}
_SCREENING: Final = {"INFO": "information-gathering", "NFA": "no-further-action", "EH": "early-help",
                     "S17": "child-and-family-assessment-s17", "S47": "strategy-discussion-s47",
                     "SIGN": "signposted-other-agency"}
_CME_ACTION: Final = {"TRACED": "traced-enrolled-elsewhere", "EHE": "home-education-confirmed",
                      "ENQ": "enquiries-continuing", "CSC": "referred-to-childrens-social-care",
                      "NONE": "no-action-needed"}
# What a conference follows: the strategy discussion for an initial one, the last outcome for a review.
_FOLLOWS: Final = {"initial": "strategy-discussion", "review": "cp-conference-outcome"}
_LINK: Final = {"initial": "strategyDiscussionId", "review": "previousConferenceId"}


def _earlier(record: Mapping[str, Any], later: str, earlier: str) -> bool:
    """Whether the event's time ``later`` is before its ``earlier`` (False if one cannot be read:
    the native schema checked their form, and a leap second is no reason to refuse)."""
    try:
        first, then = (dt.datetime.fromisoformat(record[k].upper().replace("Z", "+00:00")) for k in (earlier, later))
    except ValueError:
        return False
    return then < first


def _conference_invitation(e: Event) -> Outbound:
    r = e.record
    before = e.own(_FOLLOWS[r["kind"]])
    invited = e.partners("invited")
    if "reportsDueBy" in r and _earlier(r, "scheduledFor", "reportsDueBy"):
        raise Unmappable("the reports are due after the conference", field=f"{e.where}/reportsDueBy",
                         rule="la-case-event.conference-dates")
    payload: dict[str, Any] = {"conferenceKind": r["kind"], "child": e.child(), "scheduledFor": r["scheduledFor"],
                               _LINK[r["kind"]]: before.message, "invited": list(invited)}
    payload |= some(r, ("venue", "venue"), ("reportsDueBy", "reportsDueBy"), ("caseNumber", "caseReference"))
    if "chair" in r:
        payload["chair"] = e.professional(r["chair"])
    return e.make("cp-conference-invitation", invited, payload, follows=before.message,
                  thread=r.get("thread") or before.thread)


def _conference_outcome(e: Event) -> Outbound:
    r = e.record
    before = e.own(_FOLLOWS[r["kind"]])
    invitation = e.own("cp-conference-invitation", key="invitation")
    to = e.partners("to")
    payload: dict[str, Any] = {"conferenceKind": r["kind"], "conferenceId": invitation.message,
                               _LINK[r["kind"]]: before.message, "heldAt": r["heldAt"], "child": e.child(),
                               "decision": _CONFERENCE_DECISION[r["decision"]]}
    if "category" in r:
        payload["category"] = _CATEGORY[r["category"]]
    if "leadSocialWorker" in r:
        payload["leadSocialWorker"] = e.professional(r["leadSocialWorker"])
    if "coreGroup" in r:
        payload["coreGroup"] = [{"agency": e.known(m["agency"], f"coreGroup/{i}/agency")} | some(m, ("role", "role"))
                                for i, m in enumerate(r["coreGroup"])]
    payload |= some(r, ("nextReviewBy", "nextReviewBy"), ("caseNumber", "caseReference"))
    return e.make("cp-conference-outcome", to, payload, follows=before.message, thread=r.get("thread") or before.thread)


def _core_group(e: Event) -> Outbound:
    r = e.record
    outcome = e.own("cp-conference-outcome")
    to = e.partners("to")
    payload: dict[str, Any] = {"conferenceId": outcome.message, "heldAt": r["heldAt"], "child": e.child()}
    if "attendees" in r:
        payload["attendees"] = [e.known(a, f"attendees/{i}") for i, a in enumerate(r["attendees"])]
    if "actions" in r:
        payload["actions"] = [dict(a) | {"agency": e.known(a["agency"], f"actions/{i}/agency")}
                              for i, a in enumerate(r["actions"])]
    payload |= some(r, ("caseNumber", "caseReference"))
    return e.make("core-group-meeting", to, payload, follows=outcome.message, thread=r.get("thread") or outcome.thread)


def _assessment_outcome(e: Event) -> Outbound:
    r = e.record
    decided = e.own("referral-outcome")
    if decided.re is None:
        raise Unmappable("the referral outcome it names answered no referral this adapter handed over",
                         field=f"{e.where}/inReplyTo", rule="la-case-event.follows-own")
    if _earlier(r, "completedAt", "referralReceivedAt"):
        raise Unmappable("the assessment is completed before the referral was received",
                         field=f"{e.where}/completedAt", rule="la-case-event.assessment-dates")
    referral = e.context.handed(decided.re)  # the referrer hears, as it heard the decision
    named = e.partners("to") if "to" in r else ()
    to = tuple(dict.fromkeys(((referral.sender,) if referral is not None and referral.sender else ()) + named))
    if not to:
        raise Unmappable("the referrer is not known to this adapter: name the agencies to tell in to",
                         field=f"{e.where}/to", rule="la-case-event.recipient-known")
    payload: dict[str, Any] = {"referralId": decided.re, "referralReceivedAt": r["referralReceivedAt"],
                               "completedAt": r["completedAt"], "child": e.child(),
                               "outcome": _ASSESSMENT[r["outcome"]]}
    if "timescaleExceededReason" in r:
        payload["timescaleExceededReason"] = _EXCEEDED[r["timescaleExceededReason"]]
    payload |= some(r, ("summary", "summary"), ("caseNumber", "caseReference"))
    if "socialWorker" in r:
        payload["socialWorker"] = e.professional(r["socialWorker"])
    return e.make("assessment-outcome", to, payload, follows=decided.message, thread=r.get("thread") or decided.thread)


def _step_down(e: Event) -> Outbound:
    r = e.record
    if r.get("consent") != "given":  # the broker would refuse it (early-help.step-down); say so here
        raise Unmappable("early help is voluntary: a step-down goes only with the family's consent",
                         field=f"{e.where}/consent", rule="la-case-event.step-down-consent")
    to = e.partners("to")
    payload: dict[str, Any] = {"child": e.child(), "reason": r["reason"]}
    payload |= some(r, ("summary", "summary"), ("caseNumber", "caseReference"))
    if "earlyHelpLead" in r:
        lead = e.known(r["earlyHelpLead"], "earlyHelpLead")
        if lead != e.context.agency and lead not in to:
            raise Unmappable("the early help lead practitioner's agency is one of those in to",
                             field=f"{e.where}/earlyHelpLead", rule="la-case-event.lead-told")
        payload["earlyHelpLead"] = lead
    return e.make("early-help-step-down", to, payload, thread=r.get("thread"))


def _mash_screening(e: Event) -> Outbound:
    r = e.record
    to = e.partners("to")
    payload: dict[str, Any] = {"child": e.child(), "ragRating": _RAG[r["rag"]],
                               "decision": _SCREENING[r["decision"]], "decidedAt": r["decidedAt"],
                               "contactReceivedAt": r["contactReceivedAt"]}
    thread = r.get("thread")
    if "contact" in r:
        contact = e.original(None, key="contact")
        payload["contactId"] = contact.message
        thread = thread or contact.thread
    if "asked" in r:
        payload["agenciesAsked"] = list(e.partners("asked"))
    payload |= some(r, ("rationale", "rationale"))
    return e.make("mash-screening", to, payload, thread=thread)


def _cme_response(e: Event) -> Outbound:
    r = e.record
    notice = e.original(("children-missing-education",))
    payload = {"noticeId": notice.message, "action": _CME_ACTION[r["action"]], "at": r["at"]}
    return e.make("cme-response", (), payload, answers=r["inReplyTo"])


MAP: Final[Mapping[str, Callable[[Event], Outbound]]] = {
    "conference-invitation": _conference_invitation, "conference-outcome": _conference_outcome,
    "core-group": _core_group, "assessment-outcome": _assessment_outcome, "step-down": _step_down,
    "mash-screening": _mash_screening, "cme-response": _cme_response,
}
