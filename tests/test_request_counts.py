"""Exact requests per lifecycle, on the counting memory store.

Targets (see docs/protocol.md): submit + claim + complete costs 4 PUT and
1 GET per task, plus one LIST shared by a batch of claims; DELETEs are free.
"""

from __future__ import annotations

from qo.models import Status, TaskRecord, dumps
from qo.protocol import keys, outcome, sweep
from qo.protocol.claim import Claimer
from qo.queue import Queue
from qo.settings import Settings
from qo.store.memory import MemoryStore
from qo.store.metrics import diff

from .helpers import FakeClock


def setup(n_finished: int = 0) -> tuple[MemoryStore, Queue, Claimer, FakeClock]:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue = Queue(store, Settings())
    for i in range(n_finished):  # finished tasks only add records, never index keys
        rec = TaskRecord(id=f"{i:022d}", queue="default", type="t", input_hash="x",
                         status=Status.SUCCEEDED, created_at=0, available_at=0)
        store.put(keys.task_key(rec.id), dumps(rec))
    claimer = Claimer(store, queue.settings, queues=["default"], task_types={"t"}, owner="w")
    queue.registry.listing()  # the first submit's LIST of types/ (tests/test_registry_requests.py)
    return store, queue, claimer, clock


def test_happy_path_costs_4_put_1_get_and_a_shared_list() -> None:
    store, queue, claimer, _ = setup()
    before = store.counts.snapshot()
    queue.submit("t", {"n": 1})
    assert diff(store.counts.snapshot(), before) == {"PUT": 2}

    before = store.counts.snapshot()
    claim = claimer.claim()
    assert claim is not None
    assert diff(store.counts.snapshot(), before) == {"LIST": 1, "PUT": 1, "GET": 1, "DELETE": 1}

    before = store.counts.snapshot()
    assert outcome.succeed(store, claim, {"ok": True}, queue.settings) == outcome.Outcome.RECORDED
    assert diff(store.counts.snapshot(), before) == {"PUT": 1, "DELETE": 1}
    assert queue.get(claim.task_id).status == Status.SUCCEEDED


def test_a_batch_of_claims_shares_its_list() -> None:
    store, queue, claimer, _ = setup()
    queue.submit_many([{"type": "t", "input": i} for i in range(50)])
    before = store.counts.snapshot()
    claims = [claimer.claim() for _ in range(50)]
    assert all(claims)
    for claim in claims:
        outcome.succeed(store, claim, None, queue.settings)
    made = diff(store.counts.snapshot(), before)
    assert made == {"LIST": 1, "PUT": 100, "GET": 50, "DELETE": 100}
    per_task_billable = (2 * 50 + made["PUT"] + made["GET"] + made["LIST"]) / 50
    assert per_task_billable <= 5.1


def test_claim_cost_does_not_grow_with_finished_tasks() -> None:
    costs = []
    for finished in (100, 10_000):
        store, queue, claimer, _ = setup(finished)
        queue.submit_many([{"type": "t", "input": i} for i in range(10)])
        before = store.counts.snapshot()
        for _ in range(10):
            assert claimer.claim() is not None
        costs.append(diff(store.counts.snapshot(), before))
    assert costs[0] == costs[1] == {"LIST": 1, "PUT": 10, "GET": 10, "DELETE": 10}


def test_retry_lifecycle_costs() -> None:
    store, queue, claimer, clock = setup()
    queue.submit("t", None, retry={"base": 1.0, "cap": 1.0})
    claim = claimer.claim()
    before = store.counts.snapshot()
    err = outcome.error_info(RuntimeError("x"), claim.attempt, True)
    assert outcome.fail(store, claim, err, retryable=True) == "recorded"
    assert diff(store.counts.snapshot(), before) == {"PUT": 2, "DELETE": 1}  # record + delayed
    clock.advance(2)
    before = store.counts.snapshot()
    assert sweep.promote(store).promoted == 1
    assert diff(store.counts.snapshot(), before) == {"LIST": 1, "PUT": 1, "DELETE": 1}
    claimer.forget()
    again = claimer.claim()
    assert again is not None and again.attempt == 2


def test_cancel_of_a_pending_task_costs_one_get_one_put() -> None:
    store, queue, _, _ = setup()
    handle = queue.submit("t", None)
    before = store.counts.snapshot()
    queue.cancel(handle.id)
    assert diff(store.counts.snapshot(), before) == {"GET": 1, "PUT": 1, "DELETE": 2}
    assert list(store.list("ready/")) == []


def test_idle_claim_costs_one_list() -> None:
    store, _, claimer, _ = setup(1000)
    before = store.counts.snapshot()
    assert claimer.claim() is None
    assert diff(store.counts.snapshot(), before) == {"LIST": 1}


def test_idle_workers_take_turns_to_sweep() -> None:
    store, _, _, clock = setup()
    before = store.counts.snapshot()
    turns = [sweep.take_sweep_turn(store, f"w{i}", 60) for i in range(5)]
    assert turns == [True, False, False, False, False]
    assert diff(store.counts.snapshot(), before) == {"HEAD": 5, "PUT": 1}
    clock.advance(30)
    assert not any(sweep.take_sweep_turn(store, f"w{i}", 60) for i in range(5))
    clock.advance(31)
    assert [sweep.take_sweep_turn(store, f"w{i}", 60) for i in range(3)] == [True, False, False]


def test_the_registry_costs_a_submit_one_list_per_ttl_and_a_worker_start_one_get_per_type(
) -> None:
    """docs/protocol.md, "The task-type registry"; tests/test_registry.py has the details."""
    from qo.app import App
    from qo.protocol.registry import Registry

    clock = FakeClock()
    store = MemoryStore(clock=clock)
    app = App(Queue(store))
    app.task(name="t")(lambda n: n)
    before = store.counts.snapshot()
    app.publish(store, owner="w1")  # the first worker start: GET, then PUT the definition
    assert diff(store.counts.snapshot(), before) == {"GET": 1, "PUT": 1}
    before = store.counts.snapshot()
    app.publish(store, owner="w2")  # every later start: GET only
    assert diff(store.counts.snapshot(), before) == {"GET": 1}

    ticks = [0.0]
    queue = Queue(store)
    queue.registry = Registry(store, ttl=30, clock=lambda: ticks[0])
    before = store.counts.snapshot()
    queue.submit("t", {"n": 1})  # first submit: LIST types/ + GET its definition
    assert diff(store.counts.snapshot(), before) == {"LIST": 1, "GET": 1, "PUT": 2}
    before = store.counts.snapshot()
    for n in range(10):  # within the TTL: the happy path's 2 PUT, nothing more
        queue.submit("t", {"n": n})
    assert diff(store.counts.snapshot(), before) == {"PUT": 20}
    ticks[0] = 30.0
    before = store.counts.snapshot()
    queue.submit("t", {"n": 1})  # stale listing: 1 LIST; the definition did not change
    assert diff(store.counts.snapshot(), before) == {"LIST": 1, "PUT": 2}
