"""Step 4, the decision: may this sender share this message with each recipient, on what basis,
and which fields may each recipient see?

:class:`Policy` is the seam; :class:`RulebookPolicy` applies the partnership's rulebook
(``deploy/rulebook.yaml``): routing by agency kind, the lawful basis and conditions, consent
and transparency, necessary-and-proportionate field allow-lists per recipient kind, and
protected identities. It refuses the whole message (raising a
:class:`~broker.errors.RejectedMessage`) when the message itself is unlawful or no recipient
may receive it, and narrows ``to`` (never widens it) when only some may. Every decision names
the rules that made it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final, Protocol

import orjson

from broker import rulebook as rulebooks
from broker.catalogue import Catalogue, MessageType
from broker.errors import NoLawfulBasis, NotPermitted
from broker.registry import Agency
from broker.rulebook import DeadlineSpec, LateAfter, Rule, Rulebook
from broker.workdays import LONDON, add_working_days

WITHOUT_CONSENT: Final = frozenset({"NOT_SOUGHT", "REFUSED_OVERRIDDEN"})


@dataclass(frozen=True, slots=True)
class RecipientDecision:
    recipient: str
    share: bool
    rules: tuple[str, ...]
    code: str | None = None
    reason: str | None = None
    fields: tuple[str, ...] | None = None  # top-level payload members passed on; None = all
    withheld: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    recipients: tuple[RecipientDecision, ...]
    rules: tuple[str, ...] = ()
    flags: tuple[str, ...] = field(default=())  # reasons for IG review
    deadline: DeadlineSpec | None = None
    deadline_rule: str | None = None

    @property
    def shared(self) -> tuple[RecipientDecision, ...]:
        return tuple(r for r in self.recipients if r.share)

    @property
    def refused(self) -> tuple[RecipientDecision, ...]:
        return tuple(r for r in self.recipients if not r.share)


class Policy(Protocol):
    def decide(self, sender: Agency, recipients: tuple[Agency, ...], mtype: MessageType,
               sharing: Mapping[str, Any], payload: Mapping[str, Any]) -> Decision:
        """Decide per recipient; raise a :class:`~broker.errors.RejectedMessage` to refuse all."""
        ...


def _restricted_bases() -> frozenset[str]:
    vocab = orjson.loads((resources.files("schemas") / "vocabulary.v1.json").read_bytes())
    return frozenset(e["code"] for e in vocab["lists"]["lawfulBasis"] if e.get("notForPublicAuthorities"))


class RulebookPolicy:
    def __init__(self, rulebook: Rulebook, clock: Callable[[], float] = time.time) -> None:
        self.rulebook = rulebook
        self._restricted = _restricted_bases()
        self._clock = clock

    def decide(self, sender: Agency, recipients: tuple[Agency, ...], mtype: MessageType,
               sharing: Mapping[str, Any], payload: Mapping[str, Any]) -> Decision:
        rule = self.rulebook.rule_for(mtype.name, sender.kind)
        if rule is None:
            raise NotPermitted(f"no rule lets a {sender.kind} agency send {mtype.name} messages",
                               field="/typ", rule=f"route.{mtype.name}")
        if mtype.record_only:
            return Decision(tuple(RecipientDecision(a.id, False, (rule.id,), code="not-shared",
                                                    reason="a practitioner decided not to share")
                                  for a in recipients), (rule.id,))
        applied = [rule.id]
        flags: list[str] = []
        if mtype.personal_data:
            applied += self._lawful_basis(rule, sender, mtype, sharing)
            applied += self._consent(sharing, flags)
        if "adviceSought" in sharing:
            flags.append("advice-sought")
        if rule.late_after is not None and _is_late(rule.late_after, payload, self._clock()):
            flags.append("late")
            applied.append(rule.id)
        decisions = tuple(self._for_recipient(rule, agency, sharing, payload, tuple(applied)) for agency in recipients)
        if not any(d.share for d in decisions):
            raise NotPermitted(f"no recipient may receive {mtype.name} from a {sender.kind} agency",
                               field="/to", rule=rule.id)
        return Decision(decisions, tuple(applied), tuple(flags), rule.deadline, rule.id if rule.deadline else None)

    def _lawful_basis(self, rule: Rule, sender: Agency, mtype: MessageType, sharing: Mapping[str, Any]) -> list[str]:
        police_part3 = sender.kind == "police" and "lawEnforcementBasis" in sharing
        basis = sharing.get("lawfulBasis")
        if basis is None and not police_part3:
            raise NoLawfulBasis("a UK GDPR Art 6 basis (or, for police, a DPA 2018 Part 3 basis) is required",
                                field="/sharing/lawfulBasis", rule="basis.present")
        applied = ["basis.present"]
        if basis is not None:
            if basis in self._restricted and sender.kind in self.rulebook.public_authorities:
                raise NoLawfulBasis("a public authority may not rely on (recognised) legitimate interests",
                                    field="/sharing/lawfulBasis", rule="basis.public-authority")
            if rule.lawful_bases and basis not in rule.lawful_bases:
                raise NoLawfulBasis(f"this basis is not one the agreement accepts for {rule.type}",
                                    field="/sharing/lawfulBasis", rule=rule.id)
            applied.append("basis.public-authority")
        if sender.kind == "police" and mtype.criminal_offence:
            if not police_part3:
                raise NoLawfulBasis("police sharing criminal offence data need a DPA 2018 Sch 8 condition",
                                    field="/sharing/lawEnforcementBasis", rule="basis.law-enforcement")
            applied.append("basis.law-enforcement")
        if mtype.special_category and not police_part3:
            if "specialCategoryCondition" not in sharing:
                raise NoLawfulBasis("special category data need an Art 9 condition",
                                    field="/sharing/specialCategoryCondition", rule="basis.special-category")
            applied.append("basis.special-category")
        if rule.gateways and not set(sharing.get("statutoryGateways", ())) & rule.gateways:
            raise NoLawfulBasis("a statutory gateway for this share is required",
                                field="/sharing/statutoryGateways", rule=rule.id)
        return applied

    def _consent(self, sharing: Mapping[str, Any], flags: list[str]) -> list[str]:
        emergency = sharing.get("urgency") == "EMERGENCY"
        applied = []
        status = sharing.get("consentStatus")
        if status in WITHOUT_CONSENT:
            applied.append("consent.reason")
            if "nonConsentReason" not in sharing:
                if not emergency:
                    raise NoLawfulBasis("sharing without consent needs a recorded reason",
                                        field="/sharing/nonConsentReason", rule="consent.reason")
                flags.append("emergency-without-consent-reason")
                applied.append("urgent.never-held")
            if status == "REFUSED_OVERRIDDEN":
                flags.append("consent-overridden")
                applied.append("consent.override-review")
            elif status == "NOT_SOUGHT":
                flags.append("shared-without-consent")
        if "subjectInformed" not in sharing:
            if not emergency:
                raise NoLawfulBasis("whether the family was informed, or why not, must be recorded",
                                    field="/sharing/subjectInformed", rule="transparency.informed")
            flags.append("emergency-family-informed-unrecorded")
            applied.append("urgent.never-held")
        applied.append("transparency.informed")
        return applied

    def _for_recipient(self, rule: Rule, agency: Agency, sharing: Mapping[str, Any], payload: Mapping[str, Any],
                       applied: tuple[str, ...]) -> RecipientDecision:
        if agency.kind not in rule.fields:
            return RecipientDecision(agency.id, False, (rule.id,), code=NotPermitted.code,
                                     reason=f"{rule.type} may not be sent to a {agency.kind} agency")
        allowed = rule.fields[agency.kind]
        keep = set(payload) if allowed is None else set(payload) & set(allowed)
        rules = list(applied)
        for identity, protection in rule.protect.items():
            if agency.kind in protection.from_kinds and _is_protected(identity, sharing, payload):
                keep -= set(protection.fields)
                rules.append("identity.protect")
        withheld = tuple(sorted(set(payload) - keep))
        fields = None if not withheld else tuple(sorted(keep))
        return RecipientDecision(agency.id, True, tuple(dict.fromkeys(rules)), fields=fields, withheld=withheld)


def _is_late(late: LateAfter, payload: Mapping[str, Any], now: float) -> bool:
    value = payload.get(late.field)
    if not isinstance(value, str):
        return False
    try:
        start = dt.datetime.fromisoformat(value).replace(tzinfo=LONDON)
    except ValueError:
        return False
    return now > add_working_days(start, late.working_days).timestamp()


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
               sharing: Mapping[str, Any], payload: Mapping[str, Any]) -> Decision:
        return self.current.decide(sender, recipients, mtype, sharing, payload)
