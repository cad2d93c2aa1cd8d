"""When schedules fire: cron expressions in a time zone, and fixed intervals.

Cron fields are matched against the *local wall clock* of the schedule's time
zone (standard library ``zoneinfo``), and every matching wall time fires at
most once:

- a wall time that does not exist (the spring-forward gap) fires once, shifted
  forward by the gap (02:30 on a 02:00→03:00 day fires at 03:30), and if that
  shifted instant is also a matching time in its own right it still fires
  once, since slots are instants;
- a wall time that happens twice (the fall-back overlap) fires once, at its
  first occurrence. A minute-level cron therefore pauses during the repeated
  hour; use an interval schedule for strictly periodic work.

Intervals are absolute (epoch seconds), so they ignore time zones entirely.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from qo.errors import ErrorKind, QoError

#: Wall-clock window searched around an instant: wider than any DST shift.
_DST_WINDOW = timedelta(hours=3)
#: A next slot at most this far ahead may skip the DST-aware search (see CronSpec).
_FAST_SPAN = timedelta(hours=12)
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d|w)\s*")
_DURATION = re.compile(rf"(?:{_NUMBER}|(?:{_NUMBER}\s*(?:ms|s|m|h|d|w)\s*)+)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}


class InvalidSchedule(QoError):
    kind = ErrorKind.INVALID


def parse_duration(text: str | float, what: str = "duration") -> float:
    """``90``, ``30s``, ``5m``, ``1h30m``, ``2d``, ``1w``, ``250ms`` -> positive seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower()
        if not _DURATION.fullmatch(raw):
            raise InvalidSchedule(
                f"invalid {what} {text!r}: use seconds or e.g. 30s, 5m, 1h30m, 2d")
        seconds = (float(raw) if re.fullmatch(_NUMBER, raw)
                   else sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(raw)))
    if not seconds > 0 or seconds == float("inf"):
        raise InvalidSchedule(f"invalid {what} {text!r}: must be positive")
    return seconds


def zone(name: str) -> ZoneInfo:
    try:
        if not name or ".." in name or name.startswith("/"):
            raise ValueError
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidSchedule(f"unknown time zone {name!r} (use an IANA name like Europe/Paris)") from None


def iso_in_zone(ts: float | None, tz: str) -> str:
    """Epoch seconds as ISO 8601 in zone ``tz`` (UTC if the name is unknown), or '-'."""
    if ts is None:
        return "-"
    try:
        where = zone(tz)
    except InvalidSchedule:  # stored before time zones were checked: show UTC
        where = ZoneInfo("UTC")
    return datetime.fromtimestamp(ts, where).isoformat(timespec="seconds")


@dataclass(frozen=True)
class CronSpec:
    expr: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        fields = self.expr.split()
        if not (self.expr.startswith("@") and len(fields) == 1) and len(fields) != 5:
            raise InvalidSchedule(
                f"invalid cron expression {self.expr!r}: expected 5 fields "
                "(minute hour day-of-month month day-of-week) or @hourly/@daily/..."
            )
        try:
            valid = croniter.is_valid(self.expr)
        except Exception:  # noqa: BLE001 - croniter raises many types on garbage
            valid = False
        if not valid:
            raise InvalidSchedule(f"invalid cron expression {self.expr!r}")
        zone(self.tz)

    def describe(self) -> str:
        return f"cron {self.expr} ({self.tz})"

    def next_after(self, t: float) -> float | None:
        """The first firing instant strictly after ``t`` (epoch seconds), or None."""
        tz = zone(self.tz)
        local = datetime.fromtimestamp(t, tz).replace(tzinfo=None)
        fast = self._next_without_transition(tz, t, local)
        return fast if fast is not None else self._search(tz, t, local)

    def _search(self, tz: ZoneInfo, t: float, local: datetime) -> float | None:
        """The DST-aware search: every wall time from 3 h before ``t`` on."""
        start = local - _DST_WINDOW
        try:
            it = croniter(self.expr, start)
            best: float | None = None
            while True:
                wall: datetime = it.get_next(datetime)
                instant = wall.replace(tzinfo=tz, fold=0).timestamp()
                if instant > t and (best is None or instant < best):
                    best = instant
                if best is not None and wall > datetime.fromtimestamp(best, tz).replace(
                        tzinfo=None) + _DST_WINDOW:
                    return best
                if wall - local > timedelta(days=3660):
                    return best
        except (CroniterBadDateError, CroniterBadCronError):
            return None

    def _next_without_transition(self, tz: ZoneInfo, t: float, local: datetime) -> float | None:
        """The next instant when no UTC-offset change lies near it, else None.

        Without a transition from ``t - 3 h`` to the candidate ``+ 3 h``, wall
        times map to instants by one fixed offset, so croniter's next wall
        time is the answer. Only a candidate within ``_FAST_SPAN`` is trusted
        (equal offsets at both ends then mean no transition in between);
        anything else takes the DST-aware search.
        """
        try:  # from a second early: ``local`` is rounded to the microsecond
            it = croniter(self.expr, local - timedelta(seconds=1))
            instant = t
            for _ in range(3):
                wall: datetime = it.get_next(datetime)
                instant = wall.replace(tzinfo=tz, fold=0).timestamp()
                if instant > t:
                    break
        except (CroniterBadDateError, CroniterBadCronError):
            return None
        if not t < instant <= t + _FAST_SPAN.total_seconds():
            return None
        window = _DST_WINDOW.total_seconds()
        offsets = {datetime.fromtimestamp(ts, tz).utcoffset()
                   for ts in (t - window, t, instant, instant + window)}
        return instant if len(offsets) == 1 else None


@dataclass(frozen=True)
class IntervalSpec:
    every: float
    anchor: float = 0.0  # slots are anchor + k * every

    def __post_init__(self) -> None:
        if self.every < 1:
            raise InvalidSchedule("an interval must be at least 1 second")

    def describe(self) -> str:
        return f"every {format_duration(self.every)}"

    def next_after(self, t: float) -> float:
        k = (t - self.anchor) // self.every + 1
        return self.anchor + k * self.every


Spec = CronSpec | IntervalSpec


def format_duration(seconds: float) -> str:
    for unit, size in (("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def upcoming(spec: Spec, after: float, count: int, end: float | None = None) -> list[float]:
    out: list[float] = []
    t = after
    while len(out) < count:
        nxt = spec.next_after(t)
        if nxt is None or (end is not None and nxt > end):
            break
        out.append(nxt)
        t = nxt
    return out
