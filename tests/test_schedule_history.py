"""Schedules under faults: unconfirmed slots survive any interval, catch-up picks
the right slots, and a model test with crashes and ambiguous writes.

Every test runs on the store's clock (a ``FakeClock`` moved by hand).
"""

from __future__ import annotations

import random
from datetime import datetime
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qo import scheduler
from qo.protocol.firing import slots_to_fire
from qo.protocol.schedule_model import HISTORY, MAX_DECIDE, MAX_UNCONFIRMED, SETTLE, Schedule
from qo.queue import Queue
from qo.store.faulty import FaultyStore
from qo.store.memory import MemoryStore

from .helpers import FakeClock

START = datetime(2026, 6, 1, 12, 0, tzinfo=ZoneInfo("UTC")).timestamp()


def setup() -> tuple[Queue, FakeClock, MemoryStore]:
    clock = FakeClock(START)
    store = MemoryStore(clock=clock)
    return Queue(store), clock, store


def slot_tasks(queue: Queue, name: str) -> list[float]:
    """The slot of every task the schedule submitted (from the idempotency key)."""
    out = []
    for info in queue.store.list("tasks/"):
        record = queue.get(info.key[len("tasks/"):-len(".json")]).record
        if record.tags.get("schedule") == name and "@trigger" not in (record.idempotency_key or ""):
            out.append(float((record.idempotency_key or "").split("@")[1]))
    return sorted(out)


# -- unconfirmed entries survive, whatever the interval ------------------------------


def test_a_slot_decided_by_a_dying_firer_of_a_1s_schedule_is_repaired() -> None:
    queue, clock, store = setup()
    scheduler.add(queue, "fast", "t", every="1s")
    faulty = FaultyStore(store)
    dying = scheduler.firer(Queue(faulty))
    faulty.inject("put", "before", key_prefix="ready/", times=100)  # dies right after the CAS
    clock.advance(1)
    assert dying.fire_due().fired == []
    lost = scheduler.load(queue, "fast").value.history[0]
    assert lost.submitted is False
    survivor = scheduler.firer(queue)
    for _ in range(int(SETTLE) + 5):  # 35 more slots: far more than the 20 confirmed kept
        clock.advance(1)
        survivor.fire_due()
    assert lost.task_id in survivor.fire_due().repaired or lost.slot in slot_tasks(queue, "fast")
    assert slot_tasks(queue, "fast") == [START + i for i in range(1, int(SETTLE) + 7)]
    history = scheduler.load(queue, "fast").value.history
    assert all(e.submitted for e in history) and len(history) == HISTORY


def test_an_ambiguous_decide_write_on_a_1s_schedule_loses_no_slot() -> None:
    queue, clock, store = setup()
    scheduler.add(queue, "fast", "t", every="1s")
    faulty = FaultyStore(store)
    firer = scheduler.firer(Queue(faulty))
    other = scheduler.firer(queue)
    for second in range(90):
        clock.advance(1)
        if second % 15 == 3:  # the decide CAS lands, its response is lost
            faulty.inject("put", "after", key_prefix="schedules/", times=1)
        report = firer.fire_due()
        if second % 15 == 3:  # recognised as our own write at once (cas reads it back)
            assert not report.errors and clock() in [slot for _, slot, _ in report.fired]
        if second % 2:
            other.fire_due()
    for _ in range(int(SETTLE)):  # the last lost responses settle
        clock.advance(1)
        firer.fire_due()
    slots = slot_tasks(queue, "fast")
    assert slots == [START + i for i in range(1, 91 + int(SETTLE))]


@pytest.mark.usefixtures("no_backoff_sleeps")  # a fake clock: backoff sleeps change nothing
def test_unconfirmed_entries_are_bounded_and_reported_when_submits_keep_failing() -> None:
    queue, clock, store = setup()
    scheduler.add(queue, "fast", "t", every="1s")
    faulty = FaultyStore(store)
    firer = scheduler.firer(Queue(faulty))
    faulty.inject("put", "before", key_prefix="ready/", times=10**6)  # no submit ever lands
    for _ in range(MAX_UNCONFIRMED // MAX_DECIDE + 3):
        clock.advance(MAX_DECIDE)  # each round decides 20 on-time slots
        report = firer.fire_due()
        assert report.errors  # every round says it could not fire
    sched = scheduler.load(queue, "fast").value
    assert len(sched.unconfirmed()) == MAX_UNCONFIRMED
    assert len(sched.history) <= HISTORY + MAX_UNCONFIRMED
    assert "not submitted yet" in " ".join(report.errors)
    faulty.clear()  # the store works again: everything decided is submitted
    clock.advance(SETTLE)
    firer.fire_due()
    assert len(slot_tasks(queue, "fast")) >= MAX_UNCONFIRMED


# -- catch-up ---------------------------------------------------------------------


THREE_DAYS = 3 * 86_400


@pytest.mark.parametrize(("policy", "limit", "expected"), [
    ("latest", 10, [0]),
    ("all", 3, [2, 1, 0]),
    ("none", 10, []),
])
def test_catch_up_three_days_late_on_a_1s_schedule(policy: str, limit: int,
                                                   expected: list[int]) -> None:
    queue, clock, _ = setup()
    scheduler.add(queue, "fast", "t", every="1s", catchup=policy, catchup_limit=limit,
                  misfire_grace=0)
    clock.advance(THREE_DAYS + 0.5)  # every slot is missed, the newest half a second ago
    now = clock()
    firer = scheduler.firer(queue)
    report = firer.fire_due()
    newest = START + THREE_DAYS
    assert sorted(s for _, s, _ in report.fired) == sorted(newest - k for k in expected)
    assert firer.fire_due().fired == []  # one round caught up: nothing stale fires later
    sched = scheduler.load(queue, "fast").value
    assert sched.next_slot == newest + 1 and sched.next_slot > now
    assert sched.skipped == THREE_DAYS - len(expected)


def test_catch_up_within_the_misfire_grace_fires_only_recent_slots() -> None:
    queue, clock, _ = setup()
    scheduler.add(queue, "fast", "t", every="1s", catchup="latest")  # 120 s of grace
    clock.advance(THREE_DAYS)
    report = scheduler.firer(queue).fire_due()
    slots = sorted(s for _, s, _ in report.fired)
    assert len(slots) == MAX_DECIDE and slots[-1] == clock()
    assert all(clock() - s <= 120 for s in slots)  # on time; nothing hours old


def reference(sched: Schedule, now: float) -> tuple[list[tuple[float, str]], float | None, int]:
    """slots_to_fire by brute force: enumerate every due slot."""
    due = []
    slot = sched.next_slot
    while slot is not None and slot <= now:
        due.append(slot)
        slot = sched.following(slot)
    on_time = [s for s in due if now - s <= sched.misfire_grace]
    missed = [s for s in due if now - s > sched.misfire_grace]
    if sched.catchup == "all":
        chosen = [(s, "catchup") for s in missed[max(0, len(missed) - sched.catchup_limit):]]
    elif sched.catchup == "latest" and missed and not on_time:
        chosen = [(missed[-1], "catchup")]
    else:
        chosen = []
    chosen = (chosen + [(s, "slot") for s in on_time])[-MAX_DECIDE:]
    return chosen, slot, len(due) - len(chosen)


@settings(max_examples=150, deadline=None)
@given(
    every=st.sampled_from([1, 2, 7, 60, 90, 3600]),
    lateness=st.integers(0, 3000),  # in slots
    extra=st.floats(0, 0.999),
    grace=st.sampled_from([0, 1, 30, 120, 7200]),
    policy=st.sampled_from(["none", "latest", "all"]),
    limit=st.integers(1, MAX_DECIDE),
    end_in=st.one_of(st.none(), st.integers(0, 4000)),
)
def test_slot_selection_matches_brute_force(every: int, lateness: int, extra: float, grace: int,
                                            policy: str, limit: int, end_in: int | None) -> None:
    sched = Schedule(name="s", task_type="t", every=every, catchup=policy, catchup_limit=limit,
                     misfire_grace=grace, created_at=0, updated_at=0, next_slot=START + every,
                     end_at=None if end_in is None else START + end_in * every)
    now = START + every * (1 + lateness + extra)
    assert slots_to_fire(sched, now) == reference(sched, now)


def test_cron_slot_selection_matches_brute_force() -> None:
    rng = random.Random(7)
    for _ in range(20):
        sched = Schedule(name="s", task_type="t", cron=rng.choice(["* * * * *", "*/7 * * * *",
                                                                  "0 * * * *"]),
                         tz=rng.choice(["UTC", "Europe/Paris"]), catchup=rng.choice(
                             ["none", "latest", "all"]), catchup_limit=rng.randint(1, 20),
                         misfire_grace=rng.choice([0, 120, 3600]), created_at=0, updated_at=0)
        sched = sched.model_copy(update={"next_slot": sched.following(START)})
        now = START + rng.uniform(0, 86_400)
        assert slots_to_fire(sched, now) == reference(sched, now)


# -- a model test: many firers, crashes between writes, ambiguous writes -------------


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_every_slot_fires_exactly_once_through_crashes_and_ambiguous_writes(seed: int) -> None:
    with mock.patch("qo.protocol.cas._pause", lambda attempt: None):  # backoff sleeps change nothing here
        crash_and_check(seed)


def timetable(queue: Queue, name: str, until: float) -> list[float]:
    sched = scheduler.load(queue, name).value
    out, slot = [], sched.following(START)
    while slot is not None and slot <= until:
        out.append(slot)
        slot = sched.following(slot)
    return out


def crash_and_check(seed: int) -> None:
    """A 1 s and a 7 s schedule, three firers, 60 s. Each round each firer may
    crash before or after one of its writes (the decide CAS, the submit, the
    confirm CAS), or have its response lost after the write landed; crashed
    firers are replaced by fresh ones. Every slot must end with exactly one
    task once the survivors run past SETTLE."""
    rng = random.Random(seed)
    queue, clock, store = setup()
    scheduler.add(queue, "fast", "t", every="1s")
    scheduler.add(queue, "seven", "t", every="7s")
    faulty = [FaultyStore(store, seed=rng.randrange(2**32)) for _ in range(3)]
    firers = [scheduler.firer(Queue(f)) for f in faulty]
    for _ in range(60):
        clock.advance(1)
        for i in rng.sample(range(3), 3):
            if rng.random() < 0.3:
                prefix = rng.choice(["schedules/", "ready/", "tasks/", "delayed/"])
                faulty[i].inject("put", rng.choice(["before", "after"]), key_prefix=prefix,
                                 times=rng.choice([1, 4]))
            firers[i].fire_due()
            faulty[i].clear()
            if rng.random() < 0.1:  # a crash: the process and its cache are gone
                firers[i] = scheduler.firer(Queue(faulty[i]))
    end = 60 + int(SETTLE) + 1
    for _ in range(end - 60):  # fault-free rounds until every unconfirmed slot settled
        clock.advance(1)
        for f in firers:
            f.fire_due()
    assert slot_tasks(queue, "fast") == [START + i for i in range(1, end + 1)]
    assert slot_tasks(queue, "seven") == timetable(queue, "seven", START + end)
    for name in ("fast", "seven"):
        assert not scheduler.load(queue, name).value.unconfirmed()
