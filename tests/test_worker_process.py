"""`qo worker` as a real process: SIGTERM stops it gracefully."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from qo.models import Status
from qo.queue import Queue

from .helpers import wait_for

pytestmark = pytest.mark.slow  # real processes, real time or many examples

ROOT = Path(__file__).resolve().parent.parent


def test_sigterm_releases_running_tasks_and_exits_cleanly(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    queue = Queue.from_url(url)
    slow = queue.submit("slow", {"seconds": 120})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qo", "--queue", url, "worker", "--app",
         "tests.apps.demo_app:app", "--concurrency", "1", "--grace", "0.5",
         "--log-format", "json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: queue.get(slow.id).status == Status.RUNNING, timeout=60, interval=0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "1 released" in out
    assert '"event": "task_released"' in err or '"event":"task_released"' in err
    view = queue.get(slow.id)
    assert view.status == Status.PENDING and view.record.attempt == 0
    assert list(queue.store.list("leases/")) == []
    assert list(queue.store.list("workers/")) == []
