"""Every line logged while a handler runs carries its task (issue 19): id, type, attempt,
trace id; in JSON and text, from ctx.log, the program's own loggers, async handlers and
the threads of async middleware."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from qo import logs
from qo.app import App
from qo.context import Context
from qo.middleware import TaskCall
from qo.queue import Queue
from qo.store.memory import MemoryStore
from qo.worker import Worker, WorkerOptions

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """What ``logs.setup`` would write, in JSON and in text, from qo's loggers and the rest."""
    qo_log, top = logging.getLogger("qo"), logging.getLogger()
    saved = (qo_log.handlers[:], qo_log.level, qo_log.propagate, top.handlers[:], top.level)
    as_json, as_text = io.StringIO(), io.StringIO()
    handlers = []
    for stream, formatter in ((as_json, logs.JsonFormatter()), (as_text, logs.TextFormatter())):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        handler.addFilter(logs.TaskFilter())
        handlers.append(handler)
    qo_log.handlers[:], qo_log.propagate = handlers, False
    qo_log.setLevel(logging.INFO)
    top.handlers[:] = handlers
    top.setLevel(logging.INFO)
    try:
        yield as_json, as_text
    finally:
        qo_log.handlers[:], qo_log.level, qo_log.propagate, top.handlers[:], top.level = saved


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def by_msg(stream: io.StringIO, msg: str) -> dict[str, Any]:
    found = [line for line in lines(stream) if line["msg"] == msg]
    assert len(found) == 1, stream.getvalue()
    return found[0]


def run_all(queue: Queue, app: App) -> None:
    worker = Worker(app, queue, WorkerOptions(concurrency=1, burst=True))
    while worker.run_once():
        pass


def test_lines_logged_by_a_handler_carry_its_task(captured: Any) -> None:
    as_json, as_text = captured
    queue = Queue(MemoryStore())
    app = App(queue)
    mine = logging.getLogger("myproject.tasks")

    @app.task(max_attempts=2, retry={"base": 0, "cap": 0})
    def work(ctx: Context) -> None:
        ctx.log.info("from ctx.log, attempt %d", ctx.attempt)
        mine.warning("from my logger, attempt %d", ctx.attempt, extra={"type": "mine"})
        if ctx.attempt == 1:
            raise RuntimeError("once")

    handle = app.submit("work")
    logging.getLogger("myproject.tasks").info("outside any handler")
    run_all(queue, app)
    line = by_msg(as_json, "from ctx.log, attempt 1")
    assert line["logger"] == "qo.task.work"
    assert (line["task_id"], line["type"], line["attempt"], line["trace_id"]) == (
        handle.id, "work", 1, "")
    second = by_msg(as_json, "from my logger, attempt 2")
    assert (second["task_id"], second["attempt"]) == (handle.id, 2)
    assert second["type"] == "mine"  # a field the caller set itself is kept
    outside = by_msg(as_json, "outside any handler")
    assert "task_id" not in outside and "trace_id" not in outside
    text = as_text.getvalue().splitlines()
    assert any(t.endswith(f"qo.task.work: from ctx.log, attempt 1 [task_id={handle.id} type=work "
                          "attempt=1 trace_id=]") for t in text), text
    assert any(t.endswith("outside any handler") for t in text), text


def test_async_handlers_and_async_middleware_threads_carry_their_task(captured: Any) -> None:
    as_json, _ = captured
    queue = Queue(MemoryStore())
    app = App(queue)

    @app.middleware
    async def around(call: TaskCall, call_next: Any) -> Any:
        logging.getLogger("mw").info("middleware of %s", call.task_type)
        return await call_next(call)

    @app.task
    def plain(ctx: Context) -> None:  # runs in a thread of its own below `around`
        ctx.log.info("plain handler")

    @app.task
    async def coro(ctx: Context) -> None:
        await asyncio.sleep(0)
        ctx.log.info("async handler")

    ids = {"plain": app.submit("plain").id, "coro": app.submit("coro").id}
    worker = Worker(app, queue, WorkerOptions(concurrency=2, burst=True, poll_max=0.1))
    summary = worker.run()
    assert summary.succeeded == 2
    assert by_msg(as_json, "plain handler")["task_id"] == ids["plain"]
    assert by_msg(as_json, "async handler")["task_id"] == ids["coro"]
    assert by_msg(as_json, "middleware of plain")["task_id"] == ids["plain"]
    assert by_msg(as_json, "middleware of coro")["task_id"] == ids["coro"]


def test_the_trace_id_is_the_current_spans(captured: Any) -> None:
    from opentelemetry import trace  # the API comes with the test extra
    as_json, as_text = captured
    queue = Queue(MemoryStore())
    app = App(queue)
    span = trace.NonRecordingSpan(trace.SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736, span_id=0x00F067AA0BA902B7,
        is_remote=False))

    @app.task
    def traced(ctx: Context) -> None:
        with trace.use_span(span):
            ctx.log.info("in a span")
        ctx.log.info("after it")

    app.submit("traced")
    run_all(queue, app)
    assert by_msg(as_json, "in a span")["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert by_msg(as_json, "after it")["trace_id"] == ""
    assert "trace_id=4bf92f3577b34da6a3ce929d0e0e4736]" in as_text.getvalue()


def test_without_opentelemetry_there_is_no_trace_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)  # import raises ImportError
    monkeypatch.setattr(logs, "_otel", None)
    assert logs.trace_id() is None
    with logs.task_fields("t1", "work", 3):
        record = logging.makeLogRecord({"msg": "x"})
        assert logs.TaskFilter().filter(record)
    assert (record.task_id, record.type, record.attempt, record.trace_id) == (  # type: ignore[attr-defined]
        "t1", "work", 3, "")
    assert logs.current_task() is None


def test_qo_worker_logging_takes_the_programs_lines_while_handlers_run(
        capsys: pytest.CaptureFixture[str]) -> None:
    qo_log, top = logging.getLogger("qo"), logging.getLogger()
    saved = (qo_log.handlers[:], qo_log.level, qo_log.propagate, top.handlers[:], top.level)
    top.handlers[:] = []  # a program that configured no logging
    try:
        logs.setup("info", json=True, handlers_too=True)
        other = logging.getLogger("somelibrary")
        other.info("chatter outside any handler")
        other.warning("a warning outside any handler")
        with logs.task_fields("t1", "work", 1):
            other.info("a handler's line")
        logging.getLogger("qo.worker").info("qo's own line")
    finally:
        qo_log.handlers[:], qo_log.level, qo_log.propagate, top.handlers[:], top.level = saved
    out = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(o["msg"], o.get("task_id")) for o in out] == [
        ("a warning outside any handler", None), ("a handler's line", "t1"), ("qo's own line", None)]
