"""The worker function: S3 "object created" events on the ready index start it.

One invocation:

1. reads the event's records; anything that is not a ready marker of this
   queue (another bucket or prefix, ``!paused``, a malformed record) is logged
   and ignored. With nothing left, it returns at once: **no request at all**.
2. claims the task each marker names (best first), unless its queue is
   paused (one HEAD per queue). A duplicate or late event finds the task
   running or done: the lease and the record decide, and the claim returns
   nothing. That is how at-least-once delivery is absorbed.
3. then, while time remains, claims the best task of its queues, until the
   queue is empty (one LIST says so; nothing polls or sleeps).

The deadline is the invocation's remaining time minus ``QO_SAFETY_MARGIN``.
A task is started only if its ``timeout`` (or ``QO_TASK_BUDGET`` when it has
none) fits before the deadline. Otherwise it is released (record untouched,
ready marker written again, lease deleted): the marker's "object created"
event starts the next invocation, with a full time budget. A task whose
timeout can never fit in the function's timeout (``QO_FUNCTION_TIMEOUT``) is
failed at once, without retries, instead of bouncing forever. A handler
without a timeout that runs into the deadline is stopped there: its attempt
fails with ``InvocationDeadline`` and is retried with backoff, so the lease is
never left to expire when the function times out.

An event can also arrive before its task's record (the submitter writes the
marker first): the claim leaves the marker alone, and the sweeper's kick
picks the task up a minute or two later if no other invocation has.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from qo import eventlog, lifecycle
from qo.app import App
from qo.errors import ErrorKind, QoError
from qo.limiter import Limiter
from qo.protocol import keys, outcome
from qo.protocol.claim import Claim, Claimer
from qo.runner import Runner, TaskTimeout
from qo.serverless import Config, runtime, telemetry
from qo.serverless.events import WorkerEvent, parse_worker_event

log = logging.getLogger("qo.serverless.worker")


class InvocationDeadline(TaskTimeout):
    """The attempt ran into the Lambda invocation's deadline."""


class TaskTooLong(QoError):
    """The task's timeout does not fit in the worker function's timeout."""

    kind = ErrorKind.MISCONFIGURED


class InvocationFailed(QoError):
    """The store failed during the invocation; raised so that Lambda retries the event."""

    kind = ErrorKind.UNAVAILABLE


@dataclass
class InvocationReport:
    """What one invocation did (returned, and logged as one line)."""

    records: int = 0
    ignored: int = 0
    kick: bool = False
    markers: int = 0  # distinct ready markers the event named
    stale: int = 0  # named markers whose task was already taken, done or gone
    paused: int = 0  # named markers of a paused queue (left for after `qo resume`)
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    released: int = 0  # handed back: not enough time left in this invocation
    rejected: int = 0  # timeout longer than the function's: failed without retry
    fenced: int = 0
    stopped: str = ""
    errors: list[str] = field(default_factory=list)


def remaining_seconds(context: Any, config: Config) -> float:
    """Seconds until the invocation times out (the function timeout without a context)."""
    get = getattr(context, "get_remaining_time_in_millis", None)
    if get is None:
        return config.function_timeout
    return max(0.0, get() / 1000.0)


@telemetry.instrumented("qo-worker")
def handler(event: Any, context: Any = None) -> dict[str, Any]:
    """The Lambda entry point of the worker function."""
    rt = runtime()
    rt.queue.check_store()  # at cold start: refuse a store that cannot keep qo's guarantees
    app = rt.require_app()
    started = time.monotonic()
    deadline = started + remaining_seconds(context, rt.config) - rt.config.safety_margin
    queues = rt.worker_queues()
    store = rt.queue.store
    parsed = parse_worker_event(event, bucket=getattr(store, "bucket", None),
                                prefix=getattr(store, "prefix", ""))
    report = InvocationReport(records=parsed.records, ignored=parsed.ignored, kick=parsed.kick)
    _drop_foreign(parsed, queues, app.accepted(()), report)
    if not parsed.markers and not parsed.kick:
        report.stopped = "no ready marker in the event"
        _log(report, started)
        return asdict(report)
    if not rt.published:  # first work of a container: the registry (1 GET per type, a PUT if changed)
        rt.published = True
        try:
            app.publish(rt.queue.store, owner="lambda-worker")
        except QoError as exc:
            log.warning("publishing the task types failed: %s", exc)
    request_id = getattr(context, "aws_request_id", None) or "local"
    owner = f"lambda-{str(request_id)[:36]}"
    q = rt.queue
    limiter = Limiter(q.store, app.limits, owner=owner) if app.limits else None
    invocation = Invocation(
        app=app, deadline=deadline,
        claimer=Claimer(q.store, q.settings, queues=queues, task_types=app.accepted(()),
                        owner=owner, spread=1, hooks=q.hooks, labels=frozenset(),
                        admission=[limiter.admit] if limiter else [], gate=limiter),
        runner=Runner(app, q.store, q.settings, hooks=q.hooks, deadline=deadline,
                      deadline_error=InvocationDeadline))
    disconnect = eventlog.connect(q.hooks, owner)
    stop_hooks = lifecycle.connect(app.lifecycle, q.hooks, owner, app.type_names())
    stop_limits = limiter.connect(q.hooks) if limiter else (lambda: None)
    try:
        _work(invocation, parsed, rt.config, report)
    finally:
        disconnect()
        stop_hooks()
        stop_limits()
    summary = invocation.runner.summary
    report.succeeded, report.failed = summary.succeeded, summary.failed
    report.fenced = summary.fenced
    report.released += summary.released
    _log(report, started)
    if report.errors:
        raise InvocationFailed(f"{len(report.errors)} store error(s), first: {report.errors[0]}")
    return asdict(report)


def _drop_foreign(parsed: WorkerEvent, queues: list[str], types: set[str],
                  report: InvocationReport) -> None:
    """Markers of queues or task types this worker does not serve cost no request."""
    kept = []
    for item in parsed.markers:
        if item.marker.queue not in queues or item.marker.handler not in types:
            log.info("ignored marker %s: queue or task type not served here", item.key,
                     extra={"event": "record_ignored", "reason": "not served here"})
            report.ignored += 1
            continue
        kept.append(item)
    parsed.markers = kept
    report.markers = len(parsed.best_first())


@dataclass
class Invocation:
    """What one invocation works with: a claimer and a runner (``qo.runner``)."""

    app: App
    claimer: Claimer
    runner: Runner
    deadline: float  # time.monotonic() instant: the invocation's end less the margin


def _time_left(worker: Invocation) -> float:
    return worker.deadline - time.monotonic()


def _work(worker: Invocation, parsed: WorkerEvent, config: Config,
          report: InvocationReport) -> None:
    paused: dict[str, bool] = {}
    for item in parsed.best_first():
        if _time_left(worker) <= 0:
            report.stopped = "no time left"
            return
        queue = item.marker.queue
        try:
            if queue not in paused:  # one HEAD per queue: a paused queue runs nothing
                paused[queue] = worker.runner.store.head(keys.paused_key(queue)) is not None
            if paused[queue]:
                report.paused += 1
                continue
            claim = worker.claimer.claim_marker(item.key, item.event_time)
        except QoError as exc:
            report.errors.append(f"claim {item.key}: {exc}")
            log.warning("claiming %s failed: %s", item.key, exc, extra={"event": "claim_error"})
            continue
        if claim is None:
            report.stale += 1
            continue
        if not _run(worker, claim, config, report):
            return
    while True:
        if _time_left(worker) <= 0:
            report.stopped = "no time left"
            return
        try:
            claim = worker.claimer.claim()
        except QoError as exc:
            report.errors.append(f"claim: {exc}")
            log.warning("claim failed: %s", exc, extra={"event": "claim_error"})
            report.stopped = "store error"
            return
        if claim is None:
            report.stopped = "queue empty"
            return
        if not _run(worker, claim, config, report):
            return


def _run(worker: Invocation, claim: Claim, config: Config, report: InvocationReport) -> bool:
    """Run a claimed task if it fits; False when this invocation should stop claiming."""
    report.claimed += 1
    record = claim.record
    timeout = record.timeout
    if timeout is None:  # the handler's declared timeout applies whoever submitted the task
        definition = worker.app.handler_for(record.type, record.version)
        timeout = definition.timeout if definition is not None else None
    budget = timeout if timeout is not None else config.task_budget
    extra = {"task_id": record.id, "type": record.type, "budget": budget}
    try:
        if budget + config.safety_margin > config.function_timeout:
            exc = TaskTooLong(
                f"task timeout {budget:g} s does not fit in the worker function's timeout "
                f"({config.function_timeout:g} s, less a {config.safety_margin:g} s margin); "
                "run it on a long-lived worker (qo worker) or shorten it")
            info = outcome.error_info(exc, claim.attempt, retryable=False)
            outcome.fail(worker.runner.store, claim, info, retryable=False,
                         hooks=worker.runner.hooks)
            report.rejected += 1
            log.warning("task %s rejected: %s", record.id, exc,
                        extra={"event": "task_rejected", **extra})
            return True
        left = _time_left(worker)
        if budget > left:
            log.info("task %s needs %g s, %.1f s left: handing it back", record.id, budget,
                     left, extra={"event": "not_enough_time", **extra})
            outcome.release(worker.runner.store, claim, hooks=worker.runner.hooks)
            report.released += 1
            report.stopped = "no time left"
            return False
        worker.runner.run(claim)
    except QoError as exc:  # the store failed us: a lease we hold expires, the sweeper reaps it
        report.errors.append(f"task {record.id}: {exc}")
        log.warning("task %s: %s", record.id, exc, extra={"event": "outcome_error", **extra})
        report.stopped = "store error"
        return False
    return True


def _log(report: InvocationReport, started: float) -> None:
    log.info(
        "invocation: %d marker(s), %d claimed, %d succeeded, %d failed, %d released (%s)",
        report.markers, report.claimed, report.succeeded, report.failed, report.released,
        report.stopped or "done",
        extra={"event": "invocation_done", "seconds": round(time.monotonic() - started, 3),
               **{k: v for k, v in asdict(report).items() if k != "errors"}},
    )


__all__ = ["InvocationDeadline", "InvocationReport", "TaskTooLong", "handler"]
