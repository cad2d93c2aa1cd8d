"""Lifecycle events: emitted once, after the deciding write; receivers never change outcomes."""

from __future__ import annotations

import logging

import pytest

from qo.hooks import NO_HOOKS, Event, Hooks, Kind
from qo.protocol import index, keys, outcome, sweep
from qo.protocol.claim import Claimer
from qo.queue import Queue
from qo.settings import Settings
from qo.store.memory import MemoryStore

from .helpers import FakeClock


def recorder(hooks: Hooks, *kinds: Kind) -> list[Event]:
    seen: list[Event] = []
    hooks.connect(seen.append, *kinds)
    return seen


def claimer(queue: Queue) -> Claimer:
    return Claimer(queue.store, queue.settings, queues=["default"], task_types={"t"},
                   owner="w", hooks=queue.hooks)


def test_a_submit_emits_once_and_a_duplicate_emits_nothing() -> None:
    queue = Queue(MemoryStore())
    seen = recorder(queue.hooks)
    first = queue.submit("t", {"a": 1}, key="k")
    queue.submit("t", {"a": 1}, key="k")
    queue.submit_many([{"type": "t", "input": {"n": n}} for n in range(3)])
    assert [e.kind for e in seen] == [Kind.SUBMITTED] * 4
    assert seen[0].task_id == first.id and seen[0].task_type == "t"
    assert seen[0].queue == "default"


def test_claim_and_outcome_path_events() -> None:
    queue = Queue(MemoryStore())
    seen = recorder(queue.hooks, Kind.CLAIMED)
    task = queue.submit("t", None)
    claim = claimer(queue).claim()
    assert claim is not None
    assert [(e.kind, e.task_id, e.attempt) for e in seen] == [(Kind.CLAIMED, task.id, 1)]
    assert outcome.succeed(queue.store, claim, 1, queue.settings) == outcome.Outcome.RECORDED


def test_a_promotion_is_announced_by_the_promoter_that_created_the_marker() -> None:
    clock = FakeClock()
    queue = Queue(MemoryStore(clock=clock))
    seen = recorder(queue.hooks, Kind.PROMOTED)
    queue.submit("t", None, delay=10)
    clock.advance(11)
    # Another promoter created the ready marker first, then stalled before its delete.
    marker = keys.parse_delayed_key(next(iter(queue.store.list(keys.DELAYED))).key)
    assert marker is not None
    queue.store.put(marker.ready_key, index.marker_body(), if_none_match=True)
    assert sweep.promote(queue.store, hooks=queue.hooks).promoted == 1
    assert seen == []  # not this promoter's to announce
    task = queue.submit("t", None, delay=5)
    clock.advance(6)
    sweep.promote(queue.store, hooks=queue.hooks)
    assert [e.task_id for e in seen] == [task.id]


def test_a_reaped_last_attempt_emits_reaped_then_dead() -> None:
    clock = FakeClock()
    queue = Queue(MemoryStore(clock=clock), Settings(lease_seconds=10))
    seen = recorder(queue.hooks, Kind.REAPED, Kind.DEAD)
    task = queue.submit("t", None, max_attempts=1)
    assert claimer(queue).claim() is not None  # the worker dies holding it
    clock.advance(11)
    assert queue.sweep().reaped == 1
    assert [e.kind for e in seen] == [Kind.REAPED, Kind.DEAD]
    assert all(e.task_id == task.id for e in seen)
    assert seen[1].detail["reason"] == "LeaseExpired"
    assert queue.sweep().reaped == 0 and len(seen) == 2


def test_a_receiver_that_raises_is_logged_and_changes_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    queue = Queue(MemoryStore())

    def broken(event: Event) -> None:
        raise RuntimeError("receiver bug")

    queue.hooks.connect(broken)
    after = recorder(queue.hooks)
    with caplog.at_level(logging.ERROR, logger="qo.hooks"):
        task = queue.submit("t", None)
    assert task.created and [e.kind for e in after] == [Kind.SUBMITTED]
    assert "receiver bug" in caplog.text


def test_disconnect_and_the_shared_default() -> None:
    hooks = Hooks()
    seen: list[Event] = []
    disconnect = hooks.connect(seen.append)
    hooks.emit(Kind.SUBMITTED, "a")
    disconnect()
    hooks.emit(Kind.SUBMITTED, "b")
    assert [e.task_id for e in seen] == ["a"]
    with pytest.raises(TypeError):
        NO_HOOKS.connect(seen.append)
    NO_HOOKS.emit(Kind.SUBMITTED, "c")  # a no-op


def test_an_admission_refusal_releases_the_lease_and_skips_the_task_until_then() -> None:
    from qo.protocol import keys
    from qo.protocol.admission import Refusal

    store = MemoryStore()
    queue = Queue(store)
    asked: list[str] = []

    def only_fast(marker, held, now):  # a capability check on the marker's task type
        asked.append(marker.task_id)
        if marker.task_type == "slow":
            return Refusal(now + 3600, "no worker here runs slow tasks")
        return None

    slow = queue.submit("slow", None, priority=200)
    fast = queue.submit("t", None)
    c = Claimer(store, queue.settings, queues=["default"], task_types={"t", "slow"}, owner="w",
                admission=[only_fast])
    before = store.counts.snapshot()
    got = c.claim()
    assert got is not None and got.task_id == fast.id
    assert asked == [slow.id, fast.id] and c.stats.refused == 1
    assert store.head(keys.lease_key("default", slow.id)) is None  # released
    counts = {k: v - before.get(k, 0) for k, v in store.counts.snapshot().items()}
    # The refusal cost one lease PUT and its free DELETE; the record was never read.
    assert counts["GET"] == 1 and counts["PUT"] == 2
    assert c.claim() is None and asked == [slow.id, fast.id]  # skipped until retry_at


# -- the outcome path ------------------------------------------------------------------


def run_one(queue: Queue, how: str = "ok", **options):
    from qo.app import App
    from qo.worker import Worker, WorkerOptions

    app = App(queue)

    @app.task(**options)
    def t(ctx, how: str = "ok") -> str:
        if how == "boom":
            raise RuntimeError("boom")
        return how

    return app, Worker(app, queue, WorkerOptions(concurrency=1))


def test_each_recorded_outcome_emits_one_event() -> None:
    clock = FakeClock()
    queue = Queue(MemoryStore(clock=clock))
    seen = recorder(queue.hooks)
    _, worker = run_one(queue)
    ok = queue.submit("t", {"how": "ok"})
    clock.advance(1)  # FIFO: ok first
    bad = queue.submit("t", {"how": "boom"}, max_attempts=2, retry={"base": 0, "cap": 0})
    for _ in range(6):
        worker.run_once()
        clock.advance(1)
        queue.sweep()
    kinds = [(e.kind, e.task_id) for e in seen if e.kind not in (Kind.SUBMITTED, Kind.CLAIMED)]
    assert kinds == [(Kind.SUCCEEDED, ok.id), (Kind.RETRYING, bad.id), (Kind.DEAD, bad.id)]
    assert [e.kind for e in seen].count(Kind.CLAIMED) == 3


def test_a_cancel_while_running_emits_cancelled_then_one_fenced() -> None:
    queue = Queue(MemoryStore())
    seen = recorder(queue.hooks, Kind.CANCELLED, Kind.FENCED, Kind.SUCCEEDED)
    task = queue.submit("t", None)
    claim = claimer(queue).claim()
    assert claim is not None
    queue.cancel(task.id)
    assert outcome.succeed(queue.store, claim, 1, queue.settings,
                           hooks=queue.hooks) == outcome.Outcome.SUPERSEDED
    assert [e.kind for e in seen] == [Kind.CANCELLED, Kind.FENCED]
    assert seen[1].detail["cancelled"] is True


def test_a_reaped_then_late_outcome_emits_reaped_and_fenced_once_each() -> None:
    clock = FakeClock()
    queue = Queue(MemoryStore(clock=clock), Settings(lease_seconds=10))
    seen = recorder(queue.hooks, Kind.REAPED, Kind.FENCED, Kind.SUCCEEDED)
    queue.submit("t", None)
    stale = claimer(queue).claim()
    assert stale is not None
    clock.advance(11)
    queue.sweep()
    fresh = claimer(queue).claim()
    assert fresh is not None
    assert outcome.succeed(queue.store, stale, 1, queue.settings,
                           hooks=queue.hooks) == outcome.Outcome.FENCED
    assert outcome.succeed(queue.store, fresh, 2, queue.settings,
                           hooks=queue.hooks) == outcome.Outcome.RECORDED
    assert [e.kind for e in seen] == [Kind.REAPED, Kind.FENCED, Kind.SUCCEEDED]


def test_a_release_emits_released() -> None:
    queue = Queue(MemoryStore())
    seen = recorder(queue.hooks, Kind.RELEASED)
    task = queue.submit("t", None)
    claim = claimer(queue).claim()
    assert claim is not None
    outcome.release(queue.store, claim, hooks=queue.hooks)
    assert [e.task_id for e in seen] == [task.id]


def test_follow_ups_run_under_the_lease_and_a_crash_in_one_is_repaired_by_the_reaper() -> None:
    from qo.protocol import keys as k

    clock = FakeClock()
    queue = Queue(MemoryStore(clock=clock), Settings(lease_seconds=10))
    task = queue.submit("t", None)
    claim = claimer(queue).claim()
    assert claim is not None
    held: list[bool] = []

    def follow_up(store, record, now) -> None:
        held.append(store.head(k.lease_key(record.queue, record.id)) is not None)
        raise RuntimeError("crashed in a follow-up")

    with pytest.raises(RuntimeError):
        outcome.succeed(queue.store, claim, 1, queue.settings, follow_ups=[follow_up])
    assert held == [True]  # it ran while the lease was still held
    assert queue.store.head(k.lease_key("default", task.id)) is not None  # left for the reaper
    assert queue.get(task.id).record.status.value == "succeeded"
    clock.advance(11)
    assert queue.sweep().reaped == 1
    assert queue.store.head(k.lease_key("default", task.id)) is None


def test_a_fired_slot_emits_slot_fired_and_submitted_once() -> None:
    from qo import scheduler

    clock = FakeClock()
    queue = Queue(MemoryStore(clock=clock))
    seen = recorder(queue.hooks, Kind.SLOT_FIRED, Kind.SUBMITTED)
    scheduler.add(queue, "tick", "t", every="1m")
    clock.advance(61)
    scheduler.fire_due(queue)
    scheduler.fire_due(queue)  # nothing more is due
    assert [e.kind for e in seen] == [Kind.SUBMITTED, Kind.SLOT_FIRED]
    assert seen[1].detail["schedule"] == "tick" and seen[1].detail["repaired"] is False
