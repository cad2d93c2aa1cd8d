"""The sweeper function: an EventBridge schedule runs it every minute.

Each run, every step independent of the others (one failing is logged and
reported, the rest still run):

1. **Sweep** (``Queue.sweep``): promote due delayed tasks and retries, and reap
   expired leases. Both write ready markers, whose "object created" events
   start the worker: the sweeper triggers that work without invoking anything.
2. **Schedules**: fire due cron schedules (``Queue.fire_schedules``), when
   this version of qo has them.
3. **Retention** (``qo.protocol.retention``): delete finished tasks older than
   ``QO_RETENTION_DAYS`` (default 7; 0 disables), a bounded number per run.
4. **Stats**: write the fleet statistics snapshot (``qo.protocol.fleetstats``)
   when the stored one is older than ``stats_interval`` (300 s): every fifth run.
5. **Kick** (only with ``QO_WORKER_FUNCTION``): if a ready marker of a queue
   the worker serves has sat unclaimed for ``QO_KICK_AFTER`` seconds (its
   event was lost, the queue was resumed, the bucket's notification is not
   wired yet), invoke the worker once, asynchronously, to drain the queue.

Idle cost per run: a LIST of ``delayed/``, a LIST of ``leases/``, a LIST of
``schedules/``, a GET of the retention cursor, and a LIST of ``ready/`` when
the kick is on. See README "Deploy on AWS" for the monthly numbers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from qo.protocol import keys
from qo.protocol.keys import parse_ready_key
from qo.protocol.retention import run_retention
from qo.queue import Queue
from qo.serverless import Runtime, runtime, telemetry
from qo.serverless.events import KICK_EVENT

log = logging.getLogger("qo.serverless.sweeper")

_lambda_client: Any = None
#: Fires due schedules in the sweeper's own step (a module attribute, so tests replace it).
fire_schedules: Callable[[Queue], Any] = Queue.fire_schedules


def plain(value: Any) -> Any:
    """A report object as JSON-ready data."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    return repr(value)


def unclaimed_ready_work(
    queue: Queue,
    *,
    older_than: float,
    queues: list[str] | None = None,
    task_types: set[str] | None = None,
) -> bool:
    """Is there a ready marker, in an unpaused queue we serve, older than ``older_than``?

    One LIST of ``ready/`` (up to 1,000 keys). ``!paused`` sorts before a
    queue's markers, so a paused queue is known before its markers are seen.
    """
    store = queue.store
    now = store.now()
    paused: set[str] = set()
    for info in store.list(keys.READY, limit=1000):
        if info.key.endswith("/" + keys.PAUSED_MARK):
            paused.add(info.key.split("/")[1])
            continue
        marker = parse_ready_key(info.key)
        if marker is None or marker.queue in paused:
            continue
        if queues is not None and marker.queue not in queues:
            continue
        if task_types is not None and marker.handler not in task_types:
            continue
        if now - info.last_modified >= older_than:
            return True
    return False


def invoke_worker(function_name: str) -> None:
    """Start the worker function asynchronously with a kick event."""
    global _lambda_client
    if _lambda_client is None:
        import boto3

        _lambda_client = boto3.client("lambda")
    _lambda_client.invoke(FunctionName=function_name, InvocationType="Event",
                          Payload=orjson.dumps(KICK_EVENT))


@telemetry.instrumented("qo-sweeper")
def handler(event: Any = None, context: Any = None) -> dict[str, Any]:
    """The Lambda entry point of the sweeper function."""
    rt = runtime()
    rt.queue.check_store()  # at cold start: refuse a store that cannot keep qo's guarantees
    started = time.monotonic()
    request_id = str(getattr(context, "aws_request_id", None) or "local")[:36]
    report: dict[str, Any] = {"promoted": 0, "reaped": 0, "schedules": None,
                              "retention": None, "stats": False, "kicked": False,
                              "errors": []}

    def step(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # one step failing must not stop the others
            log.exception("sweeper step %s failed", name, extra={"event": "sweep_error"})
            report["errors"].append(f"{name}: {type(exc).__name__}: {exc}")

    def sweep() -> None:
        owner = f"sweeper-{request_id}"
        swept = rt.queue.sweep(owner=owner, schedules=False)  # schedules: their own step
        report["promoted"], report["reaped"] = swept.promoted, swept.reaped
        report["errors"] += [f"sweep: {e}" for e in swept.errors]

    def schedules() -> None:
        fired = plain(fire_schedules(rt.queue))
        report["schedules"] = fired
        report["errors"] += [f"schedules: {e}" for e in fired.get("errors", [])]

    def retention() -> None:
        days = rt.config.retention_days
        if days > 0:
            done = run_retention(rt.queue.store, days * 86_400,
                                 budget=rt.config.retention_budget)
            report["retention"] = plain(done)

    def stats() -> None:  # at most every stats_interval (qo.protocol.fleetstats)
        snap = rt.queue.refresh_stats(owner=f"sweeper-{request_id}")
        report["stats"] = snap is not None
        telemetry.sweep_snapshot(snap)  # its gauges go out with this invocation's metrics

    def kick() -> None:
        function = rt.config.worker_function
        if function and _stuck(rt):
            invoke_worker(function)
            report["kicked"] = True
            log.info("ready work sat unclaimed: invoked %s", function,
                     extra={"event": "worker_kicked"})

    step("sweep", sweep)
    step("schedules", schedules)
    step("retention", retention)
    step("stats", stats)
    step("kick", kick)
    log.info("sweep: %d promoted, %d reaped%s", report["promoted"], report["reaped"],
             ", kicked the worker" if report["kicked"] else "",
             extra={"event": "sweep_done", "seconds": round(time.monotonic() - started, 3),
                    "promoted": report["promoted"], "reaped": report["reaped"],
                    "sweep_errors": len(report["errors"])})
    return report


def _stuck(rt: Runtime) -> bool:
    queues = rt.config.queues
    types = None
    if rt.app is not None:
        queues = rt.worker_queues()
        types = rt.app.accepted(())
    return unclaimed_ready_work(rt.queue, older_than=rt.config.kick_after, queues=queues,
                                task_types=types)


__all__ = ["fire_schedules", "handler", "invoke_worker", "plain", "unclaimed_ready_work"]
