"""qo.testing, used as a user's test suite would: a fake clock, drain, immediate mode (issue 14).

Nothing here sleeps: time moves only through a FakeClock, and every helper
is bounded by rounds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qo import App, Fatal, Queue, TaskFailed
from qo.models import Status
from qo.store.local import LocalStore
from qo.store.memory import MemoryStore
from qo.testing import ClockedStore, FakeClock, NotDrained, drain, immediate
from qo.worker import Worker, WorkerOptions

pytestmark = pytest.mark.timeout(120)

DAY = 86_400.0


def make_app(queue: Queue | None = None) -> tuple[App, dict[str, int]]:
    """A user's app: a task that works, one that fails twice first, one that never works."""
    app = App(queue)
    calls = {"add": 0, "flaky": 0, "broken": 0}

    @app.task
    def add(x: int, y: int) -> int:
        calls["add"] += 1
        return x + y

    @app.task(max_attempts=3)
    def flaky(n: int) -> int:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise RuntimeError(f"flaky attempt {calls['flaky']}")
        return n * 10

    @app.task
    def broken() -> None:
        calls["broken"] += 1
        raise Fatal("never works")

    @app.task
    def parent(x: int) -> int:
        return int(add.submit(x, 1).result()) * 2

    return app, calls


# -- FakeClock and ClockedStore --------------------------------------------------------


def test_fake_clock_moves_only_forward_and_only_when_told() -> None:
    clock = FakeClock(1000.0)
    assert clock() == clock() == 1000.0
    clock.advance(2.5)
    clock.advance_to(900.0)  # in the past: no effect
    assert clock() == 1002.5
    clock.advance_to(2000.0)
    assert clock() == 2000.0
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)


def test_a_delay_passes_on_the_fake_clock_of_a_memory_store() -> None:
    clock = FakeClock()
    queue = Queue(MemoryStore(clock=clock))
    app, calls = make_app(queue)
    handle = app.submit("add", {"x": 1, "y": 2}, delay=DAY)
    assert drain(queue, app) == 0 and calls["add"] == 0  # idle: not due, clock untouched
    assert handle.status() is Status.SCHEDULED
    clock.advance(DAY)
    drain(queue, app)
    assert handle.result() == 3 and calls["add"] == 1


def test_clocked_store_gives_a_local_directory_a_fake_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    store = ClockedStore(LocalStore(str(tmp_path / "q")), clock)
    queue = Queue(store)  # type: ignore[arg-type]
    app, _ = make_app(queue)
    handle = app.submit("add", {"x": 2, "y": 2}, delay=3 * DAY)
    assert store.now() == clock()
    drain(queue, app, [handle.id], clock=clock)
    assert handle.result() == 4
    assert clock() >= handle.view().record.available_at


# -- drain ---------------------------------------------------------------------------


def test_drain_runs_tasks_and_retries_to_the_end_moving_the_clock() -> None:
    clock = FakeClock()
    queue = Queue(MemoryStore(clock=clock))
    app, calls = make_app(queue)
    ok, flaky, broken = (app.submit("add", {"x": 1, "y": 1}), app.submit("flaky", {"n": 4}),
                         app.submit("broken"))
    later = app.submit("add", {"x": 5, "y": 5}, delay=7 * DAY)
    rounds = drain(queue, app, [ok.id, flaky.id, broken.id, later.id], clock=clock)
    assert rounds < 10  # the clock jumps to each due time instead of crawling
    assert ok.result() == 2 and flaky.result() == 40 and later.result() == 10
    assert flaky.view().record.attempt == 3 and calls["flaky"] == 3
    with pytest.raises(TaskFailed, match="never works"):
        broken.result()
    assert calls["broken"] == 1  # Fatal: no retry


def test_drain_reaps_a_task_whose_worker_was_lost() -> None:
    clock = FakeClock()
    queue = Queue(MemoryStore(clock=clock))
    app, calls = make_app(queue)
    handle = app.submit("add", {"x": 3, "y": 4})
    lost = Worker(app, queue, WorkerOptions(concurrency=1)).claimer.claim()
    assert lost is not None and lost.record.id == handle.id  # claimed, never finished
    assert drain(queue, app) == 0 and calls["add"] == 0  # idle: the lease is live
    drain(queue, app, [handle.id], clock=clock)
    assert handle.result() == 7 and handle.view().record.attempt == 2


def test_drain_fails_loudly_instead_of_hanging() -> None:
    queue = Queue(MemoryStore(clock=FakeClock()))
    app, _ = make_app(queue)
    handle = app.submit("add", {"x": 1, "y": 1}, delay=DAY)
    with pytest.raises(NotDrained, match=f"{handle.id}.*scheduled"):
        drain(queue, app, [handle.id], max_rounds=3)  # no clock: it never becomes due
    assert isinstance(NotDrained("x"), AssertionError)  # pytest reports it as a failure


# -- immediate -----------------------------------------------------------------------


def test_immediate_runs_a_task_before_submit_returns() -> None:
    app, calls = make_app()
    with immediate(app) as queue:
        handle = app.submit("add", {"x": 2, "y": 3})
        assert calls["add"] == 1 and handle.status() is Status.SUCCEEDED
        assert handle.result(timeout=0) == 5
        record = handle.view().record
        assert record.worker == "immediate" and record.attempt == 1  # the real outcome path
        assert queue.store.url.startswith("memory://")


def test_immediate_runs_retries_at_once_and_reports_failures() -> None:
    app, calls = make_app()
    with immediate(app) as queue:
        start = queue.clock()
        flaky = app.submit("flaky", {"n": 2})
        assert flaky.result(timeout=0) == 20 and calls["flaky"] == 3
        assert queue.clock() > start  # the backoff passed on the fake clock
        broken = app.submit("broken")
        with pytest.raises(TaskFailed, match="never works"):
            broken.result(timeout=0)


def test_immediate_leaves_delayed_tasks_until_the_clock_moves() -> None:
    app, calls = make_app()
    with immediate(app) as queue:
        handle = app.submit("add", {"x": 1, "y": 9}, delay=3600)
        assert handle.status() is Status.SCHEDULED and calls["add"] == 0
        queue.clock.advance(3600)
        queue.run_due()
        assert handle.result(timeout=0) == 10


def test_immediate_runs_tasks_a_handler_submits_and_batches() -> None:
    app, calls = make_app()
    with immediate(app) as queue:
        assert app.submit("parent", {"x": 4}).result(timeout=0) == 10
        handles = queue.submit_many([{"type": "add", "input": {"x": i, "y": i}}
                                     for i in range(3)])
        assert [h.result(timeout=0) for h in handles] == [0, 2, 4]
        assert calls["add"] == 4


def test_immediate_gives_the_app_its_queue_back() -> None:
    own = Queue(MemoryStore())
    app, _ = make_app(own)
    with immediate(app) as queue:
        assert app.queue is queue
    assert app.queue is own
    with pytest.raises(RuntimeError), immediate(app):
        raise RuntimeError("a failing test body")
    assert app.queue is own
    lazy = App("memory://qo-testing-lazy")  # bound to a URL, not opened yet
    with immediate(lazy) as queue:
        assert lazy.queue is queue
    assert lazy.queue.url == "memory://qo-testing-lazy"  # opened from its URL only now


def test_the_readme_example_runs_as_written() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Testing your tasks"):]
    start = section.index("```python\n") + len("```python\n")
    code = section[start:section.index("\n```", start)]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert len(tests) == 2
    for test in tests:
        test()
