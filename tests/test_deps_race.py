"""The race between dependencies finishing and dependents being submitted, under real
concurrency (memory store and a moto server): no dependent is left blocked, none runs
twice (docs/protocol.md section 10, "Why nothing is missed")."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from qo.app import App
from qo.models import TERMINAL, Status
from qo.queue import Queue
from qo.settings import Settings
from qo.store.base import Store
from qo.worker import Worker, WorkerOptions

from .helpers import Runs, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def workers(any_store: Store) -> Iterator[tuple[Queue, App, Runs, threading.Event]]:
    queue = Queue(any_store, Settings(lease_seconds=120))
    app = App(queue)
    runs = Runs()

    @app.task(max_attempts=1)
    def work(ctx, n: int = 0) -> int:
        runs.hit(ctx.task_id)
        return n

    stop = threading.Event()

    def loop() -> None:
        worker = Worker(app, queue, WorkerOptions(concurrency=1))
        while not stop.is_set():
            if not worker.run_once():
                worker.claimer.forget()
                stop.wait(0.01)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    yield queue, app, runs, stop
    stop.set()
    for t in threads:
        t.join(30)


def test_dependents_submitted_while_their_dependencies_finish(
        workers: tuple[Queue, App, Runs, threading.Event]) -> None:
    queue, _, runs, _ = workers
    rng = random.Random(5)
    parents = [queue.submit("work", {"n": i}).id for i in range(8)]
    picks = [rng.sample(parents, rng.randint(1, 3)) for _ in range(40)]

    def child(after: list[str]) -> str:
        return queue.submit("work", {"n": 0}, depends_on=after).id

    with ThreadPoolExecutor(4) as pool:  # while the workers finish the parents
        children = list(pool.map(child, picks))
    join = queue.submit("work", None, depends_on=parents).id
    everything = [*parents, *children, join]

    def all_ended() -> bool:
        return all(queue.get(i).record.status in TERMINAL for i in everything)

    wait_for(all_ended, timeout=120)
    assert {queue.get(i).record.status for i in everything} == {Status.SUCCEEDED}
    assert all(runs.counts[i] == 1 for i in everything), runs.counts
