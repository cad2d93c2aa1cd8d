"""Immediate mode: every task submitted through an app runs before ``submit`` returns.

For tests of code that submits tasks: inside ``with immediate(app) as queue``
the app is bound to a fresh in-memory queue whose ``submit`` (and
``submit_many``) first writes the task as usual, then runs it in the calling
thread through the real worker path (claim, the handler under its lease,
timeout and retries, the outcome write), so the returned handle's
``result()`` is ready at once, or raises the task's failure::

    with immediate(app) as queue:
        handle = add.submit(2, 3)
        assert handle.result() == 5

Retries happen at once too: the queue's clock is a ``FakeClock`` that jumps
over a retry's backoff. A task submitted with ``delay`` or ``at`` is stored
as scheduled and does not run: move ``queue.clock`` and call
``queue.run_due()``. A task a handler submits runs as soon as it is
submitted; if it fails, its retries run once the outer task has ended (the
clock never jumps under a running task, whose lease would expire).

It binds the app (``App.use``) for the block and gives the previous binding
back on leaving it; nothing of App or Worker is replaced.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from qo.app import App
from qo.models import Status, TaskRecord
from qo.protocol.submit import SubmitRequest
from qo.queue import Queue, TaskHandle
from qo.settings import Settings
from qo.store.memory import MemoryStore
from qo.testing.clock import FakeClock
from qo.testing.drain import PAST_DUE, NotDrained, drain
from qo.worker import Worker, WorkerOptions

#: A task is retried at most this many times by one submit (max_attempts is capped at 1000).
MAX_RETRIES = 1000


class ImmediateQueue(Queue):
    """A memory-store Queue that runs each task it is given before returning its handle."""

    def __init__(self, app: App, settings: Settings | None = None,
                 clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        super().__init__(MemoryStore(clock=self.clock), settings)
        self.app = app
        self._lock = threading.Lock()
        self._depth = 0  # settle() calls in progress (a handler's submit nests one)
        self._unsettled: list[str] = []  # submitted here, maybe not ended yet

    def submit_request(self, req: SubmitRequest) -> TaskHandle:
        handle = super().submit_request(req)  # Queue.submit and App.submit end here
        self.settle([handle.id])
        return handle

    def submit_many(self, requests: list[SubmitRequest | dict[str, Any]], *,
                    allow_unregistered: bool = False) -> list[TaskHandle]:
        handles = super().submit_many(requests, allow_unregistered=allow_unregistered)
        self.settle([h.id for h in handles])
        return handles

    def run_due(self) -> None:
        """Run every task that is due now (after ``clock`` moved, say), and its retries."""
        self.settle([])

    def settle(self, ids: list[str]) -> None:
        """Run what is ready (``ids`` among it) and, outermost, every retry due later.

        Delayed tasks are left waiting. Only the outermost call moves the
        clock, when no task is running.
        """
        with self._lock:
            self._unsettled.extend(ids)
            self._depth += 1
            outer = self._depth == 1
        try:
            for _ in range(MAX_RETRIES):
                drain(self, self.app, worker=self._worker())
                if not outer:
                    return
                retrying = self._retrying()
                if not retrying:
                    return
                self.clock.advance_to(min(r.available_at for r in retrying) + PAST_DUE)
            raise NotDrained(f"tasks were still retrying after {MAX_RETRIES} rounds")
        finally:
            with self._lock:
                self._depth -= 1

    def _retrying(self) -> list[TaskRecord]:
        """The tasks submitted here that wait for a retry; forgets those that ended."""
        with self._lock:
            ids = list(self._unsettled)
        found = [self.get(i).record for i in ids]
        with self._lock:
            self._unsettled = [r.id for r in found if not r.terminal]
        return [r for r in found if r.status is Status.FAILED]

    def _worker(self) -> Worker:
        # A new worker per call: it serves the task types registered by now,
        # and a handler that submits (from its own thread) gets its own.
        return Worker(self.app, self, WorkerOptions(concurrency=1, worker_id="immediate"))


@contextmanager
def immediate(app: App, *, settings: Settings | None = None,
              clock: FakeClock | None = None) -> Iterator[ImmediateQueue]:
    """Bind ``app`` to a fresh ``ImmediateQueue`` for the block; yields the queue."""
    previous = app._queue  # None while the app is still bound to a URL, never opened
    queue = ImmediateQueue(app, settings, clock)
    app.use(queue)
    try:
        yield queue
    finally:
        app._queue = previous


__all__ = ["ImmediateQueue", "immediate"]
