"""The Python entry point: ``Queue.from_url(...)`` and task handles."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace as dc_replace
from typing import Any

from qo import results, tracing
from qo.errors import ErrorKind, QoError
from qo.hooks import Hooks
from qo.models import Status, TaskRecord
from qo.protocol import admin, audit, fleetstats, records, sweep
from qo.protocol.admin import TaskView
from qo.protocol.backpressure import DepthGauge, QueueSettings
from qo.protocol.firing import Firer, FireReport
from qo.protocol.registry import Registry
from qo.protocol.submit import (
    InvalidBatchItem,
    Prepared,
    SubmitRequest,
    Submitted,
    prepare,
    prepare_batch,
    submit_all,
    submit_prepared,
)
from qo.settings import Settings
from qo.store.base import Store
from qo.store.url import open_store

#: Threads behind ``Queue.submit_async``.
SUBMIT_THREADS = 8


class TaskFailed(QoError):
    """The task is dead: its last attempt failed and no retry is left."""

    kind = ErrorKind.CONFLICT  # the task has no result to give

    def __init__(self, record: TaskRecord) -> None:
        err = record.error
        detail = f"{err.type}: {err.message}" if err else "unknown error"
        super().__init__(f"task {record.id} failed after {record.attempt} attempt(s): {detail}")
        self.record = record


class TaskCancelled(QoError):
    kind = ErrorKind.CONFLICT  # the task has no result to give

    def __init__(self, record: TaskRecord) -> None:
        super().__init__(f"task {record.id} was cancelled ({record.cancel_reason or 'no reason'})")
        self.record = record


class ResultTimeout(QoError, TimeoutError):
    kind = ErrorKind.UNAVAILABLE  # waiting longer may succeed


class TaskHandle:
    """A submitted task: poll its status, wait for its result, cancel it."""

    def __init__(self, queue: Queue, task_id: str, created: bool = True) -> None:
        self.queue = queue
        self.id = task_id
        self.created = created

    def __repr__(self) -> str:
        return f"TaskHandle({self.id!r})"

    def view(self) -> TaskView:
        return admin.show(self.queue.store, self.id)

    def status(self) -> Status:
        return self.view().status

    def cancel(self, reason: str = "cancelled by user") -> None:
        admin.cancel(self.queue.store, self.id, reason)

    def result(self, timeout: float | None = None, poll: float = 0.05, max_poll: float = 1.0) -> Any:
        """Block until the task ends; return its result or raise why it did not succeed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.view().record
            if record.terminal:
                return self._outcome(record)
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(f"task {self.id} did not finish within {timeout} s")
            wait = poll if deadline is None else min(poll, max(0.0, deadline - time.monotonic()))
            time.sleep(wait)
            poll = min(max_poll, poll * 1.5)

    async def aresult(self, timeout: float | None = None) -> Any:
        """The asyncio variant of ``result``, waiting on the queue's shared poller
        (``qo.results``): any number of awaiters cost one read per task per round."""
        try:
            return await asyncio.wait_for(asyncio.wrap_future(self.future()), timeout)
        except TimeoutError:
            raise ResultTimeout(f"task {self.id} did not finish within {timeout} s") from None

    def future(self) -> Future[Any]:
        """A ``concurrent.futures.Future`` of the task's result (or of the error ``result``
        raises), resolved by the queue's shared poller (``qo.results``); cancel it to
        stop waiting."""
        return results.chain(self.queue.results.watch(self.id), self._outcome)

    def add_done_callback(self, fn: Callable[[TaskHandle], object]) -> None:
        """Call ``fn(handle)`` once the task has ended (in the poller's thread; keep it
        short). ``handle.result()`` then answers at once."""
        self.future().add_done_callback(lambda _: fn(self))

    def _outcome(self, record: TaskRecord) -> Any:
        if record.status == Status.SUCCEEDED:
            return records.load_result(self.queue.store, record)
        if record.status == Status.CANCELLED:
            raise TaskCancelled(record)
        raise TaskFailed(record)


class Queue:
    """One queue URL: submit, inspect and repair tasks from Python."""

    def __init__(self, store: Store, settings: Settings | None = None) -> None:
        self.store = store
        self.settings = settings or Settings()
        #: Lifecycle events of what this Queue (and workers built on it) decides.
        self.hooks = Hooks()
        self._store_checked = False
        self._firer: Firer | None = None
        self._results: results.ResultPoller | None = None
        self._submitter: ThreadPoolExecutor | None = None
        self._lazy = threading.Lock()
        self._registry: Registry | None = None
        self._stats_next = 0.0  # monotonic time of the next look at the stats snapshot
        #: Counts of bounded queues' depths (``max_depth``; qo/protocol/backpressure.py).
        self.depth = DepthGauge(self.settings.depth_ttl)

    @property
    def results(self) -> results.ResultPoller:
        """The poller every waiter of this queue shares (``qo.results``)."""
        with self._lazy:
            if self._results is None:
                self._results = results.ResultPoller(self.store)
            return self._results

    def submit_async(self, task_type: str, input: Any = None, **options: Any) -> Future[TaskHandle]:
        """``submit`` in one of ``SUBMIT_THREADS`` background threads; returns at once.
        The future raises what ``submit`` would."""
        with self._lazy:
            if self._submitter is None:
                self._submitter = ThreadPoolExecutor(SUBMIT_THREADS, thread_name_prefix="qo-submit")
            pool = self._submitter
        return pool.submit(self.submit, task_type, input, **options)

    @property
    def registry(self) -> Registry:
        """This Queue's cached view of the task-type registry (``qo.protocol.registry``)."""
        if self._registry is None:
            self._registry = Registry(self.store, self.settings.registry_ttl)
        return self._registry

    @registry.setter
    def registry(self, registry: Registry) -> None:
        self._registry = registry

    def resolve(self, fields: dict[str, Any], *, allow_unregistered: bool = False
                ) -> dict[str, Any]:
        """A submit request's fields with the registry's declared options for its type.

        Refuses an unknown type (``UnregisteredType``) unless ``allow_unregistered``,
        and an input its handler would refuse (``InvalidInput``). Costs nothing
        while the registry listing is fresh (``Settings.registry_ttl``).
        """
        return self.registry.resolve(fields, allow_unregistered=allow_unregistered)

    def queue_settings(self, queue: str) -> QueueSettings | None:
        """A queue's ``max_depth`` and ``aging``, from the registry listing (see
        ``Registry.queue_settings``: free while it is fresh)."""
        return self.registry.queue_settings(queue)

    def aging_of(self) -> Callable[[str], int | None]:
        """``queue -> its priority aging``, for ``prepare`` and ``prepare_batch``."""
        def aging(queue: str) -> int | None:
            found = self.queue_settings(queue)
            return found.aging if found else None
        return aging

    def admit(self, prepared: list[Prepared]) -> None:
        """Raise ``QueueFull`` if these tasks would take a queue past its ``max_depth``.

        Call it after ``check_store`` and before writing. A queue without
        ``max_depth`` costs nothing; a bounded one a count now and then
        (``DepthGauge``).
        """
        per_queue: dict[str, int] = {}
        for p in prepared:
            per_queue[p.record.queue] = per_queue.get(p.record.queue, 0) + 1
        for name, n in per_queue.items():
            found = self.queue_settings(name)
            if found is not None and found.max_depth is not None:
                self.depth.admit(self.store, name, n, found.max_depth)

    def check_store(self) -> Queue:
        """Refuse a store that cannot keep qo's guarantees; once per Queue.

        See ``qo.store.capabilities.require`` (usually 1 GET, nothing for the
        memory and local stores). May wrap ``store`` for the unconditional
        delete mode, so call it before handing ``store`` to other objects.
        """
        if not self._store_checked:
            from qo.store.capabilities import require

            self.store = require(self.store)
            self._store_checked = True
        return self

    @classmethod
    def from_url(cls, url: str | None = None, **settings: Any) -> Queue:
        return cls(open_store(url), dc_replace(Settings(), **settings))

    @property
    def url(self) -> str:
        return self.store.url

    def submit(self, task_type: str, input: Any = None, *, allow_unregistered: bool = False,
               **options: Any) -> TaskHandle:
        """Submit one task; options are those of ``SubmitRequest`` (priority, delay, key...).

        Options left unset come from the type's published definition (the registry);
        an unknown type is refused unless ``allow_unregistered`` (see ``resolve``).
        """
        fields = self.resolve({"type": task_type, "input": input, **options},
                              allow_unregistered=allow_unregistered)
        return self.submit_request(SubmitRequest(**fields))

    def submit_request(self, req: SubmitRequest) -> TaskHandle:
        """Submit a request exactly as it is (no lookup of its type: ``App.submit`` uses
        this). Its queue's settings (``max_depth``, ``aging``) apply: they come with the
        registry's listing, 1 LIST at the first submit and then at most once per
        ``Settings.registry_ttl`` (``Registry.queue_settings``)."""
        return self._handle(self.submit_one(req))

    def submit_one(self, req: SubmitRequest) -> Submitted:
        """``submit_request``'s steps, answering what was written (id, created, status:
        what the HTTP API returns)."""
        now = self.store.now()
        queue_name = req.queue or self.settings.default_queue
        aging = self.aging_of()(queue_name)
        with tracing.producer(queue_name, req.type) as traced:
            prepared = prepare(req, self.settings, now, aging=aging)  # all that can refuse it
            if traced is not None:
                traced(prepared.record.id)
            self.check_store()  # then the first submit checks the store, before any write
            self.admit([prepared])  # QueueFull past max_depth
            return submit_prepared(self.store, prepared, self.settings, now, hooks=self.hooks)

    def submit_many(self, requests: list[SubmitRequest | dict[str, Any]], *,
                    allow_unregistered: bool = False) -> list[TaskHandle]:
        """Submit a batch, each request resolved like ``submit``'s; none is written if one
        is refused."""
        reqs = []
        for n, r in enumerate(requests):
            fields = r.model_dump(exclude_unset=True) if isinstance(r, SubmitRequest) else r
            try:
                fields = self.resolve(fields, allow_unregistered=allow_unregistered)
            except QoError as exc:
                raise InvalidBatchItem(n, exc) from None
            reqs.append(SubmitRequest(**fields))
        return [self._handle(d) for d in self.submit_batch(reqs)]

    def submit_batch(self, reqs: list[SubmitRequest]) -> list[Submitted]:
        """``submit_many``'s steps for requests taken as they are (the HTTP API's batch):
        all are checked (``InvalidBatchItem``, ``QueueFull``) before any is written, in
        one producer span."""
        if not reqs:
            return []
        now = self.store.now()
        queues = {r.queue or self.settings.default_queue for r in reqs}
        with tracing.producer(queues.pop() if len(queues) == 1 else "(several)",
                              count=len(reqs)):  # one span for the batch (qo.tracing)
            prepared = prepare_batch(reqs, self.settings, now, self.aging_of())
            self.check_store()
            self.admit(prepared)
            return submit_all(self.store, prepared, self.settings, now, hooks=self.hooks)

    def _handle(self, done: Submitted) -> TaskHandle:
        return TaskHandle(self, done.id, done.created)

    def handle(self, task_id: str) -> TaskHandle:
        return TaskHandle(self, task_id, created=False)

    def get(self, task_id: str) -> TaskView:
        return admin.show(self.store, task_id)

    def cancel(self, task_id: str, reason: str = "cancelled by user") -> TaskView:
        return admin.cancel(self.store, task_id, reason, hooks=self.hooks)

    def retry(self, task_id: str) -> TaskView:
        return admin.retry(self.store, self.settings, task_id)

    def ls(self, **filters: Any) -> list[TaskView]:
        """Tasks newest first (``status``, ``queue``, ``limit``, ``after``); records are read
        concurrently, ``admin.LS_THREADS`` at a time."""
        return admin.ls(self.store, **filters)

    def ls_page(self, **filters: Any) -> admin.Page:
        """Like ``ls``, and whether more tasks match after the last one."""
        return admin.ls_page(self.store, **filters)

    def stats(self) -> dict[str, dict[str, int]]:
        return admin.stats(self.store)

    def fleet_stats(self, fresh: bool = False) -> fleetstats.FleetStats | None:
        """The fleet statistics snapshot (1 GET; None if none was written yet), or with
        ``fresh`` one computed now from the indexes (``qo.protocol.fleetstats``), not stored."""
        if fresh:
            return fleetstats.compute(self.store, "fresh")
        return fleetstats.read(self.store)[0]

    def refresh_stats(self, owner: str) -> fleetstats.FleetStats | None:
        """Write a new fleet statistics snapshot if the stored one is stale; called by
        whoever sweeps. Free until ``stats_interval`` has passed in this process since
        its last look, then 1 GET (+ the snapshot's cost when it is stale)."""
        interval = self.settings.stats_interval
        if interval <= 0 or time.monotonic() < self._stats_next:
            return None
        self._stats_next = time.monotonic() + 0.9 * interval
        return fleetstats.refresh(self.store, owner, interval=interval)

    def pause(self, queue: str) -> None:
        admin.pause(self.store, queue)

    def resume(self, queue: str) -> None:
        admin.resume(self.store, queue)

    def fire_schedules(self) -> FireReport:
        """Fire every due schedule once (sweeps, workers and the Lambda sweeper call this).

        The Firer lives on this Queue, so a warm process keeps its etag cache.
        """
        if self._firer is None:
            self._firer = Firer(self.store, self.settings, self.hooks, self.registry)
        return self._firer.fire_due()

    def sweep(self, owner: str = "sweeper", schedules: bool = True) -> sweep.SweepReport:
        """Fire due schedules, promote due tasks, reap expired leases and audit, once."""
        report = sweep.SweepReport()
        if schedules:
            fired = self.fire_schedules()
            report.fired = len(fired.fired) + len(fired.repaired)
            report.next_due = fired.next_slot
            report.errors += fired.errors  # a due slot that could not fire is an error
        now = self.store.now()
        promoted = sweep.promote(self.store, now, hooks=self.hooks)
        reaped = sweep.reap(self.store, self.settings, owner, now, hooks=self.hooks)
        audited = audit.run_audit(self.store, self.settings, owner=owner, now=now,
                                  hooks=self.hooks)
        report.promoted, report.reaped = promoted.promoted, reaped.reaped
        report.repaired = audited.repaired
        report.errors += promoted.errors + reaped.errors + audited.errors
        if promoted.next_due is not None:
            report.next_due = min(promoted.next_due, report.next_due or promoted.next_due)
        return report
