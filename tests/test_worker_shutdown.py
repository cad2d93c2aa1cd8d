"""`qo worker` as a real process: every way it stops ends with a documented exit code.

Three handlers that do not stop when told to (one ignores ``ctx.cancelled``
and wakes every 200 ms, one wakes every 10 ms, one is blocked in
``time.sleep``) are left running by a timeout in ``--burst`` and by SIGTERM
past ``--grace``. Before the fix the process could abort at interpreter
shutdown (SIGABRT, exit 134); now it exits ``EXIT_ABANDONED`` after every
write has settled, and 0 after a clean drain.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from qo.models import Status
from qo.queue import Queue
from qo.shutdown import EXIT_ABANDONED

from .helpers import wait_for

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.apps.stubborn_app:app"
HANDLERS = ["ignores", "wakes", "blocked"]


def worker_cmd(url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qo", "--queue", url, "worker", "--app", APP,
            "--concurrency", "1", "--cancel-wait", "0.2", *extra]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.mark.parametrize("handler", HANDLERS)
def test_burst_after_a_timeout_exits_with_the_abandoned_code(tmp_path: Path, handler: str) -> None:
    url = f"file://{tmp_path / 'store'}"
    queue = Queue.from_url(url)
    # Submitted without the app: the worker applies the handler's timeout=0.5 itself.
    task = queue.submit(f"timed_{handler}", {"seconds": 60})
    done = run(worker_cmd(url, "--burst"))
    assert done.returncode == EXIT_ABANDONED, done.stderr
    assert "Traceback" not in done.stderr
    assert "1 handler(s) were still running" in done.stderr
    view = queue.get(task.id)
    assert view.status == Status.DEAD  # max_attempts=1, also declared only on the handler
    assert view.record.error is not None and view.record.error.type == "TaskTimeout"
    assert view.record.max_attempts == 1 and view.record.timeout == 0.5
    assert list(queue.store.list("leases/")) == []
    assert list(queue.store.list("workers/")) == []


@pytest.mark.parametrize("handler", HANDLERS)
def test_sigterm_past_grace_hands_back_and_exits_with_the_abandoned_code(
    tmp_path: Path, handler: str
) -> None:
    url = f"file://{tmp_path / 'store'}"
    queue = Queue.from_url(url)
    task = queue.submit(handler, {"seconds": 60})
    proc = subprocess.Popen(worker_cmd(url, "--grace", "0.2"), cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: queue.get(task.id).status == Status.RUNNING, timeout=60, interval=0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == EXIT_ABANDONED, err
    assert "Traceback" not in err
    assert "1 released" in out
    view = queue.get(task.id)
    assert view.status == Status.PENDING and view.record.attempt == 0
    assert list(queue.store.list("leases/")) == []
    assert list(queue.store.list("workers/")) == []


def test_a_clean_drain_exits_zero(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    queue = Queue.from_url(url)
    ids = [queue.submit("quick", {"n": n}).id for n in range(3)]
    done = run(worker_cmd(url, "--burst"))
    assert done.returncode == 0, done.stderr
    assert "processed 3: 3 succeeded" in done.stdout
    assert [queue.get(i).record.result for i in ids] == [1, 2, 3]


EMBEDDED = """
import sys
from qo.queue import Queue
from qo.worker import Worker, WorkerOptions
from tests.apps.stubborn_app import app

app.use(Queue.from_url(sys.argv[1]))
app.submit("timed_wakes", {"seconds": 60})
summary = Worker(app, options=WorkerOptions(concurrency=1, burst=True, cancel_wait=0.2)).run()
print("abandoned", summary.abandoned)
"""


def test_a_program_embedding_the_worker_exits_normally_under_a_lingering_handler(
    tmp_path: Path,
) -> None:
    """No os._exit here: the handler thread must not carry pydantic-core frames."""
    script = tmp_path / "embed.py"
    script.write_text(EMBEDDED)
    done = run([sys.executable, str(script), f"file://{tmp_path / 'store'}"])
    assert done.returncode == 0, done.stderr
    assert "abandoned 1" in done.stdout


def test_a_signal_that_lands_while_the_main_thread_holds_the_stop_lock_cannot_deadlock() -> None:
    """A signal handler runs in the main thread, between any two bytecodes: if it took a
    lock (``Event.set``, logging) that the interrupted code held, it would wait forever."""
    import threading

    from qo.app import App
    from qo.store.memory import MemoryStore
    from qo.worker import Worker

    worker = Worker(App(Queue(MemoryStore())))
    previous = signal.getsignal(signal.SIGTERM)
    worker._install_signals()
    done, stuck = threading.Event(), []
    lock = worker._stop._cond  # what the main thread holds inside Event.wait/is_set

    def unjam() -> None:  # a hang detector, not a timing bound: an append takes microseconds
        if not done.wait(30):
            stuck.append(True)
            lock.release()

    guard = threading.Thread(target=unjam)
    try:
        with lock:
            guard.start()
            signal.raise_signal(signal.SIGTERM)  # the handler runs here, lock held
            done.set()
    except RuntimeError:  # released by the guard: the handler had blocked
        pass
    finally:
        done.set()
        guard.join()
        signal.signal(signal.SIGTERM, previous)
    assert not stuck, "the signal handler waited for a lock the main thread held"
    worker._handle_signals()
    assert worker._stop.is_set()
