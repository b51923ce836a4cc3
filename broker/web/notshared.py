"""Why a practitioner decided not to share (golden rule 7): the reason codes of
``schemas/decision-not-to-share.v1.json`` and the words the API and the IG pages show for them.

The audit record of a decision not to share keeps the code (``notSharedReason``) and the rule;
a code is not personal data. The practitioner's own words (``reasons``) stay in the message and
are never recorded or shown.
"""

from __future__ import annotations

from typing import Final

from broker.web.vocabulary import NOT_SHARED_REASONS

# One label per code of the schema's ``reason`` enum (a test holds the two together).
_WORDS: Final = {
    "NOT_NECESSARY": "Not necessary",
    "NOT_PROPORTIONATE": "Not proportionate",
    "NO_LAWFUL_BASIS": "No lawful basis",
    "CONSENT_REFUSED_NO_OVERRIDE": "Consent refused, not overridden",
    "RISK_TO_CHILD_IF_SHARED": "Sharing would put the child at risk",
    "ALREADY_KNOWN_TO_RECIPIENT": "Already known to the recipient",
    "ADVISED_NOT_TO_SHARE": "Advised not to share",
}


def _plain(code: str) -> str:
    return code.replace("_", " ").capitalize()


# code -> label, for every code of the schema (a code the labels miss reads as plain words)
LABELS: Final[dict[str, str]] = {code: _WORDS.get(code) or _plain(code) for code in NOT_SHARED_REASONS}


def label(code: object) -> str:
    """The label of a reason code; an unknown code (a later schema's) as plain words."""
    if not isinstance(code, str) or not code:
        return ""
    return LABELS.get(code) or _plain(code)
