"""Middleware around a handler call: logging context, tracing, timing, user code.

A middleware is a function ``(call, call_next) -> result`` that runs in the
handler's thread around every attempt of every task of an app::

    @app.middleware
    def timed(call: TaskCall, call_next: Next) -> Any:
        started = time.monotonic()
        try:
            return call_next(call)
        finally:
            metrics.observe(call.task_type, time.monotonic() - started)

It may look at the call (``task_type``, ``input``, ``ctx``), pass on a changed
copy (``dataclasses.replace(call, input=...)``), return without calling on
(the return value is the task's result), or raise (the exception is the
attempt's error, retried or not like any other). The first registered is the
outermost. The outcome is written by the runner after the chain returns, so
a middleware never sees or changes the protocol: it only shapes one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qo.context import Context


@dataclass(frozen=True, slots=True)
class TaskCall:
    """One handler call: the task's type, its decoded input and its context."""

    task_type: str
    input: Any
    ctx: Context


Next = Callable[[TaskCall], Any]
Middleware = Callable[[TaskCall, Next], Any]


def chain(middleware: Sequence[Middleware], handler: Next) -> Next:
    """``handler`` wrapped in ``middleware``, the first outermost."""
    call = handler
    for outer in reversed(middleware):
        call = _link(outer, call)
    return call


def _link(outer: Middleware, inner: Next) -> Next:
    def linked(c: TaskCall) -> Any:
        return outer(c, inner)

    return linked
