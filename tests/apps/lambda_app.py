"""The App the Lambda handler tests load with ``QO_APP=tests.apps.lambda_app:app``.

Every handler counts its runs in ``RUNS`` (by task id), so tests can prove
that duplicate or reordered events never run a task twice. ``ctx`` is left
unannotated: the handler's arguments are validated by pydantic, which cannot
build a schema for ``Context``.
"""

from __future__ import annotations

import threading
from collections import Counter

from qo.app import App
from qo.context import Context

app = App()

RUNS: Counter[str] = Counter()
_lock = threading.Lock()


def _hit(ctx: Context) -> None:
    with _lock:
        RUNS[ctx.task_id] += 1


@app.task
def add(ctx, x: int, y: int) -> int:
    _hit(ctx)
    return x + y


@app.task(timeout=30)
def bounded(ctx) -> str:
    """Declares 30 s but returns at once: only the declared timeout matters for the budget."""
    _hit(ctx)
    return "done"


@app.task(max_attempts=2)
def open_ended(ctx, seconds: float) -> str:
    """No timeout: waits on its cancel event (the invocation's deadline) up to ``seconds``."""
    _hit(ctx)
    ctx.cancelled.wait(seconds)
    return "cancelled" if ctx.is_cancelled() else "done"


@app.task(timeout=3600)
def marathon(ctx) -> str:
    _hit(ctx)
    return "never runs on a short function"


@app.task(max_attempts=1)
def boom(ctx, message: str) -> None:
    _hit(ctx)
    raise RuntimeError(message)


@app.task(name="reports:daily")
def daily_report(ctx, day: str) -> str:
    """A task type with ':' in its name: S3 URL-encodes it as %3A in event keys."""
    _hit(ctx)
    return f"report for {day}"


@app.task(queue="other")
def elsewhere(ctx) -> str:
    _hit(ctx)
    return "other queue"
