"""The review queue's triage (issue 17, part 1) on a real SQLite index: which records become items,
at what priority and with which reasons, from the shipped rulebook's ``triage`` section; the
sample an auditor can recompute from record ids; the rare-recipient count; and the queue derived
again, outcomes kept, when the settings change. The same records through a real broker are in
tests/test_triage_day.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from broker.audit.index import AuditIndex
from broker.audit.query import ReviewQuery
from broker.audit.triage import AgencyFacts, Triage, sample_point
from broker.errors import ConfigError
from broker.policy import rulebook as rulebooks
from broker.wire.catalogue import Catalogue

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent

AGENCIES = {"police-met": AgencyFacts("police", True), "la-camden": AgencyFacts("local-authority", True),
            "health-camden": AgencyFacts("health", True), "school-hillside": AgencyFacts("school", False)}
ROUTINE = {"consentStatus": "NOT_SOUGHT", "nonConsentReason": "WOULD_PREJUDICE_PROTECTION", "urgency": "URGENT",
           "lawfulBasis": "UKGDPR_6_1_E"}


def shipped_triage(agencies: Mapping[str, AgencyFacts] = AGENCIES) -> Triage:
    book = rulebooks.load(rulebooks.DEFAULT_RULEBOOK, Catalogue())
    return Triage.from_section(book.triage, agencies)


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[AuditIndex]:
    idx = AuditIndex(tmp_path / "index.sqlite", triage=shipped_triage())
    await idx.open(stream_created="s1")
    try:
        yield idx
    finally:
        idx.close()


def message(n: int, *, typ: str = "referral", to: tuple[str, ...] = ("la-camden",), flags: tuple[str, ...] = (),
            sharing: Mapping[str, Any] | None = None, rules: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A message's records as the broker writes them: received, then one shared record per recipient."""
    mid = f"m-{n:04d}"
    base = {"message": mid, "type": typ, "sender": "police-met", "sharing": dict(sharing or ROUTINE),
            "at": f"2026-11-29T{10 + n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}.{n * 7 % 1000:03d}Z",
            "instance": "i1"}
    received = base | {"id": f"r-{mid}", "event": "received", "n": 1, "to": list(to)}
    if flags:
        received["flags"] = list(flags)
    return [received, *(base | {"id": f"s-{mid}-{r}", "event": "shared", "recipient": r, "n": 2 + i,
                               "rules": list(rules)} for i, r in enumerate(to))]


async def apply(index: AuditIndex, *blocks: list[dict[str, Any]]) -> None:
    last = await index.last_seq()
    await index.apply([(last + i, records) for i, records in enumerate(blocks, 1)], [], last + len(blocks))


async def queue(index: AuditIndex, state: str = "open", **equals: str) -> list[dict[str, Any]]:
    return (await index.reviews(ReviewQuery(state=state, equals=equals, limit=500))).items


async def test_the_rules_pick_their_items_highest_priority_first(index: AuditIndex) -> None:
    routine = [message(n, flags=("shared-without-consent",)) for n in range(1, 6)]
    await apply(index,
                message(10, flags=("advice-sought", "shared-without-consent")),
                message(11, flags=("consent-overridden",), sharing=ROUTINE | {"consentStatus": "REFUSED_OVERRIDDEN"}),
                message(12, sharing=ROUTINE | {"urgency": "EMERGENCY"}, flags=("shared-without-consent",)),
                message(13, rules=("identity.protect",), flags=("shared-without-consent",)),
                message(14, typ="encompass-notification", to=("school-hillside",),
                        sharing=ROUTINE | {"criminalOffenceCondition": "DPA_SCH1_P18"}),
                message(15, flags=("late",)),
                message(16, flags=("clock-unjudged",)),
                *routine)
    items = await queue(index)
    picked = {i["message"]: (i["priority"], i["reasons"]) for i in items if i["priority"] != "sample"}
    assert picked == {
        "m-0010": ("medium", ["advice-sought", "shared-without-consent"]),
        "m-0011": ("high", ["consent-overridden"]),
        "m-0012": ("high", ["emergency", "shared-without-consent"]),
        "m-0013": ("high", ["protected-identity", "shared-without-consent"]),
        "m-0014": ("medium", ["sensitive-to-non-partner"]),
        "m-0015": ("high", ["late"]),
        "m-0016": ("low", ["clock-unjudged"]),
    }
    ranks = [i["rank"] for i in items]
    assert ranks == sorted(ranks)  # high, then medium, then low, then the sample
    assert [i["message"] for i in items if i["priority"] == "high"] == ["m-0011", "m-0012", "m-0013", "m-0015"]
    assert {i["message"] for i in await queue(index, priority="medium")} == {"m-0010", "m-0014"}
    assert {i["message"] for i in await queue(index, reason="emergency")} == {"m-0012"}
    assert not any(i["message"] in {f"m-{n:04d}" for n in range(1, 6)} and i["priority"] != "sample" for i in items)


async def test_routine_shares_without_consent_are_sampled_reproducibly_from_the_record(index: AuditIndex) -> None:
    blocks = [message(n, flags=("shared-without-consent",)) for n in range(400)]
    await apply(index, *blocks)
    # what an auditor computes from each record's id and time alone, without the broker's code
    expected = {b[0]["message"] for b in blocks
                if int(hashlib.sha256(f"{b[0]['id']}|{b[0]['at']}".encode()).hexdigest(), 16) / 2**256 < 0.05}
    items = await queue(index)
    assert {i["message"] for i in items} == expected
    assert 5 <= len(expected) <= 40  # about 5 % of 400: the sample is neither everything nor nothing
    for item in items:
        assert item["priority"] == "sample" and item["reasons"] == ["sample", "shared-without-consent"]
        assert item["point"] == pytest.approx(sample_point(f"r-{item['message']}", item["at"]))
    consent_given = message(999, sharing=ROUTINE | {"consentStatus": "GIVEN"})
    await apply(index, consent_given)
    assert "m-0999" not in {i["message"] for i in await queue(index)}  # nothing to review, nothing sampled


async def test_a_recipient_kind_rare_for_the_type_is_picked_once_the_type_has_history(index: AuditIndex) -> None:
    early = message(1, to=("health-camden",))  # no history yet: nothing is rare
    usual = [message(n, to=("la-camden",)) for n in range(2, 42)]
    rare = message(50, to=("health-camden",))
    again = message(51, to=("la-camden",))
    receipt = message(52, typ="receipt", to=("health-camden",), sharing={"consentStatus": "NOT_APPLICABLE"})
    unknown = message(53, typ="encompass-notification", to=("school-new",),  # joined after the index started
                      sharing=ROUTINE | {"criminalOffenceCondition": "DPA_SCH1_P18"})
    await apply(index, early, *usual, rare, again, receipt, unknown)
    await apply(index, rare)  # the same block again (a repeat): nothing counted twice
    picked = {i["message"]: i["reasons"] for i in await queue(index)}
    assert picked == {"m-0050": ["rare-recipient"], "m-0053": ["sensitive-to-non-partner"]}


async def test_the_queue_pages_across_priorities_without_losing_or_repeating_an_item(index: AuditIndex) -> None:
    flags = ("consent-overridden", "advice-sought", "clock-unjudged")
    await apply(index, *(message(n, flags=(flags[n % 3],)) for n in range(23)))
    whole = [i["item"] for i in await queue(index)]
    paged: list[str] = []
    cursor = None
    while True:
        page = await index.reviews(ReviewQuery(limit=4, cursor=cursor))
        paged += [i["item"] for i in page.items]
        if page.next is None:
            break
        cursor = page.next
    assert paged == whole and len(whole) == 23


def derived(conn: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
    """What the triage derived: the queue, and the deliveries counted for rare recipients."""
    return (conn.execute("SELECT item, priority, rank, point, reasons FROM reviews ORDER BY item").fetchall(),
            conn.execute("SELECT * FROM triage_seen ORDER BY type, kind").fetchall())


RELOADED = shipped_triage(AGENCIES | {"charity-x": AgencyFacts("charity", False)})  # a registry change


@contextlib.asynccontextmanager
async def reloading(tmp_path: Path) -> AsyncIterator[tuple[AuditIndex, list[list[dict[str, Any]]],
                                                              AuditIndex]]:
    """An index of 60 messages under the shipped triage, about to take :data:`RELOADED` while 30
    more come in: the index, those 30 blocks, and a fresh index of all 90 under RELOADED to compare."""
    blocks = [message(n, to=("la-camden",) if n % 7 else ("health-camden",), flags=("shared-without-consent",))
              for n in range(60)]
    later = [message(n, to=("la-camden", "health-camden"), flags=("advice-sought",)) for n in range(60, 90)]
    live = AuditIndex(tmp_path / "live.sqlite", triage=shipped_triage())
    fresh = AuditIndex(tmp_path / "fresh.sqlite", triage=RELOADED)
    await live.open(stream_created="s1")
    await fresh.open(stream_created="s1")
    try:
        await apply(live, *blocks)
        await apply(fresh, *blocks, *later)
        yield live, later, fresh
    finally:
        live.close()
        fresh.close()


async def test_deriving_again_in_steps_gives_the_queue_indexing_gave(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from broker.audit import tables

    monkeypatch.setattr(tables, "REDERIVE_RECORDS", 7)  # many small transactions
    path = tmp_path / "index.sqlite"
    live = AuditIndex(path, triage=shipped_triage())
    await live.open(stream_created="s1")
    blocks = [message(n, to=("la-camden",) if n % 9 else ("health-camden",),
                      flags=("shared-without-consent",) if n % 4 else ("advice-sought",)) for n in range(120)]
    await apply(live, *blocks)
    before = await live._store.read(derived)
    live.close()
    # a registry change (a new agency) means a new digest: the queue is derived again, the same
    again = AuditIndex(path, triage=RELOADED)
    await again.open(stream_created="s1")
    try:
        assert await again._store.read(derived) == before
        assert await again.meta("triage") == again.triage.digest()
    finally:
        again.close()
    # back to the first settings, and the broker stopped after the first step: the next start resumes
    third = AuditIndex(path, triage=shipped_triage())
    digest = third.triage.digest()
    await third._store.write(lambda c: tables.start_rederive(c, digest))
    stopped_at = await third._store.write(lambda c: tables.rederive_step(c, third.triage, digest, 0))
    assert (await third.meta("triage")) == {"pending": digest, "after": stopped_at, "until": None}
    await third.open(stream_created="s1")
    try:
        assert await third._store.read(derived) == before
    finally:
        third.close()


async def test_blocks_indexed_while_a_reload_derives_the_queue_are_judged_once_under_the_new_triage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload derives the queue again while the follower goes on indexing: each block waits for
    the derivation, so none is judged twice (its deliveries counted twice for rare recipients)."""
    from broker.audit import tables

    monkeypatch.setattr(tables, "REDERIVE_RECORDS", 5)  # many steps, room for a block between two
    async with reloading(tmp_path) as (live, later, fresh):

        async def follow() -> None:  # as the follower does, a block at a time
            for block in later:
                await apply(live, block)

        await asyncio.gather(live.retriage(RELOADED), follow())
        assert await live._store.read(derived) == await fresh._store.read(derived)
        assert not live.deriving and live.derive_failure is None and await live.meta("triage") == RELOADED.digest()


async def test_a_derivation_that_failed_half_way_resumes_without_judging_a_block_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A derivation that meets a bug releases the index: blocks indexed meanwhile are judged as they
    come, under the new triage, and the retry derives only what was indexed before it started."""
    from broker.audit import index as index_module
    from broker.audit import tables

    monkeypatch.setattr(tables, "REDERIVE_RECORDS", 5)
    steps, step = [0], tables.rederive_step

    def fails_once(*args: Any, **kwargs: Any) -> Any:
        steps[0] += 1
        if steps[0] == 3:
            raise RuntimeError("a bug")
        return step(*args, **kwargs)

    monkeypatch.setattr(index_module, "rederive_step", fails_once)
    async with reloading(tmp_path) as (live, later, fresh):
        with pytest.raises(RuntimeError):
            await live.retriage(RELOADED)
        assert live.derive_failure == "RuntimeError" and not live.deriving
        for block in later:  # the follower goes on meanwhile
            await apply(live, block)
        await live.retriage(RELOADED)  # the retry
        assert live.derive_failure is None and await live.meta("triage") == RELOADED.digest()
        assert await live._store.read(derived) == await fresh._store.read(derived)  # each delivery counted once


async def test_changed_settings_derive_the_queue_again_and_keep_the_outcomes(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    first = AuditIndex(path, triage=shipped_triage())
    await first.open(stream_created="s1")
    await apply(first, message(1, flags=("advice-sought",)), message(2, flags=("consent-overridden",)))
    reviewed = {"id": "rv-1", "event": "reviewed", "instance": "i1", "n": 9, "at": "2026-11-29T12:00:00Z",
                "item": "flag:m-0001", "message": "m-0001", "outcome": "breach", "reviewer": "ig-sam",
                "reasons": ["advice-sought"]}
    await apply(first, [reviewed])
    first.close()
    # advice sought no longer picked: its item stays, with its outcome, for the record of who decided what
    book = rulebooks.load(rulebooks.DEFAULT_RULEBOOK, Catalogue())
    section = dict(book.triage) | {"reasons": {k: v for k, v in book.triage["reasons"].items()
                                               if k != "advice-sought"}}
    second = AuditIndex(path, triage=Triage.from_section(section, AGENCIES))
    await second.open(stream_created="s1")
    try:
        assert [i["message"] for i in await queue(second)] == ["m-0002"]
        (done,) = await queue(second, state="escalated")
        assert (done["item"], done["outcome"], done["reviewer"]) == ("flag:m-0001", "breach", "ig-sam")
        assert (done["type"], done["sender"]) == ("referral", "police-met")  # still says what was reviewed
        assert [i["item"] for i in await queue(second, state="done", reviewer="ig-sam")] == ["flag:m-0001"]
    finally:
        second.close()


def test_a_triage_naming_an_unknown_reason_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not know: made-up"):
        Triage.from_section({"reasons": {"made-up": {"priority": "high", "cite": ["x"]}}, "sample": {}})
    # and the rulebook's schema knows the same reasons, so `sgb policy check` and a reload refuse it too
    from broker.web.reviews import REASONS

    schema = json.loads((ROOT / "schemas" / "rulebook.v1.json").read_text())["properties"]["triage"]["properties"]
    assert set(schema["reasons"]["propertyNames"]["enum"]) == set(REASONS) - {"sample"}
    text = rulebooks.DEFAULT_RULEBOOK.read_text().replace("    advice-sought:\n", "    advice-given:\n", 1)
    (tmp_path / "rulebook.yaml").write_text(text)
    with pytest.raises(ConfigError, match="/triage/reasons"):
        rulebooks.load(tmp_path / "rulebook.yaml", Catalogue())


def test_the_shipped_triage_cites_every_reason_and_covers_every_flag() -> None:
    from broker.audit.index import REVIEW_FLAGS

    book = rulebooks.load(rulebooks.DEFAULT_RULEBOOK, Catalogue())
    named = set(book.triage["reasons"]) | set(book.triage["sample"]["reasons"])
    assert set(REVIEW_FLAGS) <= named  # no flag the broker raises is silently dropped from review
    assert all(spec["cite"] for spec in book.triage["reasons"].values())
    assert shipped_triage().unqueued() == ()
    older = dict(book.triage) | {"reasons": {k: v for k, v in book.triage["reasons"].items()
                                             if k != "recipient-unreachable"}}
    assert Triage.from_section(older, AGENCIES).unqueued() == ("recipient-unreachable",)  # said at start


async def test_the_first_outcome_indexed_stands(index: AuditIndex) -> None:
    """Two officers recording an outcome for one item at once: both are in the log, the queue keeps the first."""
    await apply(index, message(1, flags=("consent-overridden",)))

    def review(n: int, outcome: str, reviewer: str) -> dict[str, Any]:
        return {"id": f"rv-{n}", "event": "reviewed", "instance": "i1", "n": 9 + n, "at": f"2026-11-29T12:00:0{n}Z",
                "item": "flag:m-0001", "message": "m-0001", "outcome": outcome, "reviewer": reviewer,
                "reasons": ["consent-overridden"], "priority": "high"}

    await apply(index, [review(1, "breach", "ig-sam"), review(2, "proportionate", "ig-jo")])
    (item,) = await queue(index, state="done")
    assert (item["outcome"], item["reviewer"], item["review_record"], item["priority"]) == (
        "breach", "ig-sam", "rv-1", "high")


async def test_the_queue_filters_by_recipient_lawful_basis_and_consent(index: AuditIndex) -> None:
    both = ("la-camden", "school-hillside")
    police_basis = {k: v for k, v in ROUTINE.items() if k != "lawfulBasis"} | {"lawEnforcementBasis": "DPA_SCH8_P4"}
    overdue = {"id": "o-m-0030", "event": "overdue", "message": "m-0030", "recipient": "la-camden", "n": 1,
               "type": "referral", "sender": "police-met", "at": "2026-12-01T10:00:00.000Z", "instance": "i1"}
    await apply(index,
                message(30, to=both, flags=("advice-sought",)),
                message(31, flags=("consent-overridden",), sharing=ROUTINE | {"consentStatus": "REFUSED_OVERRIDDEN"}),
                message(32, flags=("advice-sought",), sharing=police_basis),
                [overdue])

    async def items(**equals: str) -> set[str]:
        return {i["item"] for i in await queue(index, **equals)}

    # an item about a message matches any recipient it was shared with; one about a recipient, only that one
    assert await items(recipient="school-hillside") == {"flag:m-0030"}
    assert await items(recipient="la-camden") == {"flag:m-0030", "flag:m-0031", "flag:m-0032",
                                                  "overdue:m-0030:la-camden"}
    assert await items(lawfulBasis="DPA_SCH8_P4") == {"flag:m-0032"}
    assert await items(lawfulBasis="UKGDPR_6_1_E") == {"flag:m-0030", "flag:m-0031", "overdue:m-0030:la-camden"}
    assert await items(consentStatus="REFUSED_OVERRIDDEN") == {"flag:m-0031"}
    assert await items(consentStatus="NOT_SOUGHT", recipient="school-hillside") == {"flag:m-0030"}
    assert await index.review_count(ReviewQuery(equals={"consentStatus": "NOT_SOUGHT"})) == 3
