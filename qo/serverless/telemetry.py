"""CloudWatch metrics (Embedded Metric Format) and JSON logs of the Lambda functions.

Both follow Powertools for AWS Lambda (Python), and use it when it is
installed (the ``lambda`` extra; ``requirements.txt`` puts it in the Lambda
package): metrics are written by its ``EphemeralMetrics`` as EMF documents on
stdout, which CloudWatch turns into metrics with no API call, and log lines
are formatted by its ``LambdaPowertoolsFormatter``. Without it the logs are
qo's own JSON lines (``qo.logs.JsonFormatter``) and no metric is written
(a warning says so once): writing EMF by hand would duplicate the library.

Names, as Powertools has them: the namespace is ``POWERTOOLS_METRICS_NAMESPACE``
(default ``qo``; template.yaml sets ``qo/{stack}``) and every metric has the
dimension ``service`` (``POWERTOOLS_SERVICE_NAME``, default ``qo-worker``,
``qo-sweeper`` or ``qo-api``). Log lines carry ``service``, ``cold_start``,
``function_name``, ``function_request_id`` and the fields qo logs with
(``event``, ``task_id``, ...).

Each invocation, one EMF document of what the queue's lifecycle events said
(``qo.hooks``): ``TasksSubmitted``, ``TasksSucceeded``, ``TasksRetried``,
``TasksDead``, ``TasksPromoted``, ``LeasesReaped`` (Count), each only when
not zero, since CloudWatch bills a custom metric for every hour it receives
it. When the sweeper wrote a fleet statistics snapshot
(``qo.protocol.fleetstats``, every ``stats_interval``), in the same document:
``ReadyTasks``, ``RunningTasks``, ``DelayedTasks``, ``DeadTasks`` (Count) and
``OldestReadyAgeSeconds`` (Seconds; 0 when nothing is ready), fleet-wide;
with ``QO_METRICS_PER_QUEUE=1`` also ``ReadyTasks``, ``DeadTasks`` and
``OldestReadyAgeSeconds`` per queue (dimension ``queue``, one document each).
template.yaml's alarms watch ``DeadTasks`` and ``OldestReadyAgeSeconds``.
No request to the store or to CloudWatch: the documents are log lines.
Both only in Lambda (``AWS_LAMBDA_FUNCTION_NAME`` set): run elsewhere
(``infra/invoke.py``), stdout is the handler's answer, not a log.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

from qo.errors import QoError
from qo.hooks import Event, Kind
from qo.logs import JsonFormatter
from qo.protocol.fleetstats import FleetStats
from qo.serverless import Config, runtime

log = logging.getLogger("qo.serverless.telemetry")

#: Lifecycle events counted per invocation, and the metric each one is.
COUNTED = {
    Kind.SUBMITTED: "TasksSubmitted",
    Kind.SUCCEEDED: "TasksSucceeded",
    Kind.RETRYING: "TasksRetried",
    Kind.DEAD: "TasksDead",
    Kind.PROMOTED: "TasksPromoted",
    Kind.REAPED: "LeasesReaped",
}

_lock = threading.Lock()
_counts: Counter[Kind] = Counter()
_connected: weakref.WeakSet[Any] = weakref.WeakSet()  # the Hooks counted into _counts
_snapshot: FleetStats | None = None  # written by this invocation's sweep
_cold = True
_warned = False
_log_handler: logging.Handler | None = None
_undo_logs: Callable[[], None] | None = None


def _config() -> Config:
    try:
        return runtime().config
    except QoError:  # no runtime: the handler reports why
        return Config()


def namespace() -> str:
    return _config().metrics_namespace


def service(default: str) -> str:
    return _config().service_name or default


def _powertools() -> Any:
    """``aws_lambda_powertools.metrics`` or None when it is not installed."""
    try:
        from aws_lambda_powertools import metrics
    except ImportError:
        return None
    return metrics


# -- logs -------------------------------------------------------------------------------


class _LambdaKeys(logging.Filter):
    """Adds the invocation's keys (request id, cold start...) to every qo log record."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, Any] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in self.keys.items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class _Stdout(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler on whatever ``sys.stdout`` is now (Lambda, and tests that capture it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


_keys = _LambdaKeys()


def install_logs(name: str) -> Callable[[], None]:
    """The ``qo`` loggers write one JSON object per line to stdout (instead of the
    runtime's text lines); returns the function that undoes it."""
    global _log_handler
    formatter: logging.Formatter
    try:
        from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
    except ImportError:
        formatter = JsonFormatter()
    else:
        formatter = LambdaPowertoolsFormatter(service=service(name))
    handler = _Stdout()
    handler.setFormatter(formatter)
    handler.addFilter(_keys)
    qo_logger = logging.getLogger("qo")
    qo_logger.addHandler(handler)
    propagate, qo_logger.propagate = qo_logger.propagate, False
    _log_handler = handler

    def undo() -> None:
        global _log_handler
        qo_logger.removeHandler(handler)
        qo_logger.propagate = propagate
        _log_handler = None

    return undo


# -- metrics ----------------------------------------------------------------------------


def _count(event: Event) -> None:
    with _lock:
        _counts[event.kind] += 1


def _connect(hooks: Any) -> None:
    if hooks not in _connected:
        _connected.add(hooks)
        hooks.connect(_count, *COUNTED)


def sweep_snapshot(snapshot: FleetStats | None) -> None:
    """The sweeper wrote this snapshot in this invocation: its gauges go out with it."""
    global _snapshot
    if snapshot is not None:
        _snapshot = snapshot


def _metrics(name: str, dimensions: dict[str, str] | None = None) -> Any:
    module = _powertools()
    if module is None:
        return None
    m = module.EphemeralMetrics(namespace=namespace(), service=service(name))
    for key, value in (dimensions or {}).items():
        m.add_dimension(name=key, value=value)
    return m


def flush(name: str, counts: Counter[Kind], snapshot: FleetStats | None) -> None:
    """Write this invocation's EMF documents to stdout."""
    global _warned
    module = _powertools()
    if module is None:
        if not _warned:
            _warned = True
            log.warning("no CloudWatch metrics: aws-lambda-powertools is not installed "
                        "(pip install 'qo-queue[lambda]')")
        return
    count, seconds = module.MetricUnit.Count, module.MetricUnit.Seconds
    m = _metrics(name)
    written = 0
    for kind, metric in COUNTED.items():
        if counts.get(kind, 0):  # only what happened: an idle hour bills no metric
            m.add_metric(name=metric, unit=count, value=counts[kind])
            written += 1
    if snapshot is not None:
        for metric, field in (("ReadyTasks", "ready"), ("RunningTasks", "running"),
                              ("DelayedTasks", "delayed"), ("DeadTasks", "dead")):
            m.add_metric(name=metric, unit=count, value=snapshot.total(field))
        m.add_metric(name="OldestReadyAgeSeconds", unit=seconds,
                     value=snapshot.oldest_ready_age() or 0.0)
        written += 5
    if written:
        m.flush_metrics()
    per_queue = snapshot is not None and _config().metrics_per_queue
    for queue, q in (snapshot.queues.items() if snapshot is not None and per_queue else ()):
        per = _metrics(name, {"queue": queue})
        per.add_metric(name="ReadyTasks", unit=count, value=q.ready)
        per.add_metric(name="DeadTasks", unit=count, value=q.dead)
        per.add_metric(name="OldestReadyAgeSeconds", unit=seconds,
                       value=q.oldest_ready_age or 0.0)
        per.flush_metrics()


def reset() -> None:
    """Back to a fresh execution environment (tests): logs as before, cold start again."""
    global _cold, _undo_logs, _warned
    if _undo_logs is not None:
        _undo_logs()
        _undo_logs = None
    _cold, _warned = True, False


def instrumented(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a Lambda handler: JSON logs (in Lambda), and one flush of EMF metrics per
    invocation, counting the lifecycle events of the runtime's queue."""

    def wrap(handler: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(handler)
        def instrumented_handler(event: Any = None, context: Any = None) -> Any:
            global _cold, _snapshot, _undo_logs
            in_lambda = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
            if not in_lambda:  # run locally (infra/invoke.py, tests): stdout is not a log
                return handler(event, context)
            if _log_handler is None:
                _undo_logs = install_logs(name)
            _keys.keys = {"cold_start": _cold, "function_name": getattr(
                context, "function_name", None) or name,
                "function_request_id": getattr(context, "aws_request_id", None)}
            _cold = False
            try:
                _connect(runtime().queue.hooks)
            except Exception as exc:  # noqa: BLE001 - the handler itself reports it
                log.debug("no lifecycle events counted: %s", exc)
            with _lock:
                _counts.clear()
                _snapshot = None
            try:
                return handler(event, context)
            finally:
                with _lock:
                    counts, snapshot = Counter(_counts), _snapshot
                try:
                    flush(name, counts, snapshot)
                except Exception:  # metrics never fail an invocation
                    log.exception("writing the invocation's metrics failed")

        return instrumented_handler

    return wrap
