"""The kernel's seams: handler middleware, one retry decision, the runner, task log lines."""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any

import pytest

from qo import App, Fatal, Retry, RetryDecision, RetryPolicy, Status, TaskCall
from qo.middleware import Next, chain
from qo.protocol.claim import Claimer
from qo.queue import Queue
from qo.runner import Runner
from qo.settings import Settings
from qo.store.memory import MemoryStore
from qo.testing import FakeClock, drain
from qo.worker import Worker, WorkerOptions


def _app(clock: FakeClock | None = None) -> tuple[App, Queue]:
    queue = Queue(MemoryStore(clock=clock) if clock else MemoryStore(), Settings())
    return App(queue), queue


# -- middleware -----------------------------------------------------------------------


def test_middleware_wraps_every_call_first_registered_outermost() -> None:
    app, queue = _app()
    seen: list[str] = []

    @app.middleware
    def outer(call: TaskCall, call_next: Next) -> Any:
        seen.append(f"outer>{call.task_type}:{call.ctx.attempt}")
        result = call_next(call)
        seen.append("outer<")
        return result

    @app.middleware
    def inner(call: TaskCall, call_next: Next) -> Any:
        seen.append("inner>")
        return call_next(dataclasses.replace(call, input={"n": call.input["n"] * 10})) + 1

    @app.task
    def double(n: int) -> int:
        seen.append(f"handler {n}")
        return 2 * n

    task = double.submit(4)
    drain(queue, app, [task.id])
    record = queue.get(task.id).record
    assert record.status == Status.SUCCEEDED and record.result == 81
    assert seen == ["outer>double:1", "inner>", "handler 40", "outer<"]


def test_a_middleware_that_answers_itself_skips_the_handler() -> None:
    app, queue = _app()
    app.middleware(lambda call, call_next: "cached")
    ran: list[int] = []

    @app.task
    def slow() -> str:
        ran.append(1)
        return "computed"

    task = slow.submit()
    drain(queue, app, [task.id])
    assert queue.get(task.id).record.result == "cached" and ran == []


def test_an_error_raised_in_middleware_is_the_attempts_error() -> None:
    app, queue = _app()

    def refuse(call: TaskCall, call_next: Next) -> Any:
        raise Fatal("refused by middleware")

    app.middleware_stack.append(refuse)

    @app.task
    def t() -> None:
        raise AssertionError("never called")

    task = t.submit()
    drain(queue, app, [task.id])
    record = queue.get(task.id).record
    assert record.status == Status.DEAD and record.attempt == 1
    assert record.error is not None and record.error.type == "Fatal"


def test_chain_without_middleware_is_the_handler() -> None:
    def handler(call: TaskCall) -> Any:
        return call.input

    assert chain([], handler) is handler


# -- one retry decision ----------------------------------------------------------------


def test_the_decision_names_every_case() -> None:
    policy = RetryPolicy(base=10, cap=10)
    rng = random.Random(1)
    assert RetryDecision.decide(retryable=False, attempt=1, max_attempts=3, policy=policy) \
        == RetryDecision(False, 0.0, "not retryable")
    assert not RetryDecision.decide(retryable=True, attempt=3, max_attempts=3, policy=policy).retry
    retry = RetryDecision.decide(retryable=True, attempt=1, max_attempts=3, policy=policy, rng=rng)
    assert retry.retry and 0 <= retry.delay <= 10
    asked = RetryDecision.decide(retryable=True, attempt=1, max_attempts=3, policy=policy,
                                 error=Retry(delay=42))
    assert asked == RetryDecision(True, 42, "the handler asked to retry")
    assert RetryDecision.decide(retryable=True, attempt=1, max_attempts=3, policy=None).delay == 0


def test_raise_retry_sets_the_next_attempts_time_and_counts_as_an_attempt() -> None:
    clock = FakeClock()
    app, queue = _app(clock)

    @app.task(max_attempts=2, retry=RetryPolicy(base=0, cap=0))
    def later() -> None:
        raise Retry("not yet", delay=120)

    task = later.submit()
    worker = Worker(app, queue, WorkerOptions(concurrency=1))
    assert worker.run_once()
    record = queue.get(task.id).record
    assert record.status == Status.FAILED and record.error is not None
    assert record.error.type == "Retry" and record.available_at == pytest.approx(clock() + 120)
    clock.advance(121)
    queue.sweep()
    assert worker.run_once()
    assert queue.get(task.id).status == Status.DEAD  # two attempts of two


def test_retry_rejects_a_delay_out_of_range() -> None:
    with pytest.raises(ValueError, match="between 0 s and 7 days"):
        Retry(delay=-1)


# -- the runner ------------------------------------------------------------------------


def test_the_runner_runs_a_claim_without_a_worker() -> None:
    app, queue = _app()

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    task = add.submit(2, 3)
    claimer = Claimer(queue.store, queue.settings, queues=["default"], task_types={"add"},
                      owner="runner-test", hooks=queue.hooks)
    claim = claimer.claim()
    assert claim is not None
    runner = Runner(app, queue.store, queue.settings, hooks=queue.hooks)
    runner.run(claim)
    assert queue.get(task.id).record.result == 5
    assert runner.summary.processed == 1 and runner.summary.succeeded == 1
    assert runner.running() == []


# -- task log lines are one receiver of lifecycle events -----------------------------


def _task_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str | None]]:
    return [(r.event, getattr(r, "task_id", None)) for r in caplog.records  # type: ignore[attr-defined]
            if str(getattr(r, "event", "")).startswith("task_")]


def test_each_worker_logs_its_own_task_events_once(caplog: pytest.LogCaptureFixture) -> None:
    app, queue = _app()

    @app.task(max_attempts=1)
    def t(fail: bool) -> None:
        if fail:
            raise ValueError("boom")

    ok, bad = t.submit(False), t.submit(True)
    first = Worker(app, queue, WorkerOptions(concurrency=1, worker_id="w1"))
    second = Worker(app, queue, WorkerOptions(concurrency=1, worker_id="w2"))  # same hooks
    caplog.set_level(logging.INFO, logger="qo")
    assert first.run_once() and second.run_once()
    lines = _task_lines(caplog)
    assert sorted(lines) == sorted([("task_started", ok.id), ("task_succeeded", ok.id),
                                    ("task_started", bad.id), ("task_failed", bad.id)])
    failed = next(r for r in caplog.records if getattr(r, "event", None) == "task_failed")
    assert "ValueError: boom" in failed.getMessage() and "dead" in failed.getMessage()
    assert len(queue.hooks._receivers) == 0  # run_once connects and disconnects


def test_the_log_receiver_sees_no_events_of_other_workers(caplog: pytest.LogCaptureFixture) -> None:
    app, queue = _app()

    @app.task
    def t() -> None:
        return None

    task = t.submit()
    idle = Worker(app, queue, WorkerOptions(concurrency=1, worker_id="idle"))
    busy = Worker(app, queue, WorkerOptions(concurrency=1, worker_id="busy"))
    caplog.set_level(logging.INFO, logger="qo")
    with idle._logging():
        assert busy.run_once()
    assert _task_lines(caplog) == [("task_started", task.id), ("task_succeeded", task.id)]
