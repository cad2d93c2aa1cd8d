"""Run a queue's tasks to the end in the calling thread, in bounded rounds, never sleeping.

``drain`` is what a test calls instead of starting a worker and waiting: it
claims and runs tasks one by one through the real worker path (claim, the
handler under its lease, the outcome write), sweeps between rounds (promotes
due tasks, reaps expired leases) and, given a ``FakeClock``, moves time on
when nothing else can make progress. It is bounded by ``max_rounds`` and
fails loudly, naming what did not finish, instead of hanging a test run.
"""

from __future__ import annotations

from collections.abc import Iterable

from qo.app import App
from qo.models import TERMINAL, WAITING, TaskRecord
from qo.queue import Queue
from qo.testing.clock import FakeClock
from qo.worker import Worker, WorkerOptions

#: How far past a task's due time the clock moves: index keys round times
#: to the microsecond, so the due time itself can sort just before the key.
PAST_DUE = 0.001

#: At most this many tasks run in one round (a handler that keeps
#: submitting work cannot keep a round going for ever).
MAX_TASKS_PER_ROUND = 10_000


class NotDrained(AssertionError):
    """The tasks did not all finish within ``max_rounds`` (a test failure)."""


def all_terminal(queue: Queue, ids: Iterable[str]) -> bool:
    """True when every task of ``ids`` has ended (succeeded, dead or cancelled)."""
    return all(queue.get(i).record.status in TERMINAL for i in ids)


def run_ready(worker: Worker, limit: int = MAX_TASKS_PER_ROUND) -> int:
    """Claim and run ready tasks in this thread until none is ready; how many ran."""
    ran = 0
    while ran < limit and worker.run_once():
        ran += 1
    return ran


def drain(
    queue: Queue,
    app: App,
    ids: Iterable[str] | None = None,
    clock: FakeClock | None = None,
    max_rounds: int = 200,
    worker: Worker | None = None,
) -> int:
    """Run tasks in this thread until the tasks ``ids`` have ended, or, without ids, until idle.

    Each round runs every ready task, then sweeps the queue. With ``ids``,
    it returns as soon as all of them are terminal; when a round made no
    progress and ``clock`` is given, the clock moves on: to the earliest time
    one of the tasks may run (a delay, a retry's backoff) or, at least, past
    a lease's expiry so that a lost worker's task is reaped. Without ``ids``,
    it returns after the first round in which nothing ran (the clock is not
    moved: delayed tasks that are not due stay delayed).

    Returns the number of rounds used (0: done in the first). Raises
    ``NotDrained`` after ``max_rounds`` rounds, naming the unfinished tasks
    and their statuses.
    """
    worker = worker or Worker(app, queue, WorkerOptions(concurrency=1))
    targets = None if ids is None else list(ids)
    for rounds in range(max_rounds):
        ran = run_ready(worker)
        if targets is not None and all_terminal(queue, targets):
            return rounds
        queue.sweep()
        worker.claimer.forget()
        ran += run_ready(worker)
        if targets is None:
            if not ran:
                return rounds
            continue
        if not ran and clock is not None:
            clock.advance_to(_next_time(queue, targets, clock))
            queue.sweep()
        worker.claimer.forget()
    left = {} if targets is None else {
        i: queue.get(i).status.value for i in targets
        if queue.get(i).record.status not in TERMINAL}
    raise NotDrained(f"tasks did not finish in {max_rounds} rounds: {left or 'still busy'}")


def _next_time(queue: Queue, ids: list[str], clock: FakeClock) -> float:
    """When one of ``ids`` can next make progress: its due time, else a lease's expiry."""
    now = clock()
    waiting: list[TaskRecord] = [r for r in (queue.get(i).record for i in ids)
                                 if r.status in WAITING]
    due = min((r.available_at for r in waiting), default=now)
    step = queue.settings.lease_seconds + 1  # a held lease has expired by then
    return now + step if due <= now else due + PAST_DUE


__all__ = ["MAX_TASKS_PER_ROUND", "PAST_DUE", "NotDrained", "all_terminal", "drain", "run_ready"]
