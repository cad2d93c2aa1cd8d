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

Async handlers and async middleware (``achain``, ``qo.calls``): an
``async def`` middleware is awaited around the rest of the chain, for sync
and async handlers alike. Around a sync handler a plain middleware's
``call_next`` returns the handler's value, as always (an async middleware
there runs on a loop of its own, the part of the chain below it in a thread
of its own). Around an ``async def`` handler a plain middleware runs around
the creation of the coroutine, not its execution: its ``call_next`` returns
an awaitable, to be returned as it is; it can change the call, refuse it or
answer in its place, but to time or trace the run itself, write it as
``async def``::

    @app.middleware
    async def timed(call: TaskCall, call_next: AsyncNext) -> Any:
        started = time.monotonic()
        try:
            return await call_next(call)
        finally:
            metrics.observe(call.task_type, time.monotonic() - started)
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
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


AsyncNext = Callable[[TaskCall], Awaitable[Any]]


def is_async(fn: Callable[..., Any]) -> bool:
    """Is ``fn`` an ``async def`` (or an object whose ``__call__`` is one)?"""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))  # noqa: B004 - a callable object's method


def achain(middleware: Sequence[Middleware], handler: Next) -> AsyncNext:
    """``handler`` wrapped in ``middleware`` for a call awaited on an event loop.

    An ``async def`` middleware is awaited, and its ``call_next`` returns an
    awaitable. A plain middleware is called in the loop's thread around the
    *creation* of the rest of the chain: its ``call_next`` returns an
    awaitable, which it must return (or replace by a value) without waiting on
    it; what it returns is awaited if it is awaitable. ``handler`` may return
    a value or an awaitable (an ``async def`` handler).
    """

    async def innermost(c: TaskCall) -> Any:
        result = handler(c)
        return await result if inspect.isawaitable(result) else result

    call: AsyncNext = innermost
    for outer in reversed(middleware):
        call = _alink(outer, call)
    return call


def _alink(outer: Middleware, inner: AsyncNext) -> AsyncNext:
    async def linked(c: TaskCall) -> Any:
        result = outer(c, inner)
        return await result if inspect.isawaitable(result) else result

    return linked
