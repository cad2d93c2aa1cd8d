"""Crash windows: fail each write of each transition, before or after it lands.

The driver plays a worker process that dies whenever a store call fails for
good (every retry of ``qo.protocol.cas`` failed): its in-flight work is abandoned, a
new worker starts, sweeps run and the store clock moves past lease expiry.
Every task must still end ``succeeded``, and never run more often than the
attempts its record counts (a second run only follows a lost lease).
"""

from __future__ import annotations

import itertools

import pytest

from qo.app import App
from qo.errors import StoreUnavailable
from qo.models import Status
from qo.protocol.cas import ATTEMPTS
from qo.queue import Queue
from qo.settings import Settings
from qo.store.faulty import FaultyStore
from qo.store.memory import MemoryStore
from qo.worker import Worker, WorkerOptions

from .helpers import FakeClock, Runs, all_terminal

PREFIXES = ["ready/", "tasks/", "leases/", "delayed/", "dead/"]

pytestmark = pytest.mark.usefixtures("no_backoff_sleeps")  # a fake clock, one thread


def build(clock: FakeClock) -> tuple[FaultyStore, Queue, App, Runs]:
    store = FaultyStore(MemoryStore(clock=clock))
    queue = Queue(store, Settings(lease_seconds=30))
    app = App(queue)
    runs = Runs()

    @app.task(max_attempts=6)
    def ok(ctx, n: int) -> int:
        runs.hit(ctx.task_id)
        return n

    @app.task(max_attempts=6)
    def flaky(ctx, n: int) -> int:
        runs.hit(ctx.task_id)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return n

    return store, queue, app, runs


def submit_all(queue: Queue) -> list[str]:
    """Submit with idempotency keys, retrying like a client whose call failed."""
    ids = []
    for i, kind in enumerate(["ok", "flaky", "ok", "flaky"]):
        for _ in range(5):
            try:
                ids.append(queue.submit(kind, {"n": i}, key=f"k{i}",
                                        retry={"base": 0.5, "cap": 0.5}).id)
                break
            except StoreUnavailable:
                continue
        else:
            raise AssertionError("submit never succeeded")
    return ids


def chaos_drain(queue: Queue, app: App, ids: list[str], clock: FakeClock) -> int:
    crashes = 0
    for _ in range(100):
        worker = Worker(app, queue, WorkerOptions(concurrency=1))
        try:
            while worker.run_once():
                pass
            queue.sweep()
            if all_terminal(queue, ids):
                return crashes
            worker.claimer.forget()
            if not worker.run_once():
                clock.advance(queue.settings.lease_seconds + 1)
                queue.sweep()
        except StoreUnavailable:
            crashes += 1  # this worker process "died"; a new one starts
    raise AssertionError("tasks never finished")


def crash_plan(store: FaultyStore, op: str, mode: str, prefix: str, nth: int) -> None:
    """Fail the nth call of ``op`` under ``prefix`` for good (all its retries)."""
    seen = itertools.count(1)
    target = {"hit": False}

    def when(_key: str) -> bool:
        if target["hit"]:
            return False
        if next(seen) == nth:
            target["hit"] = True
            return True
        return False

    first = "after" if mode == "after" else "before"
    store.inject(op, first, key_prefix=prefix, when=when)  # type: ignore[arg-type]
    # the retries of that same call fail too, so the caller really gives up
    store.inject(op, "before", key_prefix=prefix, times=ATTEMPTS - 1,  # type: ignore[arg-type]
                 when=lambda _k: target["hit"])


@pytest.mark.parametrize("nth", [1, 2, 3])
@pytest.mark.parametrize("mode", ["before", "after"])
@pytest.mark.parametrize("op", ["put", "delete", "get"])
@pytest.mark.parametrize("prefix", PREFIXES)
def test_a_failed_write_loses_nothing(prefix: str, op: str, mode: str, nth: int) -> None:
    if op == "get" and mode == "after":
        mode = "before"  # a read has no side effect: both modes are the same
    clock = FakeClock()
    store, queue, app, runs = build(clock)
    crash_plan(store, op, mode, prefix, nth)
    ids = submit_all(queue)
    chaos_drain(queue, app, ids, clock)
    for task_id in ids:
        record = queue.get(task_id).record
        assert record.status == Status.SUCCEEDED, (task_id, record)
        assert runs.counts[task_id] <= record.attempt
    assert list(store.list("leases/")) == []
    # stale hints may remain; the next claimer that meets one removes it
    queue.sweep()
    assert Worker(app, queue).run_once() is False
    assert list(store.list("ready/")) == []
    assert list(store.list("delayed/")) == []


def test_random_faults_lose_nothing() -> None:
    clock = FakeClock()
    store, queue, app, runs = build(clock)
    store.rates.update({"before": 0.05, "after": 0.05})
    store._random.seed(7)
    ids = submit_all(queue)
    crashes = chaos_drain(queue, app, ids, clock)
    store.clear()
    for task_id in ids:
        record = queue.get(task_id).record
        assert record.status == Status.SUCCEEDED
        assert runs.counts[task_id] <= record.attempt
    assert crashes >= 0
