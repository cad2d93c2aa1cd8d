"""Async handlers in the worker: one event loop, the same guarantees as threads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from qo.aio_runner import AsyncRunner
from qo.app import App
from qo.context import Context
from qo.middleware import TaskCall
from qo.models import Status
from qo.protocol import keys
from qo.protocol.claim import Claimer
from qo.queue import Queue, TaskHandle
from qo.runner import Runner
from qo.serverless.worker import InvocationDeadline
from qo.settings import Settings
from qo.store.memory import MemoryStore
from qo.testing import drain, immediate
from qo.worker import Worker, WorkerOptions

from .helpers import wait_for

pytestmark = pytest.mark.timeout(180)


def _start(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


class Seen:
    """What async handlers saw, written from the loop, read by the test."""

    def __init__(self) -> None:
        self.started: dict[str, str] = {}  # task id -> thread name
        self.cancelled: list[str] = []
        self.reasons: dict[str, str | None] = {}
        self.event = threading.Event()


def _app(queue: Queue, seen: Seen) -> App:
    app = App(queue)

    @app.task(max_attempts=1)
    async def hold(ctx: Context) -> str:
        seen.started[ctx.task_id] = threading.current_thread().name
        seen.event.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.cancelled.append(ctx.task_id)
            seen.reasons[ctx.task_id] = ctx.cancel_reason
            raise
        return "slept"

    @app.task(max_attempts=1, timeout=0.3)
    async def too_slow(ctx: Context) -> None:
        await hold.definition.fn(ctx)

    @app.task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    @app.task
    def sync_double(x: int) -> dict[str, Any]:
        return {"x": 2 * x, "thread": threading.current_thread().name}

    return app


def test_an_async_handler_runs_on_the_loop_and_its_result_is_recorded() -> None:
    queue = Queue(MemoryStore())
    app = _app(queue, Seen())
    handles = [app.submit("double", {"x": n}) for n in range(5)]
    worker = Worker(app, queue, WorkerOptions(concurrency=3, burst=True))
    assert isinstance(worker.runner, AsyncRunner)
    summary = worker.run()
    assert [h.result(timeout=5) for h in handles] == [0, 2, 4, 6, 8]
    assert summary.succeeded == 5 and summary.abandoned == 0


def test_a_timed_out_coroutine_is_cancelled_and_the_attempt_fails() -> None:
    queue = Queue(MemoryStore())
    seen = Seen()
    app = _app(queue, seen)
    slow = app.submit("too_slow")
    quick = app.submit("double", {"x": 4})
    Worker(app, queue, WorkerOptions(concurrency=2, burst=True)).run()
    record = queue.get(slow.id).record
    assert record.status == Status.DEAD and record.error is not None
    assert record.error.type == "TaskTimeout"
    assert seen.cancelled == [slow.id] and seen.reasons[slow.id] == "timeout"
    assert seen.started[slow.id] == "qo-loop"
    assert quick.result(timeout=5) == 8


@contextlib.contextmanager
def _holding(lease_seconds: float = 2.0) -> Iterator[tuple[Queue, Seen, TaskHandle, Worker]]:
    """A worker running the ``hold`` coroutine (a heartbeat every lease / 3); stopped after."""
    queue = Queue(MemoryStore(), Settings(lease_seconds=lease_seconds))
    seen = Seen()
    app = _app(queue, seen)
    handle = app.submit("hold")
    worker = Worker(app, queue, WorkerOptions(concurrency=2, poll_max=0.05))
    thread = _start(worker)
    try:
        assert seen.event.wait(30)
        yield queue, seen, handle, worker
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()


def test_cancel_reaches_a_running_coroutine() -> None:
    with _holding() as (queue, seen, handle, worker):
        handle.cancel("user asked")
        wait_for(lambda: seen.cancelled == [handle.id], timeout=30)
        wait_for(lambda: not list(queue.store.list("leases/")), timeout=30)
    view = queue.get(handle.id)
    assert view.status == Status.CANCELLED and view.record.cancel_reason == "user asked"
    assert seen.reasons[handle.id] == "cancelled" and worker.summary.cancelled == 1


def test_a_lost_lease_cancels_the_coroutine_and_its_outcome_is_dropped() -> None:
    with _holding() as (queue, seen, handle, worker):
        lease = keys.lease_key("default", handle.id)
        taken = queue.store.get(lease)
        assert taken is not None
        queue.store.put(lease, taken.body)  # another owner's write: the renewal CAS now fails
        wait_for(lambda: seen.cancelled == [handle.id], timeout=30)
        wait_for(lambda: worker.summary.fenced == 1, timeout=30)
    assert seen.reasons[handle.id] == "lease lost"
    record = queue.get(handle.id).record
    # nothing of the fenced run was recorded: the task waits for the reaper (or was reaped)
    assert record.status in (Status.RUNNING, Status.PENDING) and record.result is None


def test_a_graceful_stop_hands_back_an_async_task_without_using_an_attempt() -> None:
    store = MemoryStore()
    queue = Queue(store)
    seen = Seen()
    app = _app(queue, seen)
    handle = app.submit("hold")
    worker = Worker(app, queue, WorkerOptions(concurrency=2, grace=0.1))
    thread = _start(worker)
    assert seen.event.wait(30)
    worker.stop()
    thread.join(60)
    assert not thread.is_alive()
    assert worker.summary.released == 1 and worker.summary.abandoned == 0
    assert seen.reasons[handle.id] == "worker shutting down"
    view = queue.get(handle.id)
    assert view.status == Status.PENDING and view.record.attempt == 0
    assert list(store.list("leases/")) == []


def test_a_stop_waits_for_async_tasks_within_the_grace_period() -> None:
    store = MemoryStore()
    queue = Queue(store)
    app = App(queue)
    started, gate = threading.Event(), threading.Event()

    @app.task
    async def gated() -> str:
        started.set()
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return "done"

    handle = app.submit("gated")
    worker = Worker(app, queue, WorkerOptions(concurrency=2, grace=120))
    thread = _start(worker)
    assert started.wait(30)
    worker.stop()
    assert thread.is_alive()  # draining: the task may finish
    gate.set()
    thread.join(60)
    assert handle.result(timeout=5) == "done" and worker.summary.released == 0


def test_200_async_tasks_run_at_once_on_a_few_threads() -> None:
    n = 200
    queue = Queue(MemoryStore())
    app = App(queue)
    lock, all_in = threading.Lock(), threading.Event()
    inside = [0]

    @app.task
    async def wait_for_all(i: int) -> int:
        with lock:
            inside[0] += 1
            if inside[0] == n:
                all_in.set()
        while not all_in.is_set():
            await asyncio.sleep(0.01)
        return i

    handles = queue.submit_many([{"type": "wait_for_all", "input": {"i": i}} for i in range(n)])
    worker = Worker(app, queue, WorkerOptions(concurrency=n, poll_max=0.05))
    before = set(threading.enumerate())  # (other tests may leave threads behind)
    thread = _start(worker)
    try:
        assert all_in.wait(120)  # all 200 are in flight at once
        names = [t.name for t in threading.enumerate() if t not in before and t is not thread]
    finally:
        wait_for(lambda: worker.summary.succeeded == n, timeout=120)
        worker.stop()
        thread.join(60)
    assert [h.result(timeout=5) for h in handles] == list(range(n))
    qo_threads = [name for name in names if name.startswith("qo-")]
    assert not [name for name in qo_threads if name.startswith("qo-task-")]
    assert len([name for name in qo_threads if name.startswith("qo-slot-")]) == 8
    assert len(qo_threads) <= 8 + 1 + 8 + 4 + 1  # slots, the loop, its two pools, housekeeping


def test_sync_and_async_handlers_mix_in_one_worker() -> None:
    queue = Queue(MemoryStore())
    app = _app(queue, Seen())
    async_handles = [app.submit("double", {"x": n}) for n in range(4)]
    sync_handles = [app.submit("sync_double", {"x": n}) for n in range(4)]
    worker = Worker(app, queue, WorkerOptions(concurrency=4, burst=True))
    assert worker.threads == 4  # a sync handler needs a slot thread each
    worker.run()
    assert [h.result(timeout=5) for h in async_handles] == [0, 2, 4, 6]
    results = [h.result(timeout=5) for h in sync_handles]
    assert [r["x"] for r in results] == [0, 2, 4, 6]
    assert all(r["thread"].startswith("qo-task-") for r in results)


def test_middleware_wraps_sync_and_async_handlers() -> None:
    queue = Queue(MemoryStore())
    app = _app(queue, Seen())
    calls: list[tuple[str, str]] = []

    @app.middleware
    def plain(call: TaskCall, call_next: Any) -> Any:
        calls.append(("plain", call.task_type))
        return call_next(call)

    @app.middleware
    async def awaited(call: TaskCall, call_next: Any) -> Any:
        calls.append(("async before", call.task_type))
        result = await call_next(call)
        calls.append(("async after", call.task_type))
        return result

    a = app.submit("double", {"x": 1})
    Worker(app, queue, WorkerOptions(concurrency=1, burst=True)).run()
    s = app.submit("sync_double", {"x": 1})
    Worker(app, queue, WorkerOptions(concurrency=1, burst=True)).run()
    assert a.result(timeout=5) == 2 and s.result(timeout=5)["x"] == 2
    assert calls == [("plain", "double"), ("async before", "double"), ("async after", "double"),
                     ("plain", "sync_double"), ("async before", "sync_double"),
                     ("async after", "sync_double")]


def test_the_thread_runner_runs_an_async_handler_and_cancels_it_on_timeout() -> None:
    """The Lambda worker and ``run_once`` use the thread runner: it runs coroutines too."""
    queue = Queue(MemoryStore())
    seen = Seen()
    app = _app(queue, seen)
    quick, slow = app.submit("double", {"x": 3}), app.submit("too_slow")
    worker = Worker(app, queue)
    assert worker.run_once() and worker.run_once()
    assert quick.result(timeout=5) == 6
    assert queue.get(slow.id).record.error.type == "TaskTimeout"
    wait_for(lambda: seen.cancelled == [slow.id], timeout=30)
    assert seen.started[slow.id].startswith("qo-task-")


def test_an_async_result_that_cannot_be_stored_fails_without_retry() -> None:
    queue = Queue(MemoryStore())
    app = App(queue)

    @app.task
    async def unencodable() -> object:
        return {1, 2}

    handle = app.submit("unencodable")
    Worker(app, queue, WorkerOptions(concurrency=2, burst=True)).run()
    record = queue.get(handle.id).record
    assert record.status == Status.DEAD and record.attempt == 1
    assert record.error is not None and record.error.type == "InvalidPayload"


def test_heartbeats_keep_a_long_coroutine_leased_past_many_lease_lengths() -> None:
    store = MemoryStore()
    queue = Queue(store, Settings(lease_seconds=1.5, repair_lease_seconds=1.5))
    app = App(queue)
    renewals = []

    @app.task
    async def long(ctx: Context) -> int:
        lease = keys.lease_key("default", ctx.task_id)
        for _ in range(2400):  # until six renewals of a 1.5 s lease (3 s at the least)
            if len(renewals) >= 6:
                break
            await asyncio.sleep(0.05)
            now = store.head(lease)
            if now is not None and (not renewals or renewals[-1] != now.etag):
                renewals.append(now.etag)
        return ctx.attempt

    handle = app.submit("long")
    worker = Worker(app, queue, WorkerOptions(concurrency=2, burst=True, sweep_interval=0.2))
    summary = worker.run()  # its housekeeper reaps expired leases meanwhile
    assert len(renewals) >= 6
    assert handle.result(timeout=5) == 1  # never reaped: the first attempt succeeded
    assert summary.succeeded == 1 and summary.fenced == 0


def test_an_async_handler_heartbeats_without_blocking_the_loop() -> None:
    queue = Queue(MemoryStore())
    app = App(queue)

    seen: list[bool] = []

    @app.task
    async def beat(ctx: Context) -> None:
        seen.append(await ctx.aheartbeat())
        await queue_cancel(ctx.task_id)
        seen.extend([await ctx.aheartbeat(), ctx.is_cancelled()])

    async def queue_cancel(task_id: str) -> None:
        await asyncio.to_thread(queue.cancel, task_id, "from inside")

    handle = app.submit("beat")
    summary = Worker(app, queue, WorkerOptions(concurrency=2, burst=True)).run()
    assert seen == [True, False, True]  # the second heartbeat found the task cancelled
    assert queue.get(handle.id).status == Status.CANCELLED and summary.cancelled == 1


def test_the_lambda_runner_cancels_an_async_handler_at_the_invocation_deadline() -> None:
    """The Lambda worker's runner: the thread runner, with the invocation's deadline."""
    queue = Queue(MemoryStore())
    seen = Seen()
    app = _app(queue, seen)
    handle = app.submit("hold")
    claim = Claimer(queue.store, queue.settings, queues=["default"], task_types=set(app.tasks),
                    owner="lambda-test").claim()
    assert claim is not None
    runner = Runner(app, queue.store, queue.settings, deadline=time.monotonic() + 0.3,
                    deadline_error=InvocationDeadline)
    runner.run(claim)
    record = queue.get(handle.id).record
    assert record.error is not None and record.error.type == "InvocationDeadline"
    wait_for(lambda: seen.cancelled == [handle.id], timeout=30)
    assert seen.reasons[handle.id] == "timeout" and seen.started[handle.id].startswith("qo-task-")


def test_a_handler_that_blocks_the_loop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    queue = Queue(MemoryStore())
    app = App(queue)

    @app.task
    async def blocking() -> str:
        await asyncio.sleep(0)
        time.sleep(2.0)  # noqa: ASYNC251 - the mistake: a blocking call on the loop
        return "done"

    handle = app.submit("blocking")
    with caplog.at_level(logging.WARNING, logger="qo.worker"):
        Worker(app, queue, WorkerOptions(concurrency=2, burst=True)).run()
    assert handle.result(timeout=5) == "done"
    blocked = [r for r in caplog.records if getattr(r, "event", None) == "loop_blocked"]
    assert blocked and blocked[0].tasks == [handle.id]  # type: ignore[attr-defined]


def test_a_plain_middleware_gets_a_sync_handlers_value_beside_async_middleware() -> None:
    queue = Queue(MemoryStore())
    app = App(queue)

    @app.middleware
    def wrap(call: TaskCall, call_next: Any) -> Any:
        return {"wrapped": call_next(call)}

    @app.middleware
    async def noted(call: TaskCall, call_next: Any) -> Any:
        await asyncio.sleep(0)
        return await call_next(call)

    @app.task(max_attempts=1)
    def plain(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x + 1

    good, bad = app.submit("plain", {"x": 1}), app.submit("plain", {"x": -1})
    Worker(app, queue, WorkerOptions(concurrency=2, burst=True)).run()
    assert good.result(timeout=5) == {"wrapped": 2}
    error = queue.get(bad.id).record.error
    assert error is not None and error.type == "ValueError" and error.message == "negative"


def test_async_handlers_run_under_the_testing_helpers() -> None:
    app = App()

    @app.task
    async def triple(x: int) -> int:
        await asyncio.sleep(0)
        return 3 * x

    with immediate(app):
        handle = app.submit("triple", {"x": 5})
        assert handle.status() is Status.SUCCEEDED and handle.result(timeout=0) == 15
    queue = Queue(MemoryStore())
    app.use(queue)
    handles = [app.submit("triple", {"x": n}) for n in range(3)]
    drain(queue, app, [h.id for h in handles])
    assert [h.result(timeout=0) for h in handles] == [0, 3, 6]
