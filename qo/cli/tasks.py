"""Task commands (``qo submit`` is in qo/cli/submit.py): show, ls, stats, cancel, retry, pause, resume, sweep.

Each is a thin layer over ``Queue``/``admin``: parse, call, print. Data goes
to stdout (a table, or JSON with ``--json``); notes go to stderr.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from qo.cli import common, dlq, submit
from qo.cli import fleetstats as fleetstats_cli
from qo.cli.common import (
    CliError,
    JsonOption,
    QueueNameOption,
    QueueOption,
    cell,
    emit_json,
    fmt_time,
    note,
    say,
)
from qo.models import Status, TaskRecord
from qo.protocol import admin, backpressure, deps, fleet, records
from qo.protocol.admin import TaskView
from qo.queue import Queue
from qo.store.failures import summary as delete_failures_summary


def register(app: typer.Typer) -> None:
    app.command()(submit.submit)
    app.command()(show)
    app.command("ls")(ls)
    app.command()(stats)
    app.command()(cancel)
    app.command()(retry)
    app.command()(pause)
    app.command()(resume)
    app.command()(sweep)
    dlq.register(app)


# -- show ---------------------------------------------------------------------------


def _dump(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
                        default=str).decode()


def _view_json(queue: Queue, view: TaskView) -> dict[str, Any]:
    data = view.as_dict()
    record = view.record
    if record.has_dependents:  # 1 LIST, only for a task something depends on
        data["dependents"] = deps.dependents_of(queue.store, record.id)
    if record.input_ref:
        data["input"] = records.load_input(queue.store, record)
    if record.result_ref:
        data["result"] = records.load_result(queue.store, record)
    return data


def show(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="ID", help="Task id.")],
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Everything about one task: status, times, input, result, error."""
    q = common.open_queue(ctx, queue)
    view = q.get(task_id)
    data = _view_json(q, view)
    if json:
        emit_json(data)
        return
    r = view.record
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, Any]] = [
        ("id", r.id), ("type", r.type), ("queue", r.queue), ("status", view.status.value),
        ("priority", r.priority), ("attempt", f"{r.attempt}/{r.max_attempts}"),
        ("created", fmt_time(r.created_at)), ("available", fmt_time(r.available_at)),
        ("started", fmt_time(r.started_at)), ("finished", fmt_time(r.finished_at)),
    ]
    optional: list[tuple[str, Any]] = [
        ("timeout", r.timeout and f"{r.timeout:g} s"), ("worker", r.worker),
        ("key", r.idempotency_key),
        ("key expires", r.idempotency_expires_at and fmt_time(r.idempotency_expires_at)),
        ("tags", ", ".join(f"{k}={v}" for k, v in sorted(r.tags.items()))),
        ("cancel reason", r.cancel_reason),
    ]
    rows += [(k, v) for k, v in optional if v]
    if r.depends_on:
        rows.append(("depends on", ", ".join(r.depends_on) + f" ({r.trigger.value})"))
    if data.get("dependents"):
        rows.append(("dependents", ", ".join(data["dependents"])))
    if view.lease is not None:
        lease = view.lease
        rows.append(("lease", f"{lease.kind} by {lease.owner} since {fmt_time(lease.claimed_at)}"))
    rows.append(("input", _dump(data.get("input"))))
    if r.status == Status.SUCCEEDED:
        rows.append(("result", _dump(data.get("result"))))
    if r.error is not None:
        e = r.error
        retryable = "" if e.retryable else ", not retryable"
        rows.append(("error", f"{e.type}: {e.message} (attempt {e.attempt}{retryable})"))
    for name, value in rows:
        table.add_row(cell(name), cell(value))
    con = common.console()
    con.print(table)
    if r.error is not None and r.error.traceback:
        con.print(cell("traceback:"))
        con.print(cell(r.error.traceback.rstrip()))


# -- ls, stats ----------------------------------------------------------------------

_PAGED = admin.PAGED_BY_ID  # where ``--after`` pages by id


def ls(
    ctx: typer.Context,
    status: Annotated[Status | None, typer.Option(help="Only tasks in this status.")] = None,
    queue_name: QueueNameOption = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Page size.")] = 20,
    after: Annotated[str | None, typer.Option(
        metavar="ID", help="Start after this task id (the cursor a full page prints).")] = None,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """List tasks, newest first."""
    if after is not None and status not in _PAGED:
        raise CliError(f"--after cannot page through --status {status}: those come from an "
                       "index ordered by priority and time, not by id")
    q = common.open_queue(ctx, queue)
    page = q.ls_page(status=status, queue=queue_name, limit=limit, after=after)
    views = page.views
    cursor = views[-1].record.id if page.more and status in _PAGED else None
    if json:
        common.emit_listing([v.as_dict() for v in views], more=page.more, next_after=cursor)
        return
    if not views:
        note("no tasks" + (" after " + after if after else ""))
        return
    table = Table()
    for name in ("id", "type", "queue", "status", "priority", "attempt", "finished", "input",
                 "result"):
        table.add_column(name, no_wrap=name == "id")
    for v in views:
        r = v.record
        table.add_row(*map(cell, (r.id, r.type, r.queue, v.status.value, r.priority,
                                  f"{r.attempt}/{r.max_attempts}", fmt_time(r.finished_at),
                                  _brief(r.input if r.input_ref is None else "(offloaded)"),
                                  _brief_outcome(r))))
    common.console().print(table)
    if cursor:
        say(f"next page: --after {cursor}")
    elif page.more:
        note(f"more than {limit} task(s): raise --limit to see them")


def _brief(value: object, width: int = 40) -> str:
    if value is None:
        return ""
    text = orjson.dumps(value).decode() if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


def _brief_outcome(record: TaskRecord) -> str:
    if record.error is not None and record.status != Status.SUCCEEDED:
        return _brief(f"{record.error.type}: {record.error.message}")
    if record.result_ref is not None:
        return "(offloaded)"
    return _brief(record.result) if record.status == Status.SUCCEEDED else ""


_COUNTS = ("pending", "scheduled", "running", "dead")


def stats(
    ctx: typer.Context,
    queue: QueueOption = None,
    json: JsonOption = False,
    fleet_view: Annotated[bool, typer.Option(
        "--fleet", help="The fleet snapshot whoever sweeps writes (1 GET): depth by "
        "priority, oldest ready age, throughput, live workers.")] = False,
    fresh: Annotated[bool, typer.Option(
        help="The fleet snapshot computed now from the indexes (implies --fleet).")] = False,
) -> None:
    """Tasks waiting (the depth), scheduled, running and dead, per queue (from the
    indexes), and each queue's max depth and aging (``qo queue set``)."""
    q = common.open_queue(ctx, queue)
    if fleet_view or fresh:
        fleetstats_cli.show(q, fresh=fresh, json=json)
        return
    counts = q.stats()
    paused = sorted(admin.paused_queues(q.store))
    limits = backpressure.list_settings(q.store)  # 1 LIST (+1 GET per queue with settings)
    table_data = {name: {k: counts.get(name, {}).get(k, 0) for k in _COUNTS}
                  for name in sorted(set(counts) | set(paused) | set(limits))}
    served = fleet.coverage(q.store)  # ready task types no running worker serves
    failed = delete_failures_summary(q.store)  # 1 LIST (+1 GET per reporting process)
    if json:
        emit_json({"queues": table_data, "paused": paused, "unserved": [
            {"queue": u.queue, "type": u.task_type, "ready": u.ready} for u in served.unserved]}
                  | ({"delete_failures": failed.count} if failed.count else {})
                  | ({"settings": {n: s.as_dict() for n, s in limits.items()}} if limits else {}))
        return
    if failed.count:
        note(f"warning: {failed.line()}")
    if not table_data:
        note(f"no queued, running or dead tasks in {q.url}")
        return
    table = Table()
    extra = ("max depth", "aging") if limits else ()
    for name in ("queue", *_COUNTS, "paused", *extra):
        table.add_column(name, justify="left" if name == "queue" else "right")
    for name, row in table_data.items():
        found = limits.get(name)
        more = [cell(found.max_depth if found and found.max_depth else "-"),
                cell(f"{found.aging} s" if found and found.aging else "-")] if limits else []
        table.add_row(cell(name), *(cell(row[k]) for k in _COUNTS),
                      cell("yes" if name in paused else ""), *more)
    common.console().print(table)
    if served.unserved:
        note(served.describe() or "")


# -- cancel, retry, pause, resume, sweep --------------------------------------------


def cancel(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option(help="Recorded on the task.")] = "cancelled by user",
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Cancel a task that has not finished; a running handler learns it at its next heartbeat."""
    view = common.open_queue(ctx, queue).cancel(task_id, reason)
    common.answer(view.as_dict(), f"cancelled {task_id}", json=json)


def retry(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Run a dead, failed (between attempts), scheduled or cancelled task again now, with
    fresh attempts. Pending and running tasks are refused."""
    view = common.open_queue(ctx, queue).retry(task_id)
    common.answer(view.as_dict(), f"retrying {task_id} (status {view.status})", json=json)


def pause(
    ctx: typer.Context,
    queue_name: Annotated[str, typer.Argument(metavar="QUEUE_NAME")],
    queue: QueueOption = None,
) -> None:
    """Stop workers from claiming this queue's tasks (running ones finish)."""
    common.open_queue(ctx, queue).pause(queue_name)
    say(f"paused queue {queue_name}")


def resume(
    ctx: typer.Context,
    queue_name: Annotated[str, typer.Argument(metavar="QUEUE_NAME")],
    queue: QueueOption = None,
) -> None:
    """Let workers claim this queue's tasks again."""
    common.open_queue(ctx, queue).resume(queue_name)
    say(f"resumed queue {queue_name}")


def sweep(
    ctx: typer.Context,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Promote due scheduled tasks and reap expired leases, once (workers do it too)."""
    report = common.open_queue(ctx, queue).sweep(owner="cli-sweep")
    data = {"promoted": report.promoted, "reaped": report.reaped, "next_due": report.next_due,
            "errors": report.errors}
    if json:
        emit_json(data)
        return
    say(f"promoted {report.promoted}, reaped {report.reaped}"
        + (f", next due {fmt_time(report.next_due)}" if report.next_due else ""))
    for err in report.errors:
        note(f"warning: {err}")
