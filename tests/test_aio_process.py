"""`qo worker` with async handlers as a real process: SIGTERM drains, then hands back."""

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

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def _worker(url: str, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "qo", "--queue", url, "worker", "--app",
           "tests.apps.aio_app:app", "--concurrency", "50", "--cancel-wait", "0.5", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _until(proc: subprocess.Popen[str], text: str) -> None:
    """Read the worker's log until a line holds ``text`` (bounded by the test timeout);
    ``" started"`` waits for a task's ``task_started`` line, not the worker's."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if text in line and not (text == " started" and "worker " in line):
            return
    raise AssertionError(f"the worker exited before logging {text!r}")


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait for the worker to exit (killed if it hangs, and the test fails)."""
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out, err


def test_sigterm_lets_running_async_tasks_finish_within_the_grace(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    queue = Queue.from_url(url)
    gate = tmp_path / "gate"
    handles = [queue.submit("gated", {"gate": str(gate)}) for _ in range(3)]
    proc = _worker(url, "--grace", "120")
    try:
        for _ in handles:
            _until(proc, " started")
        proc.send_signal(signal.SIGTERM)
        _until(proc, "stopping")
        gate.touch()  # only now may they finish: the worker drains
    finally:
        code, out, err = _finish(proc)
    assert code == 0, err
    assert "processed 3: 3 succeeded" in out
    assert [h.result(timeout=5) for h in handles] == ["opened"] * 3


def test_sigterm_past_the_grace_hands_async_tasks_back(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    queue = Queue.from_url(url)
    handles = [queue.submit("gated", {"gate": str(tmp_path / "never")}) for _ in range(3)]
    proc = _worker(url, "--grace", "0.2")
    try:
        for _ in handles:
            _until(proc, " started")
        proc.send_signal(signal.SIGTERM)
    finally:
        code, out, err = _finish(proc)
    assert code == 0, err  # cancelled coroutines returned: nothing is abandoned
    assert "Traceback" not in err and "3 released" in out
    for h in handles:
        view = queue.get(h.id)
        assert view.status == Status.PENDING and view.record.attempt == 0
    assert list(queue.store.list("leases/")) == []


def test_a_coroutine_that_ignores_its_cancellation_is_abandoned(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    queue = Queue.from_url(url)
    handle = queue.submit("stubborn", {"seconds": 60})
    proc = _worker(url, "--grace", "0.2")
    try:
        _until(proc, " started")
        proc.send_signal(signal.SIGTERM)
    finally:
        code, out, err = _finish(proc)
    assert code == EXIT_ABANDONED, err
    assert "Traceback" not in err and "1 released" in out
    assert "1 handler(s) were still running" in err
    assert queue.get(handle.id).status == Status.PENDING
