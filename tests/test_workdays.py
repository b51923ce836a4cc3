"""Deadlines across weekends and England and Wales bank holidays."""

from __future__ import annotations

import datetime as dt

import pytest

from broker.policy.workdays import LONDON, add_working_days, is_working_day, next_school_day_start


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=LONDON)


@pytest.mark.parametrize(("received", "days", "due"), [
    ("2026-11-18 10:00", 1, "2026-11-19"),   # Wednesday -> Thursday
    ("2026-11-20 16:30", 1, "2026-11-23"),   # Friday -> Monday
    ("2026-11-21 09:00", 1, "2026-11-23"),   # Saturday -> Monday
    ("2026-12-24 12:00", 1, "2026-12-29"),   # Christmas Eve -> past Christmas, Boxing Day (observed)
    ("2027-03-25 12:00", 1, "2027-03-30"),   # Thursday before Good Friday and Easter Monday
    ("2026-08-28 09:00", 1, "2026-09-01"),   # Friday before the late summer bank holiday
    ("2026-11-16 09:00", 5, "2026-11-23"),   # serious incident notification: 5 working days
    ("2026-12-21 09:00", 5, "2026-12-30"),   # ... across Christmas and Boxing Day (observed)
    ("2026-12-29 09:00", 5, "2027-01-06"),   # ... across New Year
    ("2026-11-02 09:00", 15, "2026-11-23"),  # rapid review: 15 working days
])
def test_working_day_deadlines(received: str, days: int, due: str) -> None:
    deadline = add_working_days(_at(received), days)
    assert deadline.date().isoformat() == due
    assert deadline.time() == dt.time(23, 59, 59)


def test_bank_holidays_come_from_the_calendar() -> None:
    assert not is_working_day(dt.date(2026, 12, 28))  # Boxing Day observed
    assert not is_working_day(dt.date(2026, 5, 25))   # Spring bank holiday
    assert is_working_day(dt.date(2026, 11, 23))


@pytest.mark.parametrize(("received", "due"), [
    ("2026-11-18 23:40", "2026-11-19 08:30"),  # late on a school night
    ("2026-11-19 07:00", "2026-11-19 08:30"),  # early the same morning
    ("2026-11-20 22:00", "2026-11-23 08:30"),  # Friday night -> Monday
    ("2026-12-24 20:00", "2026-12-29 08:30"),  # Christmas
])
def test_operation_encompass_before_the_next_school_day(received: str, due: str) -> None:
    assert next_school_day_start(_at(received)) == _at(due)


@pytest.mark.parametrize(("received", "hours", "due"), [
    ("2026-11-18 10:00", 4, "2026-11-18 14:00"),   # red: within the day
    ("2026-11-18 15:00", 4, "2026-11-19 11:00"),   # carries over to the next morning
    ("2026-11-20 16:00", 4, "2026-11-23 12:00"),   # Friday afternoon -> Monday
    ("2026-11-21 10:00", 4, "2026-11-23 13:00"),   # Saturday: counting starts Monday 09:00
    ("2026-11-18 07:00", 24, "2026-11-20 17:00"),  # amber: three working days of eight hours
    ("2026-12-24 16:00", 4, "2026-12-29 12:00"),   # over Christmas
])
def test_working_hours_for_local_rag_timescales(received: str, hours: float, due: str) -> None:
    from broker.policy.workdays import add_working_hours

    assert add_working_hours(_at(received), hours) == _at(due)


@pytest.mark.parametrize(("rating", "due"), [
    ("red", "2026-11-18 14:00"), ("amber", "2026-11-19 23:59:59"), (None, "2026-11-19 23:59:59"),
])
def test_referral_due_by_the_earlier_of_statute_and_local_rag(rating: str | None, due: str) -> None:
    from broker.policy import rulebook as rulebooks
    from broker.wire.catalogue import Catalogue

    rule = rulebooks.load(rulebooks.DEFAULT_RULEBOOK, Catalogue()).rule_for("referral", "health")
    assert rule is not None and rule.deadline is not None
    payload = {"risk": {"ragRating": rating}} if rating else {}
    got = rule.deadline.due(_at("2026-11-18 10:00").timestamp(), payload)
    assert got == _at(due).timestamp()
