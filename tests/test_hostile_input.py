"""Hostile input through every entry point: clear errors, nothing harmed.

Covers the Python API and what a worker finds in the bucket (corrupt or
truncated records, unknown schema versions, garbage keys, corrupt leases and
payloads). The CLI and the HTTP API have their own suites for their parsing.
"""

from __future__ import annotations

from datetime import datetime

import orjson
import pytest
from pydantic import ValidationError

from qo.app import App
from qo.doctor import diagnose
from qo.errors import InvalidName, QoError
from qo.models import CorruptRecord, Status
from qo.protocol import keys
from qo.protocol.admin import show
from qo.protocol.records import InvalidPayload, PayloadTooLarge
from qo.queue import Queue
from qo.settings import Settings
from qo.store.base import Store
from qo.store.memory import MemoryStore
from qo.worker import Worker, WorkerOptions

from .helpers import FakeClock, Runs, drain

HOSTILE_NAMES = ["../etc", "a/b", "..", ".", "x\x00y", "tab\tname", "new\nline", "é" * 200,
                 "a" * 129, " lead", "-dash", "", "a..b", "%2e%2e", "q/../../x"]


def app_for(store: Store, settings: Settings | None = None) -> tuple[Queue, App, Runs]:
    queue = Queue(store, settings or Settings())
    app = App(queue)
    runs = Runs()

    @app.task
    def ok(ctx, n: int = 0) -> int:
        runs.hit(ctx.task_id)
        return n

    return queue, app, runs


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_never_reach_a_key(store: Store, name: str) -> None:
    queue, _, _ = app_for(store)
    for kwargs in ({"task_type": name}, {"task_type": "ok", "queue": name},
                   {"task_type": "ok", "tags": {name: "v"}}):
        task_type = kwargs.pop("task_type")
        with pytest.raises((InvalidName, ValidationError)):
            queue.submit(task_type, None, **kwargs)
    with pytest.raises(InvalidName):
        queue.get(name)
    with pytest.raises(InvalidName):
        queue.pause(name)
    assert list(store.list("")) == []


@pytest.mark.parametrize("value", [
    {"deep": None},  # replaced below by a 300-level nesting
    b"raw bytes",
    "\ud800 lone surrogate",
    {1, 2},
    float("nan"),
    {"a": [1, float("inf")]},
])
def test_non_json_inputs_are_refused(value: object) -> None:
    store = MemoryStore()
    queue, _, _ = app_for(store)
    if value == {"deep": None}:
        value = []
        for _ in range(300):
            value = [value]
    with pytest.raises((InvalidPayload, QoError)):
        queue.submit("ok", value)
    assert list(store.list("")) == []


def test_oversized_input_and_bad_times_are_refused() -> None:
    store = MemoryStore()
    queue, _, _ = app_for(store, Settings(max_payload=10_000))
    with pytest.raises(PayloadTooLarge):
        queue.submit("ok", {"blob": "x" * 20_000})
    with pytest.raises(QoError, match="time zone"):
        queue.submit("ok", None, at=datetime(2030, 1, 1))
    with pytest.raises(ValidationError):
        queue.submit("ok", None, at="next tuesday")
    with pytest.raises(QoError, match="not both"):
        queue.submit("ok", None, at=2e9, delay=5)
    with pytest.raises(ValidationError):
        queue.submit("ok", None, priority=256)
    assert list(store.list("")) == []


def corrupt_bodies() -> list[tuple[str, bytes]]:
    good = {"v": 1, "id": "x", "queue": "default", "type": "ok", "input_hash": "h",
            "created_at": 0, "available_at": 0}
    return [
        ("truncated", b'{"v": 1, "id": "'),
        ("not json", b"\xff\xfe garbage \x00"),
        ("wrong shape", b"[1, 2, 3]"),
        ("bad schema version", orjson.dumps({**good, "v": "2"})),
        ("unknown field", orjson.dumps({**good, "surprise": True})),
        ("bad status", orjson.dumps({**good, "status": "exploded"})),
    ]


@pytest.mark.parametrize(("label", "body"), corrupt_bodies())
def test_corrupt_records_are_quarantined_and_others_still_run(
    store: Store, label: str, body: bytes
) -> None:
    queue, app, runs = app_for(store)
    victim = queue.submit("ok", {"n": 1})
    store.put(keys.task_key(victim.id), body)  # someone scribbles over the record
    healthy = [queue.submit("ok", {"n": i}).id for i in range(3)]
    store.put("ready/default/128/garbage-key-without-fields", b"")  # and drops junk in the index
    drain(queue, app, healthy)
    assert all(runs.counts[i] == 1 for i in healthy) and runs.counts[victim.id] == 0
    with pytest.raises(CorruptRecord):
        show(store, victim.id)
    assert [i.key for i in store.list("quarantine/")] == [f"quarantine/default/{victim.id}"]
    assert keys.task_key(victim.id) in [i.key for i in store.list("tasks/")]  # left for a human
    report = diagnose(store=store)
    quarantine = next(c for c in report.checks if c.name == "quarantine")
    assert quarantine.level == "warn" and victim.id in quarantine.detail
    assert [v.record.id for v in queue.ls(limit=10)] == sorted(healthy)
    assert Worker(app, queue).run_once() is False  # nobody pays for the victim again


def test_a_corrupt_input_payload_fails_the_task_without_running_it() -> None:
    store = MemoryStore()
    queue, app, runs = app_for(store, Settings(inline_limit=10))
    handle = queue.submit("ok", {"n": 12345678901234})
    store.put(keys.input_key(handle.id), b"{not json")
    drain(queue, app, [handle.id])
    record = queue.get(handle.id).record
    assert record.status == Status.DEAD and record.error.type == "CorruptPayload"
    assert runs.counts[handle.id] == 0


def test_a_corrupt_lease_is_reaped_once_it_is_old() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue, app, runs = app_for(store)
    handle = queue.submit("ok", {"n": 1})
    store.put(keys.lease_key("default", handle.id), b"\x00 not a lease")
    worker = Worker(app, queue, WorkerOptions(concurrency=1))
    assert worker.run_once() is False  # the junk lease blocks the claim...
    clock.advance(3601)
    queue.sweep()  # ...until a reaper takes it over and indexes the task again
    worker.claimer.forget()
    drain(queue, app, [handle.id], worker=Worker(app, queue))
    assert runs.counts[handle.id] == 1 and queue.get(handle.id).status == Status.SUCCEEDED
