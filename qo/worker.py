"""The worker: N slot threads claiming and running tasks, plus a housekeeper.

Each slot claims a task, runs its handler in a separate thread (so that a
timeout or a shutdown never waits on user code), renews the lease while it
runs (``qo.heartbeat``: through store outages, until the lease really
expires) and records the outcome. The housekeeper promotes due tasks, reaps
expired leases and refreshes this worker's heartbeat record, at a bounded
rate. Nothing here is needed for correctness by anyone else: kill -9 at any
point and the next reaper repairs what this worker held.

A handler that is handed back, timed out, cancelled or whose lease is lost
is told to stop (``ctx.cancelled``); one still running when the worker
stops is *abandoned* and counted in ``WorkerSummary.abandoned``, and ``qo
worker`` then exits with ``shutdown.EXIT_ABANDONED`` (see ``qo.shutdown``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator

from qo import eventlog, lifecycle
from qo.aio_runner import AsyncRunner, slot_threads
from qo.app import App
from qo.calls import has_async_tasks
from qo.errors import ErrorKind, QoError
from qo.health import Notices, StoreHealth
from qo.idle import IdlePoll
from qo.ids import new_token
from qo.limiter import Limiter
from qo.models import WorkerInfo, dumps
from qo.protocol import keys, retention, sweep
from qo.protocol.cas import delete_quietly
from qo.protocol.claim import Claim, Claimer
from qo.protocol.ownership import Fleet, signature
from qo.queue import Queue
from qo.runner import Runner, TaskTimeout, WorkerDeadline, WorkerSummary
from qo.shutdown import EXIT_ABANDONED
from qo.worker_options import WorkerOptions

__all__ = ["EXIT_ABANDONED", "TaskTimeout", "Worker", "WorkerDeadline", "WorkerOptions",
           "WorkerSummary"]

log = logging.getLogger("qo.worker")


class StoreCheckFailed(QoError):
    """The worker's first request (its heartbeat record) failed: it does not start."""

    kind = ErrorKind.MISCONFIGURED  # each instance takes the kind of the failure


class Worker:
    def __init__(self, app: App, queue: Queue | None = None, options: WorkerOptions | None = None):
        self.app = app
        self.queue = queue or app.queue
        app.use_unless_bound(self.queue)  # its handlers submit where it works
        self.store = self.queue.store
        self.hooks = self.queue.hooks
        self.settings = self.queue.settings
        self.options = options or WorkerOptions()
        self.queues = self.options.queues or app.queues()
        self.labels = frozenset(self.options.labels or ())
        self.accepted = app.accepted(self.labels)  # the handlers it runs, with its labels
        self.id = self.options.worker_id or (
            f"{socket.gethostname()}-{os.getpid()}-{new_token()[:6]}"
            f".s{signature(self.queues, self._serves())}")
        self.summary = WorkerSummary()
        self.health = StoreHealth()
        self.notices = Notices()
        self.started_at = time.time()
        self._stop = threading.Event()  # stop claiming
        self._abort = threading.Event()  # grace is over: give back what runs
        self._burst_check = threading.Lock()  # one slot at a time asks "is all done?"
        self._signals: list[int] = []  # noted by the signal handler, acted on by run()
        self._signals_handled = 0
        #: For liveness checks (``qo.probes``): the threads ``run`` started, and
        #: ``time.monotonic()`` when the housekeeper last went round its loop.
        self.slots: list[threading.Thread] = []
        self.housekeeper: threading.Thread | None = None
        self.housekept_at: float | None = None
        runner = AsyncRunner if has_async_tasks(app) else Runner
        self.runner = runner(app, self.store, self.settings, hooks=self.hooks, health=self.health,
                             summary=self.summary, abort=self._abort,
                             deadline=self.options.deadline,
                             deadline_error=self.options.deadline_error)
        use_limits = self.options.limits if self.options.limits is not None else bool(app.limits)
        self.limiter = Limiter(self.store, app.limits, owner=self.id) if use_limits else None
        self.claimer = Claimer(
            self.store, self.settings, queues=self.queues,
            task_types=self.accepted,
            owner=self.id, spread=1, hooks=self.hooks,
            fleet=Fleet(self.store, self.id, serves_like_me=self._info("running")),
            labels=self.labels,
            admission=[self.limiter.admit] if self.limiter else [],
            gate=self.limiter,
        )
        if self.limiter is not None:
            self.limiter.connect(self.hooks)  # slots back on outcomes, RateLimited feedback
        self.threads = slot_threads(app, self.options.concurrency, self.options.threads)
        # tasks in flight, of any kind
        self._capacity = threading.BoundedSemaphore(self.options.concurrency)
        #: Slots claiming or running (outcome and follow-ups included: a follow-up may
        #: ready dependents, so burst mode must not stop while another slot is busy).
        self._busy = 0
        self._busy_lock = threading.Lock()
        self.idle = IdlePoll(self.claimer, self.options.poll_min, self.options.poll_max)
        self._rng = random.Random()

    # -- lifecycle ------------------------------------------------------------

    def run(self) -> WorkerSummary:
        """Run until stopped (or, in burst mode, until no task is ready).

        The first request (the heartbeat record) checks the store: if it fails,
        ``StoreCheckFailed`` is raised before anything else starts. Returns once
        every write of the worker has settled; handler threads still running
        then are counted in ``summary.abandoned``.
        """
        try:
            self._write_heartbeat("running", strict=True)
        except QoError as exc:
            error = StoreCheckFailed(f"cannot start the worker on {self.store.url}: {exc}")
            error.kind = exc.kind  # a missing bucket stays a misconfiguration, an outage an outage
            raise error from None
        self._publish_types()
        self._install_signals()
        stop_logging = eventlog.connect(self.hooks, self.id)
        stop_hooks = lifecycle.connect(self.app.lifecycle, self.hooks, self.id,
                                       self.app.type_names())
        log.info("worker %s started on %s, queues %s, concurrency %d",
                 self.id, self.store.url, ",".join(self.queues), self.options.concurrency,
                 extra={"event": "worker_started", "worker": self.id})
        housekeeper = threading.Thread(target=self._housekeep, name="qo-housekeeper", daemon=True)
        housekeeper.start()
        slots = [threading.Thread(target=self._slot, name=f"qo-slot-{i}", daemon=True)
                 for i in range(self.threads)]
        for t in slots:
            t.start()
        # Shown to the health probes only once started: a thread not started yet is not
        # alive either, and must not read as one that died (qo.probes: "starting").
        self.slots, self.housekeeper = slots, housekeeper
        try:
            while any(t.is_alive() for t in slots) and not self._stop.is_set():
                self._handle_signals()
                self._stop.wait(0.2)
        finally:
            self.stop()
            deadline = time.monotonic() + self.options.grace
            for t in slots:
                while t.is_alive() and time.monotonic() < deadline and not self._abort.is_set():
                    self._handle_signals()  # a second signal ends the grace period
                    t.join(min(0.2, max(0.0, deadline - time.monotonic())))
            self._drain_loop(deadline)
            self._abort.set()
            # Slots now hand back what runs and record outcomes; each store write
            # is bounded by the lease it holds, so this ends.
            for t in [*slots, housekeeper]:
                t.join()
            self._drain_loop(time.monotonic() + self.settings.lease_seconds
                             + self.options.cancel_wait)
            self.runner.wait_for_handlers(self.options.cancel_wait)
            if isinstance(self.runner, AsyncRunner):
                self.runner.close()
            stop_logging()
            stop_hooks()
            if not delete_quietly(self.store, keys.worker_key(self.id)):
                self._write_heartbeat("stopped")  # what stays says it is gone
            log.info("worker %s stopped: %s", self.id, self.summary,
                     extra={"event": "worker_stopped", "worker": self.id})
        return self.summary

    def _publish_types(self) -> None:
        """Publish the app's task types that changed (``qo.protocol.registry``): 1 GET each,
        + 1 PUT for each that changed. A failure is logged; the worker runs on."""
        try:
            report = self.app.publish(self.store, self.id)
        except QoError as exc:
            self.health.failed(exc, "publishing task types")
            return
        if report.written:
            log.info("published task type(s) %s", ", ".join(report.written),
                     extra={"event": "types_published", "keys": report.written})

    @property
    def stopping(self) -> bool:
        """Told to stop (a signal, ``stop``, ``--burst`` done): it claims no more tasks."""
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        self.idle.wake()

    def execute(self, claim: Claim) -> None:
        """Run a claimed task to its outcome in the calling thread (tests)."""
        with self._logging():
            self.runner.run(claim)

    def run_once(self) -> bool:
        """Claim and run one task in the calling thread; False if none was ready."""
        with self._logging():
            claim = self.claimer.claim()
            self._report_seen()
            if claim is None:
                return False
            self.runner.run(claim)
            return True

    @contextlib.contextmanager
    def _logging(self) -> Iterator[None]:
        """Log this worker's task events (``qo.eventlog``) while the block runs."""
        disconnect = eventlog.connect(self.hooks, self.id)
        stop_hooks = lifecycle.connect(self.app.lifecycle, self.hooks, self.id,
                                       self.app.type_names())
        try:
            yield
        finally:
            disconnect()
            stop_hooks()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum: int, _frame: object) -> None:
            # Only note it: a handler that took a lock (Event.set, logging) could wait
            # forever for one the interrupted main thread holds. The main loop acts on it.
            self._signals.append(signum)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _handle_signals(self) -> None:
        """In the main thread: act on the signals ``on_signal`` noted (first stops, second aborts)."""
        while self._signals_handled < len(self._signals):
            signum = self._signals[self._signals_handled]
            self._signals_handled += 1
            if self._stop.is_set():
                self._abort.set()  # second signal: give tasks back now
            log.info("signal %d: stopping", signum, extra={"event": "stopping"})
            self.stop()

    # -- slots ----------------------------------------------------------------

    def _drain_loop(self, deadline: float) -> None:
        """Wait for the attempts on the event loop until ``deadline``: during the
        grace period (a second signal ends it), then, once aborted, while they hand
        back and write their outcomes (bounded by their leases, unless a handler
        blocks the loop: what is left then is reaped)."""
        aborted = self._abort.is_set()
        while isinstance(self.runner, AsyncRunner) and self.runner.in_flight() and (
                time.monotonic() < deadline and (aborted or not self._abort.is_set())):
            self._handle_signals()
            self.runner.wait_over(min(0.2, max(0.0, deadline - time.monotonic())))

    def _in_flight(self) -> int:
        """Attempts on the event loop (``qo.aio_runner``) whose outcome is not written."""
        return self.runner.in_flight() if isinstance(self.runner, AsyncRunner) else 0

    def _slot(self) -> None:
        while not self._stop.is_set():
            if not self._capacity.acquire(timeout=0.5):
                continue  # every task this worker may run at once is running
            try:
                if not self.idle.may_poll() or not self._claim_and_run():
                    self._capacity.release()
            except BaseException:
                self._capacity.release()
                raise

    def _claim_and_run(self) -> bool:
        """One claim, run here or started on the loop; True if it took the capacity
        token with it (released when the attempt on the loop is over)."""
        with self._busy_lock:
            self._busy += 1
        try:
            return self._claim_and_run_busy()
        finally:
            with self._busy_lock:
                self._busy -= 1

    def _claim_and_run_busy(self) -> bool:
        try:
            claim = self.claimer.claim()
        except QoError as exc:
            self.health.failed(exc, "claim")
            self.idle.polled(found=False)
            return False
        self.health.ok()
        self._report_seen()
        if claim is None:
            self.idle.polled(found=False)
            if self.options.burst:
                self._burst_done()
            return False
        self.idle.polled(found=True)
        if isinstance(self.runner, AsyncRunner) and self.runner.runs_on_loop(claim):
            self.runner.start(claim, lambda exc: self._over_on_loop(claim, exc))
            return True
        try:
            self.runner.run(claim)
        except Exception as exc:  # noqa: BLE001 - never let one task kill the worker
            self._run_failed(claim, exc)
        return False

    def _over_on_loop(self, claim: Claim, exc: BaseException | None) -> None:
        self._capacity.release()
        if exc is not None:
            self._run_failed(claim, exc)

    def _run_failed(self, claim: Claim, exc: BaseException) -> None:
        if isinstance(exc, QoError):  # the store failed us; the lease will be reaped
            log.warning("task %s: %s", claim.task_id, exc, extra={"event": "outcome_error"})
        else:
            log.error("task %s: internal error", claim.task_id, exc_info=exc)

    def _report_seen(self) -> None:
        unknown, paused = self.claimer.seen()
        self.notices.unknown_types(unknown)
        self.notices.paused(paused)

    def _burst_done(self) -> bool:
        """In burst mode: is nothing ready, even after promoting due tasks?"""
        if (self.runner.running() or self._in_flight() or self._busy > 1
                or self.idle.others_pending()):
            return False  # not done while a slot still works (checked first: no LIST)
        if not self._burst_check.acquire(blocking=False):
            return False  # another slot is asking; it stops the worker if so
        try:
            if self._stop.is_set():
                return True
            sweep.promote(self.store)
            self.claimer.forget()
            claim = self.claimer.claim()
            if claim is None:
                if self.idle.others_pending():
                    return False
                self._stop.set()
                return True
        except QoError as exc:
            self.health.failed(exc, "burst check")
            return False
        finally:
            self._burst_check.release()
        self.idle.polled(found=True)
        self.runner.run(claim)
        return False

    def _housekeep(self) -> None:
        """Sweep at a bounded rate: when something is known to be due, or when it is
        this worker's turn among all workers (``sweep.take_sweep_turn``)."""
        interval = self.options.sweep_interval
        next_sweep = time.monotonic() + self._rng.uniform(0, min(5.0, interval))
        next_beat = time.monotonic() + self.options.heartbeat_interval
        due_sweep = False  # woken because a delayed task or a schedule slot is due
        while not self._stop.is_set():
            now = self.housekept_at = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + self._rng.uniform(0.8, 1.2) * interval
                try:
                    errors: list[str] = []
                    if due_sweep or sweep.take_sweep_turn(self.store, self.id, interval):
                        report = self.queue.sweep(owner=self.id)
                        self.queue.refresh_stats(owner=self.id)  # at most every stats_interval
                        if self.options.retention > 0:  # a bounded step: 1 GET when not due
                            report.errors += retention.run_retention(
                                self.store, self.options.retention).errors
                        due_sweep, errors = False, report.errors
                        if report.next_due is not None:  # wake up when the next one is due
                            wait = max(0.05, report.next_due - self.store.now())
                            if time.monotonic() + wait < next_sweep:
                                next_sweep, due_sweep = time.monotonic() + wait, True
                    if not errors:  # (a sweep counts the requests that failed it)
                        self.health.ok()
                except QoError as exc:
                    self.health.failed(exc, "sweep")
            if now >= next_beat:
                next_beat = now + self.options.heartbeat_interval
                self._write_heartbeat("running")
            self._stop.wait(max(0.05, min(next_sweep, next_beat) - time.monotonic()))

    def _info(self, state: str) -> WorkerInfo:
        """This worker's record: what it serves and does."""
        summary = self.summary
        return WorkerInfo(
            id=self.id, host=socket.gethostname(), pid=os.getpid(), queues=self.queues,
            task_types=sorted(self.accepted),
            concurrency=self.options.concurrency,
            started_at=self.started_at, seen_at=time.time(), running=self.runner.running(),
            processed=summary.processed, failed=summary.failed, state=state,
            labels=sorted(self.labels),
        )

    def _serves(self) -> list[str]:
        """What the worker's id signature covers: the handlers it accepts and its labels."""
        return sorted(self.accepted) + [f"~{label}" for label in sorted(self.labels)]

    def _write_heartbeat(self, state: str, *, strict: bool = False) -> None:
        """PUT ``workers/{id}.json``: what this worker serves and does (for inspection
        and ``qo.protocol.fleet``). ``strict``: let a store error through."""
        info = self._info(state)
        try:
            self.store.put(keys.worker_key(self.id), dumps(info))
        except QoError as exc:
            if strict:
                raise
            self.health.failed(exc, "heartbeat record")
            return
        self.health.ok()
