"""Model-based test of dependencies: random graphs, finishes, failures, cancels and
crashes (a worker that dies after its outcome CAS, repaired by the reaper), checked
against the trigger rules after every step (docs/protocol.md section 10).

After every step, each task with dependencies is exactly where its rule says, given
its dependencies' current statuses: ``blocked`` while undecided, ``dead``/``skipped``
once its rule failed, and otherwise released (waiting, run, or ended by its own run);
no blocked task is ever claimable; a cancel we made always wins.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from qo.models import TERMINAL, WAITING, Status, Trigger
from qo.protocol import deps, outcome
from qo.protocol.claim import Claimer
from qo.queue import Queue
from qo.settings import Settings
from qo.store.memory import MemoryStore

from .helpers import FakeClock

pytestmark = pytest.mark.slow  # many examples

LEASE = 10.0


class DepsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = MemoryStore(clock=self.clock)
        self.queue = Queue(self.store, Settings(lease_seconds=LEASE))
        self.parents: dict[str, list[str]] = {}
        self.trigger: dict[str, Trigger] = {}
        self.cancelled: set[str] = set()
        self.ran: dict[str, int] = {}

    def status(self, task_id: str) -> Status:
        return self.queue.get(task_id).record.status

    @rule(trigger=st.sampled_from(list(Trigger)), data=st.data())
    def submit(self, trigger: Trigger, data: st.DataObject) -> None:
        known = sorted(self.parents)
        after = data.draw(st.lists(st.sampled_from(known), max_size=3, unique=True)
                          if known else st.just([]))
        handle = self.queue.submit("t", None, depends_on=after, trigger=trigger.value,
                                   max_attempts=1)
        self.parents[handle.id], self.trigger[handle.id] = after, trigger
        assert (self.status(handle.id) == Status.BLOCKED) == (
            bool(after) and deps.decide(trigger, after, self.ended(after)) is None)

    def ended(self, ids: list[str]) -> dict[str, str]:
        return {p: s.value for p in ids if (s := self.status(p)) in TERMINAL}

    @rule(how=st.sampled_from(["succeed", "fail", "crash"]))
    def run_one(self, how: str) -> None:
        claimer = Claimer(self.store, self.queue.settings, queues=["default"],
                          task_types={"t"}, owner="w")
        claim = claimer.claim()
        if claim is None:
            return
        rec = claim.record
        assert rec.status in WAITING  # a blocked task is never claimed
        self.ran[rec.id] = self.ran.get(rec.id, 0) + 1
        if how == "crash":  # the outcome CAS lands, the worker dies before its follow-up
            from qo.protocol import records

            done = rec.model_copy(update={"status": Status.SUCCEEDED, "attempt": 1,
                                          "finished_at": self.clock(),
                                          "last_lease": claim.lease.value.token})
            records.replace(self.store, done, claim.etag)
            return
        if how == "succeed":
            outcome.succeed(self.store, claim, None, self.queue.settings)
        else:
            err = outcome.error_info(RuntimeError("x"), claim.attempt, False)
            outcome.fail(self.store, claim, err, retryable=False)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if not self.parents:
            return
        task_id = data.draw(st.sampled_from(sorted(self.parents)))
        if self.status(task_id) in TERMINAL:
            return
        self.queue.cancel(task_id)
        self.cancelled.add(task_id)

    @rule()
    def time_passes_and_sweep(self) -> None:
        self.clock.advance(LEASE + 1)
        self.queue.sweep()

    @invariant()
    def each_dependent_is_where_its_rule_says(self) -> None:
        leases_out = {i.key.rsplit("/", 1)[1] for i in self.store.list("leases/")}
        for task_id, after in self.parents.items():
            status = self.status(task_id)
            if task_id in self.cancelled:
                assert status == Status.CANCELLED
                continue
            if not after:
                continue
            verdict = deps.decide(self.trigger[task_id], after, self.ended(after))
            if status == Status.BLOCKED and any(p in leases_out for p in after):
                continue  # a crashed finisher's follow-up waits for the reaper
            if verdict is None:
                assert status == Status.BLOCKED, (task_id, status)
            elif verdict.status == Status.PENDING:
                assert status != Status.BLOCKED and status != Status.SKIPPED, (task_id, status)
                if status == Status.DEAD:
                    err = self.queue.get(task_id).record.error
                    assert err is not None and err.type != deps.UPSTREAM_FAILED
            else:
                assert status == verdict.status, (task_id, status, verdict)
        assert all(n == 1 for n in self.ran.values())


DepsMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestDeps = DepsMachine.TestCase
