"""The ``aio`` scenario: an I/O-bound async handler (``await asyncio.sleep(0.1)``).

One worker in this process runs it at each concurrency (1, 10, 200 by
default) until the queue is drained (``--burst``); the scenario reports
tasks per second, this process's CPU per task (the worker's; the moto
server's CPU is its own) and the most threads the process had at once:
async handlers run on the worker's one event loop, so the thread count
must stay flat while the concurrency grows.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from bench.backends import Backend
from bench.scenarios import log, per_unit
from qo.app import App
from qo.queue import Queue
from qo.worker import Worker, WorkerOptions

SLEEP = 0.1  # seconds each task awaits


def _app(queue: Queue) -> App:
    app = App(queue)

    @app.task
    async def nap() -> None:
        await asyncio.sleep(SLEEP)

    return app


def one(backend: Backend, concurrency: int, tasks: int, timeout: float) -> dict[str, Any]:
    backend.fresh()
    queue = Queue(backend.store())
    app = _app(queue)
    for start in range(0, tasks, 100):
        queue.submit_many([{"type": "nap"} for _ in range(start, min(tasks, start + 100))])
    before = backend.snapshot()
    peak, stop = [threading.active_count()], threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], threading.active_count())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    worker = Worker(app, queue, WorkerOptions(concurrency=concurrency, burst=True, poll_max=0.2,
                                              grace=timeout))
    cpu, wall = os.times(), time.perf_counter()
    summary = worker.run()
    seconds = time.perf_counter() - wall
    used = os.times()
    stop.set()
    sampler.join()
    cpu_s = (used.user - cpu.user) + (used.system - cpu.system)
    made = backend.snapshot() - before
    row = {
        "concurrency": concurrency, "tasks": tasks, "succeeded": summary.succeeded,
        "seconds": round(seconds, 2), "tasks_per_s": round(summary.succeeded / seconds, 1),
        "ideal_tasks_per_s": round(concurrency / SLEEP, 1),
        "cpu_ms_per_task": round(cpu_s / max(1, summary.succeeded) * 1000, 2),
        "threads_peak": peak[0] - 1,  # without the sampler
        "per_task": per_unit(made.kinds, max(1, summary.succeeded)),
        "ok": summary.succeeded == tasks,
    }
    log(f"aio: concurrency {concurrency}: {row['tasks_per_s']} tasks/s "
        f"(ideal {row['ideal_tasks_per_s']}), {row['cpu_ms_per_task']} ms CPU per task, "
        f"{row['threads_peak']} threads at most")
    return row


def run(backend: Backend, concurrencies: list[int], rounds: int, timeout: float) -> list[dict]:
    """``rounds`` waves of tasks per concurrency (at least 20 tasks)."""
    return [one(backend, c, max(20, c * rounds), timeout) for c in concurrencies]
