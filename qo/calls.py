"""How a runner calls a handler: through the app's middleware, sync or async.

``sync_call`` is for a handler thread (``qo.runner``). A plain handler is
called through a plain chain (``qo.middleware.chain``), so a plain
middleware's ``call_next`` returns the handler's value; an ``async def``
middleware in it runs on a loop of its own (``asyncio.run``), and the rest
of the chain below it in a daemon thread of its own, so that its awaits
never block on the sync code. An ``async def`` handler runs with the whole
chain (``qo.middleware.achain``) on an event loop of the thread's own, and
its coroutine is cancelled once ``ctx.cancelled`` is set (looked at every
``CANCEL_CHECK`` seconds). That is how the Lambda worker, ``Worker.execute``
and ``run_once`` run async handlers: one at a time, in a thread.

``async_call`` is for the worker's event loop (``qo.aio_runner``): the chain
as a coroutine function, awaited on the loop, cancelled by the runner.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import Any

from qo import tracing
from qo.app import App, TaskDef
from qo.context import Context
from qo.middleware import AsyncNext, Middleware, Next, TaskCall, achain, chain, is_async

#: How often a coroutine run in a handler thread looks at ``ctx.cancelled``.
CANCEL_CHECK = 0.05


def is_async_task(definition: TaskDef) -> bool:
    """Is the handler an ``async def``?"""
    return is_async(definition.fn)


def has_async_tasks(app: App) -> bool:
    return any(is_async_task(d) for d in app.tasks.values())


def has_sync_tasks(app: App) -> bool:
    return any(not is_async_task(d) for d in app.tasks.values())


def sync_call(app: App, definition: TaskDef) -> Next:
    """The handler behind the app's middleware, as a call that returns its result."""
    if not is_async_task(definition):
        stack = [*tracing.middleware(False), *app.middleware_stack]
        return chain([_bridged(m) if is_async(m) else m for m in stack], definition.run)
    run = achain([*tracing.middleware(True), *app.middleware_stack], definition.run)
    return lambda call: asyncio.run(_until_cancelled(run(call), call.ctx))


def _bridged(outer: Middleware) -> Middleware:
    """An ``async def`` middleware as a plain one, around a sync rest of the chain."""

    def bridged(call: TaskCall, call_next: Next) -> Any:
        async def rest(c: TaskCall) -> Any:
            return await _in_thread(call_next, c)

        return asyncio.run(outer(call, rest))

    return bridged


async def _in_thread(fn: Next, call: TaskCall) -> Any:
    """``fn(call)`` in a daemon thread (one the worker may abandon, like a handler's)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if answer.done():
            return
        if ok:
            answer.set_result(value)
        else:
            answer.set_exception(value)

    def target() -> None:
        try:
            value = fn(call)
        except BaseException as exc:  # noqa: BLE001 - raised in the awaiting middleware
            loop.call_soon_threadsafe(settle, False, exc)
        else:
            loop.call_soon_threadsafe(settle, True, value)

    name = f"{threading.current_thread().name}-inner"
    threading.Thread(target=target, name=name, daemon=True).start()
    return await answer


def async_call(app: App, definition: TaskDef) -> AsyncNext:
    """The handler behind the app's middleware, as a coroutine function."""
    return achain([*tracing.middleware(True), *app.middleware_stack], definition.run)


async def _until_cancelled(work: Awaitable[Any], ctx: Context) -> Any:
    """Await ``work``; cancel it once ``ctx.cancelled`` is set (its result is dropped then)."""
    task = asyncio.ensure_future(work)
    told = False
    while not task.done():
        await asyncio.wait({task}, timeout=CANCEL_CHECK)
        if ctx.is_cancelled() and not task.done() and not told:
            task.cancel()
            told = True
    return task.result()
