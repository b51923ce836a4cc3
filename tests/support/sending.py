"""Messages sent through a running broker on an agency's behalf, as several test modules need them."""

from __future__ import annotations

from typing import Any

from tests.conftest import ClientFactory
from tests.helpers import drain, example, referral, sharing

NHS = "9990001235"  # the referral example's child
NOT_SHARED_WORDS = example("decision-not-to-share.example.json")["reasons"]  # the practitioner's own words


async def send_referrals(agency: ClientFactory, *, consent: str = "NOT_SOUGHT", count: int = 1,
                         child: dict[str, Any] | None = None) -> list[str]:
    police, la = await agency("police-met"), await agency("la-camden")
    ids = []
    for _ in range(count):
        share = sharing() | {"consentStatus": consent}
        if consent == "GIVEN":  # with consent given, the consent conditions (the safeguarding ones are without it)
            share = {k: v for k, v in share.items() if k != "nonConsentReason"} | {
                "lawEnforcementBasis": "DPA_S35_CONSENT", "specialCategoryCondition": "UKGDPR_9_2_A",
                "criminalOffenceCondition": "DPA_SCH1_CONSENT"}
        payload = referral()
        if child:
            payload["child"] |= child
        jti = await police.send(typ="referral", to=["la-camden"], payload=payload, sharing=share)
        await police.wait_outcome(jti, timeout=10)
        ids.append(jti)
    await drain(la, want=count)
    return ids


async def send_not_to_share(agency: ClientFactory, reason: str = "NOT_PROPORTIONATE") -> str:
    """A practitioner's decision not to share (health, about a request from the LA), recorded by the broker."""
    health = await agency("health-camden")
    jti = await health.send(typ="decision-not-to-share", to=["la-camden"],
                            payload=example("decision-not-to-share.example.json") | {"reason": reason},
                            sharing=sharing("decision-not-to-share"))
    outcome = await health.wait_outcome(jti, timeout=10)
    assert outcome.payload["status"] == "recorded", outcome.payload
    return jti
