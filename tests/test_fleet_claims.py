"""Claims at fleet scale: keys ranked by rendezvous hashing, one shared poll per worker.

Several simulated worker processes (one Claimer and Fleet each, with their
own worker records) claim from one counting memory store; the counts of lost
lease races are deterministic.
"""

from __future__ import annotations

import random
import threading

import pytest

from qo.app import App
from qo.models import WorkerInfo, dumps
from qo.protocol import keys, outcome
from qo.protocol.claim import Claimer
from qo.protocol.ownership import STALLED_AFTER, STEAL_MARGIN, STEP, Fleet, score
from qo.queue import Queue
from qo.settings import Settings
from qo.store.base import Store
from qo.store.memory import MemoryStore
from qo.testing import FakeClock
from qo.worker import Worker, WorkerOptions

from .helpers import wait_for


def _register(store: Store, worker_id: str, queues: tuple[str, ...] = ("default",)) -> None:
    now = store.now()
    info = WorkerInfo(id=worker_id, host="h", pid=1, queues=list(queues), task_types=["t"],
                      concurrency=1, started_at=now, seen_at=now)
    store.put(keys.worker_key(worker_id), dumps(info))


def _fleet(n: int, *, ownership: bool, ghosts: int = 0) -> tuple[MemoryStore, Queue, FakeClock,
                                                                    list[Claimer]]:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue = Queue(store, Settings())
    for i in range(n):
        _register(store, f"w{i}")
    for i in range(ghosts):  # fresh records of workers that never claim (hung or dead)
        _register(store, f"ghost{i}")
    claimers = [Claimer(store, queue.settings, queues=["default"], task_types={"t"},
                        owner=f"w{i}", rng=random.Random(i),
                        fleet=Fleet(store, f"w{i}") if ownership else None)
                for i in range(n)]
    return store, queue, clock, claimers


def _one_task_app() -> tuple[MemoryStore, Queue, App]:
    store = MemoryStore()
    queue = Queue(store, Settings())
    app = App(queue)
    app.task(name="t")(lambda: None)
    return store, queue, app


def _run_round_robin(queue: Queue, clock: FakeClock, claimers: list[Claimer], n: int) -> int:
    """Each simulated process claims one task in turn, holding it while the others claim;
    then all finish. When a whole round claims nothing, store time moves on by one STEP."""
    done = 0
    for rounds in range(10 * n):
        held = [c for c in (claimer.claim() for claimer in claimers) if c is not None]
        for claim in held:
            outcome.succeed(queue.store, claim, None, queue.settings)
        done += len(held)
        if done == n:
            return rounds
        if not held:
            clock.advance(STEP)
    raise AssertionError(f"only {done} of {n} tasks done")


def _wasted(claimers: list[Claimer]) -> int:
    """Lease PUTs that claimed nothing: lost races and markers already taken."""
    return sum(c.stats.lease_conflicts + c.stats.stale for c in claimers)


def test_a_fleet_ranked_by_rendezvous_hashing_almost_never_collides() -> None:
    n = 240
    _, queue, clock, claimers = _fleet(8, ownership=True)
    queue.submit_many([{"type": "t", "input": {"i": i}} for i in range(n)])
    _run_round_robin(queue, clock, claimers, n)
    assert sum(c.stats.claims for c in claimers) == n
    conflicts = sum(c.stats.lease_conflicts for c in claimers)
    assert conflicts / n <= 0.05, conflicts  # failed conditional writes per task
    assert _wasted(claimers) / n <= 0.1, _wasted(claimers)

    # The same fleet without ownership races for the same head keys.
    _, queue, clock, claimers = _fleet(8, ownership=False)
    queue.submit_many([{"type": "t", "input": {"i": i}} for i in range(n)])
    _run_round_robin(queue, clock, claimers, n)
    assert sum(c.stats.lease_conflicts for c in claimers) / n > 0.05
    assert _wasted(claimers) / n > 0.3, _wasted(claimers)


def test_a_stall_is_timed_from_when_a_key_is_first_held_back_not_from_its_age() -> None:
    # One old task, ranked first by a live worker that has nothing ahead of it: another
    # worker leaves it alone (it is within the owner's margin) until it has seen it held
    # back for STALLED_AFTER, however long the task had been ready before (a backlog
    # that is old is not a stalled worker).
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue = Queue(store, Settings())
    queue.submit("t", {})
    key = next(iter(store.list(keys.ready_prefix("default")))).key
    me, other = next((f"me{i}", f"other{i}") for i in range(100)
                     if score(f"other{i}", key) > score(f"me{i}", key))
    clock.advance(3 * STALLED_AFTER)
    _register(store, other)
    claimer = Claimer(store, queue.settings, queues=["default"], task_types={"t"}, owner=me,
                      fleet=Fleet(store, me))
    assert claimer.claim() is None  # held back, though ready for 3 x STALLED_AFTER
    clock.advance(STALLED_AFTER - STEP)
    _register(store, other)  # its heartbeat: alive, and not claiming
    claimer.forget()
    assert claimer.claim() is None
    clock.advance(2 * STEP)
    _register(store, other)
    claimer.forget()
    claim = claimer.claim()
    assert claim is not None and claim.lease.value.owner == me


def test_keys_ranked_first_by_a_silent_worker_are_taken_by_the_others() -> None:
    n = 60
    _, queue, clock, claimers = _fleet(3, ownership=True, ghosts=2)
    queue.submit_many([{"type": "t", "input": {"i": i}} for i in range(n)])
    start = clock()
    done = 0
    while done < n and clock() - start < STALLED_AFTER:  # all but each silent one's last keys
        held = [c for c in (claimer.claim() for claimer in claimers) if c is not None]
        for claim in held:
            outcome.succeed(queue.store, claim, None, queue.settings)
        done += len(held)
        if not held:
            clock.advance(STEP)
    # Two silent workers of one slot each; for each, the best live taker of a key may rank
    # third (after the other silent one), and the third-ranked holds back twice the margin.
    silent_margin = 2 * STEAL_MARGIN * 2
    assert done >= n - silent_margin
    _run_round_robin(queue, clock, claimers, n - done)  # the rest once they count as stalled
    assert sum(c.stats.claims for c in claimers) == n
    assert clock() - start <= STALLED_AFTER + 2 * STEP + 1e-9


def test_a_worker_serving_another_queue_does_not_hold_keys_back() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue = Queue(store, Settings())
    _register(store, "busy-elsewhere", queues=("other",))
    fleet = Fleet(store, "me")
    queue.submit_many([{"type": "t", "input": {"i": i}} for i in range(20)])
    claimer = Claimer(store, queue.settings, queues=["default"], task_types={"t"}, owner="me",
                      fleet=fleet)
    for _ in range(20):  # with no clock movement at all
        claim = claimer.claim()
        assert claim is not None
        outcome.succeed(store, claim, None, queue.settings)
    assert fleet.refreshes == 1


def test_one_worker_with_a_fleet_view_claims_in_exact_priority_then_fifo_order() -> None:
    _, queue, clock, claimers = _fleet(1, ownership=True)
    handles = []
    for i in range(12):
        handles.append((-(i % 3), i, queue.submit("t", {"i": i}, priority=100 + i % 3).id))
        clock.advance(0.01)
    order = []
    while (claim := claimers[0].claim()) is not None:
        order.append(claim.task_id)
        outcome.succeed(queue.store, claim, None, queue.settings)
    assert order == [task_id for _, _, task_id in sorted(handles)]


def test_the_ranking_is_the_same_everywhere_and_spreads_keys_evenly() -> None:
    workers = [f"w{i}" for i in range(8)]
    firsts = [max(workers, key=lambda w, k=f"ready/default/{k:04d}": score(w, k))
              for k in range(800)]
    counts = [firsts.count(w) for w in workers]
    assert score("w1", "k") == score("w1", "k") and score("w1", "k") != score("w2", "k")
    assert min(counts) >= 60 and max(counts) <= 140, counts  # ~100 each


def test_an_idle_worker_makes_one_list_per_poll_whatever_its_concurrency() -> None:
    store, queue, app = _one_task_app()
    lists = []
    real_list = store.list

    def counting_list(prefix: str, **kw):  # type: ignore[no-untyped-def]
        if prefix.startswith(keys.READY):
            lists.append(prefix)
        return real_list(prefix, **kw)

    store.list = counting_list  # type: ignore[method-assign]
    worker = Worker(app, queue, WorkerOptions(concurrency=8, poll_min=0.01, poll_max=0.02,
                                              sweep_interval=3600, heartbeat_interval=3600))
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    try:
        wait_for(lambda: worker.idle.polls >= 3, timeout=60)
        polls, listed = worker.idle.polls, len(lists)
        wait_for(lambda: worker.idle.polls >= polls + 10, timeout=60)
        polls2, listed2 = worker.idle.polls, len(lists)
    finally:
        worker.stop()
        runner.join(30)
    assert abs((listed2 - listed) - (polls2 - polls)) <= 1, (listed2 - listed, polls2 - polls)


@pytest.mark.parametrize("threads", [4])
def test_slots_of_one_process_share_one_listing(threads: int) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue = Queue(store, Settings())
    queue.submit_many([{"type": "t", "input": {"i": i}} for i in range(threads * 5)])
    claimer = Claimer(store, queue.settings, queues=["default"], task_types={"t"}, owner="p",
                      listing_ttl=3600, fleet=Fleet(store, "p"))
    before = store.counts.snapshot()
    claimed: list[str] = []
    lock = threading.Lock()

    def slot() -> None:
        for _ in range(5):
            claim = claimer.claim()
            assert claim is not None
            with lock:
                claimed.append(claim.task_id)

    pool = [threading.Thread(target=slot) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    after = store.counts.snapshot()
    assert len(set(claimed)) == threads * 5 and claimer.stats.lease_conflicts == 0
    assert after.get("LIST", 0) - before.get("LIST", 0) == 2  # ready/ once, workers/ once


def test_workers_serving_the_same_read_no_record_of_each_other() -> None:
    store, queue, app = _one_task_app()
    workers = [Worker(app, queue, WorkerOptions(concurrency=1)) for _ in range(4)]
    for w in workers:
        w._write_heartbeat("running")
    other = App(queue)

    @other.task(name="other")
    def o() -> None:
        return None

    odd = Worker(other, queue, WorkerOptions(concurrency=1))
    odd._write_heartbeat("running")
    fleet = workers[0].claimer.fleet
    assert fleet is not None
    store.counts.reset()
    fleet.refresh_if_due()
    assert store.counts.snapshot() == {"LIST": 1, "GET": 1}  # only the odd one is read
    assert {w.id.rsplit(".s", 1)[1] for w in workers} == {workers[0].id.rsplit(".s", 1)[1]}
    assert odd.id.rsplit(".s", 1)[1] != workers[0].id.rsplit(".s", 1)[1]


def test_no_thread_claims_by_an_empty_view_while_the_first_read_is_under_way() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue = Queue(store, Settings())
    _register(store, "me")
    _register(store, "other")
    queue.submit_many([{"type": "t", "input": {"i": i}} for i in range(40)])
    real_list = store.list

    def slow_workers_list(prefix: str, **kw):  # type: ignore[no-untyped-def]
        if prefix == keys.WORKERS:
            threading.Event().wait(0.2)  # a slow first read: the other threads come meanwhile
        return real_list(prefix, **kw)

    store.list = slow_workers_list  # type: ignore[method-assign]
    fleet = Fleet(store, "me")
    claimer = Claimer(store, queue.settings, queues=["default"], task_types={"t"}, owner="me",
                      listing_ttl=3600, fleet=fleet)
    claimed: list[tuple[str, keys.Marker]] = []
    lock = threading.Lock()

    def slot() -> None:
        claim = claimer.claim()
        if claim is not None:
            with lock:
                claimed.append((claim.marker.ready_key, claim.marker))

    pool = [threading.Thread(target=slot) for _ in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert claimed and all(fleet.wait(key, marker) == 0 for key, marker in claimed)
    assert fleet.refreshes == 1


def test_a_lower_ranked_taker_needs_a_longer_backlog_before_it_steals() -> None:
    store = MemoryStore(clock=FakeClock())
    ids = ["a", "b", "c"]
    for worker_id in ids:
        _register(store, worker_id)
    key = keys.Marker("default", 128, 1.0, "x", "t").ready_key
    marker = keys.parse_ready_key(key)
    assert marker is not None
    order = sorted(ids, key=lambda w: score(w, key), reverse=True)
    needed = {}
    for worker_id in ids:
        fleet = Fleet(store, worker_id)
        fleet.refresh_if_due()
        wait, first, needed[worker_id] = fleet.rank(key, marker)
        assert first == order[0]
        assert wait == order.index(worker_id) * STEP
    # the second-ranked steals past STEAL_MARGIN keys per slot, the third past twice that
    assert needed[order[1]] == STEAL_MARGIN and needed[order[2]] == 2 * STEAL_MARGIN
