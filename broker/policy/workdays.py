"""Statutory timescales on the England and Wales working-day calendar.

Bank holidays come from the ``holidays`` package (``GB``, subdivision ``ENG``: England and
Wales share their bank holidays), never from a hand-written list. "Within N working days"
means by the end of the Nth working day after the day received (Europe/London); the day a
message arrives never counts, whether or not it is a working day.
"""

from __future__ import annotations

import calendar
import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

LONDON = ZoneInfo("Europe/London")


@lru_cache(maxsize=64)
def _bank_holidays(year: int) -> frozenset[dt.date]:
    return frozenset(holidays.country_holidays("GB", subdiv="ENG", years=year))


def is_working_day(day: dt.date) -> bool:
    return day.weekday() < 5 and day not in _bank_holidays(day.year)


def next_working_day(day: dt.date) -> dt.date:
    day += dt.timedelta(days=1)
    while not is_working_day(day):
        day += dt.timedelta(days=1)
    return day


def add_working_days(received: dt.datetime, days: int) -> dt.datetime:
    """The end (23:59:59 London time) of the ``days``-th working day after ``received``."""
    return dt.datetime.combine(_working_days_after(received.astimezone(LONDON).date(), days),
                               dt.time(23, 59, 59), LONDON)


@lru_cache(maxsize=4096)
def _working_days_after(day: dt.date, days: int) -> dt.date:
    """Kept: every message received on one day counts from it, with the few clocks a rulebook has
    (the walk through the calendar was a tenth of a referral's policy time)."""
    for _ in range(max(days, 1)):
        day = next_working_day(day)
    return day


def next_school_day_start(received: dt.datetime, start: dt.time = dt.time(8, 30)) -> dt.datetime:
    """Operation Encompass: before the start of the next school day. A school day is taken to be a
    working day; school holidays are not known here, so the clock runs through them (the scheme
    also expects notices in the holidays)."""
    local = received.astimezone(LONDON)
    day = local.date()
    if not (is_working_day(day) and local.time() < start):
        day = next_working_day(day)
    return dt.datetime.combine(day, start, LONDON)


def add_working_hours(received: dt.datetime, hours: float, *, opens: dt.time = dt.time(9),
                      closes: dt.time = dt.time(17)) -> dt.datetime:
    """``hours`` of working time (``opens``–``closes`` London time on working days) after ``received``.
    Local MASH timescales (RAG ratings) are counted this way."""
    local = received.astimezone(LONDON)
    day, now = local.date(), local.time()
    if not is_working_day(day) or now >= closes:
        day, now = next_working_day(day), opens
    elif now < opens:
        now = opens
    remaining = dt.timedelta(hours=hours)
    while True:
        start = dt.datetime.combine(day, now, LONDON)
        end = dt.datetime.combine(day, closes, LONDON)
        if start + remaining <= end:
            return start + remaining
        remaining -= end - start
        day, now = next_working_day(day), opens


def add_months(start: dt.datetime, months: int) -> dt.datetime:
    """The same day ``months`` calendar months on (the month's last day where it is shorter: 31 Aug
    plus 6 months is 28 or 29 Feb), as a review "within 3 months" is counted."""
    month0 = start.month - 1 + months
    year, month = start.year + month0 // 12, month0 % 12 + 1
    return start.replace(year=year, month=month, day=min(start.day, calendar.monthrange(year, month)[1]))


def due_after(start: dt.datetime, *, working_days: int | None = None, school_day_start: str | None = None,
              clock_hours: int | None = None, months: int | None = None) -> dt.datetime | None:
    """When a clock that started at ``start`` runs out: by the end of the ``working_days``-th
    working day after it, at the start (``"HH:MM"``) of the next school day, ``clock_hours`` hours
    later (nights and weekends count), or ``months`` calendar months later. None if none is given."""
    if working_days is not None:
        return add_working_days(start, working_days)
    if clock_hours is not None:
        return start + dt.timedelta(hours=clock_hours)
    if months is not None:
        return add_months(start, months)
    if school_day_start is not None:
        hours, minutes = (int(x) for x in school_day_start.split(":"))
        return next_school_day_start(start, dt.time(hours, minutes))
    return None


def parse_date(value: object) -> dt.datetime | None:
    """A date or date-time from a payload (a date, or a naive time, is London time); None if it is
    not one."""
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=LONDON)
