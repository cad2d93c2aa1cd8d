"""Shared test helpers: a controllable clock and a deterministic driver."""

from __future__ import annotations

import threading
import time
from collections import Counter

from qo.app import App
from qo.models import TERMINAL
from qo.queue import Queue
from qo.worker import Worker, WorkerOptions


class FakeClock:
    """A store clock tests move by hand (leases and delays use the store's clock)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class Runs:
    """Counts handler executions per task id, thread-safely."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def hit(self, task_id: str) -> None:
        with self._lock:
            self.counts[task_id] += 1


def all_terminal(queue: Queue, ids: list[str]) -> bool:
    return all(queue.get(i).record.status in TERMINAL for i in ids)


def drain(
    queue: Queue,
    app: App,
    ids: list[str],
    clock: FakeClock | None = None,
    max_rounds: int = 200,
    worker: Worker | None = None,
) -> int:
    """Run tasks one by one in this thread, sweeping and moving the clock when stuck.

    Returns the number of rounds used; fails the test if tasks never finish.
    """
    worker = worker or Worker(app, queue, WorkerOptions(concurrency=1))
    for rounds in range(max_rounds):
        while worker.run_once():
            pass
        if all_terminal(queue, ids):
            return rounds
        queue.sweep()
        worker.claimer.forget()
        if not worker.run_once() and clock is not None:
            clock.advance(queue.settings.lease_seconds + 1)
            queue.sweep()
        worker.claimer.forget()
    raise AssertionError(
        "tasks did not finish: "
        + str({i: queue.get(i).status.value for i in ids if queue.get(i).record.status not in TERMINAL})
    )


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.01) -> None:
    """Poll with a deadline (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


class ClockedStore:
    """Any store, with its clock replaced by a controllable one."""

    def __init__(self, inner, clock: FakeClock) -> None:
        self.inner = inner
        self.clock = clock
        self.url = inner.url

    def now(self) -> float:
        return self.clock()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def sigterm_when_ready(cmd: list[str], env: dict[str, str], ready: str, cwd) -> tuple[int, str, str]:
    """Start ``cmd``, wait for ``ready`` on its stderr, SIGTERM it; (code, out, err)."""
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # bounded by the test timeout
            if ready in line:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return proc.returncode, out, err
