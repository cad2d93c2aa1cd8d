"""The async client and the shared result poller: same errors, one read per task per round."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import pytest
from pydantic import ValidationError

from qo.aio import AsyncQueue
from qo.app import App, UnknownTaskType
from qo.errors import AccessDenied, StoreUnavailable
from qo.models import Status
from qo.protocol.admin import TaskNotFound
from qo.queue import Queue, ResultTimeout, TaskCancelled, TaskFailed
from qo.results import ResultPoller, wait
from qo.store.memory import MemoryStore
from qo.store.s3 import S3Store
from qo.store.wrapper import Delegating
from qo.testing import drain
from qo.worker import Worker, WorkerOptions

from .conftest import new_bucket_name
from .helpers import wait_for

pytestmark = pytest.mark.timeout(180)


class ReadsByThread(Delegating):
    """Counts GETs of task records by the name of the thread that made them."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.gets: Counter[str] = Counter()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        if key.startswith("tasks/"):
            name = threading.current_thread().name
            with self._lock:
                self.gets["poller" if name.startswith("qo-results") else "other"] += 1
        return self.inner.get(key)


def _app(queue: Queue) -> App:
    app = App(queue)

    @app.task
    async def double(x: int) -> int:
        return 2 * x

    @app.task(max_attempts=1)
    def boom() -> None:
        raise ValueError("no")

    return app


def test_the_async_client_against_the_moto_server(s3_server: Any) -> None:
    store = S3Store(new_bucket_name(), "pfx", endpoint_url=s3_server.endpoint_url)
    store.create_bucket()
    queue = Queue(store)
    app = _app(queue)
    worker = Worker(app, queue, WorkerOptions(concurrency=4, poll_max=0.05))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()

    async def main() -> None:
        async with AsyncQueue(app) as q:
            one = await q.submit("double", {"x": 21})
            many = await q.submit_many([{"type": "double", "input": {"x": n}} for n in range(5)])
            failing = await q.submit("boom")
            assert await one.result(timeout=60) == 42
            assert [await h.result(timeout=60) for h in many] == [0, 2, 4, 6, 8]
            with pytest.raises(TaskFailed, match="ValueError: no"):
                await failing.result(timeout=60)
            assert (await q.get(one.id)).status == Status.SUCCEEDED
            assert await one.status() == Status.SUCCEEDED
            with pytest.raises(TaskNotFound):
                await q.get("0" * 22)

    try:
        asyncio.run(main())
    finally:
        worker.stop()
        thread.join(30)
        store.close()


def test_the_async_client_raises_what_the_sync_one_raises() -> None:
    queue = Queue(MemoryStore())
    app = _app(queue)

    async def main() -> None:
        q = AsyncQueue(app)
        with pytest.raises(UnknownTaskType):
            await q.submit("nope")
        with pytest.raises(ValidationError):
            await AsyncQueue(queue).submit("double", {"x": 1}, priority=999)
        pending = await q.submit("double", {"x": 1})
        with pytest.raises(ResultTimeout):
            await pending.result(timeout=0.1)
        await pending.cancel("not needed")
        with pytest.raises(TaskCancelled):
            await pending.result(timeout=30)
        with pytest.raises(TaskNotFound):
            await q.handle("0" * 22).result(timeout=30)
        q.close()

    asyncio.run(main())


def test_many_awaiters_share_one_read_per_task_per_round() -> None:
    store = ReadsByThread(MemoryStore())
    queue = Queue(store)  # type: ignore[arg-type]
    app = _app(queue)
    tasks, per_task = 4, 2500  # 10,000 awaiters
    handles = [app.submit("double", {"x": n}) for n in range(tasks)]
    store.gets.clear()
    poller = queue.results
    rounds_while_waiting: list[tuple[int, int]] = []

    before = set(threading.enumerate())

    async def main() -> list[Any]:
        q = AsyncQueue(queue)
        waiters = [asyncio.ensure_future(q.handle(h.id).result(timeout=120))
                   for h in handles for _ in range(per_task)]
        # once every task is watched, let the awaiters wait through a few whole rounds
        while poller.watched() < tasks:
            await asyncio.sleep(0.01)
        start = poller.rounds + 2  # the round ending then began with all four watched
        for until in (start, start + 3):
            while poller.rounds < until:
                await asyncio.sleep(0.01)
            with poller._cond:
                rounds_while_waiting.append((poller.rounds, poller.reads))
        new = [t.name for t in threading.enumerate() if t not in before]
        # the poller and its read pool: not a thread per awaiter
        assert len(new) <= 1 + 8, new
        await asyncio.to_thread(drain, queue, app, [h.id for h in handles])
        return await asyncio.gather(*waiters)

    got = asyncio.run(main())
    assert got == [2 * n for n in range(tasks) for _ in range(per_task)]
    (ra, ga), (rb, gb) = rounds_while_waiting
    assert rb - ra >= 3
    assert gb - ga == tasks * (rb - ra)  # one GET per distinct task per round, not per awaiter
    wait_for(lambda: poller.watched() == 0 and poller._thread is None, timeout=30)
    assert store.gets["poller"] == poller.reads  # every read the poller made, counted
    assert poller.reads <= tasks * poller.rounds


def test_a_waiter_that_gives_up_stops_the_reads_of_its_task() -> None:
    store = ReadsByThread(MemoryStore())
    queue = Queue(store)  # type: ignore[arg-type]
    handle = queue.submit("t")
    future = handle.future()
    wait_for(lambda: queue.results.rounds >= 2, timeout=30)
    future.cancel()
    wait_for(lambda: queue.results._thread is None, timeout=30)
    reads = store.gets["poller"]
    assert queue.results.watched() == 0 and reads == queue.results.reads
    queue.submit("t")  # nothing watches it: no more reads
    assert store.gets["poller"] == reads


def test_submit_async_callbacks_and_wait_from_sync_code() -> None:
    queue = Queue(MemoryStore())
    app = _app(queue)
    futures = [queue.submit_async("double", {"x": n}) for n in range(20)]
    handles = [f.result(timeout=30) for f in futures]
    called: list[str] = []
    lock = threading.Lock()

    def note(h: Any) -> None:
        with lock:
            called.append(h.id)

    for h in handles:
        h.add_done_callback(note)
    done, pending = wait(handles, timeout=0.05)  # nothing runs them yet
    assert done == [] and pending == handles
    Worker(app, queue, WorkerOptions(concurrency=4, burst=True)).run()
    done, pending = wait(handles, timeout=60)
    assert done == handles and pending == []
    assert [h.result(timeout=1) for h in handles] == [2 * n for n in range(20)]
    wait_for(lambda: len(called) == 20, timeout=30)
    assert sorted(called) == sorted(h.id for h in handles)
    with pytest.raises(ValidationError):
        queue.submit_async("double", {"x": 1}, priority=999).result(timeout=30)


def test_the_poller_rate_is_bounded_by_max_rate() -> None:
    store = ReadsByThread(MemoryStore())
    queue = Queue(store)  # type: ignore[arg-type]
    handles = [queue.submit("t") for _ in range(50)]
    poller = ResultPoller(store, min_interval=0.0, max_rate=1000.0)
    futures = [poller.watch(h.id) for h in handles]
    wait_for(lambda: poller.rounds >= 3, timeout=30)
    for f in futures:
        f.cancel()
    wait_for(lambda: poller._thread is None, timeout=30)
    # a round reads each task once (the first may have begun before all were watched),
    # and the next may not begin before 50 / max_rate seconds have passed
    assert 50 * (poller.rounds - 1) < poller.reads <= 50 * poller.rounds
    assert poller._floor - poller._started == pytest.approx(50 / 1000.0)


class Flaky(Delegating):
    """Task record GETs fail with ``error`` while it is set."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.error: Exception | None = None
        self.failed = 0

    def get(self, key: str) -> Any:
        if self.error is not None and key.startswith("tasks/"):
            self.failed += 1
            raise self.error
        return self.inner.get(key)


def test_an_outage_is_waited_out_and_a_denial_is_raised() -> None:
    store = Flaky(MemoryStore())
    queue = Queue(store)  # type: ignore[arg-type]
    app = _app(queue)
    handle = app.submit("double", {"x": 2})
    denied = app.submit("double", {"x": 3})
    store.error = StoreUnavailable("the store is down")
    future = handle.future()
    wait_for(lambda: store.failed >= 3, timeout=30)  # three rounds failed: still waiting
    assert not future.done()
    store.error = None
    drain(queue, app, [handle.id])
    assert future.result(timeout=30) == 4
    store.error = AccessDenied("access denied to the bucket")
    with pytest.raises(AccessDenied):
        asyncio.run(denied.aresult(timeout=30))
