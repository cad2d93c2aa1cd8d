"""Logging setup: readable lines for people, one JSON object per line on request.

While a handler runs, every line carries its task: the runner binds the
attempt's ``task_id``, ``type`` and ``attempt`` to the handler's context
(``task_fields``, a ``contextvars`` variable, so threads and coroutines of
other tasks never see it), and ``TaskFilter`` on the handler of ``setup``
adds them, with the current ``trace_id``, to each record: as fields in JSON,
as a ``[task_id=... type=... attempt=... trace_id=...]`` suffix in text. A
program with its own logging setup adds ``TaskFilter()`` to its handlers.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

_MARK = "_qo_task"  # set on records the filter gave task fields
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", _MARK}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The task whose handler runs in this context: (task id, type, attempt).
_task: contextvars.ContextVar[tuple[str, str, int] | None] = contextvars.ContextVar(
    "qo_task", default=None)


@contextmanager
def task_fields(task_id: str, task_type: str, attempt: int) -> Iterator[None]:
    """Lines logged in this block (and in threads or tasks started from it with a copy
    of its context) carry this task."""
    token = _task.set((task_id, task_type, attempt))
    try:
        yield
    finally:
        _task.reset(token)


def current_task() -> tuple[str, str, int] | None:
    return _task.get()


_otel: Any = None  # opentelemetry.trace, False if not installed, None if not looked up yet


def trace_id() -> str | None:
    """The current OpenTelemetry trace id (32 hex digits), or None without one (or without
    the opentelemetry package). The one place qo's logs ask for it."""
    global _otel
    if _otel is None:
        try:
            _otel = importlib.import_module("opentelemetry.trace")
        except ImportError:
            _otel = False
    if _otel is False:
        return None
    context = _otel.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class TaskFilter(logging.Filter):
    """Adds ``task_id``, ``type``, ``attempt`` and ``trace_id`` ("" without tracing) to
    records logged while a handler runs; fields the caller set itself are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = _task.get()
        if task is not None:
            fields = record.__dict__
            for name, v in zip(("task_id", "type", "attempt"), task, strict=True):
                fields.setdefault(name, v)
            fields.setdefault("trace_id", trace_id() or "")
            fields[_MARK] = True
        return True


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, and the task's fields after the message while a handler runs."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        if not getattr(record, _MARK, False):
            return line
        d = record.__dict__
        return (f"{line} [task_id={d.get('task_id')} type={d.get('type')} "
                f"attempt={d.get('attempt')} trace_id={d.get('trace_id') or ''}]")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


class _InTasksOrWarnings(logging.Filter):
    """The program's lines while a handler runs; other libraries' only from WARNING up
    (what Python prints when nobody configured logging)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or _task.get() is not None


def _handler(json: bool) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(TaskFilter())
    return handler


def setup(level: str = "INFO", json: bool = False, *, handlers_too: bool = False) -> None:
    """Log qo's lines to stderr. ``handlers_too``: also what task handlers log with the
    program's own loggers (and anyone's warnings), when it configured no logging itself."""
    root = logging.getLogger("qo")
    root.handlers[:] = [_handler(json)]
    root.setLevel(level.upper())
    root.propagate = False
    top = logging.getLogger()
    if handlers_too and not top.handlers:
        handler = _handler(json)
        handler.addFilter(_InTasksOrWarnings())
        top.addHandler(handler)
        top.setLevel(level.upper())
