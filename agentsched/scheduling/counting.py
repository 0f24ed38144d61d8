"""How many times a cron fires between two instants, exactly, without walking each one.

A minutely cron down for a year missed 525,600 fire times; walking them one by one
with croniter (~0.1 ms each) is a minute of CPU. `count_fires` counts in work that
grows with the years and clock changes the span covers instead: a cron fires at each
(hour, minute) of its fields on each day its day fields match, so a span of wall time
is whole days times the fire times per day, plus the two partial days at its ends.
Which days match comes from croniter itself (so `L`, `W`, `#` and the day-of-month /
day-of-week rule mean what they mean in `next_fire`), one month at a time; a month's
count depends only on its length, its first weekday and its number, so it is cached.

Wall time and UTC differ by a constant offset between two clock changes, so the span
is cut at each change and each piece counted on the wall clock. The same rules as
`agentsched.scheduling.rules` hold: a wall time skipped by a spring-forward never fires;
one repeated by a fall-back fires once, at its first pass, unless the cron matches every
hour (`both_passes`), which fires in both. Pure logic, no I/O.
"""

from __future__ import annotations

import calendar
import datetime as dt
from bisect import bisect_left
from functools import lru_cache
from itertools import pairwise
from zoneinfo import ZoneInfo

from croniter import croniter

UTC = dt.UTC
# tzdata has no two offset changes less than a week apart since 1990; sampling the
# offset once a day finds every one, and a bisection finds its second.
_SAMPLE = dt.timedelta(days=1)
# A fall-back repeats at most this much wall time: a span starting just after one may
# begin in its second pass.
_MAX_FOLD = dt.timedelta(hours=3)
_MONTHS: dict[tuple[str, int, int, int], int] = {}


def count_fires(
    expr: str, tz: ZoneInfo, since: dt.datetime, until: dt.datetime, *, both_passes: bool
) -> int:
    """Fire times `t` of a 5-field cron in `tz` with `since <= t <= until` (aware instants)."""
    start, end = since.astimezone(UTC), until.astimezone(UTC) + dt.timedelta(microseconds=1)
    if start >= end:
        return 0
    total = 0
    changes = _offset_changes(tz, start - _MAX_FOLD, end)
    edges = [start - _MAX_FOLD, *(at for at, _, _ in changes), end]
    before = [None, *((old, at) for at, old, _ in changes)]
    for (low, high), previous in zip(pairwise(edges), before, strict=True):
        low, high = max(low, start), min(high, end)
        if low >= high:
            continue
        offset = _offset(tz, low)
        wall_low, wall_high = _wall(low, offset), _wall(high, offset)
        if previous is not None and not both_passes:
            old, change = previous
            if old > offset:  # walls before the old clock's reading repeat a first pass
                wall_low = max(wall_low, _wall(change, old))
        total += _walls(expr, wall_low, wall_high)
    return total


def _offset(tz: ZoneInfo, instant: dt.datetime) -> dt.timedelta:
    offset = instant.astimezone(tz).utcoffset()
    assert offset is not None  # a ZoneInfo always has one
    return offset


def _wall(instant: dt.datetime, offset: dt.timedelta) -> dt.datetime:
    return (instant + offset).replace(tzinfo=None)


def _offset_changes(
    tz: ZoneInfo, start: dt.datetime, end: dt.datetime
) -> list[tuple[dt.datetime, dt.timedelta, dt.timedelta]]:
    """(instant, old offset, new offset) of each change in (start, end), oldest first."""
    changes, low, offset = [], start, _offset(tz, start)
    while low < end:
        high = min(low + _SAMPLE, end)
        if (new := _offset(tz, high)) != offset:
            # Whole seconds: a change happens at one; bisect to the first with the new offset.
            a, b = int(low.timestamp()), -int(-high.timestamp() // 1)
            while b - a > 1:
                mid = (a + b) // 2
                if _offset(tz, dt.datetime.fromtimestamp(mid, UTC)) == offset:
                    a = mid
                else:
                    b = mid
            changes.append((dt.datetime.fromtimestamp(b, UTC), offset, new))
            offset = new
        low = high
    return changes


@lru_cache(maxsize=512)
def _day_parts(expr: str) -> tuple[str, tuple[int, ...]]:
    """The cron's day fields as a cron of midnights, and its minutes of the day, sorted."""
    fields = expr.split()
    expanded = croniter(expr).expanded
    minutes = range(60) if expanded[0] == ["*"] else expanded[0]
    hours = range(24) if expanded[1] == ["*"] else expanded[1]
    return f"0 0 {' '.join(fields[2:])}", tuple(sorted(h * 60 + m for h in hours for m in minutes))


def _walls(expr: str, low: dt.datetime, high: dt.datetime) -> int:
    """Wall times `w` (naive) the cron matches with `low <= w < high`."""
    if low >= high:
        return 0
    days, minutes = _day_parts(expr)
    first, last = bisect_left(minutes, _minute(low)), bisect_left(minutes, _minute(high))
    if low.date() == high.date():
        return (last - first) * _matching_days(days, low.date(), low.date() + dt.timedelta(1))
    head = (len(minutes) - first) * _matching_days(days, low.date(), low.date() + dt.timedelta(1))
    tail = last * _matching_days(days, high.date(), high.date() + dt.timedelta(1))
    whole = len(minutes) * _matching_days(days, low.date() + dt.timedelta(1), high.date())
    return head + whole + tail


def _minute(wall: dt.datetime) -> int:
    """The first minute of the day at or after `wall` (1440 past its last minute)."""
    micros = ((wall.hour * 60 + wall.minute) * 60 + wall.second) * 1_000_000 + wall.microsecond
    return -(-micros // 60_000_000)


def _matching_days(days: str, first: dt.date, stop: dt.date) -> int:
    """Days in [first, stop) the day cron matches, a whole month at a time from its cache."""
    total = 0
    while first < stop:
        month_end = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
        end = min(stop, month_end)
        if first.day == 1 and end == month_end:
            length, weekday = calendar.monthrange(first.year, first.month)[1], first.weekday()
            key = (days, first.month, length, weekday)
            if key not in _MONTHS:
                if len(_MONTHS) > 50_000:  # bounded: 91 kinds of month per expression
                    _MONTHS.clear()
                _MONTHS[key] = _walk_days(days, first, end)
            total += _MONTHS[key]
        else:
            total += _walk_days(days, first, end)
        first = end
    return total


@lru_cache(maxsize=512)
def _day_cron(days: str) -> croniter:
    # Re-positioned with set_current; nothing awaits between that and get_next.
    return croniter(days, dt.datetime(2000, 1, 1), max_years_between_matches=8)


def _walk_days(days: str, first: dt.date, stop: dt.date) -> int:
    it, count = _day_cron(days), 0
    it.set_current(dt.datetime.combine(first, dt.time()) - dt.timedelta(seconds=1), force=True)
    while True:
        try:
            day = it.get_next(dt.datetime).date()
        except Exception:  # croniter: no match within 8 years, so none before `stop`
            return count
        if day >= stop:
            return count
        count += 1
