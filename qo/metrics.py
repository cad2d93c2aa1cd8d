"""Worker metrics for Prometheus (``qo worker --metrics-port``; the ``metrics`` extra).

Three sources, none of which adds a store request:

- lifecycle events (``qo.hooks``) of the claims this worker holds: tasks by
  outcome, run and wait times, lease renewals and losses, claims and claim
  conflicts;
- the store's requests, seen by ``qo.store.observed.Observed`` around the
  queue's store: by operation and outcome (412s and 5xx included), with
  their latency;
- the worker's state, read at scrape time: slots busy and idle, draining,
  store up.

Each ``WorkerMetrics`` has a registry of its own (never prometheus_client's
global one), so that several workers in one process, or tests, never
collide. Labels are bounded: queue, task type, operation, outcome; never a
task id. docs/operations.md lists every name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from qo.errors import ConfigError
from qo.hooks import Event, Kind
from qo.store.base import Store
from qo.store.observed import Observed

if TYPE_CHECKING:
    from qo.worker import Worker

#: What the extra is called, for the message when it is missing.
INSTALL = "pip install 'qo-queue[metrics]'"

#: Seconds; tasks run from milliseconds to hours.
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0, 600.0, 1800.0, 3600.0)
#: Seconds; a store request takes milliseconds, a slow one seconds.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0)

#: qo_tasks_total's outcome label, per event (``started`` is the claim).
OUTCOME_OF = {
    Kind.CLAIMED: "started",
    Kind.SUCCEEDED: "succeeded",
    Kind.RETRYING: "retried",
    Kind.DEAD: "dead",
    Kind.RELEASED: "released",
}
_RUN_OVER = (Kind.SUCCEEDED, Kind.RETRYING, Kind.DEAD)
_KINDS = (*OUTCOME_OF, Kind.FENCED, Kind.CLAIM_CONFLICT, Kind.LEASE_RENEWED, Kind.LEASE_LOST)


def prometheus() -> Any:
    """The ``prometheus_client`` module, or a one-line ``ConfigError`` saying how to get it."""
    try:
        return importlib.import_module("prometheus_client")
    except ImportError:
        raise ConfigError(f"worker metrics need the metrics extra: {INSTALL}") from None


class WorkerMetrics:
    """The metrics of one worker, in a registry of their own; thread-safe.

    Use: ``queue.store = m.observe_store(queue.store)`` before building the
    ``Worker`` (so that every request of it is seen), then ``m.attach(worker)``
    for as long as it runs, and ``m.serve(host, port)`` or ``m.exposition()``.
    """

    def __init__(self) -> None:
        pc = prometheus()
        self._pc = pc
        self.registry = pc.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks = pc.Counter(
            "qo_tasks", "Task attempts by outcome: started (claimed), succeeded, retried "
            "(failed, retry due), dead (failed, no retry left), released, fenced, cancelled.",
            ["queue", "type", "outcome"], registry=r)
        self.run_seconds = pc.Histogram(
            "qo_task_run_seconds", "From claim to recorded outcome, per attempt (store clock).",
            ["queue", "type"], buckets=TASK_BUCKETS, registry=r)
        self.wait_seconds = pc.Histogram(
            "qo_task_wait_seconds", "From ready (submitted, or its delay or retry backoff over) "
            "to claimed.", ["queue", "type"], buckets=TASK_BUCKETS, registry=r)
        self.claims = pc.Counter("qo_claims", "Tasks claimed (run lease taken).", ["queue"],
                                 registry=r)
        self.conflicts = pc.Counter(
            "qo_claim_conflicts", "Claims lost to another worker (run lease PUT answered 412).",
            ["queue"], registry=r)
        self.renewals = pc.Counter("qo_lease_renewals", "Run lease renewals that succeeded.",
                                   ["queue"], registry=r)
        self.lost = pc.Counter(
            "qo_leases_lost", "Run leases lost while the task ran (taken over, or expired "
            "during a store outage).", ["queue"], registry=r)
        self.requests = pc.Counter(
            "qo_store_requests", "Store requests by operation (get, head, put, delete, list "
            "page) and outcome (ok, missing, precondition_failed, unavailable, error).",
            ["operation", "outcome"], registry=r)
        self.request_seconds = pc.Histogram(
            "qo_store_request_seconds", "Store request latency, client retries included.",
            ["operation"], buckets=REQUEST_BUCKETS, registry=r)
        self._state = _WorkerState(importlib.import_module("prometheus_client.core"))
        r.register(self._state)
        pc.ProcessCollector(registry=r)
        self._detach: list[Callable[[], None]] = []

    # -- sources ---------------------------------------------------------------

    def observe_store(self, store: Store) -> Store:
        """``store``, wrapped so that every request is counted (``qo.store.observed``)."""
        return Observed(store, self.store_request)

    def store_request(self, operation: str, outcome: str, seconds: float) -> None:
        self.requests.labels(operation, outcome).inc()
        self.request_seconds.labels(operation).observe(seconds)

    def attach(self, worker: Worker) -> Callable[[], None]:
        """Count ``worker``'s events and report its state until the returned call."""
        self._state.worker = worker

        def receive(event: Event) -> None:
            if event.detail.get("worker") == worker.id:
                self.record(event)

        disconnect = worker.hooks.connect(receive, *_KINDS)

        def detach() -> None:
            disconnect()
            self._state.worker = None

        return detach

    def record(self, event: Event) -> None:
        """Count one lifecycle event of this worker's claims."""
        queue, task_type, kind = event.queue or "", event.task_type or "", event.kind
        d = event.detail
        if kind is Kind.CLAIM_CONFLICT:
            self.conflicts.labels(queue).inc()
            return
        if kind is Kind.LEASE_RENEWED:
            self.renewals.labels(queue).inc()
            return
        if kind is Kind.LEASE_LOST:
            self.lost.labels(queue).inc()
            return
        if kind is Kind.FENCED:
            outcome = "cancelled" if d.get("cancelled") else "fenced"
        else:
            outcome = OUTCOME_OF[kind]
        self.tasks.labels(queue, task_type, outcome).inc()
        if kind is Kind.CLAIMED:
            self.claims.labels(queue).inc()
            if "waited" in d:
                self.wait_seconds.labels(queue, task_type).observe(float(d["waited"]))
        elif kind in _RUN_OVER and "seconds" in d:
            self.run_seconds.labels(queue, task_type).observe(float(d["seconds"]))

    # -- exposition --------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The metrics as the Prometheus text (or OpenMetrics, if ``accept`` asks): body,
        content type."""
        exposition = importlib.import_module("prometheus_client.exposition")
        encoder, content_type = exposition.choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def serve(self, host: str, port: int) -> MetricsServer:
        """Serve ``/metrics`` on ``host:port`` (port 0: any free one) in a daemon thread,
        with prometheus_client's own server."""
        server, thread = self._pc.start_http_server(port, addr=host, registry=self.registry)
        return MetricsServer(server, thread)


class MetricsServer:
    """prometheus_client's server for one registry; ``close`` stops it."""

    def __init__(self, server: Any, thread: Any) -> None:
        self._server, self._thread = server, thread
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class _WorkerState:
    """A collector read at scrape time: the attached worker's slots and state."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self.worker: Worker | None = None

    def describe(self) -> Iterator[Any]:
        return iter(())  # no fixed description: families come and go with the worker

    def collect(self) -> Iterator[Any]:
        worker = self.worker
        if worker is None:
            return
        core = self._core
        busy = len(worker.runner.running())
        slots = core.GaugeMetricFamily(
            "qo_worker_slots", "Task slots of this worker (its concurrency), busy or idle.",
            labels=["state"])
        slots.add_metric(["busy"], busy)
        slots.add_metric(["idle"], max(0, worker.options.concurrency - busy))
        yield slots
        yield core.GaugeMetricFamily("qo_worker_draining",
                                     "1 once the worker is stopping (claims no more tasks).",
                                     value=int(worker.stopping))
        yield core.GaugeMetricFamily("qo_store_up",
                                     "0 while the worker's store requests fail, else 1.",
                                     value=int(not worker.health.down))
