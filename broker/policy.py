"""Step 4, the decision: may this sender share this message with each recipient, on what basis?

This is the seam where the full information-sharing rulebook plugs in: anything with a
``decide`` method of the :class:`Policy` shape will do. :class:`BaselinePolicy` applies the
first checks of the wire contract: routing by agency kind and the presence of a lawful
basis. It refuses the whole message when no recipient may receive it, and narrows ``to``
(never widens it) when only some may.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from broker.catalogue import MessageType
from broker.errors import NoLawfulBasis, NotPermitted
from broker.registry import Agency

PARTNERS: Final = frozenset({"police", "health", "local-authority"})
AGENCIES: Final = PARTNERS | {"school", "voluntary-sector", "probation", "national-panel"}


@dataclass(frozen=True, slots=True)
class Route:
    rule: str
    senders: frozenset[str]
    recipients: frozenset[str]
    citation: str


# Which kinds may send which types to which kinds (Working Together 2023 ch. 2 and 3).
ROUTES: Final[Mapping[str, Route]] = {
    "referral": Route("route.referral", AGENCIES - {"national-panel"}, frozenset({"local-authority"}),
                      "WT2023 ch.2 para 2.4: anyone with concerns refers to LA children's social care"),
    "referral-outcome": Route("route.referral-outcome", frozenset({"local-authority"}), AGENCIES,
                              "WT2023: LA acknowledges and decides within one working day, then tells the referrer"),
    "information-request": Route("route.information-request", PARTNERS, PARTNERS | {"school"},
                                 "CA1989 s47(9)-(11), s27; CA2004 s16E: partners request information of one another"),
    "information-response": Route("route.information-response", AGENCIES, PARTNERS,
                                  "CA1989 s47(9)-(11): duty to assist with enquiries"),
    "receipt": Route("route.receipt", AGENCIES, AGENCIES, "service administration"),
}


@dataclass(frozen=True, slots=True)
class RecipientDecision:
    recipient: str
    share: bool
    rules: tuple[str, ...]
    code: str | None = None
    reason: str | None = None
    fields: tuple[str, ...] | None = None  # payload members passed on; None = all


@dataclass(frozen=True, slots=True)
class Decision:
    recipients: tuple[RecipientDecision, ...]
    rules: tuple[str, ...] = field(default=())

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


class BaselinePolicy:
    """Routing by kind, plus a lawful basis wherever personal data is shared."""

    def decide(self, sender: Agency, recipients: tuple[Agency, ...], mtype: MessageType,
               sharing: Mapping[str, Any], payload: Mapping[str, Any]) -> Decision:
        route = ROUTES.get(mtype.name)
        if route is None or sender.kind not in route.senders:
            raise NotPermitted(f"a {sender.kind} agency may not send {mtype.name} messages",
                               field="/typ", rule=route.rule if route else "route.none")
        rules = [route.rule]
        if mtype.personal_data:
            has_basis = "lawfulBasis" in sharing or (
                sender.kind == "police" and "lawEnforcementBasis" in sharing
            )
            if not has_basis:
                raise NoLawfulBasis("a UK GDPR Art 6 basis (or, for police, a DPA 2018 Part 3 basis) is required",
                                    field="/sharing/lawfulBasis", rule="basis.present")
            rules.append("basis.present")
        decisions = []
        for agency in recipients:
            if agency.kind in route.recipients:
                decisions.append(RecipientDecision(agency.id, True, tuple(rules)))
            else:
                decisions.append(RecipientDecision(
                    agency.id, False, (route.rule,), code=NotPermitted.code,
                    reason=f"{mtype.name} may not be sent to a {agency.kind} agency",
                ))
        if not any(d.share for d in decisions):
            raise NotPermitted(f"no recipient may receive {mtype.name} from a {sender.kind} agency",
                               field="/to", rule=route.rule)
        return Decision(tuple(decisions), tuple(rules))
