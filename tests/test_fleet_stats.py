"""The fleet statistics snapshot (qo.protocol.fleetstats) against a known set of tasks."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qo import serverless
from qo.app import App
from qo.models import Status, WorkerInfo, dumps
from qo.protocol import fleetstats, keys
from qo.protocol.claim import Claimer
from qo.queue import Queue
from qo.serverless import api
from qo.settings import Settings
from qo.store.base import Store
from qo.store.memory import MemoryStore
from qo.testing.drain import drain

from .helpers import FakeClock
from .test_cli import as_json, assert_one_line_error, ok
from .test_cli import qo as run_qo


def worker_record(store: Store, worker_id: str, processed: int, failed: int,
                  started_at: float = 0.0) -> None:
    info = WorkerInfo(id=worker_id, host="h", pid=1, queues=["default"], task_types=["ok"],
                      concurrency=4, started_at=started_at, seen_at=store.now(),
                      running=["t1"], processed=processed, failed=failed)
    store.put(keys.worker_key(worker_id), dumps(info))


def known_tasks(store: Store) -> dict[str, Any]:
    """1 dead, 1 running, 3 ready (two priorities), 1 delayed in
    ``default``; 2 ready in the paused ``bulk``; 1 succeeded (counted nowhere)."""
    queue = Queue(store, Settings())
    app = App(queue)

    @app.task
    def boom(ctx: Any) -> None:
        raise ValueError("no")

    @app.task
    def ok(ctx: Any) -> int:
        return 1

    dead = queue.submit("boom", None, max_attempts=1)
    done = queue.submit("ok", None)
    drain(queue, app, [dead.id, done.id])
    assert queue.get(dead.id).status == Status.DEAD
    running = queue.submit("ok", None, priority=250)
    claim = Claimer(store, queue.settings, queues=["default"], task_types={"ok"},
                    owner="w").claim()
    assert claim is not None and claim.task_id == running.id
    for priority in (128, 128, 200):
        queue.submit("ok", None, priority=priority)
    queue.submit("ok", None, delay=3600)
    for _ in range(2):
        queue.submit("ok", None, queue="bulk")
    queue.pause("bulk")
    worker_record(store, "w1", processed=5, failed=1)
    return {"queue": queue, "dead": dead.id}


def test_the_snapshot_counts_a_known_set_of_tasks(any_store: Store) -> None:
    known_tasks(any_store)
    snap = fleetstats.refresh(any_store, "tester", interval=300)
    assert snap is not None
    default, bulk = snap.queues["default"], snap.queues["bulk"]
    assert (default.ready, default.running, default.delayed, default.dead, default.paused) == (
        3, 1, 1, 1, False)
    assert default.by_priority == {128: 2, 200: 1}
    assert default.oldest_ready_age is not None and default.oldest_ready_age >= 0
    assert (bulk.ready, bulk.running, bulk.delayed, bulk.dead, bulk.paused) == (2, 0, 0, 0, True)
    assert snap.total("ready") == 5 and snap.truncated == []
    [worker] = snap.workers
    assert (worker.id, worker.queues, worker.task_types, worker.running) == (
        "w1", ["default"], ["ok"], 1)
    assert snap.throughput is None  # no earlier snapshot to count from
    assert snap.requests == {"LIST": 5, "GET": 2, "PUT": 1}
    stored, etag, _ = fleetstats.read(any_store)  # what qo stats and the API read: 1 GET
    assert stored == snap and etag is not None
    assert fleetstats.refresh(any_store, "other", interval=300) is None  # fresh: left as is


def test_throughput_is_the_increase_of_the_worker_counters(any_store: Store) -> None:
    known_tasks(any_store)
    first = fleetstats.refresh(any_store, "tester", interval=300)
    assert first is not None
    worker_record(any_store, "w1", processed=9, failed=2)
    worker_record(any_store, "w2", processed=4, failed=1, started_at=any_store.now() + 1)
    worker_record(any_store, "w3", processed=50, failed=5)  # unseen before, started long ago
    second = fleetstats.refresh(any_store, "tester", interval=0)  # always stale
    assert second is not None and second.throughput is not None
    assert (second.throughput.processed, second.throughput.failed) == (4 + 4, 1 + 1)
    assert second.throughput.seconds >= 0
    assert sorted(w.id for w in second.workers) == ["w1", "w2", "w3"]


def test_a_truncated_index_is_a_lower_bound() -> None:
    store = MemoryStore()
    known_tasks(store)
    snap = fleetstats.compute(store, "tester", scan_limit=3)
    assert "ready" in snap.truncated and "leases" not in snap.truncated
    assert snap.total("ready") <= 3 and snap.bound("ready", 3) == "≥3"
    assert snap.bound("dead", 1) == "1"


def test_request_cost_is_bounded_by_the_scan_limit_not_by_the_tasks() -> None:
    store = MemoryStore()
    queue = Queue(store)
    queue.submit_many([{"type": "ok", "input": {"n": n}} for n in range(1500)],
                      allow_unregistered=True)
    store.counts.reset()
    snap = fleetstats.refresh(store, "tester", interval=300, scan_limit=1200)
    assert snap is not None and snap.truncated == ["ready"]
    assert snap.queues["default"].ready == 1200
    spent = store.counts.snapshot()
    # ready/: 2 pages up to the limit; delayed/, leases/, dead/, workers/: 1 each
    assert {k: v for k, v in spent.items() if v} == {"LIST": 6, "GET": 1, "PUT": 1}
    assert snap.requests == {"LIST": 6, "GET": 1, "PUT": 1}
    store.counts.reset()
    assert fleetstats.refresh(store, "tester", interval=300) is None
    assert {k: v for k, v in store.counts.snapshot().items() if v} == {"GET": 1}


class Racing(MemoryStore):
    """Another sweeper writes the snapshot right after this one read it."""

    raced = False

    def get(self, key: str) -> Any:
        obj = super().get(key)
        if key == keys.STATS and not self.raced:
            self.raced = True
            assert fleetstats.refresh(self, "a", interval=0) is not None
        return obj


def test_racing_sweepers_write_one_snapshot() -> None:
    store = Racing()
    known_tasks(store)
    assert fleetstats.refresh(store, "b", interval=0) is None  # its conditional PUT lost
    assert orjson.loads(store.get(keys.STATS).body)["by"] == "a"  # type: ignore[union-attr]
    store.raced = False
    store.counts.reset()
    assert fleetstats.refresh(store, "b", interval=0) is None  # lost again (to a, on its etag)
    assert store.counts.snapshot().get("PUT_412") == 1


def test_an_unreadable_snapshot_is_replaced_and_a_newer_one_left_alone() -> None:
    store = MemoryStore()
    store.put(keys.STATS, b"not json")
    assert fleetstats.refresh(store, "a", interval=0) is not None
    newer = orjson.dumps({"v": 99, "at": 0, "by": "new"})
    store.put(keys.STATS, newer)
    assert fleetstats.refresh(store, "a", interval=0) is None
    assert store.get(keys.STATS).body == newer  # type: ignore[union-attr]


def test_queue_refresh_is_free_until_the_interval_has_passed() -> None:
    store = MemoryStore()
    queue = Queue(store, Settings(stats_interval=300))
    assert queue.refresh_stats("w") is not None
    store.counts.reset()
    assert queue.refresh_stats("w") is None
    assert not any(store.counts.snapshot().values())  # no request at all
    assert Queue(store, Settings(stats_interval=0)).refresh_stats("w") is None
    fresh = queue.fleet_stats(fresh=True)
    assert fresh is not None and fresh.by == "fresh"


# -- qo stats --fleet ---------------------------------------------------------------------


def test_qo_stats_fleet_reads_the_snapshot_and_fresh_computes_it(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'q'}"
    queue = Queue.from_url(url)
    line = assert_one_line_error(run_qo("-q", url, "stats", "--fleet"), code=4,
                                 contains="no fleet statistics")
    assert "--fresh" in line
    fresh = as_json(run_qo("-q", url, "stats", "--fresh", "--json"))
    assert fresh["queues"] == {} and fresh["by"] == "fresh"
    known_tasks(queue.store)
    assert fleetstats.refresh(queue.store, "tester", interval=300) is not None
    queue.submit("ok", None)  # after the snapshot: only --fresh sees it
    stored = as_json(run_qo("-q", url, "stats", "--fleet", "--json"))
    assert stored["by"] == "tester" and stored["totals"] == {
        "ready": 5, "running": 1, "delayed": 1, "dead": 1}
    assert stored["queues"]["default"]["by_priority"] == {"128": 2, "200": 1}
    assert stored["workers"][0]["id"] == "w1" and stored["age"] >= 0
    assert as_json(run_qo("-q", url, "stats", "--fresh", "--json"))["totals"]["ready"] == 6
    table = ok(run_qo("-q", url, "stats", "--fleet"))
    assert "oldest ready" in table.stdout and "bulk" in table.stdout and "w1" in table.stdout
    assert as_json(run_qo("-q", url, "stats", "--json"))["queues"]["default"]["pending"] == 4


# -- the HTTP API: /stats/fleet and /metrics ---------------------------------------------------


def api_get(path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
    event = {"version": "2.0", "rawPath": path, "rawQueryString": "",
             "requestContext": {"http": {"method": "GET", "path": path}},
             "queryStringParameters": query or {}, "isBase64Encoded": False}
    return api.handler(event, None)


@pytest.fixture
def api_queue() -> Iterator[Queue]:
    queue = Queue(MemoryStore(clock=FakeClock()))
    serverless.configure(queue=queue)
    try:
        yield queue
    finally:
        serverless.reset()


def test_the_api_serves_the_snapshot_as_json_and_as_prometheus_text(api_queue: Queue) -> None:
    store = api_queue.store
    known_tasks(store)
    worker_record(store, "w2", processed=0, failed=0, started_at=store.now() + 1)
    first = fleetstats.refresh(store, "tester", interval=300)
    store.clock.advance(60)  # type: ignore[attr-defined]
    worker_record(store, "w2", processed=10, failed=2, started_at=first.at + 1)  # type: ignore[union-attr]
    assert fleetstats.refresh(store, "tester", interval=0) is not None
    answer = api_get("/stats/fleet")
    assert answer["statusCode"] == 200
    data = orjson.loads(answer["body"])
    assert data["totals"]["dead"] == 1 and data["queues"]["bulk"]["paused"] is True
    store.counts.reset()
    scraped = api_get("/metrics")
    assert {k: v for k, v in store.counts.snapshot().items() if v} == {"GET": 1}  # one GET
    assert scraped["statusCode"] == 200
    assert scraped["headers"]["content-type"].startswith("text/plain; version=0.0.4")
    samples = {(m.name, tuple(sorted(s.labels.items()))): s.value
               for m in text_string_to_metric_families(scraped["body"]) for s in m.samples}
    assert samples[("qo_fleet_tasks", (("queue", "default"), ("state", "ready")))] == 3
    assert samples[("qo_fleet_tasks", (("queue", "default"), ("state", "dead")))] == 1
    assert samples[("qo_fleet_tasks", (("queue", "bulk"), ("state", "ready")))] == 2
    assert samples[("qo_fleet_ready_tasks", (("priority", "200"), ("queue", "default")))] == 1
    assert samples[("qo_fleet_queue_paused", (("queue", "bulk"),))] == 1
    assert samples[("qo_fleet_oldest_ready_age_seconds", (("queue", "default"),))] >= 0
    assert samples[("qo_fleet_workers", (("queue", "default"),))] == 2
    assert samples[("qo_fleet_worker_slots", (("state", "total"),))] == 8
    assert samples[("qo_fleet_attempts_per_second", (("outcome", "finished"),))] == 10 / 60
    assert samples[("qo_fleet_attempts_per_second", (("outcome", "failed"),))] == 2 / 60
    assert samples[("qo_fleet_snapshot_truncated", (("index", "ready"),))] == 0
    assert samples[("qo_fleet_snapshot_age_seconds", ())] >= 0


def test_the_api_computes_a_snapshot_when_none_was_written(api_queue: Queue) -> None:
    known_tasks(api_queue.store)
    data = orjson.loads(api_get("/stats/fleet")["body"])
    assert data["by"] == "api" and data["totals"]["ready"] == 5
    assert api_queue.store.get(keys.STATS) is None  # not stored: sweepers write it
    fleetstats.refresh(api_queue.store, "tester", interval=300)
    api_queue.submit("ok", None, allow_unregistered=True)
    assert orjson.loads(api_get("/stats/fleet")["body"])["totals"]["ready"] == 5
    fresh = orjson.loads(api_get("/stats/fleet", {"fresh": "1"})["body"])
    assert fresh["totals"]["ready"] == 6


def test_metrics_without_prometheus_client_is_one_clear_error(
    api_queue: Queue, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    answer = api_get("/metrics")
    assert answer["statusCode"] == 500
    assert "qo-queue[metrics]" in orjson.loads(answer["body"])["message"]


def test_the_fastapi_example_serves_metrics_from_the_snapshot() -> None:
    from fastapi.testclient import TestClient

    from qo.examples.fastapi_app import create_api

    queue = Queue(MemoryStore())
    known_tasks(queue.store)
    fleetstats.refresh(queue.store, "tester", interval=300)
    scraped = TestClient(create_api(App(queue))).get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {m.name: m for m in text_string_to_metric_families(scraped.text)}
    dead = {s.labels["queue"]: s.value for s in families["qo_fleet_tasks"].samples
            if s.labels["state"] == "dead"}
    assert dead == {"default": 1, "bulk": 0}
