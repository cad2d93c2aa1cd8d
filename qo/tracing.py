"""OpenTelemetry traces of submit and run (the ``otel`` extra), at no cost without it.

qo never imports OpenTelemetry itself: it traces only once the application
has (``opentelemetry.trace`` is in ``sys.modules``), which any process that
configured a tracer provider, or runs under ``opentelemetry-instrument``, has
done. Otherwise every function here is one dictionary lookup and returns
``None`` or nothing, so a plain run neither imports nor pays for it.

With it:

- ``producer(queue, ...)`` is the span of one submit (kind PRODUCER, named
  ``send {queue}``), current while the record is built, so that
  ``carrier()`` injects its W3C trace context (``traceparent``,
  ``tracestate``, through the globally configured propagator) into the
  record's ``trace`` field (``qo.protocol.submit.prepare``). Any current
  span is injected, so a task submitted inside a request's span and not
  through ``Queue`` still carries that request's context.
- ``consumer_middleware`` (and ``aconsumer_middleware`` for ``async def``
  handlers) runs first around every attempt (``qo.calls``): a span of kind
  CONSUMER named ``process {queue}``, child of the stored context and linked
  to it, current in the handler's thread, so the handler's own spans nest
  under it. An exception the handler raises is recorded on it.

Attributes follow OpenTelemetry's messaging semantic conventions:
``messaging.system`` = ``qo``, ``messaging.destination.name`` = the queue,
``messaging.operation.type`` = ``send`` / ``process``,
``messaging.operation.name`` = ``submit`` / ``run``, ``messaging.message.id``
= the task id, plus ``qo.task.type`` and (consumer) ``qo.task.attempt``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

#: The instrumentation scope qo's spans are created under.
SCOPE = "qo"
SYSTEM = "qo"


def _trace() -> Any:
    """The ``opentelemetry.trace`` module if the application imported it, else None."""
    return sys.modules.get("opentelemetry.trace")


def active() -> bool:
    """Does this process trace (has the application imported OpenTelemetry)?"""
    return _trace() is not None


def carrier() -> dict[str, str] | None:
    """The current span's W3C trace context as a dict, or None (none, or not tracing)."""
    if _trace() is None:
        return None
    from opentelemetry import propagate

    found: dict[str, str] = {}
    propagate.inject(found)
    return found or None


def _attributes(queue: str, operation: str, kind: str, task_type: str | None,
                task_id: str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.destination.name": queue,
        "messaging.operation.type": kind,
        "messaging.operation.name": operation,
    }
    if task_type is not None:
        attrs["qo.task.type"] = task_type
    if task_id is not None:
        attrs["messaging.message.id"] = task_id
    return attrs


@contextmanager
def producer(queue: str, task_type: str | None = None, *, count: int = 1
             ) -> Iterator[Callable[[str], None] | None]:
    """The PRODUCER span of a submit of ``count`` tasks, current inside the block.

    Yields a function that records the task id once known (None when not tracing).
    """
    trace = _trace()
    if trace is None:
        yield None
        return
    attrs = _attributes(queue, "submit", "send", task_type, None)
    if count != 1:
        attrs["messaging.batch.message_count"] = count
    tracer = trace.get_tracer(SCOPE)
    with tracer.start_as_current_span(f"send {queue}", kind=trace.SpanKind.PRODUCER,
                                      attributes=attrs) as span:
        yield lambda task_id: span.set_attribute("messaging.message.id", task_id)


@contextmanager
def _consumer(ctx: Any, stored: Mapping[str, str] | None) -> Iterator[None]:
    trace = _trace()
    if trace is None:
        yield
        return
    from opentelemetry import propagate

    parent = propagate.extract(dict(stored)) if stored else None
    links = []
    if parent is not None:
        linked = trace.get_current_span(parent).get_span_context()
        if linked.is_valid:
            links.append(trace.Link(linked))
    attrs = _attributes(ctx.queue, "run", "process", ctx.task_type, ctx.task_id)
    attrs["qo.task.attempt"] = ctx.attempt
    tracer = trace.get_tracer(SCOPE)
    with tracer.start_as_current_span(f"process {ctx.queue}", context=parent,
                                      kind=trace.SpanKind.CONSUMER, links=links,
                                      attributes=attrs):
        yield


def consumer_middleware(call: Any, call_next: Callable[[Any], Any]) -> Any:
    """The CONSUMER span around one attempt of a plain handler (a ``qo.middleware``)."""
    with _consumer(call.ctx, call.ctx.trace):
        return call_next(call)


async def aconsumer_middleware(call: Any, call_next: Callable[[Any], Any]) -> Any:
    """The CONSUMER span around one attempt of an ``async def`` handler."""
    with _consumer(call.ctx, call.ctx.trace):
        return await call_next(call)


def middleware(asynchronous: bool) -> list[Callable[..., Any]]:
    """The built-in middleware to put first in the chain: the consumer span, when tracing."""
    if _trace() is None:
        return []
    return [aconsumer_middleware if asynchronous else consumer_middleware]
