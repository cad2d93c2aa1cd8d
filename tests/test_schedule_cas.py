"""Every conditional write of a schedule goes through ``qo.protocol.cas`` (issue 14).

A write that landed but whose answer was lost (botocore retried a PUT that
had succeeded, and the retry got 412 from our own write) is recognised as
ours at once, by reading the key back once and comparing bytes: schedule
bodies carry a fresh ``rev`` on every write, so equal bytes are our write.
Before, the decide CAS raised, the round reported an error and the slot
waited ``SETTLE`` seconds for its repair. The read-back happens only after a
412, and a lost race reuses it, so no count changes on any other path.
"""

from __future__ import annotations

import orjson

from qo import scheduler
from qo.hooks import Event, Kind
from qo.protocol.schedule_model import Schedule, body, schedule_key, write
from qo.queue import Queue
from qo.store.faulty import FaultyStore
from qo.store.memory import MemoryStore

from .helpers import FakeClock

START = 60 * 29_666_667.0  # a whole minute


def setup() -> tuple[Queue, FakeClock, MemoryStore, FaultyStore]:
    clock = FakeClock(START)
    store = MemoryStore(clock=clock)
    queue = Queue(store)
    scheduler.add(queue, "tick", "t", every="1m")
    return queue, clock, store, FaultyStore(store)


def schedule_puts(faulty: FaultyStore, times: int = 1) -> None:
    """The next schedule PUTs land, then report a failure (their answer is lost)."""
    faulty.inject("put", "after", key_prefix="schedules/", times=times)


def test_an_ambiguous_decide_write_that_landed_is_ours_at_once() -> None:
    queue, clock, store, faulty = setup()
    firer = scheduler.firer(Queue(faulty))
    firer.refresh()
    clock.advance(60)
    schedule_puts(faulty)  # the decide CAS
    store.counts.reset()
    report = firer.fire_due(refresh=False)
    slot = START + 60
    assert report.errors == [] and [s for _, s, _ in report.fired] == [slot]
    counts = store.counts.snapshot()
    # decide (lands, answer lost) + its retry (412) + 1 GET read-back; submit 2 PUT; confirm 1 PUT
    assert counts == {"PUT": 5, "PUT_412": 1, "GET": 1}, counts
    sched = scheduler.load(queue, "tick").value
    assert [(e.slot, e.submitted) for e in sched.history] == [(slot, True)]
    assert sched.next_slot == slot + 60
    assert len(list(store.list("tasks/"))) == 1
    assert firer.fire_due().repaired == []  # nothing waits for a repair


def test_an_ambiguous_confirm_write_that_landed_is_ours_at_once() -> None:
    queue, clock, _, faulty = setup()
    firer = scheduler.firer(Queue(faulty))
    clock.advance(60)
    puts: list[str] = []

    def second_schedule_put(key: str) -> bool:
        puts.append(key)
        return len(puts) == 2  # the decide goes through; the confirm's answer is lost

    faulty.inject("put", "after", key_prefix="schedules/", when=second_schedule_put)
    report = firer.fire_due()
    assert report.errors == [] and len(report.fired) == 1
    assert all(e.submitted for e in scheduler.load(queue, "tick").value.history)


def test_two_firers_deciding_alike_at_the_same_instant_decide_once() -> None:
    """Without a fresh ``rev`` both decide bodies would be the same bytes, and the
    loser's read-back would take the winner's write for its own (and fire it too)."""
    queue, clock, store, faulty = setup()
    a, b = scheduler.firer(Queue(faulty)), scheduler.firer(queue)
    a.refresh()
    b.refresh()
    seen: list[Event] = []
    queue.hooks.connect(seen.append, Kind.SLOT_FIRED)
    clock.advance(60)
    faulty.inject("put", "before", key_prefix="ready/", times=100)  # a decides, then stalls
    assert a.fire_due(refresh=False).fired == []
    assert scheduler.load(queue, "tick").value.unconfirmed()  # decided by a, not confirmed
    store.counts.reset()
    lost = b.fire_due(refresh=False)  # stale cache: the same etag, clock and slot as a's
    assert lost.fired == [] and lost.errors == []
    assert store.counts.snapshot() == {"PUT": 1, "PUT_412": 1, "GET": 1}  # as documented
    assert seen == []  # b fired nothing: the slot is a's (or a repair's, SETTLE later)


def test_schedule_bodies_are_unique_per_write() -> None:
    sched = Schedule(name="s", task_type="t", every=60.0, created_at=0.0, updated_at=0.0)
    assert body(sched) != body(sched)
    assert orjson.loads(body(sched))["v"] == 2


def test_an_ambiguous_add_is_not_refused_as_existing() -> None:
    clock = FakeClock(START)
    store = MemoryStore(clock=clock)
    faulty = FaultyStore(store)
    schedule_puts(faulty)
    saved = scheduler.save(Queue(faulty), "tick", "t", every="1m")
    assert saved.replaced is False
    assert scheduler.load(Queue(store), "tick").value.next_slot == START + 60


def test_an_ambiguous_pause_is_done_and_costs_its_read_back_only() -> None:
    queue, _, store, faulty = setup()
    schedule_puts(faulty)
    store.counts.reset()
    assert scheduler.pause(Queue(faulty), "tick").paused
    assert store.counts.snapshot() == {"GET": 2, "PUT": 2, "PUT_412": 1}
    assert scheduler.load(queue, "tick").value.paused
    store.counts.reset()
    scheduler.resume(queue, "tick")  # the plain path: as documented
    assert store.counts.snapshot() == {"GET": 1, "PUT": 1}


def test_a_lost_race_returns_the_read_back() -> None:
    queue, _, store, _ = setup()
    stale = scheduler.load(queue, "tick")
    scheduler.trigger(queue, "tick")  # someone else changes it meanwhile
    store.counts.reset()
    written = write(store, stale.value, stale.etag)
    assert store.counts.snapshot() == {"PUT": 1, "PUT_412": 1, "GET": 1}
    assert not isinstance(written, str) and written.current is not None
    assert written.current.etag == scheduler.load(queue, "tick").etag


def test_a_version_1_schedule_of_an_older_qo_fires_and_is_rewritten_as_version_2() -> None:
    queue, clock, store, _ = setup()
    data = orjson.loads(store.get(schedule_key("tick")).body)  # type: ignore[union-attr]
    del data["rev"]
    store.put(schedule_key("tick"), orjson.dumps({**data, "v": 1}))
    clock.advance(60)
    assert len(scheduler.firer(queue).fire_due().fired) == 1
    stored = orjson.loads(store.get(schedule_key("tick")).body)  # type: ignore[union-attr]
    assert stored["v"] == 2 and isinstance(stored["rev"], str)
