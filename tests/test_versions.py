"""Handler versions (issue 16): side by side, migration, and never the wrong handler."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from qo.app import App
from qo.context import Context
from qo.models import FutureSchema, Status, TaskRecord, dumps, loads
from qo.protocol import fleet, keys, registry
from qo.protocol.keys import Marker, parse_delayed_key, parse_ready_key, split_handler_name
from qo.queue import Queue
from qo.store.base import Store
from qo.store.memory import MemoryStore
from qo.store.metrics import diff
from qo.worker import Worker, WorkerOptions

pytestmark = pytest.mark.timeout(120)


def two_versions(queue: Queue, ran: list[tuple[int, Any]]) -> App:
    app = App(queue)

    @app.task(name="resize", version=1)
    def resize_v1(size: int) -> int:
        ran.append((1, size))
        return size

    @app.task(name="resize", version=2)
    def resize_v2(width: int, height: int) -> int:
        ran.append((2, (width, height)))
        return width * height

    return app


def drain(app: App, queue: Queue) -> Worker:
    worker = Worker(app, queue, WorkerOptions(concurrency=1))
    for _ in range(20):
        if not worker.run_once():
            break
    return worker



def test_two_versions_are_served_side_by_side(any_store: Store) -> None:
    queue = Queue(any_store)
    ran: list[tuple[int, Any]] = []
    app = two_versions(queue, ran)
    new = app.submit("resize", {"width": 2, "height": 3})  # the highest version
    old = queue.submit("resize", {"size": 5}, version=1)  # an older submitter's task
    assert queue.get(new.id).record.version == 2 and queue.get(old.id).record.version == 1
    drain(app, queue)
    assert sorted(ran, key=lambda r: r[0]) == [(1, 5), (2, (2, 3))]
    assert new.result(timeout=5) == 6 and old.result(timeout=5) == 5
    assert app.accepted() == {"resize", "resize@2"}


def test_an_old_task_is_migrated_by_a_newer_handler(any_store: Store) -> None:
    queue = Queue(any_store)
    old_app = App(queue)
    old_app.task(name="resize")(lambda size: size)
    handle = old_app.submit("resize", {"size": 4})  # version 1, from before the upgrade

    seen: list[tuple[int, int, int]] = []
    new_app = App(queue)

    def migrate(payload: Any, from_version: int) -> Any:
        assert from_version == 1
        return {"width": payload["size"], "height": payload["size"]}

    @new_app.task(name="resize", version=2, migrate=migrate)
    def resize(width: int, height: int, ctx: Context) -> int:
        seen.append((ctx.version, width, height))
        return width * height

    assert new_app.accepted() == {"resize", "resize@2"}
    drain(new_app, queue)
    assert handle.result(timeout=5) == 16
    assert seen == [(1, 4, 4)]  # ctx.version: the version it was submitted for


def test_a_task_of_an_unserved_version_stays_queued_flagged_and_unread() -> None:
    store = MemoryStore()
    queue = Queue(store)
    ran: list[Any] = []
    v1_only = App(queue)
    v1_only.task(name="resize")(lambda size: ran.append(size))
    handle = queue.submit("resize", {"width": 1, "height": 1}, version=2)
    marker = next(i.key for i in store.list(keys.READY))
    assert marker.endswith(f"-{handle.id}-resize@2")

    worker = Worker(v1_only, queue, WorkerOptions(concurrency=1))
    before = store.counts.snapshot()
    assert not worker.run_once()
    assert diff(store.counts.snapshot(), before) == {"LIST": 1}  # no lease, no GET of the record
    assert worker.claimer.unknown_types == {("default", "resize@2")}
    record = queue.get(handle.id).record
    assert (record.status, record.attempt, ran) == (Status.PENDING, 0, [])

    worker._write_heartbeat("running")  # a live worker that serves version 1 only
    found = fleet.coverage(store)
    assert [(u.queue, u.task_type, u.ready) for u in found.unserved] == [("default", "resize@2", 1)]


def test_a_handler_without_migrate_refuses_an_older_task_if_ever_given_one() -> None:
    queue = Queue(MemoryStore())
    app = App(queue)
    app.task(name="t", version=3)(lambda: "v3")
    assert app.handler_for("t", 1) is None and app.handler_for("t", 3) is not None
    assert app.accepted() == {"t@3"}


def test_versions_are_checked_when_registered() -> None:
    app = App(Queue(MemoryStore()))
    app.task(name="t", version=2)(lambda: None)
    with pytest.raises(Exception, match="task type 't' version 2 is registered twice"):
        app.task(name="t", version=2)(lambda: None)
    with pytest.raises(Exception, match="invalid handler version 0"):
        app.task(name="t", version=0)(lambda: None)


def test_a_record_without_a_version_is_written_as_before_and_one_with_is_version_2() -> None:
    base = {"id": "a" * 22, "queue": "q", "type": "t", "input_hash": "h", "created_at": 0,
            "available_at": 0}
    plain = orjson.loads(dumps(TaskRecord(**base)))
    assert plain["v"] == 1 and "version" not in plain  # what qo before versions reads
    versioned = orjson.loads(dumps(TaskRecord(**base, version=2)))
    assert versioned["v"] == 2 and versioned["version"] == 2
    # a qo from before versions knows schema 1 only: it leaves such a record alone
    class OldRecord(TaskRecord):
        v: int = 1

    with pytest.raises(FutureSchema):
        loads(OldRecord, dumps(TaskRecord(**base, version=2)), "task record")
    assert loads(TaskRecord, dumps(TaskRecord(**base, version=2)), "r").version == 2


def test_marker_keys_carry_the_version_and_old_keys_parse_as_version_1() -> None:
    m = Marker("q", 200, 1.5, "abc123", "resize", 2)
    assert m.ready_key == "ready/q/055/0000000001500000-abc123-resize@2"
    assert parse_ready_key(m.ready_key) == m
    assert parse_delayed_key(m.delayed_key) == m
    old = parse_ready_key("ready/q/055/0000000001500000-abc123-resize")
    assert old == Marker("q", 200, 1.5, "abc123", "resize") and old.version == 1
    assert old.ready_key == "ready/q/055/0000000001500000-abc123-resize"  # unchanged format
    for odd in ("t@1", "t@02", "t@", "@2", "t@x"):  # not a version suffix: part of the name
        assert split_handler_name(odd) == (odd, 1)
    assert split_handler_name("a-b@12") == ("a-b", 12)


def test_the_registry_targets_the_highest_version_and_its_schema() -> None:
    store = MemoryStore()
    ran: list[Any] = []
    two_versions(Queue(store), ran).publish(store, owner="w")
    assert sorted(registry.list_types(store)) == [("resize", 1), ("resize", 2)]
    queue = Queue(store)
    handle = queue.submit("resize", {"width": 1, "height": 2})
    assert queue.get(handle.id).record.version == 2
    with pytest.raises(registry.InvalidInput, match=r"\(version 2\): height: field required"):
        queue.submit("resize", {"width": 1})
    old = queue.submit("resize", {"size": 1}, version=1)  # an explicit older version
    assert queue.get(old.id).record.version == 1
    with pytest.raises(registry.UnregisteredType, match="unknown version 7 of task type"):
        queue.submit("resize", {}, version=7)


def test_qo_types_flags_a_version_no_live_worker_serves() -> None:
    from qo.protocol import typeview

    store = MemoryStore()
    queue = Queue(store)
    ran: list[tuple[int, Any]] = []
    both = two_versions(queue, ran)
    both.publish(store, owner="w")
    v1_only = App(queue)
    v1_only.task(name="resize")(lambda size: size)
    Worker(v1_only, queue, WorkerOptions(concurrency=1, worker_id="old"))._write_heartbeat(
        "running")
    queue.submit("resize", {"width": 1, "height": 1})  # the registry's highest: version 2
    queue.submit("resize", {"size": 1}, version=1)
    (row,) = typeview.overview(store)
    assert (row.name, row.versions, row.ready) == ("resize", [1, 2], 2)
    assert row.workers == ["old"] and row.unserved_versions == [2] and row.unserved
