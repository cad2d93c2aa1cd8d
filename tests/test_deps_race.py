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

    @app.task(max_attempts=1)
    def flaky(ctx, fail: bool) -> str:
        runs.hit(ctx.task_id)
        if fail:
            raise RuntimeError("no")
        return "ok"

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


def stuck(queue: Queue, ids: list[str]) -> dict[str, object]:
    """What a task that never ended waits for (for the failure message)."""
    from qo.protocol import deps

    out: dict[str, object] = {}
    for i in ids:
        rec = queue.get(i).record
        if rec.status not in TERMINAL:
            out[i] = (queue.get(i).status, {p: queue.get(p).status for p in rec.depends_on},
                      deps.arrived(queue.store, i))
    return out


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

    try:
        wait_for(all_ended, timeout=120)
    except AssertionError:
        raise AssertionError(stuck(queue, everything)) from None
    assert {queue.get(i).record.status for i in everything} == {Status.SUCCEEDED}
    assert all(runs.counts[i] == 1 for i in everything), runs.counts


def test_a_workflow_with_a_failing_branch(
        workers: tuple[Queue, App, Runs, threading.Event]) -> None:
    from qo import Workflow

    queue, _, _, _ = workers

    wf = Workflow("w")
    good = wf.add("good", "work", {"n": 1})
    bad = wf.add("bad", "flaky", {"fail": True})
    wf.add("join", "work", {"n": 2}, after=[good, bad])
    wf.add("report", "work", {"n": 3}, after=[good, bad], trigger="all_done")
    run = wf.submit(queue)
    ids = [h.id for h in run.tasks.values()]
    wait_for(lambda: all(queue.get(i).record.status in TERMINAL for i in ids), timeout=120)
    assert {n: h.status() for n, h in run.tasks.items()} == {
        "good": Status.SUCCEEDED, "bad": Status.DEAD, "join": Status.DEAD,
        "report": Status.SUCCEEDED}
    assert run.status() == "failed" and "join<br/>dead" in run.graph()
