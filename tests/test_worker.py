"""The worker under real threads: leases, fencing, cancel, timeout, shutdown."""

from __future__ import annotations

import threading

import pytest

from qo.app import App
from qo.models import Status
from qo.protocol import outcome, sweep
from qo.protocol.claim import Claimer
from qo.queue import Queue
from qo.settings import Settings
from qo.store.memory import MemoryStore
from qo.worker import Worker, WorkerOptions

from .helpers import FakeClock, Runs, drain, wait_for


def test_fenced_worker_cannot_overwrite_the_new_owner() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue = Queue(store, Settings(lease_seconds=30))
    handle = queue.submit("t", {"n": 1})
    old = Claimer(store, queue.settings, queues=["default"], task_types={"t"}, owner="old")
    new = Claimer(store, queue.settings, queues=["default"], task_types={"t"}, owner="new")
    stale = old.claim()
    assert stale is not None
    clock.advance(31)  # the old worker stalls past its lease
    assert sweep.reap(store, queue.settings, "reaper").reaped == 1
    assert queue.get(handle.id).record.error.type == "LeaseExpired"
    assert not stale.lease.renew(store)  # its heartbeat learns it lost the lease
    fresh = new.claim()
    assert fresh is not None and fresh.attempt == 2
    assert outcome.succeed(store, fresh, "new result", queue.settings) == outcome.Outcome.RECORDED
    assert outcome.succeed(store, stale, "old result", queue.settings) != outcome.Outcome.RECORDED
    record = queue.get(handle.id).record
    assert record.result == "new result" and record.worker == "new" and record.attempt == 2


def test_lost_attempts_are_counted_once_and_exhaust_to_dead() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue = Queue(store, Settings(lease_seconds=10))
    handle = queue.submit("t", None, max_attempts=2)
    for expected in (Status.PENDING, Status.DEAD):
        claimer = Claimer(store, queue.settings, queues=["default"], task_types={"t"}, owner="w")
        assert claimer.claim() is not None  # then the worker dies
        clock.advance(11)
        queue.sweep()
        queue.sweep()  # a second sweep changes nothing
        assert queue.get(handle.id).status == expected
    record = queue.get(handle.id).record
    assert record.attempt == 2 and record.error.type == "LeaseExpired"
    assert [i.key for i in store.list("dead/")] == [f"dead/default/{handle.id}"]
    assert list(store.list("leases/")) == []


def _app(queue: Queue, gate: threading.Event, runs: Runs, started: threading.Event) -> App:
    app = App(queue)

    @app.task
    def wait_gate(ctx) -> str:
        runs.hit(ctx.task_id)
        started.set()
        while not gate.is_set():
            if ctx.is_cancelled():
                return f"stopped: {ctx.cancel_reason}"
            gate.wait(0.01)
        return "done"

    @app.task(timeout=0.2, max_attempts=1)
    def too_slow(ctx) -> None:
        runs.hit(ctx.task_id)
        ctx.cancelled.wait(30)

    return app


def _start(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def test_cancel_reaches_a_running_handler() -> None:
    store = MemoryStore()
    queue = Queue(store, Settings(lease_seconds=0.3))  # heartbeat every 0.1 s
    gate, started, runs = threading.Event(), threading.Event(), Runs()
    app = _app(queue, gate, runs, started)
    handle = queue.submit("wait_gate")
    worker = Worker(app, queue, WorkerOptions(concurrency=1, poll_max=0.05))
    thread = _start(worker)
    try:
        assert started.wait(10)
        assert handle.status() == Status.RUNNING
        handle.cancel("user asked")
        wait_for(lambda: not list(store.list("leases/")), timeout=10)
        assert handle.status() == Status.CANCELLED
    finally:
        gate.set()
        worker.stop()
        thread.join(10)
    assert queue.get(handle.id).record.cancel_reason == "user asked"
    assert runs.counts[handle.id] == 1


def test_timeout_fails_the_attempt_and_the_worker_moves_on() -> None:
    store = MemoryStore()
    queue = Queue(store)
    gate, started, runs = threading.Event(), threading.Event(), Runs()
    app = _app(queue, gate, runs, started)
    slow = app.submit("too_slow")
    gate.set()
    quick = app.submit("wait_gate")
    worker = Worker(app, queue, WorkerOptions(concurrency=1, burst=True))
    worker.run()
    record = queue.get(slow.id).record
    assert record.status == Status.DEAD and record.error.type == "TaskTimeout"
    assert quick.result(timeout=5) == "done"


def test_graceful_stop_releases_unfinished_tasks_without_using_an_attempt() -> None:
    store = MemoryStore()
    queue = Queue(store)
    gate, started, runs = threading.Event(), threading.Event(), Runs()
    app = _app(queue, gate, runs, started)
    handle = app.submit("wait_gate")
    worker = Worker(app, queue, WorkerOptions(concurrency=1, grace=0.1))
    thread = _start(worker)
    assert started.wait(10)
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert worker.summary.released == 1
    view = queue.get(handle.id)
    assert view.status == Status.PENDING and view.record.attempt == 0
    assert list(store.list("leases/")) == []
    gate.set()  # another worker takes it at once
    drain(queue, app, [handle.id])
    assert handle.result(timeout=5) == "done"


def test_a_handler_exception_or_bad_input_never_kills_the_worker() -> None:
    store = MemoryStore()
    queue = Queue(store)
    app = App(queue)

    @app.task(max_attempts=1)
    def typed(x: int) -> int:
        return x * 2

    bad = queue.submit("typed", {"x": "not a number"})
    wrong_shape = queue.submit("typed", [1, 2, 3])
    good = queue.submit("typed", {"x": 21})
    Worker(app, queue, WorkerOptions(concurrency=2, burst=True)).run()
    assert good.result(timeout=5) == 42
    assert queue.get(bad.id).record.error.type == "ValidationError"
    assert queue.get(wrong_shape.id).status == Status.DEAD


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "moto_server"])
def test_eight_workers_run_each_of_1000_tasks_exactly_once(backend, request, tmp_path) -> None:
    from .conftest import make_store

    store = make_store(backend, request, tmp_path)
    queue = Queue(store)
    runs = Runs()
    app = App(queue)

    @app.task
    def job(ctx, i: int) -> int:
        runs.hit(ctx.task_id)
        return i

    n = 1000 if backend == "local" else 400
    handles = queue.submit_many([{"type": "job", "input": {"i": i}} for i in range(n)])
    workers = [Worker(app, queue, WorkerOptions(concurrency=2, burst=True, poll_max=0.2))
               for _ in range(8)]
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads)
    assert sum(w.summary.succeeded for w in workers) == n
    assert all(runs.counts[h.id] == 1 for h in handles)
    assert [v.status for v in queue.ls(limit=5)] == [Status.SUCCEEDED] * 5
    assert queue.stats() == {}
    assert sum(w.claimer.stats.claims for w in workers) == n  # the conflict share: bench/


def test_a_timed_out_handler_sees_a_stop_reason_that_is_also_its_string() -> None:
    from qo.context import StopReason

    queue = Queue(MemoryStore())
    app = App(queue)
    seen: list[object] = []

    @app.task(timeout=0.2, max_attempts=1)
    def slow(ctx) -> None:
        ctx.cancelled.wait(30)  # set by the worker when the timeout passes
        seen.append(ctx.cancel_reason)

    task = queue.submit("slow", None)
    worker = Worker(app, queue, WorkerOptions(concurrency=1, cancel_wait=30))
    assert worker.run_once()
    wait_for(lambda: bool(seen))
    assert seen == [StopReason.TIMEOUT] and seen[0] == "timeout"
    assert queue.get(task.id).record.error.type == "TaskTimeout"


def test_a_worker_given_a_queue_is_where_its_handlers_submit(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path) -> None:
    monkeypatch.setenv("QO_QUEUE", f"file://{tmp_path}/elsewhere")  # not the worker's store
    app = App()  # no queue of its own

    @app.task(name="parent")
    def parent() -> None:
        child.submit()

    @app.task(name="child")
    def child() -> None:
        pass

    store = MemoryStore()
    queue = Queue(store)
    queue.submit("parent", allow_unregistered=True)
    Worker(app, queue, WorkerOptions(concurrency=1, burst=True)).run()
    views = queue.ls()
    assert sorted(v.record.type for v in views) == ["child", "parent"]
    assert all(v.status == Status.SUCCEEDED for v in views)
    bound = App(Queue(MemoryStore()))  # an app with a queue of its own keeps it
    Worker(bound, queue, WorkerOptions(concurrency=1))
    assert bound.queue is not queue


@pytest.mark.parametrize("retention", [7 * 86_400.0, 0.0], ids=["default", "kept"])
def test_the_workers_sweep_turn_applies_retention(retention: float) -> None:
    from qo.protocol import keys
    from qo.protocol.sweep import TURN_KEY
    from qo.testing.clock import FakeClock as Clock

    clock = Clock()
    store = MemoryStore(clock=clock)
    queue = Queue(store, Settings())
    app = App(queue)
    app.task(name="t")(lambda: None)
    done = queue.submit("t")
    drain(queue, app, [done.id])
    clock.advance(8 * 86_400)  # a week and a day later
    worker = Worker(app, queue, WorkerOptions(concurrency=1, retention=retention,
                                              sweep_interval=0.2))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: store.head(TURN_KEY) is not None and worker.housekept_at is not None)
        turn = worker.housekept_at
        assert turn is not None
        # the housekeeper went round again: the turn's sweep and retention are over
        wait_for(lambda: (worker.housekept_at or 0) > turn)
    finally:
        worker.stop()
        thread.join(30)
    assert (store.head(keys.task_key(done.id)) is None) == bool(retention)
