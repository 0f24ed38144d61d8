"""Schedules as pure logic: validation, fire times and misfire plans. No I/O.

`ScheduleSpec` is what a user writes (a tasks.yaml entry or a REST body); `Schedule`
is a stored row. `next_fire` walks cron expressions on the wall clock of the task's
timezone: a wall time that does not exist (spring forward) is skipped; one that repeats
(fall back) fires once, at its first occurrence, unless the cron's hour field matches
every hour: such a cron keeps its cadence through both passes of the repeated hour.
Interval schedules count absolute seconds from their previous fire time. `plan_fires`
decides which due fire times to run after a delay or downtime (`counting.py` counts the
missed ones); every function takes `now` explicitly.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agentsched.errors import InvalidInput, InvalidSchedule
from agentsched.registry import validate_name
from agentsched.scheduling.counting import count_fires
from agentsched.serialization import check_json

UTC = dt.UTC
MisfirePolicy = Literal["run_once", "skip", "run_all"]
OverlapPolicy = Literal["skip", "allow"]
# A fire time later than this (when misfire_grace_seconds is unset) counts as missed.
DEFAULT_GRACE_SECONDS = 5.0
MIN_INTERVAL, MAX_INTERVAL = 1.0, 366 * 86_400.0
# Feb 29 fires every 4 years, 8 across 2100; anything rarer is treated as "never".
MAX_YEARS_BETWEEN_FIRES = 8
# Cron candidates examined per call: a whole skipped day (Samoa, 2011) is 1,440 minutes.
MAX_CRON_STEPS = 3_000
MAX_PAYLOAD_BYTES = 65_536

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
_TZ_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]{0,30}(/[A-Za-z0-9_+\-]{1,30}){0,2}$")
_CRON_CHARS = re.compile(r"^[0-9A-Za-z*/,\-?#]+$")
_CRON_WORDS = frozenset(
    "jan feb mar apr may jun jul aug sep oct nov dec sun mon tue wed thu fri sat l w".split()
)
_CRON_FIELDS = (("minute", 59), ("hour", 23), ("day of month", 31), ("month", 12),
                ("day of week", 7))  # fmt: skip
_INTERVAL_RE = re.compile(
    r"^(?:(\d{1,6})\s*d)?\s*(?:(\d{1,7})\s*h)?\s*(?:(\d{1,9})\s*m)?\s*"
    r"(?:(\d{1,10}(?:\.\d{1,6})?)\s*s)?$"
)
_NUMBER_RE = re.compile(r"^\d{1,10}(?:\.\d{1,6})?$")


# --- validation of single values -------------------------------------------------------
def parse_interval(value: object) -> float:
    """Seconds of an interval: a number, or text like `90`, `30s`, `5m`, `1h30m`, `1d`."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidSchedule("interval", "must be a number of seconds or text like 30s, 5m, 1h30m")
    if isinstance(value, str):
        text = value.strip().lower()
        match = _INTERVAL_RE.match(text) if 0 < len(text) <= 40 else None
        if _NUMBER_RE.match(text):
            seconds = float(text)
        elif match and any(match.groups()):
            d, h, m, s = (float(g) if g else 0.0 for g in match.groups())
            seconds = d * 86_400 + h * 3_600 + m * 60 + s
        else:
            raise InvalidSchedule("interval", "must be seconds or text like 30s, 5m, 1h, 1h30m")
    else:
        seconds = float(value)
    seconds = round(seconds, 3)  # fire times stay whole milliseconds, like execution ids
    if not math.isfinite(seconds) or seconds < MIN_INTERVAL:
        raise InvalidSchedule("interval", "must be at least 1 second")
    if seconds > MAX_INTERVAL:
        raise InvalidSchedule("interval", "must be at most 366 days (use cron for rarer runs)")
    return seconds


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`; `InvalidSchedule('timezone')` when unknown or malformed."""
    if not isinstance(name, str) or not _TZ_RE.match(name):
        raise InvalidSchedule("timezone", "must be an IANA timezone name like Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidSchedule("timezone", f"unknown timezone {name!r}") from None


@lru_cache(maxsize=2048)
def _cron(expr: str) -> croniter:
    # Parsing costs ~0.2 ms; the cached iterator is re-positioned with set_current,
    # which is safe because nothing awaits between set_current and get_next.
    start = dt.datetime(2000, 1, 1)
    return croniter(expr, start, max_years_between_matches=MAX_YEARS_BETWEEN_FIRES)


def validate_cron(expr: object) -> str:
    """A 5-field crontab expression, checked with bounded work and proven to fire."""
    if not isinstance(expr, str):
        raise InvalidSchedule("cron", "must be a string of 5 fields")
    if len(expr) > 200:
        raise InvalidSchedule("cron", "must be at most 200 characters")
    text = " ".join(expr.split())
    fields = text.split(" ")
    if len(fields) != 5:
        raise InvalidSchedule("cron", f"must have 5 fields (minute hour day month weekday), "
                                      f"got {len(fields)}")  # fmt: skip
    for part, (label, top) in zip(fields, _CRON_FIELDS, strict=True):
        if not _CRON_CHARS.match(part):
            raise InvalidSchedule("cron", f"invalid character in the {label} field")
        for word in re.findall(r"[A-Za-z]+", part):
            if word.lower() not in _CRON_WORDS:
                raise InvalidSchedule("cron", f"unknown name {word[:20]!r} in the {label} field")
        for step in re.findall(r"/(\d+)", part):
            if not 1 <= int(step[:4]) <= top:
                raise InvalidSchedule("cron", f"step {step[:10]} is out of range ({label})")
    try:
        it = _cron(text)
    except Exception as exc:  # croniter raises several unrelated types for bad input
        raise InvalidSchedule("cron", f"invalid expression ({_reason(exc)})") from None
    start = dt.datetime.now(UTC).replace(tzinfo=None)
    try:
        it.set_current(start, force=True)
        it.get_next(dt.datetime)
    except Exception:
        raise InvalidSchedule(
            "cron", f"never fires (no fire time within {MAX_YEARS_BETWEEN_FIRES} years)"
        ) from None
    return text


def _reason(exc: BaseException) -> str:
    # croniter repeats the expression in brackets and says "is not acceptable": drop both.
    message = str(exc).split("]", 1)[-1].replace("is not acceptable", "").strip(" ,:")
    return (message or "not a valid 5-field expression")[:120]


# --- the user-facing shape ----------------------------------------------------------------
class ScheduleSpec(BaseModel):
    """A schedule as written in tasks.yaml or sent to the API (unknown keys rejected).

    Strict types: a string is not a boolean, a boolean is not a number.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str
    function: str
    cron: str | None = None
    interval: float | int | str | None = None
    timezone: str = "UTC"
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    description: str | None = Field(default=None, max_length=1000)
    misfire_policy: MisfirePolicy = "run_once"
    misfire_grace_seconds: float | None = Field(default=None, ge=0, le=MAX_INTERVAL)
    max_catchup: int = Field(default=10, ge=1, le=1000)
    overlap: OverlapPolicy = "skip"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("must be 1-200 characters of letters, digits, '.', '_', ':' or '-'")
        return value

    @field_validator("function")
    @classmethod
    def _function(cls, value: str) -> str:
        try:
            return validate_name(value, "function")
        except InvalidInput as exc:
            raise ValueError(exc.message) from None

    @field_validator("cron")
    @classmethod
    def _cron_expr(cls, value: str | None) -> str | None:
        return None if value is None else validate_cron(value)

    @field_validator("interval", mode="before")
    @classmethod
    def _interval(cls, value: object) -> float | None:
        return None if value is None else parse_interval(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        zone(value)
        return value

    @field_validator("args", "kwargs")
    @classmethod
    def _payload(cls, value: Any, info: ValidationInfo) -> Any:
        try:
            encoded = check_json(str(info.field_name), value)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        if len(encoded) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"must encode to at most {MAX_PAYLOAD_BYTES} bytes of JSON")
        return value

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleSpec:
        if (self.cron is None) == (self.interval is None):
            field_name = "cron" if self.cron is None else "interval"
            raise InvalidSchedule(field_name, "give exactly one of cron or interval")
        return self

    @property
    def interval_seconds(self) -> float | None:
        return None if self.interval is None else float(self.interval)


def parse_spec(data: Mapping[str, Any] | ScheduleSpec) -> ScheduleSpec:
    """Validate a mapping into a `ScheduleSpec`; `InvalidSchedule` names the first bad field."""
    if isinstance(data, ScheduleSpec):
        return data
    if not isinstance(data, Mapping):
        raise InvalidSchedule("schedule", "must be an object")
    try:
        return ScheduleSpec.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "schedule"
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise InvalidSchedule(loc, message.removeprefix("Value error, ")) from None


class Timing(Protocol):
    """What fire-time arithmetic needs: a `ScheduleSpec` or a `Schedule`."""

    @property
    def cron(self) -> str | None: ...
    @property
    def interval_seconds(self) -> float | None: ...
    @property
    def timezone(self) -> str: ...


class Policy(Timing, Protocol):
    @property
    def misfire_policy(self) -> str: ...
    @property
    def misfire_grace_seconds(self) -> float | None: ...
    @property
    def max_catchup(self) -> int: ...


# --- fire times ----------------------------------------------------------------------------------
def _wall_to_utc(naive: dt.datetime, tz: ZoneInfo) -> dt.datetime | None:
    """The instant of a wall time: None if it does not exist, the first one if it repeats."""
    first = naive.replace(tzinfo=tz, fold=0)
    if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != naive:
        return None  # inside a spring-forward gap
    return first.astimezone(UTC)


def _cron_step(expr: str, tz_name: str, moment: dt.datetime, forward: bool) -> dt.datetime:
    tz = zone(tz_name)
    local = moment.astimezone(tz)
    start = local.replace(tzinfo=None)
    if not forward and local.fold == 1:
        # In the repeated hour the wall clock went back: search from where it came from.
        start += local.replace(fold=0).utcoffset() - local.utcoffset()  # type: ignore[operator]
    it = _cron(expr)
    it.set_current(start, force=True)
    for _ in range(MAX_CRON_STEPS):
        candidate = it.get_next(dt.datetime) if forward else it.get_prev(dt.datetime)
        instant = _wall_to_utc(candidate, tz)
        if instant is not None and (instant > moment if forward else instant < moment):
            return instant
    raise InvalidSchedule("cron", f"no fire time within {MAX_CRON_STEPS} candidates")


# A fall-back repeats at most this much wall time (1 h nearly everywhere, 2 h once).
_MAX_FOLD = dt.timedelta(hours=3)


def _every_hour(expr: str) -> bool:
    return bool(_cron(expr).expanded[1] == ["*"])  # croniter folds 0-23, */1 and lists into "*"


def _fall_back(tz: ZoneInfo, near: dt.datetime) -> dt.datetime | None:
    """The instant the clock falls back within `_MAX_FOLD` of `near`, if it does."""
    low, high = near - _MAX_FOLD, near + _MAX_FOLD
    offset = low.astimezone(tz).utcoffset()
    if offset is None or offset <= high.astimezone(tz).utcoffset():  # type: ignore[operator]
        return None
    while high - low > dt.timedelta(seconds=1):  # ~15 halvings: the first second after
        mid = low + (high - low) / 2
        if mid.astimezone(tz).utcoffset() == offset:
            low = mid
        else:
            high = mid
    return high.replace(microsecond=0)


@lru_cache(maxsize=256)
def _second_pass(expr: str, tz_name: str, change: dt.datetime) -> tuple[dt.datetime, ...]:
    """The cron's fire times in the second pass of the wall times repeated at `change`."""
    tz = zone(tz_name)
    first = change.astimezone(tz)  # the first wall time of the second pass
    wall = end = first.replace(tzinfo=None)
    end += (change - dt.timedelta(seconds=1)).astimezone(tz).utcoffset() - first.utcoffset()  # type: ignore[operator]
    it = _cron(expr)
    it.set_current(wall - dt.timedelta(microseconds=1), force=True)
    found = []
    for _ in range(MAX_CRON_STEPS):
        wall = it.get_next(dt.datetime)
        if wall >= end:
            break
        found.append(wall.replace(tzinfo=tz, fold=1).astimezone(UTC))
    return tuple(found)


def _cron_fire(expr: str, tz_name: str, moment: dt.datetime, forward: bool) -> dt.datetime:
    """`_cron_step`, plus the second pass of a repeated hour for every-hour crons.

    `_cron_step` fires each wall time once, at its first occurrence. A cron whose hour
    field matches every hour also fires in the second pass, keeping its cadence (as Vixie
    cron and systemd do). A second-pass instant between `moment` and the first-occurrence
    answer lies within one fold of `moment` (forward) or of that answer (backward).
    """
    found = _cron_step(expr, tz_name, moment, forward)
    if not _every_hour(expr):
        return found
    tz = zone(tz_name)
    change = _fall_back(tz, moment if forward else found)
    if change is None:
        return found
    if forward:
        later = [t for t in _second_pass(expr, tz_name, change) if moment < t < found]
        return min(later, default=found)
    earlier = [t for t in _second_pass(expr, tz_name, change) if found < t < moment]
    return max(earlier, default=found)


def next_fire(
    schedule: Timing, after: dt.datetime, *, anchor: dt.datetime | None = None
) -> dt.datetime:
    """The first fire time strictly after `after` (UTC).

    Cron is evaluated in the schedule's timezone. An interval schedule fires at
    `anchor + k * interval` (its previous fire time), or without an anchor at
    `after + interval` rounded up to a whole second.
    """
    after = after.astimezone(UTC)
    if schedule.interval_seconds is not None:
        step = dt.timedelta(seconds=schedule.interval_seconds)
        if anchor is None:
            # Whole seconds keep fire times readable and exact in ms-based execution ids.
            first = after + step
            return first + dt.timedelta(microseconds=-first.microsecond % 1_000_000)
        if anchor > after:
            return anchor
        return anchor + ((after - anchor) // step + 1) * step
    if schedule.cron is None:
        raise InvalidSchedule("cron", "give exactly one of cron or interval")
    return _cron_fire(schedule.cron, schedule.timezone, after, forward=True)


def prev_fire(schedule: Timing, before: dt.datetime) -> dt.datetime:
    """The last cron fire time strictly before `before` (UTC)."""
    if schedule.cron is None:
        raise InvalidSchedule("cron", "prev_fire needs a cron schedule")
    return _cron_fire(schedule.cron, schedule.timezone, before.astimezone(UTC), forward=False)


@dataclass(frozen=True, slots=True)
class FirePlan:
    """What to do with a schedule whose `next_run_at` is due."""

    runs: list[dt.datetime]  # fire times to enqueue, oldest first
    next_run_at: dt.datetime | None  # the first fire time after now (None: cannot fire)
    missed: int  # due fire times not run (older than the grace, dropped by the policy)
    caught_up: int = 0  # runs that are misfires run late (run_once / run_all after downtime)


def plan_fires(schedule: Policy, due: dt.datetime, now: dt.datetime) -> FirePlan:
    """Which fire times in [due, now] to run, under the misfire policy and grace window.

    A fire time at most `misfire_grace_seconds` old is on time and runs. Older ones are
    misfires: `run_once` runs the latest of them only when nothing is on time, `skip`
    runs none, `run_all` runs them all. At most `max_catchup` runs (the latest) per plan.
    `missed` is exact however long the downtime (cron: `count_fires`, interval: arithmetic).
    """
    cap = schedule.max_catchup
    if schedule.interval_seconds is not None:
        step = dt.timedelta(seconds=schedule.interval_seconds)
        total = (now - due) // step + 1 if now >= due else 0
        latest = [due + (total - 1 - i) * step for i in range(min(total, cap + 1))]
        following = due + total * step
    else:
        following = next_fire(schedule, max(now, due))
        latest, cursor = [], following
        while len(latest) < cap + 1:
            cursor = prev_fire(schedule, cursor)
            if cursor <= due:
                break
            latest.append(cursor)
        if due <= now and len(latest) < cap + 1:
            latest.append(due)
        total = len(latest)
        if total == cap + 1 and schedule.cron is not None:  # the downtime may hold more
            total = count_fires(schedule.cron, zone(schedule.timezone), due, now,
                                both_passes=_every_hour(schedule.cron))  # fmt: skip
    grace = schedule.misfire_grace_seconds
    cutoff = now - dt.timedelta(seconds=DEFAULT_GRACE_SECONDS if grace is None else grace)
    on_time = [f for f in latest if f >= cutoff]
    missed = [f for f in latest if f < cutoff]
    if schedule.misfire_policy == "skip":
        chosen = on_time
    elif schedule.misfire_policy == "run_all":
        chosen = on_time + missed
    else:
        chosen = on_time or missed[:1]
    runs = sorted(chosen[:cap])
    late = sum(1 for f in runs if f < cutoff)
    return FirePlan(runs=runs, next_run_at=following, missed=total - len(runs), caught_up=late)
