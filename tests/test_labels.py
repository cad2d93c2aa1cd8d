"""Routing by capability labels (issue 16): a worker never claims, nor reads the record of,
a task needing a label it lacks. Mixed fleets on the memory store and the moto server."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from qo.app import App
from qo.errors import InvalidName
from qo.models import Status, WorkerInfo, dumps
from qo.protocol import fleet, keys
from qo.protocol.keys import Marker, parse_ready_key
from qo.queue import Queue
from qo.store.base import Store
from qo.store.memory import MemoryStore
from qo.store.metrics import diff
from qo.worker import Worker, WorkerOptions

from .test_cli import qo as run_qo

pytestmark = pytest.mark.timeout(120)


def make_app(queue: Queue, ran: list[tuple[str, str]], who: dict[str, str]) -> App:
    app = App(queue)

    @app.task(labels=["gpu"])
    def render(n: int) -> int:
        ran.append(("render", who["now"]))
        return n

    @app.task
    def plain(n: int) -> int:
        ran.append(("plain", who["now"]))
        return n

    return app


def fleet_of(queue: Queue, app: App, **labels: list[str]) -> dict[str, Worker]:
    return {name: Worker(app, queue, WorkerOptions(concurrency=1, worker_id=name,
                                                   labels=lab))
            for name, lab in labels.items()}


def run_all(workers: dict[str, Worker], who: dict[str, str], name: str) -> int:
    done = 0
    who["now"] = name
    while workers[name].run_once():
        done += 1
    return done



def test_a_mixed_fleet_routes_labelled_tasks_to_labelled_workers(any_store: Store) -> None:
    queue = Queue(any_store)
    ran: list[tuple[str, str]] = []
    who = {"now": ""}
    app = make_app(queue, ran, who)
    workers = fleet_of(queue, app, cpu=[], gpu=["gpu", "region=eu"])
    renders = [app.submit("render", {"n": i}) for i in range(3)]
    plains = [app.submit("plain", {"n": i}) for i in range(2)]
    eu_only = queue.submit("plain", {"n": 9}, labels=["region=eu"])  # one task's own label
    assert sorted(keys.parse_ready_key(i.key).labels for i in any_store.list(keys.READY)) \
        == [(), (), ("gpu",), ("gpu",), ("gpu",), ("region=eu",)]

    assert run_all(workers, who, "cpu") == 2  # only the plain tasks that need nothing
    assert all(queue.get(r.id).record.status == Status.PENDING for r in renders)
    assert run_all(workers, who, "gpu") == 4
    assert sorted(ran) == sorted([("plain", "cpu")] * 2 + [("render", "gpu")] * 3
                                 + [("plain", "gpu")])
    assert all(h.result(timeout=5) is not None for h in [*renders, *plains, eu_only])


def test_an_unlabelled_worker_never_gets_a_labelled_tasks_record() -> None:
    store = MemoryStore()
    queue = Queue(store)
    who = {"now": "cpu"}
    app = make_app(queue, [], who)
    cpu = fleet_of(queue, app, cpu=[])["cpu"]
    handles = [app.submit("render", {"n": i}) for i in range(5)]
    before = store.counts.snapshot()
    assert not cpu.run_once()
    assert not cpu.run_once()  # (the listing is cached)
    assert diff(store.counts.snapshot(), before) == {"LIST": 1}  # no lease PUT, no GET
    assert cpu.claimer.stats.claims == 0
    assert all(queue.get(h.id).record.attempt == 0 for h in handles)


def test_labels_of_a_type_come_from_the_registry_for_a_submitter_without_the_app() -> None:
    store = MemoryStore()
    make_app(Queue(store), [], {"now": ""}).publish(store, owner="w")
    queue = Queue(store)
    record = queue.get(queue.submit("render", {"n": 1}).id).record
    assert record.labels == ["gpu"]
    marker = next(i.key for i in store.list(keys.READY))
    assert marker.endswith(f"-{record.id}-render~gpu")


def test_marker_keys_with_labels_parse_and_old_keys_have_none() -> None:
    m = Marker("q", 128, 2.0, "abc", "render", 2, ("gpu", "region=eu"))
    assert m.ready_key == "ready/q/127/0000000002000000-abc-render@2~gpu~region=eu"
    assert parse_ready_key(m.ready_key) == m
    assert keys.parse_delayed_key(m.delayed_key) == m
    old = parse_ready_key("ready/q/127/0000000002000000-abc-render")
    assert old is not None and old.labels == () and old.version == 1
    assert m.runnable_with(frozenset({"gpu", "region=eu", "x"}))
    assert not m.runnable_with(frozenset({"gpu"})) and m.runnable_with(None)


def test_worker_records_carry_labels_and_unserved_labelled_tasks_are_flagged() -> None:
    store = MemoryStore()
    queue = Queue(store)
    app = make_app(queue, [], {"now": ""})
    cpu = fleet_of(queue, app, cpu=[])["cpu"]
    cpu._write_heartbeat("running")
    plain = orjson.loads(store.get(keys.worker_key("cpu")).body)
    assert "v" not in plain and "labels" not in plain  # as before labels: old readers read it
    app.submit("render", {"n": 1})
    found = fleet.coverage(store)
    assert [(u.task_type, u.ready) for u in found.unserved] == [("render~gpu", 1)]
    gpu = fleet_of(queue, app, gpu=["gpu"])["gpu"]
    gpu._write_heartbeat("running")
    labelled = orjson.loads(store.get(keys.worker_key("gpu")).body)
    assert labelled["v"] == 2 and labelled["labels"] == ["gpu"]
    assert fleet.coverage(store).unserved == []
    info = WorkerInfo(id="x", host="h", pid=1, queues=["default"], concurrency=1,
                      started_at=0, seen_at=0)
    assert b'"v"' not in dumps(info)


def test_invalid_labels_are_refused_before_anything_is_written(tmp_path: Any) -> None:
    store = MemoryStore()
    queue = Queue(store)
    with pytest.raises(InvalidName, match="invalid label"):
        queue.submit("t", labels=["has space"])
    with pytest.raises(InvalidName, match="at most 8 labels"):
        queue.submit("t", labels=[f"l{i}" for i in range(9)])
    assert list(store.list(keys.TASKS)) == []
    with pytest.raises(InvalidName):
        App(queue).task(name="x", labels=["a~b"])(lambda: None)
    done = run_qo("-q", f"file://{tmp_path / 's'}", "worker", "--app",
                  "tests.apps.registry_app:app", "--label", "bad~label", "--burst")
    assert done.exit_code == 2 and done.stderr.startswith("error: invalid label")


def test_cli_submit_takes_labels_and_long_label_lists_are_refused(tmp_path: Any) -> None:
    url = f"file://{tmp_path / 's'}"
    done = run_qo("-q", url, "submit", "t", "--label", "gpu", "--label", "region=eu", "--json")
    assert done.exit_code == 0, done.output
    record = Queue.from_url(url).get(orjson.loads(done.stdout)["id"]).record
    assert record.labels == ["gpu", "region=eu"]
    bad = run_qo("-q", url, "submit", "t", "--label", "no spaces")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: invalid label")
    with pytest.raises(InvalidName, match="labels too long"):
        Queue(MemoryStore()).submit("t", labels=[f"{c}" * 60 for c in "abcde"])


def test_a_worker_without_a_types_labels_never_serves_that_type_whatever_the_marker() -> None:
    store = MemoryStore()
    queue = Queue(store)
    who = {"now": "cpu"}
    ran: list[tuple[str, str]] = []
    app = make_app(queue, ran, who)
    assert app.accepted(()) == {"plain"} and app.accepted(["gpu"]) == {"plain", "render"}
    bare = queue.submit("render", {"n": 1})  # no registry here: its marker names no label
    workers = fleet_of(queue, app, cpu=[], gpu=["gpu"])
    before = store.counts.snapshot()
    assert run_all(workers, who, "cpu") == 0
    assert diff(store.counts.snapshot(), before) == {"LIST": 1}
    assert run_all(workers, who, "gpu") == 1 and ran == [("render", "gpu")]
    assert bare.result(timeout=5) == 1


def test_schedule_slots_get_the_types_current_version_and_labels() -> None:
    from qo import scheduler
    from qo.testing import FakeClock

    clock = FakeClock()
    store = MemoryStore(clock=clock)
    app = App(Queue(store))
    app.task(name="render", version=2, labels=["gpu"])(lambda n: n)
    app.publish(store, owner="w")
    queue = Queue(store)
    scheduler.add(queue, "nightly", "render", every=60, input={"n": 1})
    clock.advance(61)
    report = queue.fire_schedules()
    assert len(report.fired) == 1
    record = queue.get(report.fired[0][2]).record
    assert (record.version, record.labels) == (2, ["gpu"])
    assert Status.PENDING in (record.status, Status.SCHEDULED)
