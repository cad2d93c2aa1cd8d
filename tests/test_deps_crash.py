"""Crash windows of dependencies (docs/protocol.md section 10): fail each write of a
child's submit and of a parent's end, before or after it lands; nothing waits forever."""

from __future__ import annotations

import pytest

from qo.app import App
from qo.errors import StoreUnavailable
from qo.models import TERMINAL, Status
from qo.queue import Queue
from qo.settings import Settings
from qo.store.faulty import FaultyStore
from qo.store.memory import MemoryStore
from qo.worker import Worker, WorkerOptions

from .helpers import FakeClock, Runs
from .test_crash_windows import crash_plan

pytestmark = pytest.mark.usefixtures("no_backoff_sleeps")

DAY = 86_400.0


def build(clock: FakeClock) -> tuple[FaultyStore, Queue, App, Runs]:
    store = FaultyStore(MemoryStore(clock=clock))
    queue = Queue(store, Settings(lease_seconds=30))
    app = App(queue)
    runs = Runs()

    @app.task(max_attempts=6)
    def ok(ctx, n: int) -> int:
        runs.hit(ctx.task_id)
        return n

    @app.task(max_attempts=1)
    def bad(ctx, n: int) -> int:
        runs.hit(ctx.task_id)
        raise RuntimeError("bad")

    return store, queue, app, runs


def submit(queue: Queue, task_type: str, n: int, after: list[str]) -> str:
    for _ in range(5):
        try:
            return queue.submit(task_type, {"n": n}, key=f"k{n}", depends_on=after).id
        except StoreUnavailable:
            continue
    raise AssertionError("submit never succeeded")


def graph(queue: Queue) -> dict[str, Status]:
    """A diamond a -> (b, c) -> d, and a failing e with a dependent f: the expected ends."""
    a = submit(queue, "ok", 1, [])
    b, c = submit(queue, "ok", 2, [a]), submit(queue, "ok", 3, [a])
    d = submit(queue, "ok", 4, [b, c])
    e = submit(queue, "bad", 5, [])
    f = submit(queue, "ok", 6, [e, d])
    done = Status.SUCCEEDED
    return {a: done, b: done, c: done, d: done, e: Status.DEAD, f: Status.DEAD}


def chaos_drain(queue: Queue, app: App, ids: list[str], clock: FakeClock) -> None:
    idle = 0
    for _ in range(200):
        worker = Worker(app, queue, WorkerOptions(concurrency=1))
        try:
            ran = 0
            while worker.run_once():
                ran += 1
            queue.sweep()
            if all(queue.get(i).record.status in TERMINAL for i in ids):
                return
            idle = 0 if ran else idle + 1
            # leases expire; then the audit's daily pass (it judges records 5 min old)
            clock.advance(DAY + 1 if idle > 3 else queue.settings.lease_seconds + 1)
            queue.sweep()
        except StoreUnavailable:
            continue  # this worker process "died"; a new one starts
    raise AssertionError({i: queue.get(i).record.status for i in ids})


GRID = [(prefix, op, mode, nth) for prefix in ("deps/", "tasks/", "ready/")
        for op in ("put", "get", "list") for mode in ("before", "after") for nth in (1, 2, 4)
        if (op == "put" or mode == "before") and (op != "list" or prefix == "deps/")]
FAST = {("deps/", "put", "before", 1), ("deps/", "put", "after", 2),
        ("tasks/", "put", "after", 4), ("tasks/", "get", "before", 2)}


@pytest.mark.parametrize(("prefix", "op", "mode", "nth"), [
    case if case in FAST else pytest.param(*case, marks=pytest.mark.slow) for case in GRID])
def test_a_failed_request_never_leaves_a_dependent_waiting(
        prefix: str, op: str, mode: str, nth: int) -> None:
    clock = FakeClock()
    store, queue, app, runs = build(clock)
    crash_plan(store, op, mode, prefix, nth)
    expected = graph(queue)
    chaos_drain(queue, app, list(expected), clock)
    store.clear()
    for task_id, status in expected.items():
        record = queue.get(task_id).record
        assert record.status == status, (task_id, record)
        assert runs.counts[task_id] <= max(1, record.attempt)
    assert list(store.list("leases/")) == []
