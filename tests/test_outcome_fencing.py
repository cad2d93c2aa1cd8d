"""A late outcome of a reaped claim leaves a cancelled task exactly as it was."""

from __future__ import annotations

from qo.models import Status
from qo.protocol import outcome
from qo.protocol.claim import Claimer
from qo.queue import Queue
from qo.settings import Settings
from qo.store.memory import MemoryStore
from qo.testing import FakeClock


def test_a_reaped_claim_does_not_note_its_attempt_on_a_cancelled_task() -> None:
    clock = FakeClock()
    queue = Queue(MemoryStore(clock=clock), Settings(lease_seconds=10))
    task = queue.submit("t", None, max_attempts=1)
    claim = Claimer(queue.store, queue.settings, queues=["default"], task_types={"t"},
                    owner="w").claim()
    assert claim is not None
    clock.advance(11)  # the lease expires
    queue.cancel(task.id)
    queue.sweep()  # and is reaped
    before = queue.store.counts.snapshot()
    assert outcome.succeed(queue.store, claim, "late", queue.settings) == outcome.Outcome.SUPERSEDED
    spent = {k: v - before.get(k, 0) for k, v in queue.store.counts.snapshot().items()
             if v != before.get(k, 0)}
    # the outcome CAS (412, sent once: no read-back), the record read again, the lease check
    assert spent == {"PUT": 1, "PUT_412": 1, "GET": 2}
    record = queue.get(task.id).record
    assert record.status == Status.CANCELLED and record.attempt == 0 and record.error is None
