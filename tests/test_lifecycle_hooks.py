"""Lifecycle hooks on the app and per task type, and callable retry policies (issue 16)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest

from qo.app import App
from qo.context import Context
from qo.hooks import Event, Kind
from qo.models import Status
from qo.protocol import outcome
from qo.queue import Queue
from qo.retry import Retry, RetryDecision
from qo.settings import Settings
from qo.store.memory import MemoryStore
from qo.testing import FakeClock
from qo.worker import Worker, WorkerOptions

pytestmark = pytest.mark.timeout(120)


class Seen:
    """Every hook call, as (hook, task type, task id)."""

    def __init__(self, app: App, task: str | None = None) -> None:
        self.calls: list[tuple[str, str | None, str | None]] = []
        for when in ("start", "success", "failure", "retry", "dead", "cancel"):
            app.on(when, self._record(when), task=task)

    def _record(self, when: str) -> Any:
        def hook(event: Event) -> None:
            self.calls.append((when, event.task_type, event.task_id))

        return hook

    def count(self) -> Counter[str]:
        return Counter(when for when, _, _ in self.calls)


def setup(settings: Settings | None = None) -> tuple[FakeClock, Queue, App]:
    clock = FakeClock()
    queue = Queue(MemoryStore(clock=clock), settings or Settings())
    return clock, queue, App(queue)


def worker(app: App, queue: Queue, name: str) -> Worker:
    return Worker(app, queue, WorkerOptions(concurrency=1, worker_id=name))


def test_hooks_are_called_once_per_transition_app_wide_and_per_type() -> None:
    clock, queue, app = setup()
    flaky = {"left": 1}

    @app.task(max_attempts=2, retry={"base": 1, "cap": 1})  # type: ignore[arg-type]
    def once_flaky() -> str:
        if flaky["left"]:
            flaky["left"] -= 1
            raise RuntimeError("boom")
        return "ok"

    @app.task(max_attempts=1)
    def always_fails() -> None:
        raise RuntimeError("no")

    everything = Seen(app)
    only_flaky = Seen(app, task="once_flaky")
    w = worker(app, queue, "w1")
    a = app.submit("once_flaky")
    b = app.submit("always_fails")
    while w.run_once():
        pass
    clock.advance(2)  # the retry is due
    queue.sweep()
    w.claimer.forget()  # its cached listing predates the promotion
    while w.run_once():
        pass
    assert a.result(timeout=5) == "ok"
    assert queue.get(b.id).record.status == Status.DEAD
    assert everything.count() == Counter(start=3, failure=2, retry=1, success=1, dead=1)
    assert only_flaky.count() == Counter(start=2, failure=1, retry=1, success=1)
    assert {t for _, t, _ in only_flaky.calls} == {"once_flaky"}
    assert [w for w, _, i in everything.calls if i == b.id] == ["start", "failure", "dead"]


def test_a_hook_that_raises_is_logged_and_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    _, queue, app = setup()
    app.task(name="t")(lambda: 42)
    after: list[str] = []

    @app.on("success")
    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    app.on("success", lambda e: after.append(e.task_id or ""))
    handle = app.submit("t")
    with caplog.at_level(logging.ERROR, logger="qo.lifecycle"):
        assert worker(app, queue, "w1").run_once()
    assert handle.result(timeout=5) == 42
    assert after == [handle.id]  # the hooks after it still ran
    assert any("success hook" in r.getMessage() and "hook bug" in r.exc_text
               for r in caplog.records if r.exc_text)


@pytest.fixture(params=["memory", "moto_server"])
def clocked(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[FakeClock, Queue, App]:
    """A queue on a store whose clock the test moves (from now: S3 stamps LastModified)."""
    import time

    from qo.testing import ClockedStore

    from .conftest import make_store

    clock = FakeClock(start=time.time())
    store = ClockedStore(make_store(request.param, request, tmp_path), clock)
    queue = Queue(store, Settings(lease_seconds=10))  # type: ignore[arg-type]
    return clock, queue, App(queue)


def test_across_a_lease_expiry_and_a_fenced_outcome_each_transition_calls_once(
    clocked: tuple[FakeClock, Queue, App],
) -> None:
    clock, queue, app = clocked
    app.task(name="t")(lambda: "done")
    seen = Seen(app)
    first, second = worker(app, queue, "w1"), worker(app, queue, "w2")
    handle = app.submit("t")

    with first._logging():  # w1 takes it (its hooks connected, as in Worker.run)
        claim = first.claimer.claim()
    assert claim is not None  # and then stalls past its lease
    clock.advance(11)
    with second._logging():  # w2's housekeeper reaps it: the lost run is counted once
        queue.sweep(owner=second.id)
    assert second.run_once()  # w2 runs it to success
    with first._logging():  # w1's late outcome is fenced: no hook for it
        assert outcome.succeed(queue.store, claim, "late", queue.settings) \
            is outcome.Outcome.FENCED
    assert handle.result(timeout=5) == "done"
    # two claims, one lost run counted by the reaper, one success; nothing for the fenced one
    assert seen.count() == Counter(start=2, failure=1, retry=1, success=1)


def test_the_cancel_hook_is_called_when_a_running_task_is_cancelled() -> None:
    _, queue, app = setup()

    @app.task
    def long(ctx: Context) -> str:
        queue.cancel(ctx.task_id)  # cancelled from elsewhere while it runs
        ctx.heartbeat()
        return "too late"

    seen = Seen(app)
    handle = app.submit("long")
    assert worker(app, queue, "w1").run_once()
    assert queue.get(handle.id).record.status == Status.CANCELLED
    assert seen.count() == Counter(start=1, cancel=1)


def test_completion_is_observable_with_a_hook_and_the_handle() -> None:
    _, queue, app = setup()
    app.task(name="t")(lambda n: n * 2)
    finished: dict[str, Any] = {}
    app.on("success", lambda e: finished.setdefault(e.task_id or "", e.detail.get("seconds")))
    handle = app.submit("t", {"n": 21})
    worker(app, queue, "w1").run_once()
    assert handle.id in finished and handle.result(timeout=5) == 42


def test_unknown_hooks_are_refused() -> None:
    _, _, app = setup()
    with pytest.raises(Exception, match="unknown hook 'finish'"):
        app.on("finish", lambda e: None)


# -- retry decisions ---------------------------------------------------------------


def test_a_callable_retry_policy_chooses_the_delay_or_gives_up() -> None:
    clock, queue, app = setup()
    asked: list[tuple[str, int]] = []

    def policy(exc: BaseException, attempt: int) -> float | None:
        asked.append((str(exc), attempt))
        return 30.0 if attempt < 2 else None  # then give up, attempts left or not

    @app.task(max_attempts=5, retry=policy)
    def t() -> None:
        raise RuntimeError("down")

    w = worker(app, queue, "w1")
    handle = app.submit("t")
    failed_at = queue.store.now()
    assert w.run_once()
    record = queue.get(handle.id).record
    assert record.status == Status.FAILED and record.available_at == pytest.approx(failed_at + 30)
    clock.advance(30)
    queue.sweep()
    w.claimer.forget()
    assert w.run_once()
    record = queue.get(handle.id).record
    assert record.status == Status.DEAD and record.attempt == 2
    assert asked == [("down", 1), ("down", 2)]


def test_a_retry_policy_that_raises_or_answers_nonsense_falls_back_to_the_backoff() -> None:
    for bad in (lambda e, a: 1 / 0, lambda e, a: -5, lambda e, a: "soon"):
        decision = RetryDecision.decide(retryable=True, attempt=1, max_attempts=3, policy=None,
                                        error=RuntimeError("x"), decider=bad)
        assert decision == RetryDecision(True, 0.0, "attempt 1 of 3 failed")
    gave_up = RetryDecision.decide(retryable=True, attempt=1, max_attempts=3, policy=None,
                                   error=RuntimeError("x"), decider=lambda e, a: False)
    assert not gave_up.retry
    no_attempt_left = RetryDecision.decide(retryable=True, attempt=3, max_attempts=3,
                                           policy=None, error=RuntimeError("x"),
                                           decider=lambda e, a: 1.0)
    assert not no_attempt_left.retry  # a policy never adds attempts


def test_retry_after_is_the_documented_name_and_delay_still_works() -> None:
    assert Retry(after=3).delay == 3 and Retry(after=3).after == 3
    assert Retry(delay=4).after == 4
    with pytest.raises(ValueError, match="not both"):
        Retry(after=1, delay=2)
    with pytest.raises(ValueError, match="between 0 s and 7 days"):
        Retry(after=-1)
    decision = RetryDecision.decide(retryable=True, attempt=1, max_attempts=3, policy=None,
                                    error=Retry(after=12), decider=lambda e, a: 99.0)
    assert decision.delay == 12  # the handler's own choice wins over the policy
    assert Kind.RETRYING  # (imported for the reader: the event behind the retry hook)
