"""The runner: one attempt of a claimed task, from handler call to recorded outcome.

``Runner.run(claim)`` runs the handler (through the app's middleware,
``qo.middleware``) in a daemon thread of its own, so that a timeout or a
shutdown never waits on user code, and supervises it from the calling thread:
it renews the lease (``qo.heartbeat``), enforces the deadline, and then
records the outcome (``qo.protocol.outcome``), retrying store failures while
the lease lives. Whenever it stops waiting for a handler that has not
returned (handed back, timed out, cancelled, lease lost) it sets
``ctx.cancelled``: the handler is told to stop.

This is the thread runner; the worker runs it in each slot and the Lambda
worker once per invocation. It runs an ``async def`` handler too, on a loop
of the handler thread's own (``qo.calls``). ``qo.aio_runner.AsyncRunner``
extends it to run many async handlers on one event loop, sharing every step
but the waiting: ``_begin`` (context, lease keeper), ``_step`` (deadline,
shutdown, renewal), ``_heartbeat`` and ``_end`` (the outcome).
What happened is told by lifecycle events (``qo.eventlog`` logs them) and
counted in a ``WorkerSummary``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from qo import logs
from qo.app import App, TaskDef
from qo.calls import sync_call
from qo.context import Context, Skip, StopReason
from qo.errors import PreconditionFailed, QoError, StoreError
from qo.health import StoreHealth
from qo.heartbeat import MAX_BACKOFF, LeaseKeeper, Renewal
from qo.hooks import NO_HOOKS, Hooks, Kind
from qo.middleware import TaskCall
from qo.models import ErrorInfo, Status, TaskRecord
from qo.protocol import deps, outcome, records
from qo.protocol.claim import Claim
from qo.retry import RetryDecision
from qo.settings import Settings
from qo.store.base import Store

log = logging.getLogger("qo.worker")
T = TypeVar("T")


class TaskTimeout(Exception):
    """The attempt ran past the task's timeout."""


class WorkerDeadline(TaskTimeout):
    """The attempt ran into the worker's own deadline (``Runner.deadline``)."""


@dataclass
class WorkerSummary:
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    fenced: int = 0  # the lease was lost: the outcome was dropped
    cancelled: int = 0  # cancelled while running: the outcome was dropped
    abandoned: int = 0  # handlers still running when the worker stopped


@dataclass
class Running:
    """One attempt in flight: its claim, its handler's context and what it returned."""

    claim: Claim
    ctx: Context
    keeper: LeaseKeeper
    timeout: float | None
    declared: dict[str, Any]  # handler options the record left unset
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    capped: bool = False  # its deadline is the runner's, not the task's timeout
    seen_cancelled: records.Versioned | None = None  # the cancelled record a heartbeat read
    over: bool = False  # the attempt is settled: heartbeats from the handler are refused


class Step(Enum):
    """What supervision does after a wait (``Runner._step``)."""

    WAIT = "wait"
    RENEW = "renew"  # the lease is due for renewal (a heartbeat, which may find it lost)
    STOP = "stop"


class Runner:
    """Runs claimed tasks to their outcome, one per calling thread; thread-safe.

    ``abort`` set: hand back what runs (graceful shutdown is over).
    ``deadline``: a ``time.monotonic()`` instant no handler may run past (a
    Lambda invocation's end); a task stopped by it fails with ``deadline_error``.
    """

    def __init__(
        self, app: App, store: Store, settings: Settings, *, hooks: Hooks = NO_HOOKS,
        health: StoreHealth | None = None, summary: WorkerSummary | None = None,
        abort: threading.Event | None = None, deadline: float | None = None,
        deadline_error: type[TaskTimeout] = WorkerDeadline,
    ) -> None:
        self.app, self.store, self.settings, self.hooks = app, store, settings, hooks
        self.health = health or StoreHealth()
        self.summary = summary or WorkerSummary()
        self.abort = abort or threading.Event()
        self.deadline, self.deadline_error = deadline, deadline_error
        self._lock = threading.Lock()
        self._running: dict[str, Running] = {}
        self._handlers: dict[threading.Thread, str] = {}  # live handler threads -> task id

    def running(self) -> list[str]:
        """The ids of the tasks whose handlers this runner supervises now."""
        with self._lock:
            return sorted(self._running)

    def wait_for_handlers(self, cancel_wait: float) -> None:
        """Give handlers told to stop ``cancel_wait`` seconds to return; count the rest."""
        left = self._join_handlers(time.monotonic() + cancel_wait)
        with self._lock:
            self.summary.abandoned = len(left)
        if left:
            log.warning("%d handler(s) still running after being told to stop (tasks %s); their "
                        "outcomes will be dropped", len(left), ", ".join(left),
                        extra={"event": "handlers_abandoned", "tasks": left})

    def _join_handlers(self, end: float) -> list[str]:
        """Wait for handler threads until ``end``; the task ids of those still running."""
        with self._lock:
            threads = list(self._handlers)
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        with self._lock:
            return sorted(task for t, task in self._handlers.items() if t.is_alive())

    def run(self, claim: Claim) -> None:
        """Run one claimed task to its outcome in the calling thread."""
        begun = self._begin(claim)
        if begun is None:
            return
        running, definition = begun
        try:
            self._supervise(running, definition)
        finally:
            self._stopped_waiting(running)
        self._end(running, definition)

    def _begin(self, claim: Claim) -> tuple[Running, TaskDef] | None:
        """The attempt's context and lease keeper, or None once a task that cannot run
        (an unknown type, an unreadable payload) has had its outcome written."""
        record = claim.record
        definition = self.app.handler_for(record.type, record.version)
        if definition is None:  # no handler accepts this version: back to the queue
            outcome.release(self.store, claim, hooks=self.hooks)
            return None
        declared = _declared(record, definition)
        keeper = LeaseKeeper.for_claim(self.store, claim.lease)
        timeout = record.timeout if record.timeout is not None else definition.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        capped = self.deadline is not None and (deadline is None or deadline > self.deadline)
        if capped:
            deadline = self.deadline
        ctx = Context(task_id=record.id, task_type=record.type, queue=record.queue,
                      attempt=claim.attempt, deadline=deadline, version=record.version,
                      trace=record.trace,
                      max_attempts=declared.get("max_attempts", record.max_attempts))
        running = Running(claim, ctx, keeper, timeout, declared, capped=capped)
        ctx._heartbeat = lambda: self._heartbeat(running)
        if record.depends_on:  # read only if the handler asks (ctx.dependencies)
            ctx.depends_on = tuple(record.depends_on)
            ctx._load_dependencies = lambda: deps.outcomes(self.store, record)
        if claim.input_error is not None:  # an unreadable payload never reaches the handler
            error = ErrorInfo(type="CorruptPayload", message=claim.input_error,
                              attempt=claim.attempt, retryable=False)
            self._settle(running, lambda: outcome.fail(
                self.store, claim, error, retryable=False, declared=declared, hooks=self.hooks))
            self._count("failed")
            return None
        with self._lock:
            self._running[record.id] = running
        return running, definition

    def _stopped_waiting(self, running: Running) -> None:
        """Supervision is over: forget the attempt; a handler still running is told to stop."""
        with self._lock:
            self._running.pop(running.claim.task_id, None)
        if not running.done.is_set():  # handed back, timed out, lost: tell it to stop
            running.ctx.cancel(StopReason.ABANDONED)

    def _end(self, running: Running, definition: TaskDef) -> None:
        """Write the attempt's outcome; from then on the handler's heartbeats are refused."""
        try:
            self._finish(running, definition)
        finally:
            running.over = True

    def _supervise(self, running: Running, definition: TaskDef) -> None:
        """Run the handler in its own thread; renew the lease; enforce the deadline."""
        task_id = running.claim.task_id
        call = sync_call(self.app, definition)
        handler_call = TaskCall(definition.name, running.claim.input, running.ctx)

        def target() -> None:
            try:
                with logs.task_fields(task_id, running.ctx.task_type, running.ctx.attempt):
                    running.result = call(handler_call)
            except BaseException as exc:  # noqa: BLE001 - reported as the task's error
                running.error = exc
            finally:
                running.done.set()
                with self._lock:
                    self._handlers.pop(threading.current_thread(), None)

        thread = threading.Thread(target=target, name=f"qo-task-{task_id}", daemon=True)
        with self._lock:
            self._handlers[thread] = task_id
        thread.start()
        while not running.done.is_set():
            running.done.wait(self._next_wait(running))
            step = self._step(running)
            if step is Step.STOP or (step is Step.RENEW and not self._heartbeat(running)):
                return

    def _next_wait(self, running: Running) -> float:
        """How long supervision may wait for the handler before it looks again."""
        now = time.monotonic()
        waits = [running.keeper.next_renew - now, 0.5]
        if running.ctx.deadline is not None:
            waits.append(running.ctx.deadline - now)
        return max(0.0, min(waits))

    def _step(self, running: Running) -> Step:
        """After a wait: stop supervising (with ``ctx.cancel_reason`` saying why, unless
        the handler returned), renew the lease, or wait on. No request."""
        ctx = running.ctx
        if running.done.is_set() or ctx.cancel_reason in (StopReason.CANCELLED, StopReason.LEASE_LOST):
            return Step.STOP  # (a heartbeat the handler made itself can find these)
        if self.abort.is_set():
            ctx.cancel(StopReason.SHUTTING_DOWN)
            return Step.STOP
        if ctx.deadline is not None and time.monotonic() >= ctx.deadline:
            ctx.cancel(StopReason.TIMEOUT)
            return Step.STOP
        return Step.RENEW if running.keeper.due() else Step.WAIT

    def _heartbeat(self, running: Running) -> bool:
        """Renew the lease and look for a cancellation; False if the task is lost.

        A store failure is not a loss: the keeper tries again until the lease
        expires by its estimate (``qo.heartbeat``).
        """
        if running.over:
            return False
        claim = running.claim
        renewal = running.keeper.renew()
        if renewal is Renewal.LOST:
            if running.ctx.cancel_reason is not StopReason.LEASE_LOST:  # once per attempt
                self._lease_event(Kind.LEASE_LOST, claim)
            running.ctx.cancel(StopReason.LEASE_LOST)
            return False
        if renewal is Renewal.FAILED:
            assert running.keeper.last_error is not None
            self.health.failed(running.keeper.last_error, f"renewing the lease of {claim.task_id}")
            return True
        self.health.ok()
        self._lease_event(Kind.LEASE_RENEWED, claim)
        try:
            current = records.read(self.store, claim.task_id)
        except QoError:  # the next heartbeat looks again
            return True
        if current is None or current.value.status == Status.CANCELLED:
            running.seen_cancelled = current
            running.ctx.cancel(StopReason.CANCELLED)
            return False
        return True

    def _lease_event(self, kind: Kind, claim: Claim) -> None:
        rec = claim.record
        self.hooks.emit(kind, rec.id, queue=rec.queue, task_type=rec.type, attempt=claim.attempt,
                        worker=claim.lease.value.owner)

    def _finish(self, running: Running, definition: TaskDef) -> None:
        claim, ctx = running.claim, running.ctx
        with self._lock:
            self.summary.processed += 1
        retryable: bool | None = None
        if not running.done.is_set():
            if ctx.cancel_reason == StopReason.SHUTTING_DOWN:
                self._settle(running,
                             lambda: outcome.release(self.store, claim, hooks=self.hooks))
                self._count("released")
                return
            if ctx.cancel_reason == StopReason.TIMEOUT and running.capped:
                running.error = self.deadline_error(
                    "the handler ran into the worker's deadline; give the task a timeout "
                    "that fits, or give the worker more time")
            elif ctx.cancel_reason == StopReason.TIMEOUT:
                running.error = TaskTimeout(f"timed out after {running.timeout:g} s")
            elif ctx.cancel_reason == StopReason.CANCELLED:
                self._cancelled(running, "the handler was told to stop")
                return
            else:  # the lease was lost (or the attempt was abandoned)
                self._report(running, outcome.Outcome.FENCED, "still running")
                return
        if running.error is None:
            try:
                encoded = outcome.encode_result(claim, running.result, self.settings)
            except (records.InvalidPayload, records.PayloadTooLarge) as bad:
                running.error, retryable = bad, False  # a programming error: no retry
            else:
                result = self._settle(running, lambda: outcome.succeed(
                    self.store, claim, running.result, self.settings, encoded=encoded,
                    declared=running.declared, hooks=self.hooks))
                self._report(running, result, "succeeded")
                return
        error = running.error
        assert error is not None
        if isinstance(error, Skip):
            result = self._settle(running, lambda: outcome.skip(
                self.store, claim, str(error) or "skipped by its handler",
                declared=running.declared, hooks=self.hooks))
            self._report(running, result, "skipped")
            return
        if retryable is None:
            retryable = definition.retryable(error)
        decision = RetryDecision.decide(retryable=retryable, attempt=claim.attempt,
                                        max_attempts=running.ctx.max_attempts,
                                        policy=claim.record.retry, error=error,
                                        decider=definition.retry_decider)
        info = outcome.error_info(error, claim.attempt, retryable)
        result = self._settle(running, lambda: outcome.fail(
            self.store, claim, info, decision=decision, declared=running.declared,
            hooks=self.hooks))
        if result is outcome.Outcome.RECORDED:
            self._count("failed")
            return
        self._report(running, result, f"failed with {type(error).__name__}")

    def _report(self, running: Running, result: outcome.Outcome | None, what: str) -> None:
        """Count an outcome; events told the log already, except a store that never answered."""
        if result is outcome.Outcome.RECORDED:
            self._count("succeeded")
        elif result is outcome.Outcome.SUPERSEDED:
            self._count("cancelled")
        else:
            self._count("fenced")
        if result is None:  # nothing was decided, so no event: say it here
            log.warning("task %s: the store failed until its lease ran out; its outcome (%s) "
                        "was not recorded and another worker will run it again",
                        running.claim.task_id, what,
                        extra={"event": "task_fenced", "task_id": running.claim.task_id})

    def _cancelled(self, running: Running, what: str) -> None:
        seen, claim = running.seen_cancelled, running.claim
        if seen is None:  # the record is gone: only the lease is left to drop
            self._settle(running, lambda: claim.lease.release(self.store))
            log.info("task %s was deleted while running; its outcome (%s) was dropped",
                     claim.task_id, what, extra={"event": "task_cancelled", "task_id": claim.task_id})
        else:
            self._settle(running, lambda: outcome.cancelled(
                self.store, claim, seen.value, seen.etag, what, running.declared,
                hooks=self.hooks))
        self._count("cancelled")

    def _settle(self, running: Running, write: Callable[[], T]) -> T | None:
        """Do an outcome's writes; on a store failure retry with backoff while the
        lease lives (renewing it when due). None if the lease ran out first."""
        delay = 0.2
        while True:
            try:
                result = write()
            except PreconditionFailed:
                raise
            except StoreError as exc:
                self.health.failed(exc, f"recording the outcome of {running.claim.task_id}")
                running.keeper.renew_if_due()
                if running.keeper.remaining() <= delay:
                    return None
                time.sleep(delay)
                delay = min(MAX_BACKOFF, delay * 2)
                continue
            self.health.ok()
            return result

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self.summary, what, getattr(self.summary, what) + 1)


def _declared(record: TaskRecord, definition: TaskDef) -> dict[str, Any]:
    """The handler's ``max_attempts`` and ``timeout``, where the record sets none.

    Applied by this worker and written into the record with the outcome, so the
    declared behaviour holds whoever submitted the task.
    """
    declared: dict[str, Any] = {}
    if not record.declares("max_attempts"):
        declared["max_attempts"] = definition.max_attempts
    if record.timeout is None and definition.timeout is not None:
        declared["timeout"] = definition.timeout
    return declared
