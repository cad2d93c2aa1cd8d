"""Each stored model has its own schema version (issue 14).

A body without ``v`` reads as version 1; version-1 bodies of the models qo
always wrote without ``v`` (leases, worker records) are still written without
it, so that qo from before schema versions reads them; a body from a newer
qo (``v`` above what this qo knows) gives a clear one-line error and is left
alone for a newer qo: never quarantined, replaced or taken over, so the task
or slot it holds is not lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from qo import scheduler
from qo.models import (
    FutureSchema,
    Lease,
    Status,
    TaskRecord,
    WorkerInfo,
    dumps,
    loads,
    schema_version,
)
from qo.protocol import cursor, keys, leases, records
from qo.protocol.claim import Claimer
from qo.protocol.schedule_model import Schedule, schedule_key
from qo.protocol.sweep import reap
from qo.queue import Queue
from qo.settings import Settings
from qo.store.memory import MemoryStore

from .helpers import FakeClock, drain
from .test_cli import assert_one_line_error
from .test_cli import qo as run_qo
from .test_hostile_input import app_for

RECORD = {"id": "t1", "queue": "default", "type": "ok", "input_hash": "h",
          "created_at": 0.0, "available_at": 0.0}
LEASE = {"task_id": "t1", "owner": "w", "token": "tok", "claimed_at": 0.0}
WORKER = {"id": "w1", "host": "h", "pid": 1, "queues": ["default"], "concurrency": 1,
          "started_at": 0.0, "seen_at": 0.0}
SCHEDULE = {"name": "s", "task_type": "ok", "every": 60.0, "created_at": 0.0,
            "updated_at": 0.0, "next_slot": 60.0}
MODELS: list[tuple[type[Any], dict[str, Any]]] = [
    (TaskRecord, RECORD), (Lease, LEASE), (WorkerInfo, WORKER), (Schedule, SCHEDULE)]


@pytest.mark.parametrize(("model", "body"), MODELS, ids=lambda m: getattr(m, "__name__", ""))
def test_a_body_without_v_reads_as_version_1(model: type[Any], body: dict[str, Any]) -> None:
    parsed = loads(model, orjson.dumps(body), "object")
    assert parsed.v == schema_version(model)  # held as the current version, written as it
    assert loads(model, orjson.dumps({**body, "v": 1}), "object") == parsed


@pytest.mark.parametrize(("model", "body"), MODELS, ids=lambda m: getattr(m, "__name__", ""))
def test_a_body_from_a_newer_qo_is_one_clear_error(model: type[Any], body: dict[str, Any]) -> None:
    future = {**body, "v": 99, "a_field_from_the_future": [1, 2]}
    with pytest.raises(FutureSchema) as caught:
        loads(model, orjson.dumps(future), "the object")
    message = str(caught.value)
    assert "\n" not in message
    assert message == ("the object has schema version 99, newer than this qo reads "
                       f"({model.model_fields['v'].default}): upgrade qo")


def test_leases_and_worker_records_are_still_written_without_v() -> None:
    """qo before schema versions refuses a ``v`` in these bodies: version 1 omits it."""
    store = MemoryStore()
    held = leases.acquire(store, "default", "t1", owner="w", kind="run", seconds=60,
                          now=store.now())
    assert held is not None
    assert "v" not in orjson.loads(store.get(held.key).body)  # type: ignore[union-attr]
    again = leases.read(store, held.key)
    assert again is not None and again.value.v == 1 and again.renew(store)  # a read one, too
    assert "v" not in orjson.loads(store.get(held.key).body)  # type: ignore[union-attr]
    assert "v" not in orjson.loads(dumps(WorkerInfo.model_validate(WORKER)))
    assert orjson.loads(dumps(TaskRecord.model_validate(RECORD)))["v"] == 1  # it always had v


# -- a newer qo's task record: left to newer workers, never lost ------------------------


def from_the_future(store: MemoryStore, task_id: str) -> bytes:
    """Rewrite a task record as a newer qo would (a higher ``v``, a field unknown here)."""
    obj = store.get(keys.task_key(task_id))
    assert obj is not None
    body = orjson.loads(obj.body)
    store.put(keys.task_key(task_id), orjson.dumps({**body, "v": 99, "new_field": "x"}))
    return obj.body


def test_a_claimer_leaves_a_newer_record_and_its_marker_for_a_newer_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    queue, app, runs = app_for(store)
    newer = queue.submit("ok", {"n": 1})
    old_body = from_the_future(store, newer.id)
    healthy = [queue.submit("ok", {"n": i}).id for i in range(3)]
    drain(queue, app, healthy)
    assert runs.counts[newer.id] == 0 and all(runs.counts[i] == 1 for i in healthy)
    ready = [i.key for i in store.list(keys.READY)]
    assert len(ready) == 1 and newer.id in ready[0]  # its marker stays
    assert list(store.list("quarantine/")) == []  # not parked as unreadable
    assert list(store.list(keys.LEASES)) == []  # its lease was released
    assert "left for a newer worker" in caplog.text and "upgrade qo" in caplog.text
    store.put(keys.task_key(newer.id), old_body)  # a newer worker: it reads the record
    drain(queue, app, [newer.id])
    assert runs.counts[newer.id] == 1 and queue.get(newer.id).status == Status.SUCCEEDED


def test_a_claimer_skips_a_newer_record_without_paying_for_it_each_claim() -> None:
    store = MemoryStore()
    queue = Queue(store, Settings())
    newer = queue.submit("ok", {"n": 1})
    from_the_future(store, newer.id)
    claimer = Claimer(store, queue.settings, queues=["default"], task_types={"ok"}, owner="w")
    assert claimer.claim() is None
    store.counts.reset()
    assert claimer.claim() is None
    spent = store.counts.snapshot()
    assert spent.get("PUT", 0) == 0 and spent.get("GET", 0) == 0  # skipped: no lease, no read


def test_a_reaper_leaves_a_newer_record_under_its_lease_for_a_newer_reaper() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue, app, runs = app_for(store)
    handle = queue.submit("ok", {"n": 1})
    claim = Claimer(store, queue.settings, queues=["default"], task_types={"ok"},
                    owner="dies").claim()
    assert claim is not None
    old_body = from_the_future(store, handle.id)
    clock.advance(queue.settings.lease_seconds + 1)  # the worker died: its lease expires
    report = reap(store, queue.settings, owner="old")
    assert report.reaped == 0 and "upgrade qo" in " ".join(report.errors)
    assert list(store.list("quarantine/")) == []
    lease = leases.read(store, keys.lease_key("default", handle.id))
    assert lease is not None and lease.value.kind == "reap"  # kept: the task is not dropped
    assert lease.value.reaped_token == claim.lease.value.token  # the lost run goes along
    store.put(keys.task_key(handle.id), old_body)  # a newer reaper reads the record
    clock.advance(queue.settings.repair_lease_seconds + 1)
    assert reap(store, queue.settings, owner="new").reaped == 1
    record = queue.get(handle.id).record
    assert record.attempt == 1 and record.error is not None
    assert record.error.type == "LeaseExpired"  # the lost run was counted, once
    drain(queue, app, [handle.id], clock=clock)
    assert runs.counts[handle.id] == 1


def test_a_reaper_leaves_a_newer_lease_alone() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    key = keys.lease_key("default", "t1")
    body = orjson.dumps({**LEASE, "v": 99, "claimed_at": clock()})
    store.put(key, body)
    clock.advance(7200)  # even long expired, and past the age an unreadable lease is taken over
    report = reap(store, Settings(), owner="old")
    assert report.reaped == 0 and "upgrade qo" in " ".join(report.errors)
    assert store.get(key).body == body  # type: ignore[union-attr]


def test_show_of_a_newer_record_is_one_error_line(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'queue'}"
    queue = Queue.from_url(url)
    handle = queue.submit("ok", {"n": 1})
    obj = queue.store.get(keys.task_key(handle.id))
    assert obj is not None
    queue.store.put(keys.task_key(handle.id), orjson.dumps({**orjson.loads(obj.body), "v": 99}))
    result = run_qo("-q", url, "show", handle.id)
    line = assert_one_line_error(result, code=2, contains="schema version 99")
    assert "upgrade qo" in line
    with pytest.raises(FutureSchema):
        records.read(queue.store, handle.id)


# -- a newer qo's schedule: never replaced or fired here --------------------------------


def test_a_newer_schedule_is_reported_and_never_replaced_or_removed_here() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue = Queue(store)
    scheduler.add(queue, "s", "ok", every="60s")
    body = orjson.loads(store.get(schedule_key("s")).body)  # type: ignore[union-attr]
    future = orjson.dumps({**body, "v": 99, "new_field": True})
    store.put(schedule_key("s"), future)
    clock.advance(120)
    report = scheduler.firer(queue).fire_due()
    assert report.fired == [] and "upgrade qo" in " ".join(report.errors)
    with pytest.raises(FutureSchema):
        scheduler.save(queue, "s", "ok", every="30s", replace=True)
    with pytest.raises(FutureSchema):
        scheduler.remove(queue, "s")
    good, bad = scheduler.scan(queue)
    assert good == [] and "schema version 99" in bad[0].error
    assert store.get(schedule_key("s")).body == future  # type: ignore[union-attr]
    assert list(store.list(keys.TASKS)) == []


# -- cursors -----------------------------------------------------------------------------


def test_cursors_carry_a_version_that_older_readers_ignore() -> None:
    store = MemoryStore()
    cursor.write(store, "sweep/c", {"after": "tasks/x"}, None)
    raw = orjson.loads(store.get("sweep/c").body)  # type: ignore[union-attr]
    assert raw["v"] == cursor.VERSION and raw["after"] == "tasks/x"  # old readers .get() keys
    state, etag = cursor.read(store, "sweep/c")
    assert state == {"after": "tasks/x"} and etag is not None
    store.put("sweep/c", orjson.dumps({"after": "tasks/y"}))  # written by an older qo
    assert cursor.read(store, "sweep/c")[0] == {"after": "tasks/y"}


def test_a_newer_cursor_reads_as_a_fresh_start() -> None:
    store = MemoryStore()
    store.put("sweep/c", orjson.dumps({"v": 99, "position": [1, 2]}))
    state, etag = cursor.read(store, "sweep/c")
    assert state == {} and etag is not None
