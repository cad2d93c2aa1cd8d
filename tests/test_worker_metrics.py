"""Worker metrics for Prometheus (issue 19): scraped from a running worker."""

from __future__ import annotations

import signal
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from qo.app import App
from qo.cli import app as cli
from qo.context import Context
from qo.errors import ConfigError, PreconditionFailed
from qo.hooks import Kind
from qo.metrics import WorkerMetrics
from qo.models import Status
from qo.probes import HealthServer, Probes
from qo.queue import Queue
from qo.settings import Settings
from qo.store.faulty import FaultyStore
from qo.store.memory import MemoryStore
from qo.store.observed import Observed
from qo.worker import Worker, WorkerOptions

from .apps import metrics_app
from .helpers import start_qo, wait_for

pytestmark = pytest.mark.timeout(120)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` on 127.0.0.1:port, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def outcomes(samples: dict[Any, float]) -> dict[str, float]:
    """qo_tasks_total by outcome, summed over queues and types."""
    out: dict[str, float] = {}
    for (name, labels), v in samples.items():
        if name == "qo_tasks_total":
            outcome = dict(labels)["outcome"]
            out[outcome] = out.get(outcome, 0.0) + v
    return out


def settled(samples: dict[Any, float], attempts: int) -> bool:
    """Have ``attempts`` attempts had their outcome event? (The record shows an outcome,
    and the slot is free, a moment before the event that counts it.)"""
    return sum(v for k, v in outcomes(samples).items() if k != "started") >= attempts


@pytest.fixture
def running() -> Iterator[tuple[Queue, Worker, WorkerMetrics, int, list[str]]]:
    queue = Queue(MemoryStore(), Settings())
    app = metrics_app.define(App(queue))
    metrics = WorkerMetrics()
    queue.store = metrics.observe_store(queue.store)
    ids = [app.submit(name).id for name in metrics_app.WORKLOAD]
    worker = Worker(app, queue, WorkerOptions(concurrency=2, poll_max=0.1))
    detach = metrics.attach(worker)
    server = metrics.serve("127.0.0.1", 0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield queue, worker, metrics, server.port, ids
    finally:
        worker.stop()
        thread.join(60)
        server.close()
        detach()


def test_a_running_workers_metrics_count_a_known_workload(running: Any) -> None:
    queue, worker, _, port, ids = running
    wait_for(lambda: all(queue.get(i).record.terminal for i in ids))
    wait_for(lambda: settled(scrape(port), 5) and not worker.runner.running())
    s = scrape(port)
    assert outcomes(s) == {"started": 5, "succeeded": 3, "retried": 1, "dead": 1}
    assert value(s, "qo_tasks_total", queue="default", type="ok", outcome="succeeded") == 2
    assert value(s, "qo_tasks_total", queue="default", type="flaky", outcome="retried") == 1
    assert value(s, "qo_tasks_total", queue="default", type="boom", outcome="dead") == 1
    assert value(s, "qo_claims_total", queue="default") == 5
    assert value(s, "qo_task_run_seconds_count", queue="default", type="ok") == 2
    assert value(s, "qo_task_run_seconds_count", queue="default", type="flaky") == 2
    assert value(s, "qo_task_wait_seconds_count", queue="default", type="boom") == 1
    # the claims' and outcomes' requests, seen by operation and outcome
    assert value(s, "qo_store_requests_total", operation="put", outcome="ok") >= 10
    assert value(s, "qo_store_requests_total", operation="list", outcome="ok") >= 1
    assert value(s, "qo_store_request_seconds_count", operation="put") >= 10
    assert value(s, "qo_worker_slots", state="busy") == 0
    assert value(s, "qo_worker_slots", state="idle") == 2
    assert value(s, "qo_worker_draining") == 0 and value(s, "qo_store_up") == 1
    assert not any("task_id" in dict(labels) for _, labels in s)  # bounded cardinality


def test_a_busy_slot_shows_while_its_handler_runs() -> None:
    queue = Queue(MemoryStore())
    app, release = App(queue), threading.Event()

    @app.task
    def hold(ctx: Context) -> None:
        release.wait(60)

    metrics = WorkerMetrics()
    handle = app.submit("hold")
    worker = Worker(app, queue, WorkerOptions(concurrency=3, poll_max=0.1))
    detach = metrics.attach(worker)
    server = HealthServer(Probes(worker), "127.0.0.1", 0, metrics=metrics)  # /metrics too
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: worker.runner.running() == [handle.id])
        s = scrape(server.port)
        assert value(s, "qo_worker_slots", state="busy") == 1
        assert value(s, "qo_worker_slots", state="idle") == 2
        release.set()
        wait_for(lambda: queue.get(handle.id).status == Status.SUCCEEDED)
        worker.stop()
        thread.join(60)
        assert value(scrape(server.port), "qo_worker_draining") == 1
    finally:
        release.set()
        worker.stop()
        thread.join(60)
        server.close()
        detach()


def test_lease_and_claim_events_are_counted_for_this_worker_only() -> None:
    queue = Queue(MemoryStore())
    app = App(queue)
    metrics = WorkerMetrics()
    worker = Worker(app, queue, WorkerOptions(worker_id="w1"))
    detach = metrics.attach(worker)
    hooks = queue.hooks
    hooks.emit(Kind.CLAIM_CONFLICT, "t1", queue="q", task_type="a", worker="w1")
    hooks.emit(Kind.LEASE_RENEWED, "t1", queue="q", task_type="a", worker="w1")
    hooks.emit(Kind.LEASE_RENEWED, "t1", queue="q", task_type="a", worker="w1")
    hooks.emit(Kind.LEASE_LOST, "t1", queue="q", task_type="a", worker="w1")
    hooks.emit(Kind.FENCED, "t1", queue="q", task_type="a", worker="w1", cancelled=True)
    hooks.emit(Kind.SUCCEEDED, "t2", queue="q", task_type="a", worker="other", seconds=1.0)
    hooks.emit(Kind.DEAD, "t3", queue="q", task_type="a", reaper="w1")  # a reaper's: not ours
    detach()
    hooks.emit(Kind.LEASE_LOST, "t1", queue="q", task_type="a", worker="w1")  # detached
    r = metrics.registry
    assert r.get_sample_value("qo_claim_conflicts_total", {"queue": "q"}) == 1
    assert r.get_sample_value("qo_lease_renewals_total", {"queue": "q"}) == 2
    assert r.get_sample_value("qo_leases_lost_total", {"queue": "q"}) == 1
    assert r.get_sample_value("qo_tasks_total",
                              {"queue": "q", "type": "a", "outcome": "cancelled"}) == 1
    assert r.get_sample_value("qo_tasks_total",
                              {"queue": "q", "type": "a", "outcome": "succeeded"}) is None
    assert r.get_sample_value("qo_tasks_total",
                              {"queue": "q", "type": "a", "outcome": "dead"}) is None


def test_store_requests_are_counted_by_operation_and_outcome() -> None:
    metrics = WorkerMetrics()
    faulty = FaultyStore(MemoryStore())
    store = metrics.observe_store(faulty)
    etag = store.put("a", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("a", b"2", if_none_match=True)
    assert store.get("missing") is None
    faulty.inject("get", "before")
    with pytest.raises(Exception, match="injected"):
        store.get("a")
    assert [i.key for i in store.list("", page_size=1)] == ["a"]
    assert list(store.list("none/")) == []
    store.put("b", b"1")
    assert [i.key for i in store.list("", page_size=1)] == ["a", "b"]  # two pages
    store.delete("a", if_match=etag)
    r = metrics.registry

    def n(operation: str, outcome: str) -> float | None:
        return r.get_sample_value("qo_store_requests_total",
                                  {"operation": operation, "outcome": outcome})

    assert n("put", "ok") == 2 and n("put", "precondition_failed") == 1
    assert n("get", "missing") == 1 and n("get", "unavailable") == 1
    assert n("list", "ok") == 4 and n("delete", "ok") == 1
    assert isinstance(store, Observed) and faulty.inner.counts["PUT_412"] == 1  # unchanged


def test_the_metrics_text_is_prometheus_exposition() -> None:
    metrics = WorkerMetrics()
    metrics.store_request("get", "ok", 0.01)
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    assert b'qo_store_requests_total{operation="get",outcome="ok"} 1.0' in body
    body, content_type = metrics.exposition("application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")


def test_a_missing_metrics_extra_is_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'qo-queue\[metrics\]'"):
        WorkerMetrics()
    result = CliRunner().invoke(cli, ["--queue", "memory://", "worker", "--app",
                                      "tests.apps.demo_app:app", "--metrics-port", "0"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [("error: --metrics-port needs the metrics extra: "
                      "pip install 'qo-queue[metrics]'")], result.output


@pytest.mark.slow
def test_qo_worker_serves_metrics_on_the_port_it_logs(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    queue = Queue.from_url(url)
    app = metrics_app.define(App(queue))
    ids = [app.submit(name).id for name in metrics_app.WORKLOAD]
    proc, lines = start_qo(
        "--queue", url, "worker", "--app",
        "tests.apps.metrics_app:app", "--concurrency", "2", "--poll-max", "0.2",
        "--metrics-port", "0", "--log-format", "json")
    try:
        wait_for(lambda: any('"event":"serving"' in line for line in lines), timeout=60)
        served = next(orjson.loads(line) for line in lines if '"event":"serving"' in line)
        port = int(served["url"].rsplit(":", 1)[1])
        assert served["url"].startswith("http://127.0.0.1:")
        wait_for(lambda: all(queue.get(i).record.terminal for i in ids), timeout=60)
        wait_for(lambda: settled(scrape(port), 5), timeout=60)
        wait_for(lambda: value(scrape(port), "qo_worker_slots", state="busy") == 0, timeout=60)
        s = scrape(port)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, "".join(lines)
    assert outcomes(s) == {"started": 5, "succeeded": 3, "retried": 1, "dead": 1}
    assert value(s, "qo_store_requests_total", operation="put", outcome="ok") >= 10
    assert value(s, "process_cpu_seconds_total") > 0
    logged = [orjson.loads(line) for line in lines if line.startswith("{")]
    for msg, logger in (("working on it", "qo.task.ok"), ("my own line", "metrics_app")):
        found = [line for line in logged if line["msg"] == msg]
        assert len(found) == 2 and {line["logger"] for line in found} == {logger}
        assert {line["task_id"] for line in found} == set(ids[:2])
        assert all(line["type"] == "ok" and line["attempt"] == 1 and line["trace_id"] == ""
                   for line in found)
