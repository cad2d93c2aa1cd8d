"""The fleet scenario's worker processes: one OS process per qo ``Worker`` or buquet worker.

Each process opens its own store (its own HTTP client), warms it, reports
ready, and waits for ``go``. Its handler notes the task and the time it
started, and counts the task on a shared counter when it returns: the parent
watches that counter to know when every task is done. A qo process runs one
``qo.worker.Worker`` with ``concurrency`` slots in burst mode and exits by
itself; a buquet process runs one ``buquet.Worker`` (one task at a time, as
buquet's README shows) until the parent sets ``stop``.

CPU is the process's own user + system time (``time.process_time``, every
thread, the Rust runtime's too) from ``go`` until its worker returned.

Processes come from a forkserver that has imported qo and boto3 once, so a
32-process fleet starts in seconds on two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from bench.backends import BackendSpec, CountingStore, Counts, open_raw_store
from qo.app import App
from qo.queue import Queue
from qo.store.metrics import RequestCounter
from qo.worker import Worker, WorkerOptions

TASK_TYPE = "bench"
BUQUET_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # buquet checks that its bucket is versioned; moto answers GetBucketVersioning
    # with a root element the Rust SDK rejects, so the check is skipped (the
    # bucket *is* versioned, see bench.fleet).
    "BUQUET_ALLOW_NO_VERSIONING": "1",
}

app = App(default_queue="default")
_state: dict[str, Any] = {}  # this process's start log and done counter


@app.task(name=TASK_TYPE, max_attempts=3)
def fleet_task(ctx: Any, seq: int = -1) -> None:
    """The qo handler: note the start, count the task done."""
    _state["starts"].append((ctx.task_id, time.time()))
    _count_done()


def _count_done() -> None:
    done = _state["done"]
    with done.get_lock():
        done.value += 1


def buquet_installed() -> bool:
    try:
        import buquet  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class ProcSpec:
    """What one worker process runs."""

    system: str  # "qo" | "buquet"
    index: int
    concurrency: int
    backend: BackendSpec
    bucket: str = ""  # buquet's bucket
    timeout: float = 300.0  # a hard bound on the run, from go


@dataclass
class ProcResult:
    index: int
    starts: list[tuple[str, float]]
    cpu_seconds: float
    finished_at: float
    errors: list[str] = field(default_factory=list)
    counts: Counts | None = None  # client-side counts (backends not counted on the wire)
    claim_stats: dict[str, int] = field(default_factory=dict)


def _wait_go(spec: ProcSpec, ready: Any, go: Any) -> bool:
    ready.put((spec.index, "ready", ""))
    return bool(go.wait(120))


def qo_main(spec: ProcSpec, ready: Any, go: Any, stop: Any, done: Any, results: Any) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _state.update(starts=[], done=done)
    counts, families = RequestCounter(), RequestCounter()
    try:
        store = open_raw_store(spec.backend)
        if not spec.backend.counted_on_wire:
            store = CountingStore(store, counts, families)
        store.now()  # the clock probe and the HTTP connection, before go
        worker = Worker(app, Queue(store), WorkerOptions(concurrency=spec.concurrency,
                                                         burst=True))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        ready.put((spec.index, "error", repr(exc)))
        return
    if not _wait_go(spec, ready, go):
        return
    errors: list[str] = []

    def run() -> None:
        try:
            worker.run()
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")

    cpu0 = time.process_time()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + spec.timeout
    while thread.is_alive():
        if stop.is_set() or time.monotonic() > deadline:
            if not stop.is_set():
                errors.append(f"timeout after {spec.timeout} s")
            worker.stop()
            thread.join(60)
            break
        thread.join(0.05)
    cpu = time.process_time() - cpu0
    s = worker.claimer.stats
    stats = {k: getattr(s, k) for k in ("lists", "lease_conflicts", "stale", "claims")}
    store.close()
    results.put(ProcResult(spec.index, list(_state["starts"]), cpu, time.time(), errors,
                           Counts(counts.snapshot(), families.snapshot()), stats))


def buquet_main(spec: ProcSpec, ready: Any, go: Any, stop: Any, done: Any,
                results: Any) -> None:
    for k, v in BUQUET_ENV.items():
        os.environ.setdefault(k, v)
    starts: list[tuple[str, float]] = []
    errors: list[str] = []
    cpu = [0.0]

    async def main() -> None:
        import buquet

        try:
            q = await buquet.connect(endpoint=spec.backend.endpoint, bucket=spec.bucket,
                                     region="us-east-1")
            await q.now()  # the clock object and the connection, before go
            worker = buquet.Worker(q, f"bench-{spec.index}-{os.getpid()}", q.all_shards())

            @worker.task(TASK_TYPE)
            async def handler(inp: Any) -> dict[str, Any]:
                starts.append((str(inp["seq"]), time.time()))
                with done.get_lock():
                    done.value += 1
                return {}
        except Exception as exc:  # noqa: BLE001
            ready.put((spec.index, "error", repr(exc)))
            return
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, _wait_go, spec, ready, go):
            return
        cpu0 = time.process_time()
        task = asyncio.ensure_future(worker.run())
        deadline = time.monotonic() + spec.timeout
        while not stop.is_set() and not task.done():
            if time.monotonic() > deadline:
                errors.append(f"timeout after {spec.timeout} s")
                break
            await asyncio.sleep(0.02)
        if task.done() and task.exception() is not None:
            errors.append(repr(task.exception()))
        task.cancel()  # buquet's run() has no burst mode; cancelling stops it
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 10)
        cpu[0] = time.process_time() - cpu0

    try:
        asyncio.run(main())
    except Exception as exc:  # noqa: BLE001
        errors.append(f"{type(exc).__name__}: {exc}")
    results.put(ProcResult(spec.index, starts, cpu[0], time.time(), errors))


class ProcessFleet:
    """Start worker processes, wait until ready, release, watch the done counter, collect.

    Use as a context manager: leaving it terminates whatever is still running.
    """

    def __init__(self, specs: list[ProcSpec]) -> None:
        self.specs = specs
        ctx = mp.get_context("forkserver")
        with contextlib.suppress(ValueError, RuntimeError):
            ctx.set_forkserver_preload(["bench.fleet_procs"])
        self._ctx = ctx
        self._ready: Any = ctx.Queue()
        self._results: Any = ctx.Queue()
        self.go: Any = ctx.Event()
        self.stop: Any = ctx.Event()
        self.done: Any = ctx.Value("i", 0)
        self._procs: list[Any] = []
        self.started_at = 0.0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def start(self, timeout: float = 180.0) -> None:
        for spec in self.specs:
            target = qo_main if spec.system == "qo" else buquet_main
            p = self._ctx.Process(target=target, daemon=True, args=(
                spec, self._ready, self.go, self.stop, self.done, self._results))
            p.start()
            self._procs.append(p)
        deadline = time.monotonic() + timeout
        waiting = len(self.specs)
        while waiting:
            try:
                _, what, detail = self._ready.get(timeout=0.5)
            except queue_mod.Empty:
                dead = [p.exitcode for p in self._procs if p.exitcode is not None]
                if dead:
                    raise RuntimeError(f"a worker process exited at start: {dead[0]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("worker processes did not get ready in time") from None
                continue
            if what != "ready":
                raise RuntimeError(f"a worker process failed to start: {detail}")
            waiting -= 1

    def release(self) -> float:
        self.started_at = time.time()
        self.go.set()
        return self.started_at

    def wait_done(self, tasks: int, timeout: float, marks: tuple[float, ...] = (0.1, 0.9),
                  on_mark: Callable[[], Any] | None = None,
                  ) -> tuple[float | None, list[tuple[float, int, Any]]]:
        """Poll the done counter every 10 ms until ``tasks`` are done (time.time()),
        or None at the timeout; and (time, done, ``on_mark()``) when the counter passed
        each mark (the request counts then, for the steady window's cost)."""
        deadline = time.monotonic() + timeout
        points: list[tuple[float, int, Any]] = []
        pending = list(marks)
        while time.monotonic() < deadline:
            n = self.done.value
            now = time.time()
            while pending and n >= pending[0] * tasks:
                points.append((now, n, on_mark() if on_mark is not None else None))
                pending.pop(0)
            if n >= tasks:
                return now, points
            if not any(p.is_alive() for p in self._procs):
                return None, points
            time.sleep(0.01)
        return None, points

    def collect(self, timeout: float) -> list[ProcResult]:
        """Tell every process to stop (qo ones have usually exited), gather their results."""
        self.stop.set()
        results: list[ProcResult] = []
        deadline = time.monotonic() + timeout
        while len(results) < len(self.specs) and time.monotonic() < deadline:
            try:
                results.append(self._results.get(timeout=0.5))
            except queue_mod.Empty:
                if not any(p.is_alive() for p in self._procs) and self._results.empty():
                    break
        for p in self._procs:
            p.join(10)
        return results

    def kill(self) -> None:
        for p in self._procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
