"""The limiter's gate (docs/protocol.md section 11, "The gate"): tasks of a spent limit
are passed over before their lease, for free, and are seen again as soon as it refills."""

from __future__ import annotations

from qo.hooks import Event, Kind
from qo.protocol import keys, slots
from qo.protocol.keys import Marker
from qo.store.metrics import diff

from .test_limits import claim_all, claimer_for, make_app, run_lease


def first_marker(store) -> Marker:  # type: ignore[no-untyped-def]
    marker = keys.parse_ready_key(next(iter(store.list(keys.READY))).key)
    assert marker is not None
    return marker


def test_a_deep_backlog_of_a_spent_limit_costs_no_lease_and_hides_nothing_behind_it() -> None:
    app, store, clock = make_app()
    app.task(name="slow", rate="1/s", burst=2)(lambda n: n)
    app.task(name="free")(lambda n: n)
    for n in range(30):  # six pages of the claimer's five keys, all ahead of the free ones
        app.submit("slow", {"n": n})
        clock.advance(0.001)  # (tasks submitted at one instant are in the order of their ids)
    for n in range(3):
        app.submit("free", {"n": n})
    claimer, _ = claimer_for(app, store)
    claimer.listing_size = 5
    before = store.counts.snapshot()
    claimed = claim_all(claimer)
    assert claimed == ["slow", "slow", "free", "free", "free"]  # the burst, then past the rest
    assert claimer.stats.refused == 0
    spent = diff(store.counts.snapshot(), before)
    # 5 claims: a lease PUT each, and the bucket's two grants of 1 token (a grant is at
    # most one second of the rate); nothing for the 28 held back but the pages that
    # reach past them and a refused take (a GET)
    assert spent["PUT"] == 5 + 2
    assert claimer.next_try is not None  # when the bucket will have refilled
    clock.advance(2.0)  # the refill, and the refused take's jitter (at most half a second)
    head = first_marker(store)
    again = claimer.claim()
    assert again is not None and again.task_id == head.task_id  # from the head again
    assert claimer.stats.refused == 0


def test_enter_sets_a_token_aside_and_leave_gives_it_back() -> None:
    app, store, clock = make_app()
    app.task(name="slow", rate="1/s", burst=1)(lambda n: n)
    for n in range(2):
        app.submit("slow", {"n": n})
    _, limiter = claimer_for(app, store)
    marker, other = [keys.parse_ready_key(i.key) for i in store.list(keys.READY)]
    assert marker is not None and other is not None
    assert limiter.enter(marker, clock()) is None  # asks the bucket: a grant of 1
    assert limiter.enter(other, clock()) is not None  # that token is promised; bucket empty
    assert limiter.check(other, clock()) is not None
    before = store.counts.snapshot()
    limiter.leave(marker)  # the lease was lost: the token is free again
    assert limiter.check(other, clock()) is None
    assert diff(store.counts.snapshot(), before) == {}
    assert limiter.enter(marker, clock()) is None
    held = run_lease(store, marker, clock())
    before = store.counts.snapshot()
    assert limiter.admit(marker, held, clock()) is None  # uses the promised token: no request
    assert diff(store.counts.snapshot(), before) == {}


def test_a_concurrency_limit_held_by_this_process_is_closed_without_a_request() -> None:
    app, store, _clock = make_app()
    app.task(name="c", concurrency=2)(lambda n: n)
    for n in range(5):
        app.submit("c", {"n": n})
    claimer, limiter = claimer_for(app, store)
    limiter.connect(app.queue.hooks)
    first, second = claimer.claim(), claimer.claim()
    assert first is not None and second is not None
    before = store.counts.snapshot()
    assert claimer.claim() is None  # both slots are this process's: no lease, no LIST
    assert claimer.stats.refused == 0
    assert "PUT" not in diff(store.counts.snapshot(), before)
    limiter._on_outcome(Event(Kind.SUCCEEDED, first.task_id))  # (what the outcome emits)
    claimer._skip.clear()
    assert claimer.claim() is not None
    assert len(slots.read_slots(store, "c")) == 2


def test_a_claim_admitted_but_not_run_gives_its_slot_back() -> None:
    app, store, clock = make_app()
    app.task(name="c", concurrency=1)(lambda n: n)
    app.submit("c", {"n": 1})
    _, limiter = claimer_for(app, store)
    marker = first_marker(store)
    held = run_lease(store, marker, clock())
    assert limiter.admit(marker, held, clock()) is None
    assert len(slots.read_slots(store, "c")) == 1
    assert limiter.check(marker, clock()) is not None  # its one slot is ours
    limiter.leave(marker)  # e.g. the record was no longer claimable
    assert slots.read_slots(store, "c") == []
    assert limiter.check(marker, clock()) is None


def test_a_concurrency_limit_another_process_holds_is_looked_at_without_a_lease() -> None:
    app, store, clock = make_app()
    app.task(name="c", concurrency=1)(lambda n: n)
    for n in range(3):
        app.submit("c", {"n": n})
    holder, _ = claimer_for(app, store, owner="a")
    assert holder.claim() is not None  # holds the one slot (its task runs on)
    waiter, _ = claimer_for(app, store, owner="b")
    assert waiter.claim() is None  # the first look is under a lease: refused
    assert waiter.stats.refused == 1
    for _ in range(3):
        clock.advance(0.3)  # past the recheck
        waiter._skip.clear()
        before = store.counts.snapshot()
        assert waiter.claim() is None
        assert diff(store.counts.snapshot(), before) == {"LIST": 2}  # the page, the slots
    assert waiter.stats.refused == 1  # no lease since


def test_a_promise_never_given_back_lapses_with_its_grant() -> None:
    app, store, clock = make_app()
    app.task(name="slow", rate="1/s", burst=1)(lambda n: n)
    for n in range(2):
        app.submit("slow", {"n": n})
    _, limiter = claimer_for(app, store)
    lost, other = [keys.parse_ready_key(i.key) for i in store.list(keys.READY)]
    assert lost is not None and other is not None
    assert limiter.enter(lost, clock()) is None  # a promise whose claim never came back
    assert limiter.enter(other, clock()) is not None  # the bucket is empty
    clock.advance(2.0)  # past the grant's window and the refused take's retry time
    assert limiter.check(other, clock()) is None
    assert limiter.enter(other, clock()) is None  # a fresh grant: the lost promise is gone
    [grant] = limiter._grants.values()
    assert (grant.tokens, grant.promised) == (1, 1)


def test_several_gated_limiters_admit_within_the_limit_and_use_it() -> None:
    """Four processes' limiters, two threads each, every claim through the gate; one in
    five loses its lease race after ``enter`` (``leave``). 60 s of the test clock."""
    import dataclasses
    import random
    import threading

    from qo.limiter import Limiter

    app, store, clock = make_app()
    app.task(name="api", rate="20/s", burst=40)(lambda n: n)
    app.submit("api", {"n": 1})
    marker = first_marker(store)
    limiters = [Limiter(store, app.limits, owner=f"w{i}") for i in range(4)]
    admitted, lock, rng = [0], threading.Lock(), random.Random(7)

    def demand(limiter: Limiter, thread: int, lost: list[bool]) -> None:
        for n, lose in enumerate(lost):  # a task of its own each time, as the claimer's are
            task = dataclasses.replace(marker, task_id=f"{marker.task_id}-{thread}-{n}")
            if limiter.enter(task, clock()) is not None:
                continue
            if lose:
                limiter.leave(task)
            elif limiter.admit(task, None, clock()) is None:  # type: ignore[arg-type]
                with lock:
                    admitted[0] += 1

    seconds, step = 60.0, 0.05
    for _ in range(round(seconds / step)):
        threads = [threading.Thread(target=demand, args=(lim, t, [rng.random() < 0.2
                                                                  for _ in range(4)]))
                   for lim in limiters for t in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        clock.advance(step)
    bound = 20 * seconds + 40
    print(f"admitted {admitted[0]} of {bound}")
    assert admitted[0] <= bound
    assert admitted[0] >= 0.9 * bound
    assert all(g.promised == 0 for lim in limiters for g in lim._grants.values())


def test_one_pick_lists_at_most_max_pages_past_held_back_tasks(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from qo.protocol import picking

    monkeypatch.setattr(picking, "MORE_PAGE", 5)
    app, store, clock = make_app()
    app.task(name="slow", rate="1/s", burst=1)(lambda n: n)
    app.task(name="free")(lambda n: n)
    for n in range(40):  # eight pages of five held-back tasks, then one free task
        app.submit("slow", {"n": n})
        clock.advance(0.001)
    app.submit("free", {"n": 0})
    claimer, limiter = claimer_for(app, store)
    claimer.listing_size = 5
    claimed = claimer.claim()
    assert claimed is not None and claimed.record.type == "slow"  # the burst
    marker = first_marker(store)
    assert limiter.enter(marker, clock()) is not None  # the bucket is spent now
    before = store.counts.snapshot()
    assert claimer.claim() is None  # the free task is past what one pick may look at
    assert diff(store.counts.snapshot(), before)["LIST"] == picking.MAX_PAGES


def test_taking_the_last_free_slot_closes_the_limit_without_a_refusal() -> None:
    app, store, _clock = make_app()
    app.task(name="c", concurrency=2)(lambda n: n)
    for n in range(4):
        app.submit("c", {"n": n})
    first, _ = claimer_for(app, store, owner="a")
    second, _ = claimer_for(app, store, owner="b")
    assert first.claim() is not None  # one of two: the limit is not full
    assert second.claim() is not None  # the other, the last free one: full now
    before = store.counts.snapshot()
    assert second.claim() is None
    assert second.stats.refused == 0
    assert diff(store.counts.snapshot(), before) == {"LIST": 1}  # its page only
