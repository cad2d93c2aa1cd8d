"""Chaos: SIGKILL worker processes at random, and inject store faults.

Short by default so CI stays fast; set ``QO_LONG_TESTS=1`` for the long form
(2,000 tasks, more kills, more faults).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from qo.app import App
from qo.errors import StoreUnavailable
from qo.models import Status
from qo.queue import Queue
from qo.settings import Settings
from qo.store.faulty import FaultyStore
from qo.store.memory import MemoryStore
from qo.worker import Worker, WorkerOptions

from .helpers import wait_for

pytestmark = pytest.mark.slow  # real processes, real time or many examples

LONG = os.environ.get("QO_LONG_TESTS") == "1"
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("app", ["tests.apps.chaos_app:app", "tests.apps.aio_app:app"])
def test_sigkilled_worker_processes_lose_nothing(tmp_path: Path, app: str) -> None:
    n = 2000 if LONG else 300
    url = f"file://{tmp_path / 'store'}"
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    lease = 2.0
    queue = Queue.from_url(url, lease_seconds=lease)
    ids = [h.id for h in queue.submit_many([{"type": "work", "input": {"n": i}}
                                           for i in range(n)])]
    env = {**os.environ, "QO_CHAOS_RUNS": str(runs_dir), "PYTHONPATH": str(ROOT)}
    rng = random.Random(1)

    def spawn() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "tests.chaos_worker", url, str(lease), app],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    procs = [spawn() for _ in range(4)]
    kills = 0
    deadline = time.monotonic() + (600 if LONG else 150)
    try:
        # kill at random while most of the work is still to do
        while time.monotonic() < deadline and len(list(runs_dir.iterdir())) < n * 0.8:
            time.sleep(rng.uniform(0.2, 0.6))  # pacing of the chaos, not synchronisation
            victim = rng.randrange(len(procs))
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait(10)
            procs[victim] = spawn()
            kills += 1
        wait_for(lambda: queue.stats() == {} and all(
            queue.get(i).record.terminal for i in ids[-20:]), timeout=deadline - time.monotonic())
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    runs = Counter(name.split(".")[0] for name in os.listdir(runs_dir))
    assert kills >= 3
    for task_id in ids:
        record = queue.get(task_id).record
        assert record.status == Status.SUCCEEDED, (task_id, record.status)
        # a task that ran more than once had a lease expire in between:
        # every lost run is counted as an attempt by the reaper
        assert runs[task_id] <= record.attempt
        if record.attempt > 1:
            assert record.result["attempt"] == record.attempt


@pytest.mark.parametrize("handler", ["sync", "async"])
def test_random_store_faults_lose_nothing_and_fenced_results_never_win(handler: str) -> None:
    n = 1000 if LONG else 200
    inner = MemoryStore()
    store = FaultyStore(inner, rates={"before": 0.03, "after": 0.03, "slow": 0.03},
                        slow_delay=0.4, seed=3)
    settings = Settings(lease_seconds=0.9, repair_lease_seconds=0.9)
    queue = Queue(store, settings)
    app = App(queue)
    lock = threading.Lock()
    results: dict[str, list[tuple[str, int]]] = {}

    def run_once(ctx) -> dict:
        run = f"{ctx.task_id}:{ctx.attempt}:{threading.get_ident()}:{time.monotonic_ns()}"
        with lock:
            results.setdefault(ctx.task_id, []).append((run, ctx.attempt))
        return {"run": run, "attempt": ctx.attempt}

    async def on_the_loop(ctx, n: int) -> dict:
        return run_once(ctx)

    def in_a_thread(ctx, n: int) -> dict:
        return run_once(ctx)

    app.task(name="job", max_attempts=50, retry={"base": 0.01, "cap": 0.05})(
        on_the_loop if handler == "async" else in_a_thread)

    clean = Queue(inner, settings)
    ids = []
    for i in range(n):
        for _ in range(20):  # a client retries a failed submit with the same key
            try:
                ids.append(queue.submit("job", {"n": i}, key=f"t{i}").id)
                break
            except StoreUnavailable:  # an injected fault: try again, like a client would
                continue
    workers = [Worker(app, queue, WorkerOptions(concurrency=2, poll_max=0.05,
                                                sweep_interval=0.3)) for _ in range(4)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: all(clean.get(i).record.terminal for i in ids),
                 timeout=600 if LONG else 180, interval=0.2)
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(30)
    assert len(set(ids)) == n
    assert len(store.injected) > 50
    for task_id in ids:
        record = clean.get(task_id).record
        assert record.status == Status.SUCCEEDED
        runs = dict(results[task_id])
        # the recorded result is the one of the attempt the record counts
        assert runs[record.result["run"]] == record.attempt == record.result["attempt"]
