"""The worker: N slot threads claiming and running tasks, plus a housekeeper.

Each slot claims a task, runs its handler in a separate thread (so that a
timeout or a shutdown never waits on user code), renews the lease while it
runs, and records the outcome. The housekeeper promotes due tasks, reaps
expired leases and refreshes this worker's heartbeat record, at a bounded
rate. Nothing here is needed for correctness by anyone else: kill -9 at any
point and the next reaper repairs what this worker held.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from qo import keys, outcome, records, sweep
from qo.app import App
from qo.cas import delete_quietly
from qo.claim import Claim, Claimer
from qo.context import Context
from qo.errors import QoError
from qo.ids import new_token
from qo.models import ErrorInfo, Status, WorkerInfo, dumps
from qo.queue import Queue

log = logging.getLogger("qo.worker")


class TaskTimeout(Exception):
    """The attempt ran past the task's timeout."""


class WorkerDeadline(TaskTimeout):
    """The attempt ran into the worker's own deadline (``WorkerOptions.deadline``)."""


@dataclass
class WorkerOptions:
    queues: list[str] | None = None  # default: the queues of the app's tasks
    concurrency: int = 4
    burst: bool = False  # exit once no task is ready
    poll_min: float = 0.05
    poll_max: float = 20.0  # idle polling backs off to this, with jitter
    grace: float = 30.0  # on SIGTERM, how long in-flight tasks may finish
    sweep_interval: float = 60.0  # promote and reap at most this often when idle
    heartbeat_interval: float = 300.0  # worker record refresh (for inspection only)
    worker_id: str | None = None
    #: A ``time.monotonic()`` instant no handler may run past (e.g. a Lambda
    #: invocation's end); a task stopped by it fails with ``deadline_error``.
    deadline: float | None = None
    deadline_error: type[TaskTimeout] = WorkerDeadline


@dataclass
class WorkerSummary:
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    fenced: int = 0


@dataclass
class _Running:
    claim: Claim
    ctx: Context
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    capped: bool = False  # its deadline is the worker's, not the task's timeout


class Worker:
    def __init__(self, app: App, queue: Queue | None = None, options: WorkerOptions | None = None):
        self.app = app
        self.queue = queue or app.queue
        self.store = self.queue.store
        self.settings = self.queue.settings
        self.options = options or WorkerOptions()
        self.id = self.options.worker_id or f"{socket.gethostname()}-{os.getpid()}-{new_token()[:6]}"
        self.queues = self.options.queues or app.queues()
        self.claimer = Claimer(
            self.store, self.settings, queues=self.queues, task_types=set(app.tasks),
            owner=self.id, spread=1,
        )
        self.summary = WorkerSummary()
        self.started_at = time.time()
        self._stop = threading.Event()  # stop claiming
        self._abort = threading.Event()  # grace is over: give back what runs
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._idle = self.options.poll_min  # the worker's idle backoff, shared by slots
        self._next_poll = 0.0  # monotonic time before which idle slots do not poll
        self._idle_cond = threading.Condition()
        self._rng = random.Random()

    # -- lifecycle ------------------------------------------------------------

    def run(self) -> WorkerSummary:
        """Run until stopped (or, in burst mode, until no task is ready)."""
        self._install_signals()
        log.info("worker %s started on %s, queues %s, concurrency %d",
                 self.id, self.store.url, ",".join(self.queues), self.options.concurrency,
                 extra={"event": "worker_started", "worker": self.id})
        self._write_heartbeat("running")
        housekeeper = threading.Thread(target=self._housekeep, name="qo-housekeeper", daemon=True)
        housekeeper.start()
        slots = [threading.Thread(target=self._slot, name=f"qo-slot-{i}", daemon=True)
                 for i in range(self.options.concurrency)]
        for t in slots:
            t.start()
        try:
            while any(t.is_alive() for t in slots) and not self._stop.is_set():
                self._stop.wait(0.2)
        finally:
            self._stop.set()
            deadline = time.monotonic() + self.options.grace
            for t in slots:
                t.join(max(0.0, deadline - time.monotonic()))
            self._abort.set()
            for t in slots:
                t.join(5.0)
            self._write_heartbeat("stopped")
            delete_quietly(self.store, keys.worker_key(self.id))
            log.info("worker %s stopped: %s", self.id, self.summary,
                     extra={"event": "worker_stopped", "worker": self.id})
        return self.summary

    def stop(self) -> None:
        self._stop.set()
        with self._idle_cond:
            self._idle_cond.notify_all()

    def execute(self, claim: Claim) -> None:
        """Run a claimed task to its outcome in the calling thread (Lambda, tests)."""
        self._execute(claim)

    def run_once(self) -> bool:
        """Claim and run one task in the calling thread; False if none was ready."""
        claim = self.claimer.claim()
        if claim is None:
            return False
        self._execute(claim)
        return True

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum: int, _frame: object) -> None:
            if self._stop.is_set():
                self._abort.set()  # second signal: give tasks back now
            log.info("signal %d: stopping", signum, extra={"event": "stopping"})
            self._stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # -- slots ----------------------------------------------------------------

    def _slot(self) -> None:
        while not self._stop.is_set():
            wait = self._next_poll - time.monotonic()
            if wait > 0:  # another slot polled and found nothing: one poll serves all
                with self._idle_cond:
                    self._idle_cond.wait(min(wait, 1.0))
                continue
            try:
                claim = self.claimer.claim()
            except QoError as exc:
                log.warning("claim failed: %s", exc, extra={"event": "claim_error"})
                claim = None
            if claim is None:
                if self.options.burst and self._burst_done():
                    return
                with self._idle_cond:  # back off, with jitter, for the whole worker
                    self._next_poll = time.monotonic() + self._rng.uniform(
                        self._idle / 2, self._idle)
                    self._idle = min(self.options.poll_max, self._idle * 2)
                self.claimer.forget()
                continue
            with self._idle_cond:  # work is there: every idle slot may look again
                self._idle, self._next_poll = self.options.poll_min, 0.0
                self._idle_cond.notify_all()
            try:
                self._execute(claim)
            except QoError as exc:  # the store failed us; the lease will be reaped
                log.warning("task %s: %s", claim.task_id, exc, extra={"event": "outcome_error"})
            except Exception:  # never let one task kill the worker
                log.exception("task %s: internal error", claim.task_id)

    def _burst_done(self) -> bool:
        """In burst mode: is nothing ready, even after promoting due tasks?"""
        sweep.promote(self.store)
        self.claimer.forget()
        with self._lock:
            busy = bool(self._running)
        if busy:
            return False
        claim = self.claimer.claim()
        if claim is None:
            self._stop.set()
            return True
        self._execute(claim)
        return False

    def _execute(self, claim: Claim) -> None:
        record = claim.record
        definition = self.app.tasks.get(record.type)
        if definition is None:
            outcome.release(self.store, claim)
            return
        if claim.input_error is not None:  # an unreadable payload never reaches the handler
            error = ErrorInfo(type="CorruptPayload", message=claim.input_error,
                              attempt=claim.attempt, retryable=False)
            outcome.fail(self.store, claim, error, retryable=False, settings=self.settings)
            self._count("failed")
            return
        deadline = None if record.timeout is None else time.monotonic() + record.timeout
        capped = self.options.deadline is not None and (
            deadline is None or deadline > self.options.deadline)
        if capped:
            deadline = self.options.deadline
        ctx = Context(task_id=record.id, task_type=record.type, queue=record.queue,
                      attempt=claim.attempt, max_attempts=record.max_attempts, deadline=deadline)
        running = _Running(claim, ctx, capped=capped)
        ctx._heartbeat = lambda: self._heartbeat(running)
        with self._lock:
            self._running[record.id] = running
        extra = {"task_id": record.id, "type": record.type, "attempt": claim.attempt}
        log.info("task %s started", record.id, extra={"event": "task_started", **extra})
        started = time.monotonic()
        try:
            self._supervise(running, definition)
        finally:
            with self._lock:
                self._running.pop(record.id, None)
        self._finish(running, definition, extra | {"seconds": round(time.monotonic() - started, 3)})

    def _supervise(self, running: _Running, definition: Any) -> None:
        """Run the handler in its own thread; renew the lease; enforce the deadline."""

        def target() -> None:
            try:
                running.result = definition.call(running.claim.input, running.ctx)
            except BaseException as exc:  # noqa: BLE001 - reported as the task's error
                running.error = exc
            finally:
                running.done.set()

        threading.Thread(target=target, name=f"qo-task-{running.claim.task_id}", daemon=True).start()
        renew_every = self.settings.lease_seconds / 3
        next_renew = time.monotonic() + renew_every
        while not running.done.is_set():
            now = time.monotonic()
            waits = [next_renew - now]
            if running.ctx.deadline is not None:
                waits.append(running.ctx.deadline - now)
            running.done.wait(max(0.0, min(waits + [0.5])))
            if running.done.is_set():
                return
            now = time.monotonic()
            if self._abort.is_set():
                running.ctx.cancel("worker shutting down")
                return
            if running.ctx.deadline is not None and now >= running.ctx.deadline:
                running.ctx.cancel("timeout")
                return
            if now >= next_renew:
                next_renew = now + renew_every
                if not self._heartbeat(running):
                    return

    def _heartbeat(self, running: _Running) -> bool:
        """Renew the lease and look for a cancellation; False if the task is lost."""
        claim = running.claim
        if not claim.lease.renew(self.store):
            running.ctx.cancel("lease lost")
            return False
        current = records.read(self.store, claim.task_id)
        if current is None or current.record.status == Status.CANCELLED:
            running.ctx.cancel("cancelled")
            return False
        return True

    def _finish(self, running: _Running, definition: Any, extra: dict[str, Any]) -> None:
        claim, ctx = running.claim, running.ctx
        with self._lock:
            self.summary.processed += 1
        if not running.done.is_set():
            if ctx.cancel_reason == "worker shutting down":
                outcome.release(self.store, claim)
                self._count("released")
                log.info("task %s released", claim.task_id, extra={"event": "task_released", **extra})
                return
            if ctx.cancel_reason == "timeout" and running.capped:
                running.error = self.options.deadline_error(
                    "the handler ran into the worker's deadline; give the task a timeout "
                    "that fits, or give the worker more time")
            elif ctx.cancel_reason == "timeout":
                running.error = TaskTimeout(f"timed out after {claim.record.timeout} s")
            elif ctx.cancel_reason == "lease lost":
                self._count("fenced")
                return
            else:  # cancelled: the record already says so; drop our lease
                claim.lease.release(self.store)
                return
        if running.error is None:
            result = outcome.succeed(self.store, claim, running.result, self.settings)
            self._count("succeeded" if result == outcome.Outcome.RECORDED else "fenced")
            log.info("task %s succeeded", claim.task_id,
                     extra={"event": "task_succeeded", "outcome": result.value, **extra})
            return
        exc = running.error
        retryable = definition.retryable(exc)
        info = outcome.error_info(exc, claim.attempt, retryable)
        result = outcome.fail(self.store, claim, info, retryable=retryable, settings=self.settings)
        self._count("failed")
        log.warning("task %s failed: %s: %s", claim.task_id, type(exc).__name__, exc,
                    extra={"event": "task_failed", "retryable": retryable,
                           "outcome": result.value, **extra})

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self.summary, what, getattr(self.summary, what) + 1)

    # -- housekeeping ---------------------------------------------------------

    def _housekeep(self) -> None:
        """Sweep at a bounded rate: when something is known to be due, or when it is
        this worker's turn among all workers (``sweep.take_sweep_turn``)."""
        interval = self.options.sweep_interval
        next_sweep = time.monotonic() + self._rng.uniform(0, min(5.0, interval))
        next_beat = time.monotonic() + self.options.heartbeat_interval
        due_sweep = False  # woken because a delayed task or a schedule slot is due
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + self._rng.uniform(0.8, 1.2) * interval
                try:
                    if due_sweep or sweep.take_sweep_turn(self.store, self.id, interval):
                        report = self.queue.sweep(owner=self.id)
                        due_sweep = False
                        if report.next_due is not None:  # wake up when the next one is due
                            wait = max(0.05, report.next_due - self.store.now())
                            if time.monotonic() + wait < next_sweep:
                                next_sweep, due_sweep = time.monotonic() + wait, True
                except QoError as exc:
                    log.warning("sweep failed: %s", exc, extra={"event": "sweep_error"})
            if now >= next_beat:
                next_beat = now + self.options.heartbeat_interval
                self._write_heartbeat("running")
            self._stop.wait(max(0.05, min(next_sweep, next_beat) - time.monotonic()))

    def _write_heartbeat(self, state: str) -> None:
        with self._lock:
            running = sorted(self._running)
            summary = self.summary
        info = WorkerInfo(
            id=self.id, host=socket.gethostname(), pid=os.getpid(), queues=self.queues,
            concurrency=self.options.concurrency, started_at=self.started_at, seen_at=time.time(),
            running=running, processed=summary.processed, failed=summary.failed, state=state,
        )
        try:
            self.store.put(keys.worker_key(self.id), dumps(info))
        except QoError as exc:
            log.warning("heartbeat record failed: %s", exc)

