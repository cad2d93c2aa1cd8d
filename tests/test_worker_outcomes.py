"""What a worker records and says: results it cannot store, declared options,
cancelled running tasks, paused queues and task types nobody serves."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from qo.app import App
from qo.cli import app as cli
from qo.context import Context
from qo.doctor import Level, diagnose
from qo.models import Status
from qo.protocol import fleet, keys
from qo.queue import Queue
from qo.settings import Settings
from qo.store.memory import MemoryStore
from qo.worker import Worker, WorkerOptions

from .helpers import Runs, drain, wait_for

pytestmark = pytest.mark.timeout(120)


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


# -- a result that cannot be stored fails the attempt, once --------------------------


@pytest.mark.parametrize(("result", "error"), [
    ({1, 2}, "InvalidPayload"),
    ("x" * 5000, "PayloadTooLarge"),
])
def test_a_result_that_cannot_be_stored_fails_once_without_retry(result: object, error: str) -> None:
    queue = Queue(MemoryStore(), Settings(max_payload=4096))
    app, runs = App(queue), Runs()

    @app.task(max_attempts=3)
    def produce(ctx: Context) -> object:
        runs.hit(ctx.task_id)
        return result

    handle = app.submit("produce")
    drain(queue, app, [handle.id])
    record = queue.get(handle.id).record
    assert record.status == Status.DEAD and runs.counts[handle.id] == 1
    assert record.error is not None and record.error.type == error
    assert record.error.retryable is False and f"result of task {handle.id}" in record.error.message
    assert list(queue.store.list("leases/")) == []


# -- options declared on the handler hold whoever submitted ---------------------------


def test_the_handlers_max_attempts_applies_when_the_record_sets_none() -> None:
    queue = Queue(MemoryStore())
    app, runs = App(queue), Runs()

    @app.task(max_attempts=2, retry=None)
    def flaky(ctx: Context) -> None:
        runs.hit(ctx.task_id)
        raise RuntimeError("again")

    bare = queue.submit("flaky", None, retry={"base": 0, "cap": 0})  # no app, no max_attempts
    stored = orjson.loads(queue.store.get(keys.task_key(bare.id)).body)
    assert "max_attempts" not in stored and queue.get(bare.id).record.max_attempts == 3
    explicit = queue.submit("flaky", None, max_attempts=3, retry={"base": 0, "cap": 0})
    drain(queue, app, [bare.id, explicit.id])
    assert runs.counts[bare.id] == 2 and runs.counts[explicit.id] == 3
    record = queue.get(bare.id).record
    assert record.status == Status.DEAD and record.attempt == 2 and record.max_attempts == 2
    assert queue.get(explicit.id).record.max_attempts == 3


# -- cancelling a running task shows what happened ------------------------------------


def _blocking_app(queue: Queue, gate: threading.Event, started: threading.Event) -> App:
    app = App(queue)

    @app.task(max_attempts=2)
    def hold(ctx: Context) -> str:
        started.set()
        while not gate.is_set() and not ctx.is_cancelled():
            gate.wait(0.01)
        return "late"

    return app


@pytest.mark.parametrize("lease_seconds", [  # outcome CAS / heartbeat finds it
    60.0, pytest.param(6.0, marks=pytest.mark.slow)])  # real time: a heartbeat at 2 s
def test_a_task_cancelled_while_running_says_it_ran_and_its_outcome_was_dropped(
    caplog: pytest.LogCaptureFixture, lease_seconds: float
) -> None:
    caplog.set_level(logging.INFO, logger="qo")
    queue = Queue(MemoryStore(), Settings(lease_seconds=lease_seconds))
    gate, started = threading.Event(), threading.Event()
    app = _blocking_app(queue, gate, started)
    handle = queue.submit("hold")  # without the app: max_attempts comes from the handler
    worker = Worker(app, queue, WorkerOptions(concurrency=1, poll_max=0.1))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert started.wait(60)
        handle.cancel("changed my mind")
        if lease_seconds == 60.0:
            gate.set()  # the handler returns first: its outcome CAS meets the cancel
        wait_for(lambda: worker.summary.cancelled == 1, timeout=60)
    finally:
        gate.set()
        worker.stop()
        thread.join(60)
    record = queue.get(handle.id).record
    assert record.status == Status.CANCELLED and record.cancel_reason == "changed my mind"
    assert record.attempt == 1 and record.started_at is not None and record.worker == worker.id
    assert record.max_attempts == 2  # the handler's, shown as 1/2
    assert record.error is not None and record.error.type == "OutcomeDropped"
    assert "was dropped" in record.error.message
    assert worker.summary.fenced == 0 and worker.summary.succeeded == 0
    assert len(_events(caplog, "task_cancelled")) == 1 and not _events(caplog, "task_succeeded")
    assert list(queue.store.list("leases/")) == []


# -- paused queues and unknown task types are said once -------------------------------


def test_a_paused_queue_is_logged_once_and_its_resume_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qo")
    queue = Queue(MemoryStore())
    app = App(queue)
    app.task(name="t")(lambda: None)
    queue.pause("default")
    worker = Worker(app, queue, WorkerOptions(concurrency=1))
    for _ in range(3):
        assert not worker.run_once()
        worker.claimer.forget()
    queue.resume("default")
    for _ in range(2):
        worker.run_once()
        worker.claimer.forget()
    assert len(_events(caplog, "queue_paused")) == 1
    assert len(_events(caplog, "queue_resumed")) == 1


def test_ready_tasks_of_an_unknown_type_are_logged_once_per_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qo")
    queue = Queue(MemoryStore())
    app = App(queue)
    app.task(name="t")(lambda: None)
    for _ in range(2):
        queue.submit("nosuch")
    queue.submit("typo")
    worker = Worker(app, queue, WorkerOptions(concurrency=1))
    for _ in range(3):
        assert not worker.run_once()
        worker.claimer.forget()
    logged = sorted(r.type for r in _events(caplog, "unknown_task_type"))
    assert logged == ["nosuch", "typo"]


def test_stats_and_doctor_name_task_types_no_running_worker_serves(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    queue = Queue.from_url(url)
    app = App(queue)
    app.task(name="t")(lambda: None)
    queue.submit("t")
    queue.submit("nosuch")
    assert {u.task_type for u in fleet.coverage(queue.store).unserved} == {"t", "nosuch"}
    worker = Worker(app, queue, WorkerOptions(concurrency=1))
    worker._write_heartbeat("running")  # what a running worker has published
    found = fleet.coverage(queue.store)
    assert [(u.queue, u.task_type, u.ready) for u in found.unserved] == [("default", "nosuch", 1)]
    assert [w.task_types for w in found.workers] == [["t"]]

    runner = CliRunner()
    stats = runner.invoke(cli, ["-q", url, "stats"], catch_exceptions=False)
    assert stats.exit_code == 0 and "no running worker serves: 'nosuch'" in stats.stderr
    data = orjson.loads(runner.invoke(cli, ["-q", url, "stats", "--json"]).stdout)
    assert data["unserved"] == [{"queue": "default", "type": "nosuch", "ready": 1}]
    check = next(c for c in diagnose(url).checks if c.name == "workers")
    assert check.level == Level.WARN and "'nosuch'" in check.detail
