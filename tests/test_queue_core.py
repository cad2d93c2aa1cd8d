"""Behaviour of the core queue, run against every backend where time is real."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from qo.app import App, Fatal
from qo.errors import InvalidName
from qo.models import Status
from qo.protocol.admin import InvalidTransition, TaskNotFound
from qo.protocol.claim import Claimer
from qo.protocol.records import InvalidPayload, PayloadTooLarge
from qo.protocol.submit import IdempotencyConflict
from qo.queue import Queue, TaskCancelled, TaskFailed
from qo.settings import Settings
from qo.store.base import Store
from qo.worker import Worker, WorkerOptions

from .helpers import Runs, drain


def make_app(store: Store, settings: Settings | None = None) -> tuple[Queue, App, Runs]:
    queue = Queue(store, settings or Settings())
    app = App(queue)
    runs = Runs()

    @app.task
    def add(ctx, x: int, y: int) -> int:
        runs.hit(ctx.task_id)
        return x + y

    @app.task(max_attempts=2, no_retry=(KeyError,))
    def flaky(ctx, fail_times: int) -> str:
        runs.hit(ctx.task_id)
        if ctx.attempt <= fail_times:
            raise RuntimeError(f"failure {ctx.attempt}")
        return "ok"

    @app.task
    def fatal(ctx) -> None:
        runs.hit(ctx.task_id)
        raise Fatal("never retry this")

    @app.task
    def echo(payload: list) -> list:
        return payload

    return queue, app, runs


def test_submit_run_and_get_result(store: Store) -> None:
    queue, app, runs = make_app(store)
    handle = app.tasks["add"] and queue.submit("add", {"x": 2, "y": 3})
    assert handle.status() == Status.PENDING
    drain(queue, app, [handle.id])
    assert handle.result(timeout=5) == 5
    view = queue.get(handle.id)
    assert view.status == Status.SUCCEEDED and view.record.attempt == 1
    assert view.record.started_at is not None and view.record.finished_at is not None
    assert runs.counts[handle.id] == 1


def test_priority_order_then_fifo(store: Store) -> None:
    queue, _, _ = make_app(store)
    order = []
    ids = {}
    for name, prio in [("low1", 10), ("high1", 200), ("mid", 128), ("high2", 200), ("low2", 10)]:
        ids[name] = queue.submit("add", {"x": 0, "y": 0}, priority=prio, tags={"n": name}).id
    claimer = Claimer(store, queue.settings, queues=["default"], task_types={"add"},
                      owner="t", spread=1)
    while (claim := claimer.claim()) is not None:
        order.append(claim.record.tags["n"])
    assert order == ["high1", "high2", "mid", "low1", "low2"]


def test_retry_then_succeed_and_dead_letter(store: Store) -> None:
    queue, app, runs = make_app(store)
    ok = queue.submit("flaky", {"fail_times": 1}, max_attempts=3,
                      retry={"base": 0.0, "cap": 0.0})
    dead = queue.submit("flaky", {"fail_times": 5}, max_attempts=2,
                        retry={"base": 0.0, "cap": 0.0})
    fatal = queue.submit("fatal")
    drain(queue, app, [ok.id, dead.id, fatal.id])
    assert ok.result(timeout=5) == "ok" and runs.counts[ok.id] == 2
    with pytest.raises(TaskFailed, match="failure 2"):
        dead.result(timeout=5)
    assert runs.counts[dead.id] == 2
    assert queue.get(fatal.id).status == Status.DEAD and runs.counts[fatal.id] == 1
    assert queue.get(fatal.id).record.error.type == "Fatal"
    assert {v.record.id for v in queue.ls(status=Status.DEAD)} == {dead.id, fatal.id}
    assert queue.stats()["default"]["dead"] == 2
    queue.retry(fatal.id)
    assert queue.get(fatal.id).status == Status.PENDING
    assert queue.stats()["default"].get("dead", 0) == 1


def test_non_json_input_and_bad_names_are_refused(store: Store) -> None:
    queue, _, _ = make_app(store)
    with pytest.raises(InvalidPayload):
        queue.submit("add", {"x": object()})
    for bad in ["../x", "a/b", "x\n", "", ".hidden", "a..b"]:
        with pytest.raises((InvalidName, ValueError)):
            queue.submit(bad)
        with pytest.raises((InvalidName, ValueError)):
            queue.submit("add", {}, queue="bad/queue" if bad == "" else bad)
    assert list(store.list("")) == []


def test_idempotency_same_input_returns_existing_other_input_conflicts(store: Store) -> None:
    queue, _, _ = make_app(store)
    first = queue.submit("add", {"x": 1, "y": 1}, key="order-42")
    again = queue.submit("add", {"y": 1, "x": 1}, key="order-42")
    assert again.id == first.id and first.created and not again.created
    with pytest.raises(IdempotencyConflict, match="order-42"):
        queue.submit("add", {"x": 9, "y": 1}, key="order-42")
    other_scope = queue.submit("echo", [1], key="order-42")  # scoped by task type
    assert other_scope.id != first.id
    assert len(list(store.list("ready/"))) == 2


def test_concurrent_submits_with_one_key_create_one_task(store: Store) -> None:
    queue, _, _ = make_app(store)
    barrier = threading.Barrier(16)

    def go(_: int):
        barrier.wait(timeout=30)
        return queue.submit("add", {"x": 1, "y": 2}, key="once")

    with ThreadPoolExecutor(16) as pool:
        handles = list(pool.map(go, range(16)))
    assert len({h.id for h in handles}) == 1
    assert sum(h.created for h in handles) == 1
    assert len(list(store.list("tasks/"))) == 1
    assert len(list(store.list("ready/"))) == 1


def test_cancel_pending_task_never_runs(store: Store) -> None:
    queue, app, runs = make_app(store)
    handle = queue.submit("add", {"x": 1, "y": 1})
    keep = queue.submit("add", {"x": 2, "y": 2})
    handle.cancel("changed my mind")
    drain(queue, app, [handle.id, keep.id])
    assert runs.counts[handle.id] == 0 and runs.counts[keep.id] == 1
    with pytest.raises(TaskCancelled, match="changed my mind"):
        handle.result(timeout=1)
    with pytest.raises(InvalidTransition):
        queue.cancel(handle.id)
    with pytest.raises(TaskNotFound):
        queue.get("0123456789abcdef")


def test_pause_and_resume(store: Store) -> None:
    queue, app, runs = make_app(store)
    handle = queue.submit("add", {"x": 1, "y": 1})
    queue.pause("default")
    worker = Worker(app, queue, WorkerOptions(concurrency=1))
    assert worker.run_once() is False and runs.counts[handle.id] == 0
    queue.resume("default")
    worker.claimer.forget()
    assert worker.run_once() is True and runs.counts[handle.id] == 1


def test_worker_never_claims_a_type_it_cannot_run(store: Store) -> None:
    queue, app, _ = make_app(store)
    foreign = queue.submit("someone_elses_task", {"a": 1})
    mine = queue.submit("add", {"x": 1, "y": 1})
    drain(queue, app, [mine.id])
    assert queue.get(foreign.id).status == Status.PENDING
    assert list(store.list("leases/")) == []


def test_large_payloads_are_offloaded_and_limits_enforced(store: Store) -> None:
    settings = Settings(inline_limit=1000, max_payload=50_000)
    queue, app, _ = make_app(store, settings)
    big = list(range(2000))  # ~9 KB of JSON
    handle = queue.submit("echo", {"payload": big})
    assert queue.get(handle.id).record.input is None
    assert store.get(f"payloads/{handle.id}/input") is not None
    drain(queue, app, [handle.id])
    assert handle.result(timeout=5) == big
    assert queue.get(handle.id).record.result_ref == f"payloads/{handle.id}/result-1"
    with pytest.raises(PayloadTooLarge, match="over the limit"):
        queue.submit("echo", {"payload": list(range(20_000))})


def test_delayed_task_waits_for_promotion(store: Store) -> None:
    queue, app, runs = make_app(store)
    handle = queue.submit("add", {"x": 1, "y": 1}, delay=3600)
    assert handle.status() == Status.SCHEDULED
    worker = Worker(app, queue, WorkerOptions(concurrency=1))
    assert worker.run_once() is False
    report = queue.sweep()
    assert report.promoted == 0 and report.next_due is not None
    assert runs.counts[handle.id] == 0


def test_batch_submit(store: Store) -> None:
    queue, app, runs = make_app(store)
    handles = queue.submit_many([{"type": "add", "input": {"x": i, "y": i}} for i in range(50)])
    assert len({h.id for h in handles}) == 50
    drain(queue, app, [h.id for h in handles])
    assert [h.result(timeout=5) for h in handles] == [2 * i for i in range(50)]
    assert all(runs.counts[h.id] == 1 for h in handles)
