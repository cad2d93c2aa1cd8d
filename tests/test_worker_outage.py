"""The worker and a store that is missing at start, or fails for a while later."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qo.app import App
from qo.context import Context
from qo.models import Status
from qo.queue import Queue
from qo.settings import Settings
from qo.store.faulty import FaultyStore
from qo.store.memory import MemoryStore
from qo.worker import Worker, WorkerOptions

from .helpers import Runs, wait_for

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


# -- a store unusable at start: one error line, at once ------------------------------


@pytest.mark.parametrize("burst", [True, False])
def test_a_missing_bucket_fails_fast_with_one_error_line(s3_server: Any, burst: bool) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AWS_ENDPOINT_URL": s3_server.endpoint_url}
    cmd = [sys.executable, "-m", "qo", "--queue", "s3://qo-worker-no-such-bucket/x", "worker",
           "--app", "tests.apps.demo_app:app", "--concurrency", "4"]
    done = subprocess.run(cmd + (["--burst"] if burst else []), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "does not exist" in lines[0], lines[0]


# -- a store that fails later: retried, logged once per state change -----------------


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def test_an_outage_while_idle_is_logged_once_down_and_once_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FaultyStore(MemoryStore())
    queue = Queue(store)
    app = App(queue)

    @app.task
    def echo(n: int) -> int:
        return n

    worker = Worker(app, queue, WorkerOptions(concurrency=4, poll_max=0.2))
    caplog.set_level(logging.DEBUG, logger="qo")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: worker.claimer.stats.lists >= 1, timeout=60)
        store.rates = {"before": 1.0}  # every request fails from now on
        wait_for(lambda: worker.health.failures >= 10, timeout=60)
        store.clear()
        handle = queue.submit("echo", {"n": 7})
        assert handle.result(timeout=60) == 7
    finally:
        worker.stop()
        thread.join(60)
    assert len(_events(caplog, "store_down")) == 1
    assert len(_events(caplog, "store_up")) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and getattr(r, "event", None) not in ("store_down", "store_up")]


# -- an outage while a handler runs: the lease is kept until it really expires -------


def _gated_app(queue: Queue, gate: threading.Event, runs: Runs,
               seen: dict[str, str | None]) -> App:
    app = App(queue)

    @app.task
    def gated(ctx: Context) -> str:
        runs.hit(ctx.task_id)
        while not gate.is_set():
            if ctx.cancelled.wait(0.01):
                seen[ctx.task_id] = ctx.cancel_reason
                return "stopped"
        return "done"

    return app


def _lease_put_failures(store: FaultyStore) -> int:
    return sum(1 for op, _, key in list(store.injected) if op == "put" and key.startswith("leases/"))


@dataclass
class _Gated:
    """A worker running one gated task on a FaultyStore; ``stop()`` opens the gate."""

    store: FaultyStore
    queue: Queue
    gate: threading.Event
    runs: Runs
    seen: dict[str, Any]
    handle: Any
    worker: Worker
    thread: threading.Thread

    def stop(self) -> None:
        self.store.clear()
        self.gate.set()
        self.worker.stop()
        self.thread.join(60)


def _start_gated(lease_seconds: float) -> _Gated:
    store = FaultyStore(MemoryStore())
    queue = Queue(store, Settings(lease_seconds=lease_seconds))
    gate, runs, seen = threading.Event(), Runs(), {}
    app = _gated_app(queue, gate, runs, seen)
    handle = queue.submit("gated")
    worker = Worker(app, queue, WorkerOptions(concurrency=1, poll_max=0.2))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return _Gated(store, queue, gate, runs, seen, handle, worker, thread)


def test_an_outage_shorter_than_the_lease_loses_nothing() -> None:
    g = _start_gated(20)  # renewal due every 6.7 s
    try:
        wait_for(lambda: g.handle.status() == Status.RUNNING, timeout=60)
        g.store.rates = {"before": 1.0}
        # two renewals fail (each is put_checked's 4 tries): the old worker gave up at one
        wait_for(lambda: _lease_put_failures(g.store) >= 8, timeout=60)
        g.store.clear()
        g.gate.set()
        assert g.handle.result(timeout=60) == "done"
    finally:
        g.stop()
    record = g.queue.get(g.handle.id).record
    assert g.runs.counts[g.handle.id] == 1 and record.attempt == 1 and not g.seen
    assert g.worker.summary.succeeded == 1 and g.worker.summary.fenced == 0


def test_an_outage_longer_than_the_lease_tells_the_handler_to_stop() -> None:
    g = _start_gated(4)
    try:
        wait_for(lambda: g.handle.status() == Status.RUNNING, timeout=60)
        g.store.rates = {"before": 1.0}
        wait_for(lambda: g.handle.id in g.seen, timeout=60)  # not after the gate opens
        wait_for(lambda: g.worker.summary.fenced == 1, timeout=60)
    finally:
        g.stop()
    assert g.seen[g.handle.id] == "lease lost"
    assert g.runs.counts[g.handle.id] == 1 and g.worker.summary.succeeded == 0


def test_no_credentials_fail_fast_with_one_error_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=str(ROOT), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true",
               AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL="http://127.0.0.1:9")
    cmd = [sys.executable, "-m", "qo", "--queue", "s3://qo-worker-no-credentials/x", "worker",
           "--app", "tests.apps.demo_app:app"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "credentials" in lines[0], lines


def test_an_outcome_write_that_fails_is_retried_while_the_lease_lives() -> None:
    g = _start_gated(20)
    record_puts = lambda: sum(
        1 for op, _, key in list(g.store.injected) if op == "put" and key.startswith("tasks/"))
    try:
        wait_for(lambda: g.handle.status() == Status.RUNNING, timeout=60)
        g.store.rates = {"before": 1.0}
        g.gate.set()  # the handler returns during the outage
        wait_for(lambda: record_puts() >= 8, timeout=60)  # two rounds of put_checked's tries
        g.store.clear()
        assert g.handle.result(timeout=60) == "done"
    finally:
        g.stop()
    assert g.runs.counts[g.handle.id] == 1 and g.queue.get(g.handle.id).record.attempt == 1
    assert g.worker.summary.succeeded == 1


def test_an_outcome_that_landed_although_reported_failed_counts_as_recorded() -> None:
    store = FaultyStore(MemoryStore())
    queue = Queue(store)
    app = App(queue)

    @app.task
    def ambiguous() -> str:
        # the record CAS lands but reports a failure, and the read-back fails too:
        # the worker retries the whole outcome and must recognise its own write
        store.inject("put", "after", key_prefix="tasks/")
        store.inject("get", "before", key_prefix="tasks/", times=4)
        return "ok"

    handle = queue.submit("ambiguous")
    worker = Worker(app, queue, WorkerOptions(concurrency=1))
    assert worker.run_once()
    assert worker.summary.succeeded == 1 and worker.summary.cancelled == 0
    record = queue.get(handle.id).record
    assert record.status == Status.SUCCEEDED and record.result == "ok" and record.error is None
    assert list(store.list("leases/")) == []
