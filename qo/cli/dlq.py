"""Dead-letter commands: ``qo dlq ls``, ``qo dlq retry``, ``qo dlq purge``.

Dead tasks ran out of attempts (or failed with ``Fatal``); they stay in the
``dead/`` index until retried or purged.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from qo.cli import common
from qo.cli.common import (
    CliError,
    JsonOption,
    QueueNameOption,
    QueueOption,
    cell,
    fmt_time,
    note,
    say,
)
from qo.errors import QoError
from qo.models import ErrorInfo, Status
from qo.protocol import admin
from qo.protocol.admin import TaskView
from qo.queue import Queue


def register(app: typer.Typer) -> None:
    common.add_group(app, "dlq", "Dead-letter queue: tasks that ran out of attempts.",
                     {"ls": dlq_ls, "retry": dlq_retry, "purge": dlq_purge})



def _dead(q: Queue, queue_name: str | None) -> list[TaskView]:
    return q.ls(status=Status.DEAD, queue=queue_name, limit=sys.maxsize)


def dlq_ls(
    ctx: typer.Context,
    queue_name: QueueNameOption = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 50,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Dead tasks and why they died."""
    page = common.open_queue(ctx, queue).ls_page(status=Status.DEAD, queue=queue_name,
                                                 limit=limit)
    views = page.views
    if json:
        common.emit_listing([v.as_dict() for v in views], more=page.more)
        return
    if not views:
        note("no dead tasks")
        return
    table = Table()
    for name in ("id", "type", "queue", "attempts", "finished", "error"):
        table.add_column(name, no_wrap=name == "id")
    for v in views:
        r, e = v.record, v.record.error
        table.add_row(*map(cell, (r.id, r.type, r.queue, r.attempt, fmt_time(r.finished_at),
                                  _short_error(e))))
    common.console().print(table)
    if page.more:
        note(f"more than {limit} dead task(s): raise --limit to see them")


def _short_error(error: ErrorInfo | None, width: int = 100) -> str:
    """First line of the error, for a table cell (``qo show`` has all of it)."""
    if error is None:
        return ""
    lines = error.message.strip().splitlines()
    text = f"{error.type}: {lines[0] if lines else ''}"
    return text if len(text) <= width and len(lines) <= 1 else text[: width - 1] + "…"


def dlq_retry(
    ctx: typer.Context,
    task_ids: Annotated[list[str] | None, typer.Argument(
        metavar="ID", help="Dead tasks to run again.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead task (of --queue-name).")] = False,
    queue_name: QueueNameOption = None,
    queue: QueueOption = None,
) -> None:
    """Run dead tasks again, with fresh attempts."""
    if bool(task_ids) == all_:
        raise CliError("give task ids or --all (not both)")
    if task_ids and queue_name:
        raise CliError("--queue-name only filters --all")
    q = common.open_queue(ctx, queue)
    ids = list(task_ids or []) or [v.record.id for v in _dead(q, queue_name)]
    failures: list[str] = []
    with common.progress(len(ids), "retrying") as advance:
        for task_id in ids:
            try:
                q.retry(task_id)
            except QoError as exc:
                if len(ids) == 1:
                    raise
                failures.append(f"{task_id}: {exc}")
            advance(1)
    for failure in failures:
        note(f"warning: {failure}")
    say(f"retried {len(ids) - len(failures)} task(s)")
    if failures:
        raise CliError(f"{len(failures)} of {len(ids)} task(s) could not be retried")


def dlq_purge(
    ctx: typer.Context,
    queue_name: QueueNameOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    queue: QueueOption = None,
) -> None:
    """Delete dead tasks for good (records and payloads)."""
    q = common.open_queue(ctx, queue)
    counts = q.stats()
    dead = sum(c.get("dead", 0) for name, c in counts.items()
               if queue_name is None or name == queue_name)
    where = f"queue {queue_name}" if queue_name else "all queues"
    if not yes:
        if not common.is_interactive():
            raise CliError("refusing to purge without confirmation: pass --yes")
        if not typer.confirm(f"Delete {dead} dead task(s) in {where} of {q.url} for good?",
                             err=True):
            raise CliError("purge cancelled; nothing deleted")
    with common.spinner("purging dead tasks"):
        purged = admin.purge_dead(q.store, q.settings, queue_name)
    say(f"purged {purged} dead task(s) from {where}")
