"""The asyncio client: ``AsyncQueue``, for FastAPI services and other async code.

Every method is the sync ``Queue``'s, awaited: the same requests, the same
validation and the same errors (``TaskFailed``, ``TaskCancelled``,
``ResultTimeout``, ``TaskNotFound``, ``IdempotencyConflict``...). Store
calls run in a bounded pool of ``threads`` threads over boto3 (measured
against aiobotocore: the same throughput and CPU per request on the same
server, see the README), so a burst of 10,000 submits queues for those
threads instead of starting 10,000. ``await handle.result(timeout=...)``
starts no thread at all: it waits on the queue's shared poller
(``qo.results``), one round of reads per interval for every awaiter of the
process together.

Built on an ``App``, ``submit`` applies the task type's registered
defaults and refuses unknown types, like ``App.submit``::

    q = AsyncQueue(app)
    handle = await q.submit("resize", {"url": url})
    result = await handle.result(timeout=30)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self, TypeVar

from qo.app import App
from qo.models import Status
from qo.protocol.admin import TaskView
from qo.protocol.submit import SubmitRequest
from qo.queue import Queue, TaskHandle

T = TypeVar("T")

#: Threads for the store calls of one AsyncQueue.
THREADS = 16


class AsyncTaskHandle:
    """A submitted task, for async code: ``await handle.result(timeout=...)``."""

    def __init__(self, client: AsyncQueue, handle: TaskHandle) -> None:
        self.client = client
        self.sync = handle  # the same task as a ``TaskHandle``
        self.id = handle.id
        self.created = handle.created

    def __repr__(self) -> str:
        return f"AsyncTaskHandle({self.id!r})"

    async def result(self, timeout: float | None = None) -> Any:
        """The task's result once it ends; raises what ``TaskHandle.result`` raises."""
        return await self.sync.aresult(timeout)

    async def view(self) -> TaskView:
        return await self.client._call(self.sync.view)

    async def status(self) -> Status:
        return (await self.view()).status

    async def cancel(self, reason: str = "cancelled by user") -> None:
        await self.client._call(self.sync.cancel, reason)


class AsyncQueue:
    """One queue for asyncio code; see the module docstring."""

    def __init__(self, target: Queue | App | str | None = None, *, threads: int = THREADS) -> None:
        self.app = target if isinstance(target, App) else None
        if isinstance(target, App):
            self.queue = target.queue
        elif isinstance(target, Queue):
            self.queue = target
        else:
            self.queue = Queue.from_url(target)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="qo-async")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Let the pool's threads go once their calls are done."""
        self._pool.shutdown(wait=False)

    async def submit(self, task_type: str, input: Any = None, **options: Any) -> AsyncTaskHandle:
        """``Queue.submit`` (or ``App.submit`` when built on an app), awaited."""
        submit = self.app.submit if self.app is not None else self.queue.submit
        return self._handle(await self._call(submit, task_type, input, **options))

    async def submit_many(
        self, requests: list[SubmitRequest | dict[str, Any]]
    ) -> list[AsyncTaskHandle]:
        """``Queue.submit_many``, awaited: all or nothing is validated before any write."""
        return [self._handle(h) for h in await self._call(self.queue.submit_many, requests)]

    async def get(self, task_id: str) -> TaskView:
        return await self._call(self.queue.get, task_id)

    async def cancel(self, task_id: str, reason: str = "cancelled by user") -> TaskView:
        return await self._call(self.queue.cancel, task_id, reason)

    def handle(self, task_id: str) -> AsyncTaskHandle:
        return self._handle(self.queue.handle(task_id))

    def _handle(self, handle: TaskHandle) -> AsyncTaskHandle:
        return AsyncTaskHandle(self, handle)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
