"""How a runner calls a handler: through the app's middleware, sync or async.

``sync_call`` is for a handler thread (``qo.runner``): a plain handler under
plain middleware is called as it is (``qo.middleware.chain``); as soon as
the handler or a middleware is ``async def``, the whole chain
(``qo.middleware.achain``) runs on an event loop of the thread's own, and
the coroutine is cancelled once ``ctx.cancelled`` is set (looked at every
``CANCEL_CHECK`` seconds). That is how the Lambda worker, ``Worker.execute``
and ``run_once`` run async handlers: one at a time, in a thread.

``async_call`` is for the worker's event loop (``qo.aio_runner``): the chain
as a coroutine function, awaited on the loop, cancelled by the runner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from qo.app import App, TaskDef
from qo.context import Context
from qo.middleware import AsyncNext, Next, achain, chain, is_async

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
    if not is_async_task(definition) and not any(is_async(m) for m in app.middleware_stack):
        return chain(app.middleware_stack, definition.run)
    run = achain(app.middleware_stack, definition.run)
    return lambda call: asyncio.run(_until_cancelled(run(call), call.ctx))


def async_call(app: App, definition: TaskDef) -> AsyncNext:
    """The handler behind the app's middleware, as a coroutine function."""
    return achain(app.middleware_stack, definition.run)


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
