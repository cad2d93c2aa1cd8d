"""Slot arithmetic: cron in time zones (with DST) and intervals."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qo.cron import CronSpec, IntervalSpec, InvalidSchedule, parse_duration, upcoming


def local(ts: float, tz: str) -> str:
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).isoformat()


def slots(expr: str, tz: str, start: datetime, n: int) -> list[str]:
    spec = CronSpec(expr, tz)
    return [local(t, tz) for t in upcoming(spec, start.replace(tzinfo=ZoneInfo(tz)).timestamp(), n)]


@pytest.mark.parametrize(("tz", "day", "offsets"), [
    ("America/New_York", (2026, 3, 8), ("-05:00", "-04:00")),
    ("Europe/Paris", (2026, 3, 29), ("+01:00", "+02:00")),
])
def test_spring_forward_nonexistent_time_fires_once_shifted(tz, day, offsets) -> None:
    y, m, d = day
    got = slots("30 2 * * *", tz, datetime(y, m, d - 1, 12), 3)
    assert got == [
        f"{y}-{m:02d}-{d:02d}T03:30:00{offsets[1]}",  # 02:30 does not exist: shifted by the gap
        f"{y}-{m:02d}-{d + 1:02d}T02:30:00{offsets[1]}",
        f"{y}-{m:02d}-{d + 2:02d}T02:30:00{offsets[1]}",
    ]


@pytest.mark.parametrize(("tz", "day", "hour"), [
    ("America/New_York", (2026, 11, 1), 1),
    ("Europe/Paris", (2026, 10, 25), 2),
    ("Australia/Sydney", (2026, 4, 5), 2),
])
def test_fall_back_ambiguous_time_fires_once(tz, day, hour) -> None:
    the_day = date(*day)
    eve = datetime.combine(the_day, datetime.min.time()) - timedelta(hours=12)
    got = slots(f"30 {hour} * * *", tz, eve, 3)
    assert [g[:19] for g in got] == [
        f"{the_day + timedelta(days=i)}T{hour:02d}:30:00" for i in range(3)
    ]
    first = CronSpec(f"30 {hour} * * *", tz)
    start = eve.replace(tzinfo=ZoneInfo(tz)).timestamp()
    times = upcoming(first, start, 2)
    assert times[1] - times[0] == 25 * 3600  # the repeated hour did not fire again


def test_every_half_hour_across_the_gap_has_no_duplicate_instants() -> None:
    got = slots("*/30 * * * *", "Europe/Paris", datetime(2026, 3, 29, 1, 0), 5)
    assert got == [
        "2026-03-29T01:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:00 shifted and the real 03:00: one slot
        "2026-03-29T03:30:00+02:00",
        "2026-03-29T04:00:00+02:00",
        "2026-03-29T04:30:00+02:00",
    ]


def test_intervals_are_absolute_and_anchored() -> None:
    spec = IntervalSpec(300, anchor=0)
    assert spec.next_after(1000) == 1200
    assert spec.next_after(1200) == 1500
    assert upcoming(IntervalSpec(60, anchor=10), 0, 3) == [10, 70, 130]


@pytest.mark.parametrize("bad", ["61 * * * *", "* * *", "hello", "* * * * * *", "", "@sometimes"])
def test_invalid_cron_is_refused(bad: str) -> None:
    with pytest.raises(InvalidSchedule):
        CronSpec(bad)


@pytest.mark.parametrize("bad", ["Mars/Olympus", "../etc/passwd", "", "/etc/localtime"])
def test_unknown_time_zone_is_refused(bad: str) -> None:
    with pytest.raises(InvalidSchedule, match="time zone"):
        CronSpec("* * * * *", bad)


def test_durations() -> None:
    assert parse_duration("30s") == 30 and parse_duration("5m") == 300
    assert parse_duration("1h") == 3600 and parse_duration("90") == 90
    for bad in ["0s", "-5m", "soon", "5y", ""]:
        with pytest.raises(InvalidSchedule):
            parse_duration(bad)


@settings(max_examples=300, deadline=None)
@given(
    expr=st.sampled_from(["* * * * *", "*/7 * * * *", "30 2 * * *", "0 * * * *", "15 1,2,3 * * *",
                          "0 0 * * 0", "@daily", "45 23 31 12 *"]),
    tz=st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe",
                        "Asia/Kolkata"]),
    # instants near the 2026 and 2027 DST changes of those zones, and anywhere
    t=st.one_of(st.sampled_from([1775350800.0, 1774746000.0, 1772953200.0, 1792400000.0,
                                 1793498400.0, 1806000000.0]).flatmap(
                                     lambda c: st.floats(c - 86_400, c + 86_400)),
                st.floats(1.7e9, 1.9e9)),
)
def test_the_fast_path_agrees_with_the_dst_aware_search(expr: str, tz: str, t: float) -> None:
    spec = CronSpec(expr, tz)
    where = ZoneInfo(tz)
    local_t = datetime.fromtimestamp(t, where).replace(tzinfo=None)
    assert spec.next_after(t) == spec._search(where, t, local_t)
