"""OpenTelemetry traces (qo.tracing): submit and run in one trace, linked; free without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from qo.app import App
from qo.models import Status, TaskRecord, dumps, loads
from qo.protocol import keys
from qo.queue import Queue
from qo.store.memory import MemoryStore
from qo.testing.drain import drain

from .helpers import FakeClock


def _install(provider: TracerProvider | None) -> None:
    """Set (or clear) the global tracer provider, as OpenTelemetry's own test utilities do."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    if provider is not None:
        trace.set_tracer_provider(provider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _install(provider)
    try:
        yield exporter
    finally:
        _install(None)


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def traced_app(store: MemoryStore) -> tuple[Queue, App]:
    queue = Queue(store)
    app = App(queue)
    tracer = trace.get_tracer("the-app")

    @app.task
    def work(ctx: Any, n: int = 0) -> int:
        with tracer.start_as_current_span("handler work"):
            if n < 0 and ctx.attempt == 1:
                raise ValueError("first attempt fails")
            return n

    @app.task
    async def awork(ctx: Any, n: int = 0) -> int:
        with tracer.start_as_current_span("async handler work"):
            return n

    return queue, app


def test_submit_and_run_are_one_trace_and_the_run_links_the_submit(
    spans: InMemorySpanExporter,
) -> None:
    store = MemoryStore()
    queue, app = traced_app(store)
    with trace.get_tracer("the-app").start_as_current_span("POST /orders"):
        handle = queue.submit("work", {"n": 1})
    record = queue.get(handle.id).record
    assert record.trace is not None and record.trace["traceparent"].startswith("00-")
    drain(queue, app, [handle.id])
    assert queue.get(handle.id).status == Status.SUCCEEDED
    named = by_name(spans)
    [request], [send], [process], [inner] = (named["POST /orders"], named["send default"],
                                             named["process default"], named["handler work"])
    trace_id = request.context.trace_id
    assert {s.context.trace_id for s in (send, process, inner)} == {trace_id}
    assert send.kind is SpanKind.PRODUCER and send.parent is not None
    assert send.parent.span_id == request.context.span_id
    assert process.kind is SpanKind.CONSUMER and process.parent is not None
    assert process.parent.span_id == send.context.span_id  # continues the stored context
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert inner.parent is not None and inner.parent.span_id == process.context.span_id
    assert record.trace["traceparent"].startswith(
        f"00-{trace_id:032x}-{send.context.span_id:016x}-")  # the producer's context
    attrs = dict(process.attributes or {})
    assert attrs == {"messaging.system": "qo", "messaging.destination.name": "default",
                     "messaging.operation.type": "process", "messaging.operation.name": "run",
                     "messaging.message.id": handle.id, "qo.task.type": "work",
                     "qo.task.attempt": 1}
    assert dict(send.attributes or {})["messaging.message.id"] == handle.id
    assert dict(send.attributes or {})["messaging.operation.type"] == "send"


def test_each_attempt_is_a_consumer_span_linked_to_the_one_submit(
    spans: InMemorySpanExporter,
) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue, app = traced_app(store)
    handle = queue.submit("work", {"n": -1})  # no span around it: the submit's own is the root
    drain(queue, app, [handle.id], clock=clock)
    assert queue.get(handle.id).status == Status.SUCCEEDED
    named = by_name(spans)
    [send] = named["send default"]
    assert send.parent is None
    first, second = sorted(named["process default"],
                           key=lambda s: dict(s.attributes or {})["qo.task.attempt"])
    for span in (first, second):
        assert span.context.trace_id == send.context.trace_id
        assert [link.context.span_id for link in span.links] == [send.context.span_id]
    assert first.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in first.events)  # the handler's error, recorded
    assert second.status.status_code is not StatusCode.ERROR
    assert len(named["handler work"]) == 2


def test_an_async_handlers_spans_nest_under_its_consumer_span(
    spans: InMemorySpanExporter,
) -> None:
    store = MemoryStore()
    queue, app = traced_app(store)
    handle = queue.submit("awork", {"n": 2})
    drain(queue, app, [handle.id])
    named = by_name(spans)
    [process], [inner] = named["process default"], named["async handler work"]
    assert inner.parent is not None and inner.parent.span_id == process.context.span_id
    assert process.context.trace_id == named["send default"][0].context.trace_id


def test_a_worker_on_an_event_loop_traces_each_async_attempt(
    spans: InMemorySpanExporter,
) -> None:
    from qo.aio_runner import AsyncRunner
    from qo.worker import Worker, WorkerOptions

    store = MemoryStore()
    queue, app = traced_app(store)
    handles = [queue.submit("awork", {"n": n}) for n in range(3)]
    worker = Worker(app, queue, WorkerOptions(concurrency=3, burst=True))
    assert isinstance(worker.runner, AsyncRunner)
    assert worker.run().succeeded == 3
    named = by_name(spans)
    sends = {s.context.span_id for s in named["send default"]}
    processes = named["process default"]
    assert len(processes) == 3 and {p.parent.span_id for p in processes if p.parent} == sends
    by_id = {p.context.span_id for p in processes}
    inner = named["async handler work"]
    assert len(inner) == 3 and {i.parent.span_id for i in inner if i.parent} == by_id
    assert {dict(p.attributes or {})["messaging.message.id"] for p in processes} == {
        h.id for h in handles}


def test_a_batch_is_one_producer_span_that_every_task_continues(
    spans: InMemorySpanExporter,
) -> None:
    store = MemoryStore()
    queue, app = traced_app(store)
    handles = queue.submit_many([{"type": "work", "input": {"n": n}} for n in range(3)])
    drain(queue, app, [h.id for h in handles])
    named = by_name(spans)
    [send] = named["send default"]
    assert dict(send.attributes or {})["messaging.batch.message_count"] == 3
    assert len(named["process default"]) == 3
    assert {p.parent.span_id for p in named["process default"] if p.parent} == {
        send.context.span_id}


def test_the_apis_batch_is_one_producer_span(spans: InMemorySpanExporter) -> None:
    from qo import serverless

    from .helpers import api_call

    serverless.reset()
    try:
        queue, _app = traced_app(MemoryStore())
        serverless.configure(queue=queue)
        status, body = api_call("POST", "/tasks/batch", {"tasks": [{"type": "work"}] * 2})
        assert status == 201, body
    finally:
        serverless.reset()
    [send] = by_name(spans)["send default"]
    assert dict(send.attributes or {})["messaging.batch.message_count"] == 2


def test_a_record_without_trace_context_runs_as_a_new_trace(
    spans: InMemorySpanExporter,
) -> None:
    store = MemoryStore()
    queue, app = traced_app(store)
    _install(None)  # submitted without tracing (an older qo, or no provider)
    handle = queue.submit("work", {"n": 1})
    assert queue.get(handle.id).record.trace is None
    _install(_provider_for(spans))
    drain(queue, app, [handle.id])
    [process] = by_name(spans)["process default"]
    assert process.parent is None and list(process.links) == []


def _provider_for(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_the_trace_field_is_schema_version_3_and_only_written_when_used() -> None:
    base = {"id": "t1", "queue": "default", "type": "ok", "input_hash": "h",
            "created_at": 0.0, "available_at": 0.0}
    plain = TaskRecord.model_validate(base)
    assert orjson.loads(dumps(plain))["v"] == 1 and "trace" not in orjson.loads(dumps(plain))
    labelled = plain.model_copy(update={"labels": ["gpu"]})
    assert orjson.loads(dumps(labelled))["v"] == 2
    context = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    traced = plain.model_copy(update={"trace": context})
    body = orjson.loads(dumps(traced))
    assert body["v"] == 3 and body["trace"] == context
    assert loads(TaskRecord, dumps(traced), "record").trace == context
    assert loads(TaskRecord, orjson.dumps({**base, "v": 2}), "record").trace is None


def test_without_a_provider_nothing_is_stored() -> None:
    """Tracing imported but no provider set (and no span current): records stay as before."""
    _install(None)
    store = MemoryStore()
    queue = Queue(store)
    handle = queue.submit("work", {"n": 1})
    body = orjson.loads(store.get(keys.task_key(handle.id)).body)  # type: ignore[union-attr]
    assert "trace" not in body and body["v"] == 1


@pytest.mark.slow  # a Python process of its own
def test_a_plain_run_never_imports_opentelemetry() -> None:
    script = textwrap.dedent("""
        import sys
        from qo.app import App
        from qo.queue import Queue
        from qo.store.memory import MemoryStore
        from qo.testing.drain import drain

        queue = Queue(MemoryStore())
        app = App(queue)

        @app.task
        def work(ctx, n=0):
            return n

        handle = queue.submit("work", {"n": 1})
        queue.submit_many([{"type": "work", "input": {"n": 2}}])
        drain(queue, app)
        assert queue.get(handle.id).status == "succeeded"
        assert queue.get(handle.id).record.trace is None
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        print("loaded:", loaded)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "loaded: []"
