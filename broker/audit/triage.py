"""The review queue's triage: which audit records an IG officer must read, in what order, and why.

Every share without consent is flagged, and in a partnership that is thousands a week, most of
them routine and lawful (information sharing advice 2024, golden rule 3). The rulebook's
``triage`` section (``broker/policy/rulebook.yaml``) names the reasons that put a message in the
queue and their priority; routine shares without consent go to a random sample instead. The
sample is reproducible: a record is sampled when the SHA-256 of its id and the time the broker
received the message (``<id>|<at>``), read as a fraction of 2^256, is below the rate, so an
auditor can recompute it from the log (:func:`sample_point`) and see that nobody chose the sample
by hand; the time, which the sender cannot fix in advance, keeps a sender from choosing message
ids that escape it.

The triage is derived when the index takes a record in (:mod:`broker.audit.tables`), from the
record, the records of the same message in its block, the registry's agency kinds, and what was
shared before (for the rare-recipient test), so rebuilding the index from the stream rebuilds
the same queue. When the triage settings or the registry change, the index derives the queue
again from its records at its next start (:func:`broker.audit.tables.rederive_step`), keeping every
review outcome; a rulebook or registry reloaded while running applies to the queue from then.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from broker.errors import ConfigError

REVIEW_FLAGS: Final = {
    "shared-without-consent": "Shared without consent",
    "consent-overridden": "Consent overridden",
    "emergency-without-consent-reason": "Emergency share, no consent reason",
    "emergency-family-informed-unrecorded": "Emergency share, family-informed status not recorded",
    "consent-as-basis": "Consent used as the basis by a public authority",
    "without-consent-condition-with-consent": "Without-consent safeguarding condition claimed with consent given",
    "emergency-consent-unrecorded": "Emergency share, consent not recorded",
    "emergency-consent-contradiction": "Emergency share, consent record contradicts itself",
    "advice-sought": "Advice sought before sharing",
    "late": "Sent after the sender's statutory clock ran out",
    "clock-unjudged": "Sent without the date the sender's statutory clock starts from",
    "recipient-missing": "A recipient the law requires was not addressed",
    "recipient-unreachable": "An addressed recipient could not receive it: its keys expired unrotated",
    "overdue": "Reply overdue",
}
REVIEW_OUTCOMES: Final = {
    "proportionate": "Lawful, necessary and proportionate: no action",
    "follow-up": "Follow up with the agency (practice or recording)",
    "not-proportionate": "Not proportionate: escalate to the Data Protection Officer",
    "breach": "Personal data breach: report under the breach procedure",
}

PRIORITIES: Final = ("high", "medium", "low")
SAMPLE: Final = "sample"
RANKS: Final = {**{p: i for i, p in enumerate(PRIORITIES, 1)}, SAMPLE: len(PRIORITIES) + 1}

# What the index adds to the broker's own flags, from the record and its message's other records.
DERIVED_REASONS: Final = {
    "emergency": "Emergency share",
    "protected-identity": "An identity was protected from a recipient",
    "rare-recipient": "Shared with a kind of recipient seldom sent this type",
    "sensitive-to-non-partner": "Special category or criminal offence data to an agency that is not a "
                                "safeguarding partner",
    SAMPLE: "Random sample of routine shares without consent",
}
NO_PERSONAL_DATA: Final = "NOT_APPLICABLE"  # the consent status of a message that carries none
_SENSITIVE_FIELDS: Final = ("specialCategoryCondition", "criminalOffenceCondition", "lawEnforcementBasis")


@dataclass(frozen=True, slots=True)
class AgencyFacts:
    """What the triage needs of a registry entry."""

    kind: str
    partner: bool  # a safeguarding partner (LA, ICB, police force) rather than a relevant agency


@dataclass(frozen=True, slots=True)
class Triage:
    """The rulebook's ``triage`` section, with the registry facts it reads."""

    priorities: Mapping[str, str] = field(default_factory=dict)  # reason -> one of PRIORITIES
    sample_rate: float = 0.05
    sampled: frozenset[str] = frozenset({"shared-without-consent"})
    rare_below: float = 0.05  # a recipient kind is rare below this share of the type's past deliveries
    rare_after: int = 20  # ... once the type has been delivered this many times
    agencies: Mapping[str, AgencyFacts] = field(default_factory=dict)

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None,
                     agencies: Mapping[str, AgencyFacts] | None = None) -> Triage:
        """From the rulebook's (schema-checked) ``triage`` section; without one, every reason the
        broker flags is high priority but sharing without consent, which is sampled at 5 %."""
        agencies = dict(agencies or {})
        if not section:
            return cls(agencies=agencies)
        known = {*REVIEW_FLAGS, *DERIVED_REASONS}
        unknown = sorted({*section.get("reasons", {}), *section.get("sample", {}).get("reasons", ())} - known)
        if unknown:
            raise ConfigError(f"the rulebook's triage names reasons the review queue does not know: "
                              f"{', '.join(unknown)}")
        rare = section.get("rareRecipient", {})
        sample = section.get("sample", {})
        return cls(priorities={reason: spec["priority"] for reason, spec in section.get("reasons", {}).items()},
                   sample_rate=float(sample.get("rate", 0.05)),
                   sampled=frozenset(sample.get("reasons", ("shared-without-consent",))),
                   rare_below=float(rare.get("below", 0.05)), rare_after=int(rare.get("after", 20)),
                   agencies=agencies)

    def priority_of(self, reason: str) -> str | None:
        if self.priorities:
            return self.priorities.get(reason)
        return None if reason in self.sampled or reason == SAMPLE else PRIORITIES[0]

    def unqueued(self) -> tuple[str, ...]:
        """The broker's flags this triage neither ranks nor samples: a message raising only those
        never reaches the queue (a partnership's own rulebook, written before the flag existed)."""
        return tuple(f for f in REVIEW_FLAGS if self.priority_of(f) is None and f not in self.sampled)

    def digest(self) -> str:
        """What the queue was derived with: when it changes, the queue is derived again."""
        return hashlib.sha256(orjson.dumps({
            "priorities": dict(sorted(self.priorities.items())), "rate": self.sample_rate,
            "sampled": sorted(self.sampled), "rare": [self.rare_below, self.rare_after],
            "agencies": {k: [v.kind, v.partner] for k, v in sorted(self.agencies.items())},
        })).hexdigest()


def sample_point(record_id: str, at: str) -> float:
    """Where a record falls in [0, 1): SHA-256 of ``<id>|<at>`` over 2^256. Sampled when below the rate."""
    return int.from_bytes(hashlib.sha256(f"{record_id}|{at}".encode()).digest(), "big") / 2**256


@dataclass(frozen=True, slots=True)
class Verdict:
    priority: str
    reasons: tuple[str, ...]  # the reasons that put it in the queue first, then the broker's other flags
    point: float | None = None  # the sample point, for a sampled item


def judge(conn: sqlite3.Connection, triage: Triage, received: Mapping[str, Any],
          siblings: Sequence[Mapping[str, Any]]) -> Verdict | None:
    """The queue entry for a ``received`` record (None: not for review). ``siblings`` are the
    other records of its message in the same block: the per-recipient decisions. Counts what it
    saw as shared, for the next rare-recipient test."""
    flags = [str(f) for f in received.get("flags") or ()]
    sharing = received.get("sharing") if isinstance(received.get("sharing"), Mapping) else {}
    assert isinstance(sharing, Mapping)
    derived: list[str] = []
    if sharing.get("urgency") == "EMERGENCY":
        derived.append("emergency")
    # a receipt, a rejection or an overdue notice carries no personal data: no recipient of it is unusual
    shared = [r for r in siblings if r.get("event") == "shared"] if sharing.get("consentStatus") != NO_PERSONAL_DATA \
        else []
    if sharing.get("protectedIdentities") or any("identity.protect" in (r.get("rules") or ()) for r in shared):
        derived.append("protected-identity")
    facts = [triage.agencies.get(str(r.get("recipient"))) for r in shared]
    # an agency the registry did not know when the index started is not taken for a partner
    if any(sharing.get(f) for f in _SENSITIVE_FIELDS) and any(f is None or not f.partner for f in facts):
        derived.append("sensitive-to-non-partner")
    if _rare(conn, triage, str(received.get("type")), [f.kind if f else "unknown" for f in facts]):
        derived.append("rare-recipient")
    reasons = [*derived, *flags]
    ranked = sorted((RANKS[p], r) for r in reasons if (p := triage.priority_of(r)) in RANKS)
    if ranked:
        top = [r for _, r in ranked]
        return Verdict(PRIORITIES[ranked[0][0] - 1], tuple(dict.fromkeys([*top, *reasons])))
    if any(r in triage.sampled for r in reasons):
        point = sample_point(str(received["id"]), str(received.get("at", "")))
        if point < triage.sample_rate:
            return Verdict(SAMPLE, (SAMPLE, *reasons), point)
    return None


def _rare(conn: sqlite3.Connection, triage: Triage, type_name: str, kinds: Iterable[str]) -> bool:
    """Whether any of ``kinds`` has had under ``rare_below`` of the type's deliveries so far (once
    there were ``rare_after``); then counts these deliveries."""
    kinds = list(kinds)
    if not kinds:
        return False
    seen = dict(conn.execute("SELECT kind, n FROM triage_seen WHERE type = ?", (type_name,)).fetchall())
    total = sum(seen.values())
    rare = total >= triage.rare_after and any(seen.get(k, 0) < triage.rare_below * total for k in kinds)
    for kind in kinds:
        conn.execute("INSERT INTO triage_seen VALUES (?, ?, 1) ON CONFLICT(type, kind) DO UPDATE SET n = n + 1",
                     (type_name, kind))
    return rare


def by_message(records: Sequence[Mapping[str, Any]]) -> dict[Any, list[Mapping[str, Any]]]:
    """A block's records grouped by the message they are about (a message's records share a block)."""
    out: dict[Any, list[Mapping[str, Any]]] = {}
    for record in records:
        out.setdefault(record.get("message"), []).append(record)
    return out
