"""A queue's max_depth: QueueFull at the bound, how exact it is, and what it costs (issue 17).

docs/protocol.md section 12. A queue without max_depth pays nothing
(tests/test_request_counts.py); a bounded one a count of its ready markers
at most once per ``depth_ttl`` while it has room.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from typing import Any

import pytest

from qo import serverless
from qo.errors import ErrorKind
from qo.protocol import backpressure, keys
from qo.protocol.backpressure import DepthGauge, QueueFull
from qo.protocol.claim import Claimer
from qo.protocol.registry import Registry
from qo.queue import Queue
from qo.settings import Settings
from qo.store.base import Store
from qo.store.memory import MemoryStore
from qo.store.metrics import diff

from .helpers import FakeClock
from .helpers import api_call as call
from .test_cli import as_json, assert_one_line_error, ok
from .test_cli import qo as run_qo


class Ticks:
    """A monotonic clock a test moves (for the registry's and the gauge's TTLs)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def bounded(store: Store, max_depth: int, *, ttl: float = 1.0,
            ticks: Ticks | None = None) -> Queue:
    """A Queue on ``store`` whose default queue holds at most ``max_depth`` ready tasks."""
    backpressure.set_settings(store, "default", max_depth=max_depth)
    return submitter(store, ttl=ttl, ticks=ticks)


def submitter(store: Store, *, ttl: float = 1.0, ticks: Ticks | None = None) -> Queue:
    """One submitting process: its own registry view and depth gauge."""
    queue = Queue(store, replace(Settings(), depth_ttl=ttl))
    if ticks is not None:
        queue.registry = Registry(store, ttl=30, clock=ticks)
        queue.depth = DepthGauge(ttl, clock=ticks)
    return queue


def ready(store: Store, queue: str = "default") -> int:
    return sum(keys.parse_ready_key(i.key) is not None for i in store.list(keys.ready_prefix(queue)))


def test_a_submit_beyond_max_depth_raises_queue_full(any_store: Store) -> None:
    ticks = Ticks()
    queue = bounded(any_store, 3, ticks=ticks)
    for n in range(3):
        queue.submit("t", {"n": n})
    with pytest.raises(QueueFull, match="queue 'default' is full: 3 of at most 3") as raised:
        queue.submit("t", {"n": 3})
    assert raised.value.kind is ErrorKind.FULL and raised.value.exit_code == 6
    assert raised.value.http_status == 429 and raised.value.max_depth == 3
    with pytest.raises(QueueFull, match="2 more would not fit"):
        queue.submit_many([{"type": "t"}, {"type": "t"}])  # all or nothing
    assert ready(any_store) == 3

    claimer = Claimer(any_store, queue.settings, queues=["default"], task_types=None, owner="w")
    assert claimer.claim() is not None  # room for one
    with pytest.raises(QueueFull):
        queue.submit("t", {"n": 4})  # full by a count younger than depth_ttl
    ticks.t = 1.0
    queue.submit("t", {"n": 4})  # counted again
    with pytest.raises(QueueFull):
        queue.submit("t", {"n": 5})
    assert ready(any_store) == 3

    other = queue.submit("t", {"n": 6}, queue="other")  # other queues are not bounded
    assert queue.get(other.id).record.queue == "other"


def test_app_submit_in_a_fresh_process_keeps_the_bound() -> None:
    from qo.app import App

    store = MemoryStore()
    backpressure.set_settings(store, "default", max_depth=2)
    app = App(Queue(store))  # a producer that never listed the registry before
    send = app.task(name="send")(lambda n: n)
    send.submit(1)
    send.submit(2)
    with pytest.raises(QueueFull, match="queue 'default' is full"):
        send.submit(3)
    assert ready(store) == 2


def test_clearing_max_depth_lifts_the_bound() -> None:
    store = MemoryStore()
    ticks = Ticks()
    queue = bounded(store, 1, ticks=ticks)
    queue.submit("t")
    with pytest.raises(QueueFull):
        queue.submit("t")
    assert backpressure.set_settings(store, "default", max_depth=None) is None
    assert list(store.list(keys.QUEUE_SETTINGS)) == []  # nothing set: no object at all
    ticks.t = 30.0  # the registry listing is stale: the next submit sees the change
    queue.submit("t")
    assert ready(store) == 2


def test_a_full_queue_refuses_for_a_ttl_without_any_request() -> None:
    store = MemoryStore()
    ticks = Ticks()
    queue = bounded(store, 2, ticks=ticks)
    queue.registry.listing()  # a submitter's registry listing, as in test_request_counts

    before = store.counts.snapshot()
    queue.submit("t")  # the settings (1 GET, once per etag) and a count (1 LIST)
    assert diff(store.counts.snapshot(), before) == {"GET": 1, "LIST": 1, "PUT": 2}
    before = store.counts.snapshot()
    queue.submit("t")  # within depth_ttl: the count plus its own submit
    assert diff(store.counts.snapshot(), before) == {"PUT": 2}

    before = store.counts.snapshot()
    with pytest.raises(QueueFull):
        queue.submit("t")  # full only by its own submits: counted again (claims may have run)
    assert diff(store.counts.snapshot(), before) == {"LIST": 1}
    before = store.counts.snapshot()
    for _ in range(5):  # full by that count: refused for depth_ttl, at no cost
        with pytest.raises(QueueFull) as raised:
            queue.submit("t")
    assert diff(store.counts.snapshot(), before) == {}
    assert raised.value.retry_after == 1.0

    ticks.t = 1.0  # the count is stale: counted again (still full)
    before = store.counts.snapshot()
    with pytest.raises(QueueFull):
        queue.submit("t")
    assert diff(store.counts.snapshot(), before) == {"LIST": 1}


def test_the_count_costs_one_list_per_thousand_keys_per_ttl() -> None:
    store = MemoryStore()
    ticks = Ticks()
    queue = bounded(store, 2500, ticks=ticks)
    queue.submit_many([{"type": "t", "input": n} for n in range(1500)])
    ticks.t = 1.0
    before = store.counts.snapshot()
    for n in range(10):
        queue.submit("t", n)
    # ⌈(2500 + 1) / 1000⌉ pages would be the most; 1500 keys take 2
    assert diff(store.counts.snapshot(), before) == {"LIST": 2, "PUT": 20}
    assert queue.depth.lists == 2


def test_an_unbounded_queue_costs_nothing_beside_a_bounded_one() -> None:
    store = MemoryStore()
    ticks = Ticks()
    backpressure.set_settings(store, "bounded", max_depth=10)
    queue = submitter(store, ticks=ticks)
    queue.registry.listing()
    before = store.counts.snapshot()
    for n in range(5):
        queue.submit("t", n)  # the default queue has no settings
    assert diff(store.counts.snapshot(), before) == {"PUT": 10}
    assert queue.depth.lists == 0


def test_concurrent_submitters_overshoot_by_at_most_one_task_each_with_ttl_0(
        any_store: Store) -> None:
    """With ``depth_ttl=0`` every submit counts: at most max_depth + C - 1 ready tasks,
    C the submits in flight at once (each counted before any of the others wrote)."""
    max_depth, writers = 5, 6
    bounded(any_store, max_depth)
    queues = [submitter(any_store, ttl=0.0) for _ in range(writers)]
    queues[0].submit_many([{"type": "t"} for _ in range(max_depth - 1)])
    # The worst case, made deterministic: every submitter counts, then every one writes.
    from qo.protocol.submit import SubmitRequest, prepare, submit_prepared
    now = any_store.now()
    prepared = []
    for q in queues:
        q.registry.listing()
        p = prepare(SubmitRequest(type="t"), q.settings, now)
        q.admit([p])  # each sees max_depth - 1 and lets its task in
        prepared.append(p)
    for q, p in zip(queues, prepared, strict=True):
        submit_prepared(any_store, p, q.settings, now)
    assert ready(any_store) == max_depth - 1 + writers == max_depth + writers - 1
    for q in queues:  # and from then on every one of them refuses
        with pytest.raises(QueueFull):
            q.submit("t")


def test_concurrent_submitters_in_threads_keep_the_bound(any_store: Store) -> None:
    max_depth, writers, tries = 20, 6, 10
    bounded(any_store, max_depth)
    queues = [submitter(any_store, ttl=0.0) for _ in range(writers)]
    accepted, refused = [0] * writers, [0] * writers
    start = threading.Barrier(writers)

    def run(i: int) -> None:
        start.wait(timeout=60)
        for n in range(tries):
            try:
                queues[i].submit("t", {"n": n})
                accepted[i] += 1
            except QueueFull:
                refused[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    depth = ready(any_store)
    assert depth == sum(accepted) and sum(refused) > 0
    assert max_depth <= depth <= max_depth + writers - 1


def test_with_a_ttl_each_other_submitter_adds_at_most_its_counted_room() -> None:
    """depth ≤ max_depth + what the other submitters let in on counts younger than
    depth_ttl (each at most max_depth minus the depth it counted)."""
    store = MemoryStore()
    ticks = Ticks()
    bounded(store, 4, ticks=ticks)
    a, b = submitter(store, ticks=ticks), submitter(store, ticks=ticks)
    a.submit("t")
    b.submit("t")  # b counts 1 (a's first task)
    for _ in range(3):
        a.submit("t")  # a counted 0: room for 4 of its own
    with pytest.raises(QueueFull):
        a.submit("t")
    for _ in range(2):
        b.submit("t")  # b counted 1 (a's first): room for 3 of its own
    with pytest.raises(QueueFull):
        b.submit("t")
    assert ready(store) == 7 == 4 + (4 - 1)  # max_depth + b's counted room
    ticks.t = 1.0
    with pytest.raises(QueueFull):
        a.submit("t")


# -- the CLI, the API and qo stats ------------------------------------------------------


@pytest.fixture
def memory_url() -> str:
    return f"memory://backpressure-{uuid.uuid4().hex[:8]}"


def test_the_cli_sets_max_depth_and_a_full_submit_exits_6(memory_url: str) -> None:
    shown = as_json(run_qo("-q", memory_url, "queue", "set", "default", "--max-depth", "1",
                           "--json"))
    assert shown == {"queue": "default", "max_depth": 1, "aging": None}
    assert "max depth 1" in ok(run_qo("-q", memory_url, "queue", "show", "default")).stdout
    ok(run_qo("-q", memory_url, "submit", "t", "--unregistered"))
    line = assert_one_line_error(run_qo("-q", memory_url, "submit", "t", "--unregistered"),
                                 code=6, contains="queue 'default' is full")
    assert "try again later" in line
    stats = as_json(run_qo("-q", memory_url, "stats", "--json"))
    assert stats["queues"]["default"]["pending"] == 1
    assert stats["settings"] == {"default": {"max_depth": 1, "aging": None}}
    table = ok(run_qo("-q", memory_url, "stats")).stdout
    assert "max depth" in table and "aging" in table
    assert as_json(run_qo("-q", memory_url, "queue", "ls", "--json")) == [
        {"queue": "default", "max_depth": 1, "aging": None}]
    assert_one_line_error(run_qo("-q", memory_url, "queue", "set", "default",
                                 "--max-depth", "-3"), code=2, contains="--max-depth")
    assert_one_line_error(run_qo("-q", memory_url, "queue", "set", "default"), code=2)
    assert as_json(run_qo("-q", memory_url, "queue", "set", "default", "--aging", "60",
                          "--json")) == {"queue": "default", "max_depth": 1, "aging": 60}
    assert "60 s" in ok(run_qo("-q", memory_url, "stats")).stdout
    ok(run_qo("-q", memory_url, "queue", "set", "default", "--max-depth", "none"))
    assert "strict priority" not in ok(run_qo("-q", memory_url, "queue", "show", "default")).stdout
    ok(run_qo("-q", memory_url, "queue", "set", "default", "--aging", "none"))
    assert "no max depth, strict priority" in ok(
        run_qo("-q", memory_url, "queue", "show", "default")).stdout
    assert as_json(run_qo("-q", memory_url, "queue", "ls", "--json")) == []


def test_the_api_answers_429_queue_full(memory_url: str) -> None:
    serverless.reset()
    try:
        queue = Queue.from_url(memory_url)
        backpressure.set_settings(queue.store, "default", max_depth=1)
        serverless.configure(queue=queue)
        status, body = call("POST", "/tasks", {"type": "t"})
        assert status == 201, body
        status, body = call("POST", "/tasks", {"type": "t"})
        assert (status, body["error"]) == (429, "queue_full")
        assert "is full" in body["message"]
        status, body = call("POST", "/tasks/batch", {"tasks": [{"type": "t"}]})
        assert (status, body["error"]) == (429, "queue_full")
        from qo.serverless import api
        response = api.handler({"requestContext": {"http": {"method": "POST", "path": "/tasks"}},
                                "rawPath": "/tasks", "body": '{"type": "t"}'})
        assert response["statusCode"] == 429 and response["headers"]["Retry-After"] == "1"
        assert ready(queue.store) == 1
    finally:
        serverless.reset()


def test_unreadable_settings_are_ignored_by_submitters() -> None:
    store = MemoryStore(clock=FakeClock())
    store.put(keys.queue_settings_key("default"), b"{not json")
    queue = Queue(store)
    queue.submit("t")
    assert ready(store) == 1


# -- several processes on the moto server ------------------------------------------------

CHILD = r"""
import json, sys
from qo.queue import Queue
from qo.protocol.backpressure import QueueFull

url, ttl, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
queue = Queue.from_url(url, depth_ttl=ttl)
queue.registry.listing()
queue.check_store()
print("ready", flush=True)
sys.stdin.readline()  # the parent's go, once every process is ready
ok = full = 0
for i in range(n):
    try:
        queue.submit("t", {"i": i})
        ok += 1
    except QueueFull:
        full += 1
print(json.dumps({"ok": ok, "full": full, "lists": queue.depth.lists}), flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("ttl", [0.0, 1.0])
def test_submitting_processes_on_the_moto_server_hold_the_documented_bound(
        s3_server: Any, monkeypatch: pytest.MonkeyPatch, ttl: float) -> None:
    import json
    import os
    import subprocess
    import sys

    from qo.store.s3 import S3Store

    bucket = f"qo-bp-{os.urandom(4).hex()}"
    store = S3Store(bucket, "bp", endpoint_url=s3_server.endpoint_url)
    store.create_bucket()
    max_depth, processes, tries = 30, 4, 40  # each alone would overfill it
    backpressure.set_settings(store, "default", max_depth=max_depth)
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_server.endpoint_url,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, f"s3://{bucket}/bp", str(ttl),
                               str(tries)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(processes)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    depth = ready(store)
    assert depth == sum(r["ok"] for r in results) and sum(r["full"] for r in results) > 0
    if ttl == 0:  # every submit counts: C - 1 over at most, C = processes
        assert max_depth <= depth <= max_depth + processes - 1
    else:  # each other process adds at most the room it counted, within a depth_ttl
        assert max_depth <= depth <= max_depth * processes
    store.close()
