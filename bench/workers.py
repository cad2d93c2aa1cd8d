"""Groups of qo workers, in worker processes (or threads for the memory store).

A *worker* here is one ``qo.worker.Worker`` with its own store (its own boto3
client and HTTP pool). The ``independent`` layout gives each of k workers
concurrency 1, so k claimers compete as k machines (or k Lambda invocations)
would; the ``shared`` layout runs one Worker per process with concurrency
k / processes, whose threads share one listing. Workers are spread over
processes because one Python process cannot drive many boto3 clients (the
GIL): botocore costs ~2 ms of CPU per request.

Every process builds its workers, warms each store (the clock probe, the
HTTP connection), reports ready, then waits for ``go``: the parent times from
``go`` until every worker has returned (burst mode) or until it sets ``stop``.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue as queue_mod
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.backends import Backend, BackendSpec, CountingStore, Counts, open_raw_store
from qo.app import App
from qo.queue import Queue
from qo.store.metrics import RequestCounter
from qo.worker import Worker, WorkerOptions

TASK_TYPE = "bench"

_lock = threading.Lock()
_starts: list[tuple[str, float, float]] = []  # (task id, start time, submit time)

app = App(default_queue="default")


@app.task(name=TASK_TYPE, max_attempts=3)
def bench_task(ctx: Any, t: float = 0.0, sleep: float = 0.0) -> None:
    """The benchmark handler: note when it started; optionally sleep."""
    started = time.time()
    with _lock:
        _starts.append((ctx.task_id, started, t))
    if sleep:
        time.sleep(sleep)


def take_starts() -> list[tuple[str, float, float]]:
    with _lock:
        out = list(_starts)
        _starts.clear()
    return out


@dataclass
class GroupSpec:
    """What one process runs: ``workers`` Workers, each with ``concurrency`` slots."""

    workers: int
    concurrency: int = 1
    burst: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # more WorkerOptions
    timeout: float = 600.0  # a hard bound on the whole group


@dataclass
class GroupResult:
    starts: list[tuple[str, float, float]]
    claim_stats: dict[str, int]
    summary: dict[str, int]
    counts: Counts
    finished_at: float
    errors: list[str]
    cpu_seconds: float = 0.0


def group_main(
    spec: BackendSpec, group: GroupSpec, ready: Any, go: Any, stop: Any, results: Any,
    counters: tuple[RequestCounter, RequestCounter] | None = None,
) -> None:
    """Body of a worker process (or thread): build, report ready, run, report results."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    counts, families = counters or (RequestCounter(), RequestCounter())
    errors: list[str] = []
    workers: list[Worker] = []
    try:
        for _ in range(group.workers):
            store = open_raw_store(spec)
            if not spec.counted_on_wire:
                store = CountingStore(store, counts, families)
            store.now()  # the clock probe (not an object request), connection warm-up
            opts = WorkerOptions(concurrency=group.concurrency, burst=group.burst,
                                 **group.options)
            workers.append(Worker(app, Queue(store), opts))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        ready.put(("error", repr(exc)))
        return
    take_starts()
    ready.put(("ready", len(workers)))
    if not go.wait(120):
        ready.put(("error", "no go within 120 s"))
        return

    def run(w: Worker) -> None:
        try:
            w.run()
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")

    cpu0 = time.process_time()
    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + group.timeout
    while any(t.is_alive() for t in threads):
        if stop.is_set() or time.monotonic() > deadline:
            if not stop.is_set():
                errors.append(f"timeout after {group.timeout} s")
            for w in workers:
                w.stop()
            for t in threads:
                t.join(60)
            break
        time.sleep(0.01)
    finished = time.time()
    cpu = time.process_time() - cpu0
    stats: dict[str, int] = {}
    summary: dict[str, int] = {}
    for w in workers:
        s = w.claimer.stats
        for k in ("lists", "lease_conflicts", "stale", "claims"):
            stats[k] = stats.get(k, 0) + getattr(s, k)
        for k, v in asdict(w.summary).items():
            summary[k] = summary.get(k, 0) + v
        w.store.close()
    results.put(GroupResult(take_starts(), stats, summary,
                            Counts(counts.snapshot(), families.snapshot()), finished, errors,
                            cpu))


@dataclass
class RunResult:
    started_at: float  # when ``go`` was given (time.time())
    seconds: float  # from go until every group returned
    starts: list[tuple[str, float, float]]
    claim_stats: dict[str, int]
    summary: dict[str, int]
    errors: list[str]
    cpu_seconds: list[float] = field(default_factory=list)  # per worker process


def layout_groups(k: int, layout: str, procs: int, burst: bool,
                  options: dict[str, Any] | None = None, timeout: float = 600.0
                  ) -> list[GroupSpec]:
    """Split k workers (or slots) over at most ``procs`` processes."""
    options = options or {}
    n = max(1, min(k, procs))
    sizes = [k // n + (1 if i < k % n else 0) for i in range(n)]
    if layout == "shared":
        return [GroupSpec(1, s, burst, options, timeout) for s in sizes]
    return [GroupSpec(s, 1, burst, options, timeout) for s in sizes]


class WorkerFleet:
    """Start groups, wait until they are ready, release them, collect results."""

    def __init__(self, backend: Backend, groups: list[GroupSpec]) -> None:
        self.backend = backend
        self.groups = groups
        self._procs: list[Any] = []
        if backend.in_process:
            self._ready: Any = queue_mod.Queue()
            self._results: Any = queue_mod.Queue()
            self.go: Any = threading.Event()
            self.stop: Any = threading.Event()
        else:
            ctx = mp.get_context("spawn")
            self._ready = ctx.Queue()
            self._results = ctx.Queue()
            self.go = ctx.Event()
            self.stop = ctx.Event()
            self._ctx = ctx
        self.started_at = 0.0

    def start(self, timeout: float = 180.0) -> None:
        spec = self.backend.spec
        for group in self.groups:
            if self.backend.in_process:
                counters = (self.backend.client_counts, self.backend.client_families)
                p: Any = threading.Thread(
                    target=group_main, daemon=True,
                    args=(spec, group, self._ready, self.go, self.stop, self._results, counters))
            else:
                p = self._ctx.Process(
                    target=group_main, daemon=True,
                    args=(spec, group, self._ready, self.go, self.stop, self._results))
            p.start()
            self._procs.append(p)
        deadline = time.monotonic() + timeout
        for _ in self.groups:
            try:
                what, detail = self._ready.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue_mod.Empty:
                self.kill()
                raise RuntimeError("worker processes did not get ready in time") from None
            if what != "ready":
                self.kill()
                raise RuntimeError(f"a worker process failed to start: {detail}")

    def release(self) -> float:
        self.started_at = time.time()
        self.go.set()
        return self.started_at

    def collect(self, timeout: float) -> RunResult:
        """Wait for every group (bounded), then merge what they report."""
        t0 = time.monotonic()
        results: list[GroupResult] = []
        deadline = t0 + timeout
        while len(results) < len(self.groups):
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop.set()
                left = 90.0  # groups stop their workers and still report
                deadline = time.monotonic() + left
            try:
                results.append(self._results.get(timeout=min(left, 1.0)))
            except queue_mod.Empty:
                if not any(_alive(p) for p in self._procs) and self._results.empty():
                    break
        ended = max((r.finished_at for r in results), default=time.time())
        for p in self._procs:
            p.join(30)
        self.kill()
        merged = RunResult(self.started_at, ended - self.started_at, [], {}, {}, [])
        for r in results:
            merged.starts += r.starts
            merged.errors += r.errors
            merged.cpu_seconds.append(round(r.cpu_seconds, 2))
            for k, v in r.claim_stats.items():
                merged.claim_stats[k] = merged.claim_stats.get(k, 0) + v
            for k, v in r.summary.items():
                merged.summary[k] = merged.summary.get(k, 0) + v
            self.backend.absorb(r.counts)
        if len(results) < len(self.groups):
            merged.errors.append(f"{len(self.groups) - len(results)} worker group(s) lost")
        return merged

    def kill(self) -> None:
        for p in self._procs:
            if isinstance(p, threading.Thread):
                continue
            if p.is_alive():
                p.terminate()
                p.join(5)


def _alive(p: Any) -> bool:
    return p.is_alive()
