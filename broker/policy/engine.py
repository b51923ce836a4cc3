"""Step 4, the decision: may this sender share this message with each recipient, on what basis,
and which fields may each recipient see?

:class:`Policy` is the seam; :class:`RulebookPolicy` applies the partnership's rulebook
(``broker/policy/rulebook.yaml``): routing by agency kind, the lawful basis and its conditions (Art 6,
Art 9, Art 10, DPA 2018 Part 3), consent and transparency, necessary-and-proportionate field
allow-lists per recipient kind, protected identities and the sender's own clocks. It refuses the
whole message (raising a :class:`~broker.errors.RejectedMessage` naming the field and the rule,
never a value) when the message itself is unlawful or no recipient may receive it, and narrows
``to`` (never widens it) when only some may. Every decision names the rules that made it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from broker.errors import NoLawfulBasis, NotPermitted
from broker.policy import pointer
from broker.policy import rulebook as rulebooks
from broker.policy.rulebook import DeadlineSpec, LateAfter, Rule, Rulebook
from broker.policy.workdays import add_working_hours, due_after, parse_date
from broker.wire import lawfulbasis
from broker.wire.catalogue import Catalogue, MessageType
from broker.wire.registry import Agency

WITHOUT_CONSENT: Final = frozenset({"NOT_SOUGHT", "REFUSED_OVERRIDDEN"})
_CODE: Final = re.compile(r"[a-z][a-z0-9-]{0,39}")  # a reason code of a schema's list (never free text)
# The sharing block's basis and condition fields.
_CONDITION_FIELDS: Final = ("lawfulBasis", "specialCategoryCondition", "criminalOffenceCondition",
                            "lawEnforcementBasis")


@dataclass(frozen=True, slots=True)
class RecipientDecision:
    recipient: str
    share: bool
    rules: tuple[str, ...]
    code: str | None = None
    reason: str | None = None
    fields: tuple[str, ...] | None = None  # names passed on (``member`` or ``member/sub``); None = all
    withheld: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    recipients: tuple[RecipientDecision, ...]
    rules: tuple[str, ...] = ()
    flags: tuple[str, ...] = field(default=())  # reasons for IG review
    deadlines: tuple[DeadlineSpec, ...] = ()  # the clocks this message starts (those whose conditions hold)
    deadline_rule: str | None = None
    not_shared_reason: str | None = None  # a decision not to share: the practitioner's reason code
    late_reason: str | None = None  # a message sent after its clock ran out: the reason code it gives
    notes: tuple[str, ...] = ()  # what a clock or a required recipient that raised a flag says

    @property
    def deadline(self) -> DeadlineSpec | None:
        """The first clock this message starts (most rules have one)."""
        return self.deadlines[0] if self.deadlines else None

    @property
    def shared(self) -> tuple[RecipientDecision, ...]:
        return tuple(r for r in self.recipients if r.share)

    @property
    def refused(self) -> tuple[RecipientDecision, ...]:
        return tuple(r for r in self.recipients if not r.share)


class Policy(Protocol):
    def decide(self, sender: Agency, recipients: tuple[Agency, ...], mtype: MessageType,
               sharing: Mapping[str, Any], payload: Mapping[str, Any], *, received: float | None = None) -> Decision:
        """Decide per recipient; raise a :class:`~broker.errors.RejectedMessage` to refuse all.
        ``received``: when the broker received the message (clocks owed by the sender are judged then)."""
        ...

    def clocks_answered_by(self, type_name: str) -> tuple[str, ...]:
        """Key suffixes of the clocks (after a rule's first) a message of this type may close."""
        ...


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """The attributes of the vocabulary's codes that the rules read."""

    restricted: frozenset[str]  # Art 6 bases public authorities may not use for their tasks
    consent_based: frozenset[str]  # codes that are consent, in each list
    without_consent: frozenset[str]  # conditions met only when processing is without consent (para 18 family)
    gateway_not_from: Mapping[str, frozenset[str]]  # gateway -> sender kinds it does not cover

    @classmethod
    def load(cls) -> Vocabulary:
        lists = lawfulbasis.lists()
        entries = [e for lst in lists.values() for e in lst]
        return cls(
            restricted=frozenset(e["code"] for e in lists["lawfulBasis"] if e.get("notForPublicAuthorities")),
            consent_based=frozenset(e["code"] for e in entries if e.get("consentBased")),
            without_consent=frozenset(e["code"] for e in entries if e.get("withoutConsent")),
            gateway_not_from={e["code"]: frozenset(e["notFromKinds"]) for e in lists["statutoryGateway"]
                              if "notFromKinds" in e},
        )


class RulebookPolicy:
    def __init__(self, rulebook: Rulebook, clock: Callable[[], float] = time.time) -> None:
        self.rulebook = rulebook
        self.vocabulary = Vocabulary.load()
        self._clock = clock

    def clocks_answered_by(self, type_name: str) -> tuple[str, ...]:
        return self.rulebook.clocks_answered_by(type_name)

    def decide(self, sender: Agency, recipients: tuple[Agency, ...], mtype: MessageType,
               sharing: Mapping[str, Any], payload: Mapping[str, Any], *, received: float | None = None) -> Decision:
        rule = self.rulebook.rule_for(mtype.name, sender.kind)
        if rule is None:
            raise NotPermitted(f"no rule lets a {sender.kind} agency send {mtype.name} messages",
                               field="/typ", rule=f"route.{mtype.name}")
        if mtype.record_only:
            reason = payload.get("reason")
            return Decision(tuple(RecipientDecision(a.id, False, (rule.id,), code="not-shared",
                                                    reason="a practitioner decided not to share")
                                  for a in recipients), (rule.id,),
                            not_shared_reason=reason if isinstance(reason, str) else None)
        if rule.partners_only and not sender.safeguarding_partner:
            raise NotPermitted(f"only a safeguarding partner of the area sends {mtype.name} messages",
                               field="/iss", rule=rule.id)
        applied = [rule.id]
        flags: list[str] = []
        notes: list[str] = []
        if mtype.personal_data:
            applied += self._lawful_basis(rule, sender, mtype, sharing, payload)
            applied += self._consent(sender, sharing, flags)
            if rule.consent_required:  # early help: the family's agreement, whatever the urgency
                if sharing.get("consentStatus") != "GIVEN":
                    raise NoLawfulBasis(f"{mtype.name} is shared only with the family's consent (consentStatus GIVEN); "
                                        "without it, escalate as a referral", field="/sharing/consentStatus",
                                        rule=rule.id)
                applied.append(rule.id)
        if "adviceSought" in sharing:
            flags.append("advice-sought")
            applied.append("advice.sought")
        late = rule.late_after
        late_reason: str | None = None
        if late is not None:
            verdict = _is_late(late, payload, received if received is not None else self._clock())
            reason = next(pointer.values(payload, late.reason_field), None) if late.reason_field else None
            if verdict and late.reason_field and reason is None:
                raise NotPermitted(f"sent after its clock ran out ({late.says}): say why", field=late.reason_field,
                                   rule=rule.id)
            if verdict and isinstance(reason, str):  # recorded for review only as a code, never as free text
                late_reason = reason if _CODE.fullmatch(reason) else "given"
            if verdict is not False:  # late, or not judged because the payload does not say when it started
                flags.append("late" if verdict else "clock-unjudged")
                notes.append(late.says)
                applied.append(rule.id)
        decisions = tuple(self._for_recipient(rule, agency, sharing, payload, tuple(applied)) for agency in recipients)
        if not any(d.share for d in decisions):
            raise NotPermitted(f"no recipient may receive {mtype.name} from a {sender.kind} agency",
                               field="/to", rule=rule.id)
        shared_kinds = {a.kind for a, d in zip(recipients, decisions, strict=True) if d.share}
        for need in rule.must_notify:
            if not need.kinds <= shared_kinds and all(c.holds(payload) for c in need.when):
                flags.append("recipient-missing")
                notes.append(need.says)
                applied.append(rule.id)
        clocks = tuple(d for d in rule.deadlines if d.applies(payload))
        return Decision(decisions, tuple(dict.fromkeys(applied)), tuple(dict.fromkeys(flags)), clocks,
                        rule.id if clocks else None, notes=tuple(dict.fromkeys(notes)), late_reason=late_reason)

    # -- lawful basis -------------------------------------------------------------------

    def _lawful_basis(self, rule: Rule, sender: Agency, mtype: MessageType, sharing: Mapping[str, Any],
                      payload: Mapping[str, Any]) -> list[str]:
        police_part3 = sender.kind == "police" and "lawEnforcementBasis" in sharing
        basis = sharing.get("lawfulBasis")
        if basis is None and not police_part3:
            raise NoLawfulBasis("a UK GDPR Art 6 basis (or, for police, a DPA 2018 Part 3 basis) is required",
                                field="/sharing/lawfulBasis", rule="basis.present")
        applied = ["basis.present"]
        if basis is not None:
            if basis in self.vocabulary.restricted and sender.public_authority:
                raise NoLawfulBasis("a public authority may not rely on (recognised) legitimate interests "
                                    "for its tasks", field="/sharing/lawfulBasis", rule="basis.public-authority")
            applied.append("basis.public-authority")
        accepted_by_field = (rule.lawful_bases, rule.special_conditions, rule.offence_conditions,
                             rule.law_enforcement_bases)
        for name, accepted in zip(_CONDITION_FIELDS, accepted_by_field, strict=True):
            code = sharing.get(name)
            if code is not None and accepted and code not in accepted:
                raise NoLawfulBasis(f"this {name} is not one the agreement accepts for {rule.type}",
                                    field=f"/sharing/{name}", rule=rule.id)
        if self._carries_offence_data(mtype.name, payload):
            if police_part3:
                applied.append("basis.law-enforcement")  # DPA 2018 Part 3: s35(4) consent, or s35(5) and Sch 8
            elif "criminalOffenceCondition" in sharing:
                applied.append("basis.criminal-offence")  # UK GDPR Art 10 with a DPA 2018 Sch 1 condition
            elif sender.kind == "police":
                raise NoLawfulBasis("the payload carries criminal offence data: police give their DPA 2018 Part 3 "
                                    "basis, or an Art 10 condition when sharing under UK GDPR",
                                    field="/sharing/lawEnforcementBasis", rule="basis.law-enforcement")
            else:
                raise NoLawfulBasis("the payload carries criminal offence data; an Art 10 condition is required",
                                    field="/sharing/criminalOffenceCondition", rule="basis.criminal-offence")
        if mtype.special_category and not police_part3:
            if "specialCategoryCondition" not in sharing:
                raise NoLawfulBasis("special category data need an Art 9 condition",
                                    field="/sharing/specialCategoryCondition", rule="basis.special-category")
            applied.append("basis.special-category")
        gateways = tuple(sharing.get("statutoryGateways", ()))
        for i, gateway in enumerate(gateways):
            if sender.kind in self.vocabulary.gateway_not_from.get(gateway, ()):
                raise NoLawfulBasis(f"this gateway does not cover disclosures by a {sender.kind} agency",
                                    field=f"/sharing/statutoryGateways/{i}", rule="basis.gateway-available")
            holders = rule.gateways_from.get(gateway)
            if holders is not None and sender.organisation_type not in holders:
                raise NoLawfulBasis(f"this gateway is a power of another body, not of the sender, for {rule.type}",
                                    field=f"/sharing/statutoryGateways/{i}", rule=rule.id)
        if rule.gateways and not set(gateways) & rule.gateways:
            raise NoLawfulBasis("a statutory gateway for this share is required",
                                field="/sharing/statutoryGateways", rule=rule.id)
        return applied

    def _carries_offence_data(self, type_name: str, payload: Mapping[str, Any]) -> bool:
        """Whether the rulebook counts this payload as criminal offence data (which field made it so
        is not said: even that would tell what the message is about)."""
        conditions = self.rulebook.offence_data.get(type_name)
        if conditions is None:
            return False
        return not conditions or pointer.first_holding(conditions, payload) is not None

    # -- consent and transparency -------------------------------------------------------

    def _consent(self, sender: Agency, sharing: Mapping[str, Any], flags: list[str]) -> list[str]:
        emergency = sharing.get("urgency") == "EMERGENCY"
        applied: list[str] = []
        status = sharing.get("consentStatus")

        def unless_emergency(reason: str, field: str, rule: str, flag: str, *also: str) -> None:
            """Refused; or, in an emergency, shared and flagged (never held back for a consent record)."""
            if not emergency:
                raise NoLawfulBasis(reason, field=field, rule=rule)
            flags.append(flag)
            applied.extend((*also, "urgent.never-held"))

        def contradiction(reason: str, field: str, rule: str) -> None:
            unless_emergency(reason, field, rule, "emergency-consent-contradiction", rule)

        for name in _CONDITION_FIELDS:
            code = sharing.get(name)
            if code in self.vocabulary.consent_based:
                if status != "GIVEN":
                    contradiction(f"{name} is consent, so consentStatus must be GIVEN", "/sharing/consentStatus",
                                  "consent.basis-needs-consent")
                else:
                    applied.append("consent.basis-needs-consent")
                if name == "lawfulBasis" and sender.public_authority:
                    flags.append("consent-as-basis")
                    applied.append("consent.not-the-basis")
            elif code in self.vocabulary.without_consent and status == "GIVEN":
                flags.append("without-consent-condition-with-consent")
                applied.append("consent.condition-without-consent")
        if status == "GIVEN" and "nonConsentReason" in sharing:
            contradiction("consent was given, so there is no reason for sharing without it",
                          "/sharing/nonConsentReason", "consent.consistent")
        if status == "NOT_APPLICABLE":
            unless_emergency("consent is applicable to a message carrying personal data: say whether it was given, "
                             "refused or not sought", "/sharing/consentStatus", "consent.not-applicable",
                             "emergency-consent-unrecorded", "consent.not-applicable")
        if status in WITHOUT_CONSENT:
            applied.append("consent.reason")
            if "nonConsentReason" not in sharing:
                unless_emergency("sharing without consent needs a recorded reason", "/sharing/nonConsentReason",
                                 "consent.reason", "emergency-without-consent-reason")
            if status == "REFUSED_OVERRIDDEN":
                flags.append("consent-overridden")
                applied.append("consent.override-review")
            elif status == "NOT_SOUGHT":
                flags.append("shared-without-consent")
        if "subjectInformed" not in sharing:
            unless_emergency("whether the family was informed, or why not, must be recorded",
                             "/sharing/subjectInformed", "transparency.informed",
                             "emergency-family-informed-unrecorded")
        applied.append("transparency.informed")
        return applied

    # -- per recipient ------------------------------------------------------------------

    def _for_recipient(self, rule: Rule, agency: Agency, sharing: Mapping[str, Any], payload: Mapping[str, Any],
                       applied: tuple[str, ...]) -> RecipientDecision:
        allowed = rule.to.get(agency.kind)
        if allowed is None:
            return RecipientDecision(agency.id, False, (rule.id,), code=NotPermitted.code,
                                     reason=f"{rule.type} may not be sent to a {agency.kind} agency")
        if allowed.organisation_types and agency.organisation_type not in allowed.organisation_types:
            return RecipientDecision(agency.id, False, (rule.id,), code=NotPermitted.code,
                                     reason=f"{rule.type} goes only to a {agency.kind} agency that is one of "
                                            f"{', '.join(sorted(allowed.organisation_types))}")
        if not all(c.holds(payload) for c in allowed.when):
            return RecipientDecision(agency.id, False, (rule.id, "necessity.per-recipient"), code=NotPermitted.code,
                                     reason=f"a {agency.kind} agency does not need this {rule.type}")
        keep: tuple[str, ...]
        withheld: tuple[str, ...]
        if allowed.fields is None:
            keep, withheld = tuple(sorted(payload)), ()
        else:
            keep, withheld = pointer.narrow(payload, allowed.fields)
        rules = list(applied)
        if withheld:
            rules.append("necessity.per-recipient")
        for identity, protection in rule.protect.items():
            if agency.kind in protection.from_kinds and _is_protected(identity, sharing, payload):
                hidden = {name for name in keep if name.split("/", 1)[0] in protection.fields}
                if hidden:
                    keep = tuple(name for name in keep if name not in hidden)
                    withheld = tuple(sorted({*withheld, *hidden}))
                    rules.append("identity.protect")
        return RecipientDecision(agency.id, True, tuple(dict.fromkeys(rules)),
                                 fields=keep if withheld else None, withheld=withheld)


def _is_late(late: LateAfter, payload: Mapping[str, Any], received: float) -> bool | None:
    """Whether the sender's own clock had run out when the message arrived; None if the payload
    does not say when it started. A start after the message arrived cannot be true and is not
    taken (nor can it stop the clock); of a start and its fallback (learning of an event, and the
    event), the later counts, since nobody learns of an event before it happens."""
    dates = (parse_date(next(pointer.values(payload, at), None)) for at in late.starts())
    start = max((d for d in dates if d is not None and d.timestamp() <= received), default=None)
    if start is None:
        return None
    rating = next(pointer.values(payload, late.rag_field), None) if late.rag_field else None
    if late.rag_hours and isinstance(rating, str) and rating in late.rag_hours:
        return received > add_working_hours(start, late.rag_hours[rating]).timestamp()
    due = due_after(start, working_days=late.working_days, school_day_start=late.school_day_start,
                    clock_hours=late.clock_hours)
    return due is not None and received > due.timestamp()


def _is_protected(identity: str, sharing: Mapping[str, Any], payload: Mapping[str, Any]) -> bool:
    if identity in sharing.get("protectedIdentities", ()):
        return True
    referrer = payload.get("referrer")
    return identity == "referrer" and isinstance(referrer, Mapping) and bool(referrer.get("atRiskIfIdentified"))


class ReloadablePolicy:
    """The policy in force, replaceable at run time. A rulebook that fails to load is refused
    and the one in force stays (the caller logs the problem)."""

    def __init__(self, path: Path, catalogue: Catalogue) -> None:
        self.path = path
        self._catalogue = catalogue
        self.current = RulebookPolicy(rulebooks.load(path, catalogue))

    def reload(self) -> Rulebook:
        """Load the rulebook again; raises :class:`~broker.errors.ConfigError` and keeps the old one on error."""
        self.current = RulebookPolicy(rulebooks.load(self.path, self._catalogue))
        return self.current.rulebook

    def decide(self, sender: Agency, recipients: tuple[Agency, ...], mtype: MessageType,
               sharing: Mapping[str, Any], payload: Mapping[str, Any], *, received: float | None = None) -> Decision:
        return self.current.decide(sender, recipients, mtype, sharing, payload, received=received)

    def clocks_answered_by(self, type_name: str) -> tuple[str, ...]:
        return self.current.clocks_answered_by(type_name)
