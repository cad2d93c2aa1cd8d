"""The Python API: decorated functions stay functions; handles await results."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from qo import App, Context, QoError, Queue
from qo.app import AppLoadError, UnknownTaskType, load_app
from qo.store.memory import MemoryStore

from .helpers import drain


def build() -> tuple[Queue, App]:
    queue = Queue(MemoryStore())
    app = App(queue)

    @app.task(priority=200, max_attempts=5)
    def greet(name: str, punctuation: str = "!") -> str:
        """Say hello."""
        return f"hello {name}{punctuation}"

    @app.task
    def whoami(ctx: Context) -> dict:
        return {"id": ctx.task_id, "attempt": ctx.attempt, "left": ctx.time_left()}

    return queue, app


def test_decorated_functions_keep_their_signature_and_stay_callable() -> None:
    _, app = build()
    greet = app.tasks["greet"].fn
    assert greet("ada") == "hello ada!"
    fn = app.task(name="double")(lambda x: 2 * x)
    assert fn(21) == 42 and fn.name == "double"
    params = list(inspect.signature(app.tasks["greet"].fn).parameters)
    assert params == ["name", "punctuation"]


def test_submit_uses_registered_defaults_and_binds_arguments() -> None:
    queue, app = build()
    task = app.tasks["greet"]
    handle = app.submit("greet", {"name": "bob"})
    record = queue.get(handle.id).record
    assert record.priority == task.priority == 200 and record.max_attempts == 5
    with pytest.raises(QoError, match="bad arguments"):
        task.input_for((), {"nom": "x"})
    assert task.input_for(("ada",), {}) == {"name": "ada"}
    with pytest.raises(UnknownTaskType, match="greet"):
        app.submit("nope")


def test_result_and_async_result() -> None:
    queue, app = build()
    first = app.submit("greet", {"name": "ada", "punctuation": "?"})
    second = app.submit("whoami")
    drain(queue, app, [first.id, second.id])
    assert first.result(timeout=5) == "hello ada?"
    got = asyncio.run(second.aresult(timeout=5))
    assert got["id"] == second.id and got["attempt"] == 1 and got["left"] is None


def test_load_app_errors_are_one_line() -> None:
    assert isinstance(load_app("qo.examples.demo:app"), App)
    for spec, text in [("not a spec", "invalid app"), ("no_such_module_qo:app", "cannot import"),
                       ("qo.examples.demo:missing", "no attribute"),
                       ("qo.examples.demo:add", "not a qo.app.App")]:
        with pytest.raises(AppLoadError, match=text) as err:
            load_app(spec)
        assert "\n" not in str(err.value)
