"""Regression tests for what independent fault tests found (stranded tasks, starvation,
corrupt state, hostile input). Each failed before its fix."""

from __future__ import annotations

import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import pytest

from qo.app import App
from qo.errors import InvalidName
from qo.ids import new_task_id
from qo.models import Lease, Status, dumps
from qo.protocol import audit, index, keys, leases, records
from qo.protocol.claim import Claimer
from qo.protocol.submit import SubmitRequest
from qo.queue import Queue
from qo.settings import Settings
from qo.store.base import Store
from qo.store.memory import MemoryStore
from qo.worker import Worker, WorkerOptions

from .helpers import FakeClock, Runs, drain
from .test_queue_core import make_app

FUTURE = 4_000_000_000.0  # 2096: a fixed `at=` in the future
PAST = 1_000_000_000.0  # 2001: a fixed `at=` that is already due


def make(store: Store, settings: Settings | None = None) -> tuple[Queue, App, Runs]:
    return make_app(store, settings)


def stranded(queue: Queue, task_id: str) -> bool:
    view = queue.get(task_id)
    return audit.is_stranded(queue.store, view.record)


# -- acknowledged tasks that never run -------------------------------------------------


@pytest.mark.parametrize("at", [PAST, FUTURE])
def test_a_repeated_idempotent_submit_with_a_fixed_time_keeps_the_marker(
        store: Store, at: float) -> None:
    queue, app, runs = make(store)
    first = queue.submit("add", {"x": 1, "y": 2}, key="once", at=at)
    again = queue.submit("add", {"x": 1, "y": 2}, key="once", at=at)
    assert (first.created, again.created) == (True, False) and first.id == again.id
    assert not stranded(queue, first.id)  # before the fix: the retry deleted the only marker
    if at == PAST:
        drain(queue, app, [first.id])
        assert runs.counts[first.id] == 1 and first.result(timeout=5) == 3


def test_racing_idempotent_submits_with_a_fixed_time_leave_one_runnable_task(
        store: Store) -> None:
    queue, app, runs = make(store)
    barrier = threading.Barrier(16)

    def submit(_: int):
        barrier.wait()
        return queue.submit("add", {"x": 2, "y": 2}, key="race", at=PAST)

    with ThreadPoolExecutor(16) as pool:
        handles = list(pool.map(submit, range(16)))
    assert len({h.id for h in handles}) == 1
    assert sum(h.created for h in handles) == 1
    assert not stranded(queue, handles[0].id)
    drain(queue, app, [handles[0].id])
    assert runs.counts[handles[0].id] == 1


def test_a_resubmit_into_a_paused_queue_keeps_the_marker_until_resume(store: Store) -> None:
    """What a scheduler's repair does: the same request again, while the queue is paused."""
    queue, app, _runs = make(store)
    queue.pause("default")
    req = {"key": "sched@1", "key_scope": "schedule", "at": PAST}
    task = queue.submit("add", {"x": 3, "y": 4}, **req)
    assert not queue.submit("add", {"x": 3, "y": 4}, **req).created
    assert not stranded(queue, task.id)
    queue.resume("default")
    drain(queue, app, [task.id])
    assert task.result(timeout=5) == 7


def test_the_same_keyed_request_twice_in_one_batch_creates_once(store: Store) -> None:
    queue, _, _ = make(store)
    req = {"type": "add", "input": {"x": 1, "y": 1}, "key": "dup"}
    handles = queue.submit_many([req, req, {"type": "add", "input": {"x": 0, "y": 0}}])
    assert handles[0].id == handles[1].id
    assert [h.created for h in handles].count(True) == 2  # one of the pair, and the third


def test_the_audit_finds_and_repairs_a_stranded_task() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue, app, _runs = make(store)
    task = queue.submit("add", {"x": 5, "y": 5})
    for info in list(store.list(keys.READY)):
        store.delete(info.key)  # what the bug did: the only marker is gone
    assert stranded(queue, task.id)
    young, _, _ = audit.scan(store, queue.settings)
    assert young.stranded == []  # written just now: maybe in flight, not judged yet
    clock.advance(audit.GRACE + 1)
    found, _, _ = audit.scan(store, queue.settings)
    assert found.stranded == [task.id] and found.repaired == 0
    report = queue.sweep()
    assert report.repaired == 1
    assert not stranded(queue, task.id)
    drain(queue, app, [task.id])
    assert task.result(timeout=5) == 10
    assert queue.sweep().repaired == 0  # the next pass is a day away; it costs one GET


def test_the_audit_leaves_running_and_indexed_tasks_alone() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue, _app, _ = make(store)
    waiting = queue.submit("add", {"x": 1, "y": 1})
    delayed = queue.submit("add", {"x": 1, "y": 1}, delay=3600)
    running = queue.submit("add", {"x": 2, "y": 2})
    claimer = Claimer(store, queue.settings, queues=["default"], task_types={"add"},
                      owner="w")
    claim = claimer.claim()
    assert claim is not None
    clock.advance(audit.GRACE + 1)
    report, _, _ = audit.scan(store, queue.settings, fix=True)
    assert report.examined == 3 and report.stranded == []
    assert {waiting.id, delayed.id, running.id} >= {claim.task_id}


def test_the_audit_removes_heartbeats_of_workers_long_gone() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue, _, _ = make(store)
    store.put(keys.worker_key("gone"), b"{}")
    clock.advance(audit.WORKER_GONE + 1)
    store.put(keys.worker_key("alive"), b"{}")
    report = audit.run_audit(store, queue.settings)
    assert report.pass_done and report.workers_removed == 1
    assert [i.key for i in store.list(keys.WORKERS)] == [keys.worker_key("alive")]


# -- a claimer moves past markers it cannot use ----------------------------------------


def _orphans(store: Store, n: int, priority: int = 255, task_type: str = "add") -> None:
    now = store.now()
    for i in range(n):
        m = keys.Marker("default", priority, now - 1 + i / 1e4, new_task_id(now) + f"{i}",
                        task_type)
        store.put(m.ready_key, index.marker_body(), if_none_match=True)


@pytest.mark.parametrize("kind", ["orphans", "unserved"])
def test_a_page_of_unusable_markers_does_not_starve_the_queue(kind: str) -> None:
    store = MemoryStore()
    queue, app, runs = make(store)
    if kind == "orphans":  # markers whose records are missing (e.g. deleted under tasks/)
        _orphans(store, 250)
    else:  # 250 ready tasks of a type no worker serves, ahead in FIFO order
        for _ in range(250):
            queue.submit("nosuch", {}, priority=255)
    ids = [queue.submit("add", {"x": n, "y": 0}).id for n in range(20)]
    worker = Worker(app, queue, WorkerOptions(concurrency=1))
    rounds = 0
    while any(queue.get(i).record.status != Status.SUCCEEDED for i in ids):
        rounds += 1
        assert rounds <= 100, "healthy tasks behind unusable markers never ran"
        worker.run_once()
    assert all(runs.counts[i] == 1 for i in ids)
    if kind == "unserved":
        assert worker.claimer.unknown_types == {("default", "nosuch")}


def test_an_orphan_marker_is_skipped_for_longer_each_time() -> None:
    store = MemoryStore()
    queue, _, _ = make(store)
    _orphans(store, 1)
    claimer = Claimer(store, queue.settings, queues=["default"], task_types={"add"}, owner="w")
    assert [claimer._backoff("k") for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    before = store.counts["PUT"]
    for _ in range(5):
        assert claimer.claim() is None
    assert store.counts["PUT"] - before == 1  # one lease attempt, then it is skipped


# -- corrupt state ---------------------------------------------------------------------


def test_a_record_copied_over_another_tasks_key_is_quarantined(store: Store) -> None:
    queue, app, runs = make(store)
    a = queue.submit("add", {"x": 1, "y": 1})
    b = queue.submit("add", {"x": 2, "y": 2}, queue="elsewhere")
    body = store.get(keys.task_key(b.id))
    assert body is not None
    current = store.get(keys.task_key(a.id))
    assert current is not None
    store.put(keys.task_key(a.id), body.body, if_match=current.etag)
    worker = Worker(app, queue, WorkerOptions(concurrency=1))
    worker.run_once()
    assert runs.counts == {}  # before the fix: A's lease holder ran B
    assert [i.key for i in store.list(keys.QUARANTINE)] == [keys.quarantine_key("default", a.id)]
    assert queue.get(b.id).record.status == Status.PENDING  # B is untouched
    assert store.head(keys.lease_key("elsewhere", b.id)) is None


def test_a_lease_that_claims_to_last_forever_is_reaped_after_the_cap() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue, app, _runs = make(store)
    task = queue.submit("add", {"x": 1, "y": 2})
    forever = Lease(task_id=task.id, owner="hostile", token="t" * 16, seconds=1e12,
                    claimed_at=clock())
    store.put(keys.lease_key("default", task.id), dumps(forever), if_none_match=True)
    assert leases.outlier(forever)
    clock.advance(leases.MAX_LEASE_SECONDS + 1)
    assert queue.sweep().reaped == 1
    drain(queue, app, [task.id])
    assert task.result(timeout=5) == 3


# -- hostile input: everything is validated before the first write ---------------------


@pytest.mark.parametrize("options", [
    {"key": "bad\udc80key"},
    {"tags": {"team": "x\ud800y"}},
])
def test_lone_surrogates_are_refused_before_any_write(options: dict) -> None:
    store = MemoryStore()
    queue, _, _ = make(store)
    with pytest.raises(InvalidName, match="valid Unicode"):
        queue.submit("add", {"x": 1, "y": 1}, **options)
    assert store.counts["PUT"] == 0
    assert list(store.list("")) == []


def test_nfc_and_nfd_spellings_of_a_key_are_one_task() -> None:
    queue, _, _ = make(MemoryStore())
    nfc = unicodedata.normalize("NFC", "café-1")
    nfd = unicodedata.normalize("NFD", "café-1")
    assert nfc != nfd
    a = queue.submit("add", {"x": 1, "y": 1}, key=nfc)
    b = queue.submit("add", {"x": 1, "y": 1}, key=nfd)
    assert a.id == b.id and not b.created
    assert queue.get(a.id).record.idempotency_key == nfc


def test_long_values_are_cut_in_error_messages() -> None:
    queue, _, _ = make(MemoryStore())
    with pytest.raises(InvalidName) as err:
        queue.submit("add", {}, key="k\x00" + "x" * 5000)
    assert len(str(err.value)) < 300


def test_every_record_write_has_unique_bytes() -> None:
    """The premise of cas.put_checked: two writes of a key never carry the same body."""
    req = SubmitRequest(type="add", input={"x": 1})
    from qo.protocol.submit import prepare

    record = prepare(req, Settings(), 1_800_000_000.0).record
    assert records.body(record) != records.body(record)
    assert index.marker_body() != index.marker_body()


def test_a_marker_the_store_will_not_delete_is_skipped_not_reread() -> None:
    from qo.store.faulty import FaultyStore

    store = FaultyStore(MemoryStore())
    queue, app, _runs = make(store)
    done = queue.submit("add", {"x": 1, "y": 1})
    drain(queue, app, [done.id])
    queue.submit("add", {"x": 9, "y": 9})  # keeps the queue non-empty behind the stuck one
    stale = keys.Marker("default", 255, 1.0, done.id, "add").ready_key  # sorts first
    store.put(stale, index.marker_body())
    store.inject("delete", "before", times=100, when=lambda key: key == stale)
    claimer = Claimer(store, queue.settings, queues=["default"], task_types={"add"}, owner="w")
    got = [claimer.claim() for _ in range(3)]
    assert [g is not None for g in got] == [True, False, False]
    tries = [k for op, _, k in store.injected if k == stale]
    assert len(tries) == 4  # one delete, retried as an outage, then the key is left alone
    import time

    from qo.protocol.claim import STUCK_SKIP

    assert claimer._skip[stale] - time.monotonic() > STUCK_SKIP - 60  # for minutes, not 1 s


def test_doctor_counts_stranded_tasks_and_outlier_leases() -> None:
    from qo import doctor

    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue, _, _ = make(store)
    task = queue.submit("add", {"x": 1, "y": 1})
    held = queue.submit("add", {"x": 2, "y": 2})
    for info in list(store.list(keys.READY)):
        if task.id in info.key:
            store.delete(info.key)
    forever = Lease(task_id=held.id, owner="x", token="t" * 16, seconds=1e12, claimed_at=clock())
    store.put(keys.lease_key("default", held.id), dumps(forever))
    clock.advance(audit.GRACE + 1)
    checks = {c.name: c for c in doctor.diagnose(store=store, clock=clock).checks}
    assert checks["stranded tasks"].level == doctor.Level.WARN
    assert task.id in checks["stranded tasks"].detail and held.id not in checks[
        "stranded tasks"].detail
    assert checks["leases"].level == doctor.Level.WARN
    assert keys.lease_key("default", held.id) in checks["leases"].detail
    queue.sweep()
    checks = {c.name: c for c in doctor.diagnose(store=store, clock=clock).checks}
    assert checks["stranded tasks"].level == doctor.Level.OK
