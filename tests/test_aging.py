"""Priority aging, per queue (issue 17; docs/protocol.md section 12).

An aging queue's ready markers sort by ``ready time + (255 - priority) × aging``:
a task of priority p is never passed by a task of priority q that became
ready more than (q - p) × aging seconds after it. Strict priority stays the
default, and every reader parses both marker forms.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qo.app import App
from qo.errors import QoError
from qo.models import Status, dumps
from qo.protocol import admin, backpressure, keys, outcome, sweep
from qo.protocol.claim import Claimer
from qo.protocol.keys import Marker, parse_delayed_key, parse_ready_key
from qo.queue import Queue
from qo.store.base import Store
from qo.store.memory import MemoryStore
from qo.store.metrics import diff

from .helpers import ClockedStore, FakeClock


@pytest.fixture(params=["memory", pytest.param("moto_server", marks=pytest.mark.slow)])
def flood_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """``any_store`` for the floods: ~100 claims take seconds on the moto server."""
    from .conftest import make_store

    return make_store(request.param, request, tmp_path)


def clocked(store: Store) -> tuple[Store, FakeClock]:
    clock = FakeClock()
    return ClockedStore(store, clock), clock


def claimer(store: Store, queue: Queue) -> Claimer:
    """One uncontended worker that lists before every claim: exact key order."""
    return Claimer(store, queue.settings, queues=["default"], task_types=None, owner="w",
                   listing_ttl=0.0)


def flood(store: Store, clock: FakeClock, steps: int) -> tuple[int | None, list[float]]:
    """A low-priority task, then every second 3 high-priority tasks and 2 claims.

    Returns the step at which the low task was claimed (None: never) and, for
    every task claimed before it, how many seconds after it that task was ready.
    """
    queue = Queue(store)
    start = store.now()
    low = queue.submit("t", "low", priority=100)
    worker = claimer(store, queue)
    passed: list[float] = []
    for step in range(1, steps + 1):
        clock.advance(1)
        for _ in range(3):
            queue.submit("t", "high", priority=110)
        for _ in range(2):
            claim = worker.claim()
            assert claim is not None
            if claim.task_id == low.id:
                return step, passed
            passed.append(claim.record.available_at - start)
    return None, passed


def test_aging_lets_an_old_low_priority_task_run_during_a_flood(flood_store: Store) -> None:
    store, clock = clocked(flood_store)
    backpressure.set_settings(store, "default", aging=1)  # 1 s of waiting = 1 level
    step, passed = flood(store, clock, steps=40)
    # 10 levels apart: only the highs ready within 10 s of it go first (3 a second;
    # those of the 10th second tie and win on priority), 2 claims a second.
    assert step == 16
    assert len(passed) == 30 and max(passed) <= (110 - 100) * 1


def test_strict_priority_stays_the_default(flood_store: Store) -> None:
    store, clock = clocked(flood_store)
    step, passed = flood(store, clock, steps=25)
    assert step is None and len(passed) == 50  # starved for as long as the flood lasts
    assert [i.key.split("/")[2] for i in store.list(keys.READY)][-1] == f"{255 - 100:03d}"


def test_without_aging_a_queue_keeps_exact_priority_then_time_order() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue = Queue(store)
    ids = []
    for priority in (10, 200, 10, 200):
        ids.append(queue.submit("t", priority=priority).id)
        clock.advance(1)
    worker = claimer(store, queue)
    order = [worker.claim().task_id for _ in range(4)]  # type: ignore[union-attr]
    assert order == [ids[1], ids[3], ids[0], ids[2]]


def test_with_aging_equal_effective_times_interleave_priorities() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    backpressure.set_settings(store, "default", aging=10)
    queue = Queue(store)
    old_low = queue.submit("t", priority=100).id
    clock.advance(50)
    fresh_high = queue.submit("t", priority=110).id  # 10 levels = 100 s: ahead of old_low
    clock.advance(60)
    later_high = queue.submit("t", priority=110).id  # 110 s after old_low: behind it
    worker = claimer(store, queue)
    order = [worker.claim().task_id for _ in range(3)]  # type: ignore[union-attr]
    assert order == [fresh_high, old_low, later_high]


# -- the key forms ----------------------------------------------------------------------


def test_both_marker_forms_read_back_and_sort_after_paused() -> None:
    aged = Marker("q", 7, 1_800_000_000.25, "abc", "send", 2, ("gpu",), aging=30)
    assert aged.ready_key == (f"ready/q/aged/{1_800_000_000_250_000 + 248 * 30_000_000:016d}"
                              "-248-30-abc-send@2~gpu")
    assert parse_ready_key(aged.ready_key) == aged
    assert parse_delayed_key(aged.delayed_key) == aged
    assert aged.delayed_key == "delayed/1800000000250000/q/248.30/abc-send@2~gpu"
    strict = Marker("q", 7, 1_800_000_000.25, "abc", "send", 2, ("gpu",))
    assert parse_ready_key(strict.ready_key) == strict and strict.aging == 0
    assert parse_delayed_key(strict.delayed_key) == strict
    assert strict.ready_key == "ready/q/248/1800000000250000-abc-send@2~gpu"  # as before
    assert sorted([aged.ready_key, strict.ready_key, keys.paused_key("q")]) == [
        keys.paused_key("q"), strict.ready_key, aged.ready_key]
    for bad in ("ready/q/aged/12-248-abc-send", "ready/q/aged/x-248-30-abc-send",
                "ready/q/aged/12-300-30-abc-send", "ready/q/aged/12-248-0-abc-send"):
        assert parse_ready_key(bad) is None, bad
    assert parse_delayed_key("delayed/1/q/248.x/abc-send") is None
    assert parse_delayed_key("delayed/1/q/248.0/abc-send") is None


def test_a_record_with_aging_is_schema_3_and_one_without_is_unchanged() -> None:
    store = MemoryStore(clock=FakeClock())
    backpressure.set_settings(store, "aging", aging=5)
    queue = Queue(store)
    aged = queue.get(queue.submit("t", queue="aging").id).record
    plain = queue.get(queue.submit("t").id).record
    assert aged.aging == 5 and plain.aging is None
    assert dumps(aged).startswith(b'{"v":3,') and b'"aging":5' in dumps(aged)
    assert dumps(plain).startswith(b'{"v":1,') and b"aging" not in dumps(plain)


def test_an_aging_task_keeps_its_form_through_retry_cancel_stats_and_ls(
        any_store: Store) -> None:
    store, clock = clocked(any_store)
    queue = Queue(store)
    strict_before = queue.submit("t", "before", priority=1).id  # written before aging was set
    backpressure.set_settings(store, "default", aging=2)
    queue.registry.forget()
    aged = queue.submit("t", "aged", priority=250).id
    ready = [i.key for i in store.list(keys.READY)]
    assert ready[0].split("/")[2] == "254" and ready[1].split("/")[2] == keys.AGED_DIR
    assert admin.stats(store)["default"]["pending"] == 2
    assert {v.record.id for v in admin.ls(store, status=Status.PENDING)} == {strict_before, aged}

    worker = claimer(store, queue)
    first = worker.claim()
    assert first is not None and first.task_id == strict_before  # old markers stay readable
    second = worker.claim()
    assert second is not None and second.task_id == aged
    err = outcome.error_info(RuntimeError("x"), second.attempt, True)
    assert outcome.fail(store, second, err, retryable=True) == "recorded"
    [delayed] = [parse_delayed_key(i.key) for i in store.list(keys.DELAYED)]
    assert delayed is not None and delayed.aging == 2 and delayed.task_id == aged
    clock.advance(400)
    assert sweep.promote(store).promoted == 1
    [again] = [parse_ready_key(i.key) for i in store.list(keys.READY)]
    assert again is not None and again.aging == 2 and again.task_id == aged
    queue.cancel(aged)
    assert list(store.list(keys.READY)) == []


def test_app_submit_applies_its_queues_aging_from_the_first_submit() -> None:
    store = MemoryStore(clock=FakeClock())
    backpressure.set_settings(store, "default", aging=5)
    app = App(Queue(store))
    app.task(name="t")(lambda: None)
    first = app.submit("t")  # lists the registry, where the queue's settings are
    assert app.queue.get(first.id).record.aging == 5
    before = store.counts.snapshot()
    second = app.submit("t")  # the listing is fresh: nothing but the task's two writes
    assert diff(store.counts.snapshot(), before) == {"PUT": 2}
    assert app.queue.get(second.id).record.aging == 5
    assert sorted(parse_ready_key(i.key).aging for i in store.list(keys.READY)) == [5, 5]  # type: ignore[union-attr]


@pytest.mark.parametrize("aging", [0, 86_401])
def test_aging_out_of_range_is_refused(aging: int) -> None:
    with pytest.raises(QoError, match="invalid setting aging of queue 'default'"):
        backpressure.set_settings(MemoryStore(), "default", aging=aging)


def test_a_fleet_claims_an_aging_queue_of_mixed_priorities_without_racing() -> None:
    """The fleet ranking (qo/protocol/ownership.py) compares real priorities; on an aged
    page that is only a preference: every task is claimed once, with few lost races."""
    import random

    from qo.models import WorkerInfo
    from qo.protocol.ownership import STEP, Fleet

    clock = FakeClock()
    store = MemoryStore(clock=clock)
    backpressure.set_settings(store, "default", aging=1)
    queue = Queue(store)
    workers = [f"w{i}" for i in range(6)]
    for w in workers:
        now = store.now()
        store.put(keys.worker_key(w), dumps(WorkerInfo(
            id=w, host="h", pid=1, queues=["default"], task_types=["t"], concurrency=1,
            started_at=now, seen_at=now)))
    rng = random.Random(3)
    n = 180
    queue.submit_many([{"type": "t", "input": i, "priority": rng.choice([10, 128, 250])}
                       for i in range(n)])
    claimers = [Claimer(store, queue.settings, queues=["default"], task_types={"t"}, owner=w,
                        rng=random.Random(i), fleet=Fleet(store, w))
                for i, w in enumerate(workers)]
    claimed: list[str] = []
    for _ in range(10 * n):
        held = [c for c in (claimer.claim() for claimer in claimers) if c is not None]
        for claim in held:
            outcome.succeed(store, claim, None, queue.settings)
        claimed += [c.task_id for c in held]
        if len(claimed) == n:
            break
        if not held:
            clock.advance(STEP)
    assert len(claimed) == len(set(claimed)) == n
    assert sum(c.stats.lease_conflicts for c in claimers) / n <= 0.05


def test_what_a_worker_s_handlers_submit_follows_the_queue_s_aging() -> None:
    from qo.worker import Worker, WorkerOptions

    store = MemoryStore(clock=FakeClock())
    backpressure.set_settings(store, "default", aging=5)
    app = App(Queue(store))
    children: list[str] = []
    child = app.task(name="child")(lambda: None)

    @app.task(name="parent")
    def parent() -> None:
        children.append(child.submit().id)

    parent_id = Queue(store).submit("parent", allow_unregistered=True).id
    Worker(app, options=WorkerOptions(concurrency=1, burst=True)).run()
    assert app.queue.get(parent_id).record.aging == 5
    [child_id] = children
    assert app.queue.get(child_id).record.aging == 5  # App.submit, after the worker's LIST
