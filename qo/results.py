"""Waiting for many tasks at once: one shared poller per queue, whatever the waiters.

``ResultPoller.watch(task_id)`` returns a ``concurrent.futures.Future`` that
resolves to the task's terminal record. However many waiters a process has
(futures, callbacks, ``wait``, ``AsyncQueue`` awaiters), one thread
(``qo-results``) polls for all of them, in rounds:

- a round reads each watched task's record once (1 GET per distinct task,
  ``READ_THREADS`` at a time), however many waiters it has; a task that has
  ended resolves all of them and is no longer read;
- rounds start ``MIN_INTERVAL`` apart, backing off by 1.5x up to
  ``MAX_INTERVAL`` while no task ends, and back to ``MIN_INTERVAL`` when a
  task is added or ends;
- and never faster than ``MAX_RATE`` GETs per second per poller: a round
  over ``n`` tasks is followed by at least ``n / MAX_RATE`` seconds.

So the poller's rate is at most ``min(n / interval, MAX_RATE)`` GETs per
second for ``n`` distinct tasks watched, and nothing once none is watched
(the thread exits). A waiter that gives up (a timeout, a cancelled await)
cancels its future and its task is read no more once no one waits for it.
A store outage (``StoreUnavailable``) during a round is retried at the next
round; any other error (access denied, no such bucket, a missing or
unreadable record) fails the task's waiters with the error ``Queue.get``
raises.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from qo.errors import QoError, StoreUnavailable
from qo.models import TaskRecord
from qo.names import check_task_id
from qo.protocol import records
from qo.protocol.admin import TaskNotFound
from qo.store.base import Store

log = logging.getLogger("qo.results")
H = TypeVar("H")

MIN_INTERVAL = 0.05
MAX_INTERVAL = 1.0
MAX_RATE = 100.0  # GETs per second, per poller
READ_THREADS = 8

Record = concurrent.futures.Future[TaskRecord]


class ResultPoller:
    """Watches task records for every waiter of one store; thread-safe."""

    def __init__(self, store: Store, *, min_interval: float = MIN_INTERVAL,
                 max_interval: float = MAX_INTERVAL, max_rate: float = MAX_RATE) -> None:
        self.store = store
        self.min_interval, self.max_interval, self.max_rate = min_interval, max_interval, max_rate
        self.rounds = 0  # rounds polled (for tests and benchmarks)
        self.reads = 0  # records read by those rounds
        self._cond = threading.Condition()
        self._waiters: dict[str, list[Record]] = {}
        self._interval = min_interval
        self._added = False  # a task was added since the round started
        self._started = self._floor = 0.0  # the last round's start; no round before _floor
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def watch(self, task_id: str) -> Record:
        """A future for the task's terminal record; cancel it to stop waiting."""
        check_task_id(task_id)
        future: Record = concurrent.futures.Future()
        with self._cond:
            self._waiters.setdefault(task_id, []).append(future)
            self._interval, self._added = self.min_interval, True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="qo-results", daemon=True)
                self._thread.start()
            self._cond.notify()
        return future

    def watched(self) -> int:
        """How many distinct tasks are watched now."""
        with self._cond:
            return len(self._waiters)

    def _run(self) -> None:
        next_round = 0.0
        while True:
            with self._cond:
                while True:
                    self._prune()
                    if not self._waiters:
                        self._thread = None
                        return
                    wait = max(next_round - time.monotonic(), 0.0)
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                    if self._added:  # look soon, within the rate
                        soon = self._started + self.min_interval
                        next_round = max(self._floor, min(next_round, soon))
                ids = sorted(self._waiters)
                self._started, self._added = time.monotonic(), False
            ended = self._round(ids)
            with self._cond:
                self.rounds += 1
                self.reads += len(ids)
                if ended:
                    self._interval = self.min_interval
                self._floor = self._started + len(ids) / self.max_rate
                next_round = max(self._floor, self._started + self._interval)
                self._interval = min(self.max_interval, self._interval * 1.5)

    def _prune(self) -> None:
        """Forget waiters that gave up, and tasks no one waits for."""
        for task_id in list(self._waiters):
            live = [f for f in self._waiters[task_id] if not f.cancelled()]
            if live:
                self._waiters[task_id] = live
            else:
                del self._waiters[task_id]

    def _round(self, ids: list[str]) -> int:
        """Read each record once; resolve the waiters of those that ended. How many did."""
        if len(ids) == 1:
            outcomes = [self._read(ids[0])]
        else:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    READ_THREADS, thread_name_prefix="qo-results-read")
            outcomes = list(self._pool.map(self._read, ids))
        ended = 0
        for task_id, got in zip(ids, outcomes, strict=True):
            if got is None:  # still running, or the store failed: the next round looks again
                continue
            ended += 1
            with self._cond:
                waiters = self._waiters.pop(task_id, [])
            for future in waiters:
                _resolve(future, got)
        return ended

    def _read(self, task_id: str) -> TaskRecord | QoError | None:
        """The terminal record, the error its waiters get, or None (not yet)."""
        try:
            current = records.read(self.store, task_id)
        except StoreUnavailable as exc:  # an outage, a timeout: the next round looks again
            log.debug("polling %s: %s", task_id, exc)
            return None
        except QoError as exc:  # denied, no bucket, unreadable: what Queue.get would raise
            return exc
        if current is None:
            return TaskNotFound(f"no task with id {task_id}")
        return current.value if current.value.terminal else None


def _resolve(future: Record, got: TaskRecord | QoError) -> None:
    try:
        if isinstance(got, QoError):
            future.set_exception(got)
        else:
            future.set_result(got)
    except concurrent.futures.InvalidStateError:  # the waiter gave up meanwhile
        pass


def chain(source: Record, finish: Callable[[TaskRecord], Any]) -> concurrent.futures.Future[Any]:
    """A future of ``finish(record)`` once ``source`` resolves (in the poller's thread);
    cancelling it stops the watch."""
    target: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def done(f: Record) -> None:
        if f.cancelled():
            target.cancel()
            return
        try:
            target.set_result(finish(f.result()))
        except concurrent.futures.InvalidStateError:
            pass
        except BaseException as exc:  # noqa: BLE001 - TaskFailed, TaskCancelled, a store error
            try:
                target.set_exception(exc)
            except concurrent.futures.InvalidStateError:
                pass

    def on_cancel(t: concurrent.futures.Future[Any]) -> None:
        if t.cancelled():
            source.cancel()

    target.add_done_callback(on_cancel)
    source.add_done_callback(done)
    return target


def wait(handles: Iterable[H], timeout: float | None = None) -> tuple[list[H], list[H]]:
    """Wait until every handle's task has ended, or ``timeout`` seconds; ``(done, not_done)``.

    Each handle needs a ``future()`` (``TaskHandle`` has one): the waiting is
    the queue's shared poller's, so any number of handles cost one round of
    reads per interval. A done handle's ``result()`` then answers at once.
    """
    futures = {h.future(): h for h in handles}  # type: ignore[attr-defined]
    done, _ = concurrent.futures.wait(futures, timeout=timeout)
    finished = [h for f, h in futures.items() if f in done]
    pending = [h for f, h in futures.items() if f not in done]
    for f in futures:
        if f not in done:
            f.cancel()  # stop watching for this call
    return finished, pending
