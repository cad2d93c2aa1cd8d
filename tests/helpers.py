"""Shared test helpers of qo's own tests.

The fake clock and the deterministic driver are public now (``qo.testing``,
for users' tests too); they are re-exported here for the tests that import
them from this module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from qo.testing.clock import ClockedStore, FakeClock
from qo.testing.drain import all_terminal, drain

__all__ = ["ClockedStore", "FakeClock", "Runs", "all_terminal", "api_call", "drain",
           "sigterm_when_ready", "start_qo", "wait_for"]

ROOT = Path(__file__).resolve().parent.parent


def start_qo(*args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Run ``python -m qo ARGS`` from the project root; its stderr lines are collected,
    as they come, into the list returned beside the process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "qo", *args], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")),
                              daemon=True)  # type: ignore[union-attr]
    reader.start()
    return proc, lines


class Runs:
    """Counts handler executions per task id, thread-safely."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def hit(self, task_id: str) -> None:
        with self._lock:
            self.counts[task_id] += 1


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.01) -> None:
    """Poll with a deadline (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


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


def api_call(method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    """Call the HTTP API handler with a Function URL event; (status, JSON body), never a traceback."""
    import json

    from qo.serverless import api

    event: dict[str, Any] = {"requestContext": {"http": {"method": method, "path": path}},
                             "rawPath": path}
    if body is not None:
        event["body"] = json.dumps(body)
    response = api.handler(event)
    assert "Traceback" not in response["body"]
    return response["statusCode"], json.loads(response["body"])
