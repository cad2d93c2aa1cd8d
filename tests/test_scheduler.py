"""Schedules: exactly once per slot across schedulers, catch-up, editing, repair."""

from __future__ import annotations

import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from qo import scheduler
from qo.cron import InvalidSchedule
from qo.errors import InvalidName, StoreUnavailable
from qo.queue import Queue
from qo.store.faulty import FaultyStore
from qo.store.memory import MemoryStore

from .helpers import ClockedStore, FakeClock

START = datetime(2026, 6, 1, 12, 0, tzinfo=ZoneInfo("UTC")).timestamp()


def setup() -> tuple[Queue, FakeClock, MemoryStore]:
    clock = FakeClock(START)
    store = MemoryStore(clock=clock)
    return Queue(store), clock, store


def fired_slots(store, name: str) -> list[str]:
    return sorted(o.key for o in store.list("tasks/"))


def test_a_new_schedule_fires_at_its_next_slot_not_now() -> None:
    queue, clock, _ = setup()
    scheduler.add(queue, "tick", "t", every="5m")
    firer = scheduler.firer(queue)
    assert firer.fire_due().fired == []
    clock.advance(299)
    assert firer.fire_due().fired == []
    clock.advance(1)
    report = firer.fire_due()
    assert [(n, s) for n, s, _ in report.fired] == [("tick", START + 300)]
    task = queue.get(report.fired[0][2]).record
    assert task.type == "t" and task.tags == {"schedule": "tick"}
    assert firer.fire_due().fired == []  # the same slot never fires twice


def test_each_slot_fires_once_across_many_firers() -> None:
    queue, clock, store = setup()
    scheduler.add(queue, "every-minute", "t", cron="* * * * *", input={"a": 1})
    scheduler.add(queue, "five", "t", every="5m")
    firers = [scheduler.firer(Queue(store)) for _ in range(6)]
    fired = []
    for _ in range(60):
        clock.advance(60)
        barrier = threading.Barrier(len(firers))
        results: list = []

        def go(f, barrier=barrier, results=results):
            barrier.wait(timeout=10)
            results.extend(f.fire_due().fired)

        threads = [threading.Thread(target=go, args=(f,)) for f in firers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        fired += results
    minutes = sorted(s for n, s, _ in fired if n == "every-minute")
    fives = sorted(s for n, s, _ in fired if n == "five")
    assert minutes == [START + 60 * (i + 1) for i in range(60)]
    assert fives == [START + 300 * (i + 1) for i in range(12)]
    assert len(list(store.list("tasks/"))) == 72


@pytest.mark.parametrize(("policy", "expected"), [
    ("none", []),
    ("latest", [10]),
    ("all", [6, 7, 8, 9, 10]),
])
def test_catch_up_after_an_outage(policy: str, expected: list[int]) -> None:
    queue, clock, _ = setup()
    scheduler.add(queue, "hourly", "t", every="1h", catchup=policy, catchup_limit=5)
    clock.advance(10 * 3600 + 600)  # ten slots missed, the last one 10 minutes ago
    report = scheduler.firer(queue).fire_due()
    assert sorted(s for _, s, _ in report.fired) == [START + 3600 * i for i in expected]
    sched = scheduler.load(queue, "hourly").value
    assert sched.next_slot == START + 11 * 3600
    assert sched.skipped == 10 - len(expected)


def test_slots_within_the_misfire_grace_still_fire_under_policy_none() -> None:
    queue, clock, _ = setup()
    scheduler.add(queue, "m", "t", every="1h", misfire_grace=120)
    clock.advance(3600 + 90)  # the sweeper is 90 s late
    assert len(scheduler.firer(queue).fire_due().fired) == 1


def test_a_firer_killed_between_deciding_and_submitting_is_repaired_once() -> None:
    queue, clock, store = setup()
    scheduler.add(queue, "job", "t", every="1m")
    faulty = FaultyStore(store)
    dying = scheduler.firer(Queue(faulty))
    faulty.inject("put", "before", key_prefix="ready/", times=100)  # dies right after the CAS
    clock.advance(60)
    assert dying.fire_due().fired == []  # it decided the slot, then its submit failed
    assert list(store.list("tasks/")) == []
    history = scheduler.load(queue, "job").value.history
    assert len(history) == 1  # the slot was decided...
    assert history[0].submitted is False  # ...but never confirmed
    other = scheduler.firer(queue)
    assert other.fire_due().repaired == []  # too young: its firer may still be submitting
    clock.advance(scheduler.SETTLE)
    report = other.fire_due()
    assert report.repaired == [history[0].task_id]  # ...so the next firer repairs it
    assert scheduler.load(queue, "job").value.history[0].submitted is True
    assert [o.key for o in store.list("tasks/")] == [f"tasks/{history[0].task_id}.json"]
    # once confirmed, a deleted task (retention, dlq purge) is never submitted again
    store.delete(f"tasks/{history[0].task_id}.json")
    assert scheduler.firer(queue).fire_due().repaired == []
    assert list(store.list("tasks/")) == []


def test_pause_resume_trigger_replace_and_remove() -> None:
    queue, clock, _ = setup()
    scheduler.add(queue, "s", "t", every="1m")
    scheduler.pause(queue, "s")
    clock.advance(600)
    firer = scheduler.firer(queue)
    assert firer.fire_due().fired == []
    scheduler.resume(queue, "s")
    assert firer.fire_due().fired == []  # slots missed while paused are skipped
    clock.advance(60)
    assert len(firer.fire_due().fired) == 1
    task_id = scheduler.trigger(queue, "s")
    assert queue.get(task_id).record.type == "t"
    with pytest.raises(scheduler.ScheduleExists):
        scheduler.add(queue, "s", "t", every="1m")
    edited = scheduler.add(queue, "s", "t2", cron="0 * * * *", tz="Europe/Paris", replace=True)
    assert edited.task_type == "t2" and len(edited.history) == 2
    scheduler.remove(queue, "s")
    with pytest.raises(scheduler.ScheduleNotFound):
        scheduler.load(queue, "s")


@pytest.mark.parametrize("kwargs", [
    {"cron": "61 * * * *"},
    {"cron": "* * * * *", "tz": "Nowhere/City"},
    {"every": "0s"},
    {"every": "soon"},
    {"cron": "0 0 30 2 *"},  # never fires
    {},
    {"cron": "* * * * *", "every": "1m"},
])
def test_invalid_schedules_store_nothing(kwargs) -> None:
    queue, _, store = setup()
    with pytest.raises(InvalidSchedule):
        scheduler.add(queue, "bad", "t", **kwargs)
    assert list(store.list("")) == []


@pytest.mark.parametrize("name", ["../x", "a/b", "x\n", ""])
def test_unsafe_schedule_names_store_nothing(name: str) -> None:
    queue, _, store = setup()
    with pytest.raises(InvalidName):
        scheduler.add(queue, name, "t", every="1m")
    assert list(store.list("")) == []


def test_a_skewed_local_clock_does_not_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    queue, clock, _ = setup()
    scheduler.add(queue, "s", "t", every="1h")
    monkeypatch.setattr("time.time", lambda: START + 10 * 86400)  # this machine is 10 days ahead
    assert scheduler.firer(queue).fire_due().fired == []
    clock.advance(3600)
    assert len(scheduler.firer(queue).fire_due().fired) == 1


@pytest.mark.slow
def test_four_schedulers_on_a_moto_server_fire_every_slot_once(s3_server) -> None:
    from qo.store.s3 import S3Store

    bucket = "qo-sched-race"
    clock = FakeClock(START)
    base = S3Store(bucket, "q", endpoint_url=s3_server.endpoint_url)
    base.create_bucket()
    admin = Queue(ClockedStore(base, clock))
    scheduler.add(admin, "m", "t", every="1m")
    scheduler.add(admin, "paris", "t", cron="*/2 * * * *", tz="Europe/Paris")
    stores = [ClockedStore(S3Store(bucket, "q", endpoint_url=s3_server.endpoint_url), clock)
              for _ in range(4)]
    killer = FaultyStore(stores[0])  # scheduler 0 dies after deciding, now and then
    firers = [scheduler.firer(Queue(killer))] + [scheduler.firer(Queue(s)) for s in stores[1:]]
    for minute in range(30):
        clock.advance(60)
        if minute % 7 == 0:
            killer.inject("put", "before", key_prefix="ready/", times=4)
        errors: list = []

        def go(f, errors=errors):
            try:
                f.fire_due()
            except StoreUnavailable as exc:
                errors.append(exc)

        threads = [threading.Thread(target=go, args=(f,)) for f in firers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    clock.advance(scheduler.SETTLE)
    for f in firers[1:]:
        f.fire_due()  # a last round repairs a slot decided by a dying scheduler at the end
    tasks = [admin.get(o.key[6:-5]).record for o in base.list("tasks/")]
    minute_slots = sorted(float(t.idempotency_key.split("@")[1]) for t in tasks
                          if t.tags["schedule"] == "m")
    assert minute_slots == [START + 60 * (i + 1) for i in range(30)]
    two = sorted(float(t.idempotency_key.split("@")[1]) for t in tasks
                 if t.tags["schedule"] == "paris")
    assert two == [START + 120 * (i + 1) for i in range(15)]
