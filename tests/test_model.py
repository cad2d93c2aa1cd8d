"""Model-based test: random interleavings against a simple reference model.

hypothesis drives submit (fresh and idempotent with a fixed ``at=``, and
repeats of those), claim, heartbeat, complete, fail, cancel, crash, clock
moves and steps of hours, ambiguous marker writes (applied, then reported as
failed) and sweeps on the memory store, and after every step checks: each
task is in exactly the state the model predicts; terminal tasks never change;
a waiting task without a lease is always indexed (never invisible), and the
audit agrees that nothing is stranded; and claims come in priority order,
then FIFO.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from qo.models import TERMINAL, Status
from qo.protocol import audit, index, keys, outcome
from qo.protocol.claim import Claim, Claimer
from qo.queue import Queue
from qo.settings import Settings
from qo.store.faulty import FaultyStore
from qo.store.memory import MemoryStore

from .helpers import FakeClock

pytestmark = pytest.mark.slow  # real processes, real time or many examples

LEASE = 10.0
EXAMPLES = 400 if os.environ.get("QO_LONG_TESTS") == "1" else 60


@dataclass
class ModelTask:
    id: str
    priority: int
    available_at: float
    max_attempts: int
    status: Status = Status.PENDING
    attempt: int = 0
    ready: bool = True  # has a ready marker (due and promoted)
    lease_until: float | None = None  # set while a run lease exists
    holder: object | None = None


class QueueMachine(RuleBasedStateMachine):
    claims = Bundle("claims")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.faulty = FaultyStore(MemoryStore(clock=self.clock))
        self.store = self.faulty
        self.queue = Queue(self.store, Settings(lease_seconds=LEASE,
                                                idempotency_retention=10.0**8))
        self.tasks: dict[str, ModelTask] = {}
        self.keyed: dict[int, str] = {}  # idempotency key number -> task id
        self.start = self.clock()
        self.terminal_seen: dict[str, Status] = {}

    # -- rules ---------------------------------------------------------------

    @rule(priority=st.sampled_from([0, 128, 255]), delay=st.sampled_from([0, 0, 5, 30]),
          max_attempts=st.integers(1, 3))
    def submit(self, priority: int, delay: int, max_attempts: int) -> None:
        handle = self.queue.submit("t", None, priority=priority, delay=delay or None,
                                   max_attempts=max_attempts, retry={"base": 0, "cap": 0})
        now = self.clock()
        self.tasks[handle.id] = ModelTask(
            handle.id, priority, now + delay, max_attempts,
            status=Status.PENDING if not delay else Status.SCHEDULED, ready=not delay)

    @rule(n=st.integers(0, 5))
    def submit_keyed(self, n: int) -> None:
        """An idempotent submit with a fixed time; repeating it must change nothing."""
        priority = [0, 128, 255][n % 3]
        handle = self.queue.submit("t", {"n": n}, priority=priority, key=f"k{n}",
                                   at=self.start, max_attempts=2, retry={"base": 0, "cap": 0})
        assert handle.created == (n not in self.keyed)
        if n in self.keyed:
            assert handle.id == self.keyed[n]
            return
        self.keyed[n] = handle.id
        self.tasks[handle.id] = ModelTask(handle.id, priority, self.start, 2)

    @rule(n=st.integers(1, 4))
    def ambiguous_marker_writes(self, n: int) -> None:
        """The next n marker PUTs land, and then report a failure (a lost response)."""
        self.faulty.inject("put", "after", times=n,
                           when=lambda key: key.startswith((keys.READY, keys.DELAYED)))

    @rule(target=claims)
    def claim(self):
        claimer = Claimer(self.store, self.queue.settings, queues=["default"],
                          task_types={"t"}, owner="w", spread=1)
        got = claimer.claim()
        now = self.clock()
        candidates = [t for t in self.tasks.values() if t.status not in TERMINAL and t.ready
                      and t.holder is None and t.available_at <= now + 1.0]
        if got is None:
            assert not candidates, f"a claimable task was not claimed: {candidates}"
            return None
        best = min(candidates, key=lambda t: (-t.priority, t.available_at, t.id))
        if claimer.stats.lease_conflicts or claimer.stats.stale:
            # A leftover marker (a repeated submit's, for a running task) cost a conflict:
            # the claim widened its spread, as documented, but never past the best priority.
            assert self.tasks[got.task_id].priority == best.priority
        else:
            assert got.task_id == best.id, "claims must follow priority, then FIFO"
        model = self.tasks[got.task_id]
        model.holder, model.lease_until, model.ready = got, now + LEASE, False
        assert got.attempt == model.attempt + 1
        return got

    @rule(claim=claims)
    def heartbeat(self, claim: Claim | None) -> None:
        if claim is None:
            return
        model = self.tasks[claim.task_id]
        renewed = claim.lease.renew(self.store)
        assert renewed == (model.holder is claim)
        if renewed:
            model.lease_until = self.clock() + LEASE

    @rule(claim=consumes(claims), how=st.sampled_from(["succeed", "retry", "fatal"]))
    def finish(self, claim: Claim | None, how: str) -> None:
        if claim is None:
            return
        model = self.tasks[claim.task_id]
        if how == "succeed":
            result = outcome.succeed(self.store, claim, "ok", self.queue.settings)
        else:
            err = outcome.error_info(RuntimeError("x"), claim.attempt, how == "retry")
            result = outcome.fail(self.store, claim, err, retryable=how == "retry")
        if model.holder is not claim:
            assert result != outcome.Outcome.RECORDED  # fenced
            return
        model.holder = model.lease_until = None
        if model.status == Status.CANCELLED:
            assert result == outcome.Outcome.SUPERSEDED
            model.attempt = max(model.attempt, claim.attempt)  # noted: the attempt ran
            return
        assert result == outcome.Outcome.RECORDED
        model.attempt = claim.attempt
        if how == "succeed":
            model.status = Status.SUCCEEDED
        elif how == "retry" and model.attempt < model.max_attempts:
            model.status, model.ready, model.available_at = Status.FAILED, True, self.clock()
        else:
            model.status = Status.DEAD

    @rule(claim=consumes(claims))
    def crash(self, claim: Claim | None) -> None:
        """The worker dies: its lease stays until it expires and is reaped."""

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if not self.tasks:
            return
        task_id = data.draw(st.sampled_from(sorted(self.tasks)))
        model = self.tasks[task_id]
        try:
            self.queue.cancel(task_id)
            assert model.status not in TERMINAL
            model.status, model.ready = Status.CANCELLED, False
        except Exception as exc:  # noqa: BLE001
            assert model.status in TERMINAL, exc

    @rule(seconds=st.sampled_from([1, 4, 11, 31, 3600, 86_400 + 7]))
    def advance(self, seconds: int) -> None:
        """Time passes, in small moves or in steps of hours (a stalled or sleeping host)."""
        self.clock.advance(seconds)

    @rule()
    def sweep(self) -> None:
        report = self.queue.sweep()
        now = self.clock()
        for model in self.tasks.values():
            if model.status in (Status.SCHEDULED, Status.FAILED) and model.available_at <= now:
                model.ready = model.ready or model.holder is None
            if model.lease_until is not None and model.lease_until < now:
                model.holder = model.lease_until = None  # reaped: the old claim is fenced
                if model.status not in TERMINAL:
                    model.attempt += 1
                    model.status = (Status.DEAD if model.attempt >= model.max_attempts
                                    else Status.PENDING)
                    model.available_at, model.ready = now, model.status == Status.PENDING
        assert report.errors == []

    # -- invariants ------------------------------------------------------------

    @invariant()
    def states_match_the_model(self) -> None:
        for task_id, model in self.tasks.items():
            view = self.queue.get(task_id)
            expected = Status.RUNNING if model.holder is not None and model.status not in TERMINAL \
                else model.status
            if model.holder is None and model.lease_until is None and model.status == Status.FAILED:
                expected = Status.FAILED
            assert view.status == expected, (task_id, view.status, model)
            assert view.record.attempt == model.attempt
            if model.status in TERMINAL:
                assert self.terminal_seen.setdefault(task_id, model.status) == model.status

    @invariant()
    def no_task_is_invisible(self) -> None:
        present = {o.key for o in self.store.list("")}
        now = self.clock()
        for task_id, model in self.tasks.items():
            if model.status in TERMINAL or model.lease_until is not None:
                continue
            record = self.queue.get(task_id).record
            m = index.marker_of(record)
            assert m.ready_key in present or m.delayed_key in present, (task_id, model)
            assert keys.lease_key("default", task_id) not in present or record.available_at > now

    @invariant()
    def the_audit_finds_nothing_stranded(self) -> None:
        report, _, _ = audit.scan(self.store, self.queue.settings,
                                  now=self.clock() + audit.GRACE + 1)
        assert report.stranded == [] and report.errors == []


TestQueueModel = QueueMachine.TestCase
TestQueueModel.settings = settings(max_examples=EXAMPLES, stateful_step_count=40, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])
