"""The asyncio runner: many ``async def`` handlers at once on one event loop.

``AsyncRunner`` is a ``qo.runner.Runner`` (it still runs any claim in the
calling thread with ``run``) that can also ``start`` a claim on its event
loop, a daemon thread it owns (``qo-loop``), and return at once. Each
attempt started there is one coroutine that does what ``Runner.run`` does,
with the same steps of the same class:

- ``_begin`` (context, lease keeper) and ``_end`` (the outcome, with its
  store-failure retries) do blocking store requests, so they run in a
  bounded pool of ``IO_THREADS`` threads (``qo-aio-io``), never on the loop;
  ``_heartbeat`` (lease renewal and the cancellation check) runs in a pool
  of its own (``BEAT_THREADS``, ``qo-aio-beat``), so that renewals never
  queue behind outcomes retrying through a store outage;
- the waiting is the loop's: the handler's coroutine (behind the app's
  middleware, ``qo.middleware.achain``) is a task, supervision awaits it
  with the timeout ``_next_wait`` gives and asks ``_step`` what to do, like
  the thread runner does. When supervision stops waiting (deadline, lease
  lost, cancelled, handed back at shutdown) ``ctx.cancelled`` is set and the
  coroutine is cancelled (``CancelledError`` at its next ``await``).

So 200 async tasks in flight cost one loop thread and 12 pool threads,
not 200. The requests are those of the thread runner: nothing
changes in the protocol. A coroutine that blocks the loop (a synchronous
``time.sleep``, a blocking client) stalls every async task of the worker,
their heartbeats included: do blocking work with ``asyncio.to_thread``.
The runner measures how late its loop runs and logs ``loop_blocked`` (with
the tasks that were on it) once it is ``LAG_WARNING`` seconds late.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from qo import logs
from qo.app import App, TaskDef
from qo.calls import async_call, has_sync_tasks, is_async_task
from qo.context import StopReason
from qo.middleware import TaskCall
from qo.protocol.claim import Claim
from qo.runner import Runner, Running, Step

T = TypeVar("T")

#: Threads for the store requests of async attempts: starts and outcomes...
IO_THREADS = 8
#: ...and lease renewals.
BEAT_THREADS = 4
#: A loop late by this many seconds was blocked by a handler: logged (``loop_blocked``).
LAG_WARNING = 1.0
LAG_CHECK = 0.5  # how often the loop's lateness is measured

#: Slot threads of a worker whose handlers are all async: they only claim. Measured
#: (``python -m bench --only aio``, memory store, 2 ms a request, concurrency 200):
#: 4 claimed 490 tasks/s, 8 claimed 800 and 16 no more (750).
ASYNC_SLOTS = 8

log = logging.getLogger("qo.worker")


def slot_threads(app: App, concurrency: int, threads: int | None) -> int:
    """A worker's slot threads: ``threads`` if given, else the concurrency (a sync
    handler needs a thread each) or ``ASYNC_SLOTS`` when every handler is async;
    never more than the concurrency."""
    return min(concurrency, threads or (concurrency if has_sync_tasks(app) else ASYNC_SLOTS))


class AsyncRunner(Runner):
    """A ``Runner`` with an event loop for async handlers; thread-safe.

    ``start(claim, done)`` runs an attempt on the loop and returns at once;
    ``done`` is called once its outcome is written (or given up, like
    ``run``), and ``in_flight`` counts the attempts not yet over. Call
    ``close`` after ``wait_for_handlers``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="qo-loop",
                                             daemon=True)
        self._pool = concurrent.futures.ThreadPoolExecutor(IO_THREADS,
                                                           thread_name_prefix="qo-aio-io")
        self._beats = concurrent.futures.ThreadPoolExecutor(BEAT_THREADS,
                                                            thread_name_prefix="qo-aio-beat")
        self._coroutines: dict[asyncio.Task[None], str] = {}  # handlers not yet returned
        self._started = False  # the loop thread starts with the first async attempt
        self._watcher: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._recent: set[str] = set()  # tasks on the loop since the last lag check
        self._starts: set[concurrent.futures.Future[None]] = set()  # started, not yet over
        self._over = threading.Condition(self._lock)

    def runs_on_loop(self, claim: Claim) -> bool:
        """Is this claim's handler an ``async def`` (``start`` it rather than ``run`` it)?"""
        definition = self.app.tasks.get(claim.record.type)
        return definition is not None and is_async_task(definition)

    def start(self, claim: Claim,
              done: Callable[[BaseException | None], object] | None = None) -> None:
        """Run one claimed task to its outcome on the loop; returns at once. ``done``
        is called with what ``run`` would have raised (None) once it is over."""
        with self._lock:
            if not self._started:
                self._loop_thread.start()
                self._started = True
                self._watcher = asyncio.run_coroutine_threadsafe(self._watch_lag(), self._loop)
            future = asyncio.run_coroutine_threadsafe(self.arun(claim), self._loop)
            self._starts.add(future)

        def over(f: concurrent.futures.Future[None]) -> None:
            with self._lock:
                self._starts.discard(f)
                self._over.notify_all()
            if done is not None:
                done(None if f.cancelled() else f.exception())

        future.add_done_callback(over)

    def in_flight(self) -> int:
        """Attempts started on the loop whose outcome is not written yet."""
        with self._lock:
            return len(self._starts)

    def wait_over(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for an attempt on the loop to be over."""
        with self._lock:
            if self._starts:
                self._over.wait(timeout)

    async def arun(self, claim: Claim) -> None:
        """``Runner.run`` as a coroutine on this runner's loop."""
        begun = await self._io(self._begin, claim)
        if begun is None:
            return
        running, definition = begun
        try:
            await self._supervise_on_loop(running, definition)
        finally:
            self._stopped_waiting(running)
        await self._io(self._end, running, definition)

    async def _supervise_on_loop(self, running: Running, definition: TaskDef) -> None:
        """Await the handler's coroutine; renew the lease; enforce the deadline."""
        call = async_call(self.app, definition)
        handler_call = TaskCall(definition.name, running.claim.input, running.ctx)
        ctx = running.ctx

        async def target() -> None:
            try:
                with logs.task_fields(running.claim.task_id, ctx.task_type, ctx.attempt):
                    running.result = await call(handler_call)
            except BaseException as exc:  # noqa: BLE001 - reported as the task's error
                running.error = exc
            finally:
                if not ctx.is_cancelled():  # once told to stop, what it returns is dropped
                    running.done.set()

        task = self._loop.create_task(target(), name=f"qo-task-{running.claim.task_id}")
        self._coroutines[task] = running.claim.task_id
        self._recent.add(running.claim.task_id)
        task.add_done_callback(self._coroutines.pop)
        while not task.done():
            await asyncio.wait({task}, timeout=self._next_wait(running))
            if task.done():
                return
            step = self._step(running)
            if step is Step.RENEW and await self._io(self._heartbeat, running, pool=self._beats):
                continue
            if step is not Step.WAIT:
                ctx.cancel(StopReason.ABANDONED)  # (no-op when a reason was set)
                task.cancel()
                return

    async def _watch_lag(self) -> None:
        """Log when the loop ran late: a handler blocked it (and every other on it)."""
        while True:
            before = self._loop.time()
            await asyncio.sleep(LAG_CHECK)
            late = self._loop.time() - before - LAG_CHECK
            suspects, self._recent = self._recent, set(self._coroutines.values())
            if late >= LAG_WARNING:
                tasks = sorted(suspects)
                log.warning("the event loop was blocked for %.1f s (tasks on it: %s): an "
                            "async handler made a blocking call; its heartbeats and every "
                            "other async task waited. Use asyncio.to_thread for blocking work",
                            late, ", ".join(tasks) or "none",
                            extra={"event": "loop_blocked", "seconds": round(late, 1),
                                   "tasks": tasks})

    async def _io(self, fn: Callable[..., T], *args: Any,
                  pool: concurrent.futures.Executor | None = None) -> T:
        """Run a blocking step (store requests) in a pool, off the loop."""
        return await self._loop.run_in_executor(pool or self._pool, functools.partial(fn, *args))

    def _join_handlers(self, end: float) -> list[str]:
        """Handler threads, then coroutines told to stop, until ``end``; those left."""
        left = super()._join_handlers(end)
        if not self._started:
            return left

        async def join() -> list[str]:
            pending = list(self._coroutines)
            if pending:
                await asyncio.wait(pending, timeout=max(0.0, end - time.monotonic()))
            return [task for t, task in self._coroutines.items() if not t.done()]

        future = asyncio.run_coroutine_threadsafe(join(), self._loop)
        try:  # a loop blocked by a handler never answers: its coroutines count as left
            left += future.result(timeout=max(0.0, end - time.monotonic()) + 1.0)
        except concurrent.futures.TimeoutError:
            left += list(self._coroutines.copy().values())
        return sorted(left)

    async def _stop_loop(self) -> None:
        """On the loop: end the lag watcher, then the loop."""
        self._watcher.cancel()  # (its task is cancelled by a callback: let it run)
        for _ in range(3):
            await asyncio.sleep(0)
        self._loop.stop()

    def close(self) -> None:
        """Stop the loop (coroutines still on it are left) and the request pools."""
        if self._started:
            asyncio.run_coroutine_threadsafe(self._stop_loop(), self._loop)
            self._loop_thread.join(5.0)
            if not self._loop_thread.is_alive():  # (a handler blocking it keeps it open)
                self._loop.close()
        for pool in (self._pool, self._beats):
            pool.shutdown(wait=False, cancel_futures=True)
