"""Handlers that do not stop when told to, for the worker's shutdown tests.

None of them declares a timeout: the tests submit with ``Queue.submit`` (no
app), and ``timed_*`` variants declare one on ``@app.task`` so that the
worker must apply it itself.
"""

from __future__ import annotations

import threading
import time

from qo.app import App

app = App()


def _ignore(seconds: float) -> str:
    """Wakes every 200 ms and never looks at ctx.cancelled."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        threading.Event().wait(0.2)
    return "ignored"


def _wake(seconds: float) -> str:
    """Wakes every 10 ms (the pattern that aborted the process at exit)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
    return "woke"


def _block(seconds: float) -> str:
    """One long C call."""
    time.sleep(seconds)
    return "blocked"


for name, fn in [("ignores", _ignore), ("wakes", _wake), ("blocked", _block)]:
    app.task(name=name, max_attempts=1)(fn)
    app.task(name=f"timed_{name}", max_attempts=1, timeout=0.5)(fn)


@app.task
def quick(n: int) -> int:
    return n + 1
