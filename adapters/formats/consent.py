"""Consent and transparency as facts of each case: whether consent was given, refused and
overridden, or not sought (and why not), and whether the family was informed (and why not).

They come from the record the agency system sends — a police PPN, a case event, a FHIR
resource, a canonical message's ``sharing`` — never from the adapter's configuration, which
holds only what is agency-wide (purpose, lawful basis and conditions, gateways, guidance,
vocabulary, who decides by default). A record that does not say, or that shares without
consent and gives no reason, is refused as ``unmappable`` naming the field and never a value,
before anything is sent. The broker applies the same law again (``consent.*`` and
``transparency.informed`` in the rulebook); the adapter refuses earlier, where the agency
system can still put the record right.

An emergency is the exception: a record that says it is one (a PPN with
``immediateProtectionNeeded``, a case event or canonical message with urgency ``EMERGENCY``, a
FHIR request with priority ``stat``) is never held back for want of these facts. What it does not
say is left out (``consentStatus`` says ``NOT_APPLICABLE``, the one way a sharing block can leave
consent unrecorded), and the broker shares it and flags it ``emergency-consent-unrecorded``,
``emergency-without-consent-reason`` or ``emergency-family-informed-unrecorded`` for IG review.
A code the format does not have, or facts that contradict each other, are refused all the same.

Native records (police, local authority) speak these codes; FHIR and canonical messages speak
the vocabulary's own (``schemas/vocabulary.v2.json``):

=========================  ===================================  ================================
native field               native code                          sharing block
=========================  ===================================  ================================
``consent``                ``given``                            ``consentStatus`` GIVEN
                           ``refused-overridden``               REFUSED_OVERRIDDEN
                           ``not-sought``                       NOT_SOUGHT
``withoutConsentReason``   ``cannot-be-given``                  ``nonConsentReason`` CANNOT_BE_GIVEN
(unless consent given)     ``cannot-reasonably-obtain``         CANNOT_REASONABLY_OBTAIN
                           ``would-prejudice-protection``       WOULD_PREJUDICE_PROTECTION
                           ``would-increase-risk-of-harm``      WOULD_INCREASE_RISK_OF_HARM
                           ``would-prejudice-investigation``    WOULD_PREJUDICE_INVESTIGATION
``familyInformed``         ``yes``                              ``subjectInformed`` INFORMED
                           ``no-unsafe``                        NOT_INFORMED_UNSAFE
                           ``no-investigation``                 NOT_INFORMED_PREJUDICE_INVESTIGATION
                           ``later``                            TO_BE_INFORMED_LATER
=========================  ===================================  ================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, Final

import orjson

from adapters.formats.mapping import Unmappable

# The sharing block's members that are facts of the case: never adapter settings.
CASE_FACTS: Final = ("consentStatus", "nonConsentReason", "subjectInformed")
# consentStatus of an emergency whose record does not say (the block must carry one; the broker
# shares an emergency that says NOT_APPLICABLE and flags it emergency-consent-unrecorded).
UNRECORDED: Final = "NOT_APPLICABLE"
WITHOUT_CONSENT: Final = frozenset({"NOT_SOUGHT", "REFUSED_OVERRIDDEN"})

CONSENT: Final = {"given": "GIVEN", "refused-overridden": "REFUSED_OVERRIDDEN", "not-sought": "NOT_SOUGHT"}
REASON: Final = {
    "cannot-be-given": "CANNOT_BE_GIVEN", "cannot-reasonably-obtain": "CANNOT_REASONABLY_OBTAIN",
    "would-prejudice-protection": "WOULD_PREJUDICE_PROTECTION",
    "would-increase-risk-of-harm": "WOULD_INCREASE_RISK_OF_HARM",
    "would-prejudice-investigation": "WOULD_PREJUDICE_INVESTIGATION",
}
INFORMED: Final = {"yes": "INFORMED", "no-unsafe": "NOT_INFORMED_UNSAFE",
                   "no-investigation": "NOT_INFORMED_PREJUDICE_INVESTIGATION", "later": "TO_BE_INFORMED_LATER"}
# The native field names, in the order they are checked.
NATIVE_FIELDS: Final = ("consent", "withoutConsentReason", "familyInformed")
_VOCABULARY: Final = orjson.loads((resources.files("schemas") / "vocabulary.v2.json").read_bytes())["lists"]
# Each reason's words, for a payload's free-text field (the vocabulary's label: no personal data).
REASON_LABEL: Final = {native: entry["label"] for entry in _VOCABULARY["nonConsentReason"]
                       for native, code in REASON.items() if entry["code"] == code}
# The basis and condition codes that are consent (Art 6(1)(a), Art 9(2)(a), Sch 1 Pt 3, s35).
CONSENT_BASED: Final = frozenset(e["code"] for entries in _VOCABULARY.values() for e in entries
                                 if e.get("consentBased"))
_CONDITIONS: Final = ("lawfulBasis", "specialCategoryCondition", "criminalOffenceCondition", "lawEnforcementBasis")


def _one_of(codes: Mapping[str, str]) -> str:
    return ", ".join(codes)


def is_emergency(said: Mapping[str, Any] | None) -> bool:
    """Whether what a record says about its share (its sharing overlay) makes it an emergency."""
    return said is not None and said.get("urgency") == "EMERGENCY"


def _coded(value: Any, codes: Mapping[str, str], name: str, where: str, rule: str, missing: str, *,
           emergency: bool) -> str | None:
    """The vocabulary code for one native fact (None when an emergency record leaves it out); a
    missing fact, or one that is not one of ``codes`` (whatever its JSON type), is refused at ``where``."""
    if value is None:
        if emergency:
            return None
        raise Unmappable(missing, field=where, rule=rule)
    if not isinstance(value, str) or value not in codes:
        raise Unmappable(f"{name} is one of {_one_of(codes)}", field=where, rule=rule)
    return codes[value]


def native(values: Mapping[str, Any], field: Callable[[str], str], *, emergency: bool = False) -> dict[str, str]:
    """The sharing block's case facts from a native record's ``consent``, ``withoutConsentReason``
    and ``familyInformed``; ``field(name)`` says where a field is (a JSON pointer, or a CSV row
    and column) for the refusal. In an ``emergency`` a fact the record leaves out is left out."""
    status = _coded(values.get("consent"), CONSENT, "consent", field("consent"), "consent.recorded",
                    "the record does not say whether consent to share was given, refused or not sought",
                    emergency=emergency)
    facts = {"consentStatus": status or UNRECORDED}
    reason = values.get("withoutConsentReason")
    if status == "GIVEN":
        if reason is not None:
            raise Unmappable("consent was given, so there is no reason for sharing without it",
                             field=field("withoutConsentReason"), rule="consent.consistent")
    else:
        code = _coded(reason, REASON, "withoutConsentReason", field("withoutConsentReason"), "consent.reason",
                      "sharing without consent needs the reason it was not sought or was overridden",
                      emergency=emergency)
        if code is not None:
            facts["nonConsentReason"] = code
    informed = _coded(values.get("familyInformed"), INFORMED, "familyInformed", field("familyInformed"),
                      "transparency.informed", "the record does not say whether the family was informed, or why not",
                      emergency=emergency)
    if informed is not None:
        facts["subjectInformed"] = informed
    return facts


def require(sharing: Mapping[str, Any], where: str, *, emergency: bool = False) -> None:
    """Refuse a sharing block (at ``where``, a JSON pointer) for a message with personal data that
    does not carry the case's facts: consent given, refused or not sought (not "not applicable"),
    the reason when shared without it, and whether the family was informed; an ``emergency`` may
    leave them out (or say ``NOT_APPLICABLE``). The codes themselves are checked against the
    sharing block's schema."""
    status = sharing.get("consentStatus")
    if status is None and not emergency:
        raise Unmappable("the sharing block does not say whether consent was given, refused or not sought",
                         field=f"{where}/consentStatus", rule="consent.recorded")
    if status == UNRECORDED and not emergency:
        raise Unmappable("consent is applicable to a message carrying personal data: say whether it was given, "
                         "refused or not sought", field=f"{where}/consentStatus", rule="consent.not-applicable")
    if status in WITHOUT_CONSENT and "nonConsentReason" not in sharing and not emergency:
        raise Unmappable("sharing without consent needs a recorded reason (nonConsentReason)",
                         field=f"{where}/nonConsentReason", rule="consent.reason")
    if status == "GIVEN" and "nonConsentReason" in sharing:
        raise Unmappable("consent was given, so there is no reason for sharing without it",
                         field=f"{where}/nonConsentReason", rule="consent.consistent")
    if "subjectInformed" not in sharing and not emergency:
        raise Unmappable("the sharing block does not say whether the family was informed, or why not",
                         field=f"{where}/subjectInformed", rule="transparency.informed")
    basis_agrees(sharing, where)


def basis_agrees(sharing: Mapping[str, Any], where: str) -> None:
    """Refuse a block whose basis or condition is consent when the case's consent was not given
    (the broker would refuse that message after the others from the same record had gone)."""
    for name in _CONDITIONS:
        if sharing.get(name) in CONSENT_BASED and sharing.get("consentStatus") != "GIVEN":
            raise Unmappable(f"{name} is consent, so the record must say consent was given",
                             field=f"{where}/consentStatus", rule="consent.basis-needs-consent")


def agency_wide(block: Mapping[str, Any]) -> dict[str, Any]:
    """A configured sharing block without the case's facts (the configuration check refuses them;
    this keeps a block built in code from supplying them either)."""
    return {k: v for k, v in block.items() if k not in CASE_FACTS}
