"""A demo App for CLI tests: one task that works, one that always fails, one slow.

It has no URL of its own: the CLI binds it to ``--queue`` (or ``QO_QUEUE``).
"""

from __future__ import annotations

from qo.app import App, Fatal
from qo.context import Context

app = App()

#: Not an App: ``--app tests.apps.demo_app:not_an_app`` must be refused.
not_an_app = object()


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(max_attempts=1)
def fail(message: str) -> None:
    raise RuntimeError(message)


@app.task(name="fatal")
def fatal_task() -> None:
    raise Fatal("refused on purpose")


@app.task
def slow(seconds: float, ctx: Context) -> str:
    """Waits on its cancel event, never longer than ``seconds``."""
    ctx.cancelled.wait(seconds)
    return "cancelled" if ctx.is_cancelled() else "done"


@app.task(queue="other")
def other_queue_task(n: int) -> int:
    return n * 2

