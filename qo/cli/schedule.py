"""``qo schedule``: cron and interval schedules (add, list, show, pause, resume,
trigger, remove) and ``qo schedule run``, the scheduler daemon.

A thin layer over ``qo.scheduler``: parse, call, print. Data goes to stdout
(a table, or JSON with ``--json``); notes and logs go to stderr. Times of a
schedule's slots are shown in its time zone; other times in local time.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from qo import logs, scheduler
from qo.cli import common
from qo.cli.common import (
    CliError,
    JsonOption,
    QueueOption,
    as_param,
    cell,
    emit_json,
    fmt_time,
    note,
    say,
)
from qo.cli.submit import read_json_arg
from qo.cli.worker import LogFormat, LogLevel, _restored_process_state
from qo.cron import format_duration, iso_in_zone
from qo.errors import InvalidName
from qo.protocol import admin
from qo.queue import Queue
from qo.scheduler import Schedule

log = logging.getLogger("qo.scheduler")

#: Upcoming fire times shown by ``qo schedule show``.
UPCOMING = 5


class CatchUpPolicy(StrEnum):
    none = "none"
    latest = "latest"
    all = "all"


def register(app: typer.Typer) -> None:
    common.add_group(
        app, "schedule", "Cron and interval schedules: tasks submitted on a timetable.",
        {"add": schedule_add, "list": schedule_list, "show": schedule_show,
         "pause": schedule_pause, "resume": schedule_resume, "trigger": schedule_trigger,
         "remove": schedule_remove, "run": schedule_run})


NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Schedule name.", show_default=False)]
_Duration = as_param(common.parse_duration)
_Time = as_param(common.parse_datetime)


# -- formatting ---------------------------------------------------------------------


def in_zone(ts: float | None, tz: str) -> str:
    """Epoch seconds as ISO 8601 in the schedule's time zone, or '-'."""
    return iso_in_zone(ts, tz)


def _task_status(queue: Queue, task_id: str) -> str | None:
    """The task's status (one GET, two while it waits), or None if it is gone."""
    try:
        return admin.show(queue.store, task_id).status.value
    except (admin.TaskNotFound, InvalidName):
        return None


def _as_dict(sched: Schedule) -> dict[str, Any]:
    data = sched.model_dump(mode="json")
    data["description"] = sched.describe()
    return data


def _next_run(sched: Schedule) -> str:
    return fmt_time(sched.next_slot) if sched.next_slot is not None else "never (past its end)"


def _seconds(value: float | None) -> str:
    return "-" if value is None else format_duration(value) if value else "0s"


# -- add ----------------------------------------------------------------------------


def schedule_add(
    ctx: typer.Context,
    name: NameArg,
    task_type: Annotated[str, typer.Option(
        "--task", metavar="TYPE", help="Task type to submit at each slot.", show_default=False)],
    input: Annotated[str | None, typer.Option(
        "--input", "-i", metavar="JSON|@FILE|-",
        help="Task input: inline JSON, @file.json, or - for stdin.")] = None,
    cron: Annotated[str | None, typer.Option(
        metavar="EXPR", help='Cron expression, e.g. "*/5 * * * *" or @daily.')] = None,
    tz: Annotated[str | None, typer.Option(
        metavar="ZONE", help="IANA time zone of the cron expression, e.g. Europe/Paris (default: UTC).")] = None,
    every: Annotated[float | None, typer.Option(
        parser=_Duration, metavar="DURATION",
        help="Fixed interval instead of cron: 30s, 5m, 1h, 2d.")] = None,
    priority: Annotated[int | None, typer.Option(
        min=0, max=255, help="0-255, higher runs first (default: 128).")] = None,
    queue_name: Annotated[str | None, typer.Option(
        "--queue-name", metavar="NAME", help="Queue the tasks go to (default: default).")] = None,
    max_attempts: Annotated[int | None, typer.Option(
        min=1, help="Attempts before a task is dead (default: 3).")] = None,
    timeout: Annotated[float | None, typer.Option(
        parser=_Duration, metavar="SECONDS", help="Per-attempt time limit.")] = None,
    catchup: Annotated[CatchUpPolicy | None, typer.Option(
        case_sensitive=False,
        help="Slots missed by more than the misfire grace: skip them (none), run the "
        "latest, or run all (up to --catchup-limit). Default: none.")] = None,
    catchup_limit: Annotated[int | None, typer.Option(
        min=1, max=scheduler.HISTORY, help="Most missed slots run by --catchup all (default: 10).",
    )] = None,
    misfire_grace: Annotated[float | None, typer.Option(
        parser=_Duration, metavar="SECONDS",
        help="A slot this late still fires on time (default: 120).")] = None,
    start: Annotated[datetime | None, typer.Option(
        parser=_Time, metavar="ISO8601",
        help="No slot before this time, with a time zone (2030-01-31T09:00:00Z).")] = None,
    end: Annotated[datetime | None, typer.Option(
        parser=_Time, metavar="ISO8601",
        help="No slot after this time, with a time zone; it must leave a slot ahead.")] = None,
    jitter: Annotated[float | None, typer.Option(
        parser=_Duration, metavar="SECONDS",
        help="Delay each task by a fixed pseudo-random 0..S after its slot.")] = None,
    replace: Annotated[bool, typer.Option(
        "--replace",
        help="Change the schedule if it exists (its history and pause are kept), else add it.")] = False,
    unregistered: Annotated[bool, typer.Option(
        "--unregistered", help="Allow a task type no worker has published yet.")] = False,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Add a schedule; it fires at its next slot, never at once."""
    if (cron is None) == (every is None):
        raise CliError("give exactly one of --cron or --every")
    if tz is not None and cron is None:
        raise CliError("--tz only applies to --cron (an interval ignores time zones)")
    if tz is not None and not tz.strip():
        raise CliError("--tz is empty: give an IANA zone like Europe/Paris, or leave it out for UTC")
    if every is not None and every < 1:
        raise CliError(f"invalid value for '--every': {every:g} s is under the 1 s minimum")
    if start is not None and end is not None and end <= start:
        raise CliError("--end must be after --start")
    payload = read_json_arg(input, "--input") if input is not None else None
    options: dict[str, Any] = {
        "priority": priority, "queue": queue_name, "max_attempts": max_attempts,
        "timeout": timeout, "catchup": catchup.value if catchup else None,
        "catchup_limit": catchup_limit, "misfire_grace": misfire_grace, "jitter": jitter,
        "start_at": start.timestamp() if start else None,
        "end_at": end.timestamp() if end else None,
    }
    options = {k: v for k, v in options.items() if v is not None}
    q = common.open_queue(ctx, queue)
    saved = scheduler.save(q, name, task_type, cron=cron, every=every,
                           tz="UTC" if tz is None else tz, input=payload, replace=replace,
                           allow_unregistered=unregistered, **options)
    sched = saved.schedule
    verb = "replaced" if saved.replaced else "added"
    common.answer({**_as_dict(sched), "replaced": saved.replaced},
                  f"{verb} schedule {sched.name}: {sched.describe()}, "
                  f"next run {_next_run(sched)}{' (paused)' if sched.paused else ''}", json=json)


# -- list, show ---------------------------------------------------------------------


def schedule_list(
    ctx: typer.Context,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Every schedule: its timetable, next run, last run and that task's status.

    A schedule object that cannot be read is listed as "invalid" with the
    reason (and a warning on stderr); the others are listed as usual, and
    the exit code is 0: the listing itself succeeded.
    """
    q = common.open_queue(ctx, queue)
    good, bad = scheduler.scan(q)
    scheds = sorted(good, key=lambda s: s.name)
    for item in bad:
        note(f"warning: schedule {item.name}: {item.error}")
    rows = []
    for s in scheds:
        last = s.history[-1] if s.history else None
        data = _as_dict(s)
        data["last_status"] = _task_status(q, last.task_id) if last else None
        rows.append(data)
    invalid = [{"name": b.name, "key": b.key, "error": b.error} for b in bad]
    if json:
        emit_json({"schedules": rows, "invalid": invalid})
        return
    if not rows and not invalid:
        note(f"no schedules in {q.url}")
        return
    table = Table()
    for column in ("name", "spec", "next run", "next run (local)", "last run", "status", "paused"):
        table.add_column(column, no_wrap=column.startswith(("next", "last")))
    for s, data in zip(scheds, rows, strict=True):
        last = s.history[-1] if s.history else None
        table.add_row(*map(cell, (
            s.name, s.describe(), in_zone(s.next_slot, s.tz), fmt_time(s.next_slot),
            in_zone(last.slot, s.tz) if last else "-",
            (data["last_status"] or "-") if last else "-", "yes" if s.paused else "")))
    for b in sorted(bad, key=lambda b: b.name):
        table.add_row(*map(cell, (b.name, f"invalid: {b.error}", "-", "-", "-", "-", "")))
    common.console().print(table)


def schedule_show(
    ctx: typer.Context,
    name: NameArg,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """One schedule: definition, the next five runs, recent history and task statuses."""
    q = common.open_queue(ctx, queue)
    s = scheduler.load(q, name).value
    upcoming = s.upcoming(UPCOMING, q.store.now())
    history = [{**h.model_dump(mode="json"), "status": _task_status(q, h.task_id)}
               for h in reversed(s.history)]  # newest first
    if json:
        emit_json({**_as_dict(s), "upcoming": upcoming, "history": history})
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    catchup = s.catchup + (f" (limit {s.catchup_limit})" if s.catchup == "all" else "")
    rows: list[tuple[str, Any]] = [
        ("name", s.name), ("spec", s.describe()), ("task", s.task_type),
        ("queue", s.queue or "default"), ("priority", s.priority),
        ("max attempts", s.max_attempts), ("timeout", _seconds(s.timeout)),
        ("input", _brief_input(s)),
        ("catch-up", catchup), ("misfire grace", _seconds(s.misfire_grace)),
        ("jitter", _seconds(s.jitter)),
        ("start", in_zone(s.start_at, s.tz)), ("end", in_zone(s.end_at, s.tz)),
        ("paused", "yes" if s.paused else "no"),
        ("next run", in_zone(s.next_slot, s.tz) if s.next_slot is not None else "never"),
        ("skipped", s.skipped),
        ("created", fmt_time(s.created_at)), ("updated", fmt_time(s.updated_at)),
    ]
    for key, value in rows:
        table.add_row(cell(key), cell(value))
    con = common.console()
    con.print(table)
    con.print(cell(f"\nnext {UPCOMING} runs ({s.tz})"
                   + (", once resumed:" if s.paused else ":")))
    for ts in upcoming:
        con.print(cell(f"  {in_zone(ts, s.tz)}"))
    if not upcoming:
        con.print(cell("  none"))
    if not history:
        con.print(cell("\nno runs yet"))
        return
    runs = Table(title=cell("recent runs"), title_justify="left")
    for column in ("slot", "kind", "task id", "status", "fired"):
        runs.add_column(column, no_wrap=True)
    for h in history:
        runs.add_row(*map(cell, (in_zone(h["slot"], s.tz), h["kind"], h["task_id"],
                                 h["status"] or "-", fmt_time(h["fired_at"]))))
    con.print(runs)


def _brief_input(s: Schedule) -> str:
    if s.input_ref is not None:
        return f"stored in {s.input_ref} (over the inline limit)"
    text = orjson.dumps(s.input).decode()
    return text if len(text) <= 200 else text[:199] + "…"


# -- pause, resume, trigger, remove -------------------------------------------------


def schedule_pause(
    ctx: typer.Context,
    name: NameArg,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Stop firing a schedule (slots missed while paused are skipped)."""
    s = scheduler.pause(common.open_queue(ctx, queue), name)
    common.answer(_as_dict(s), f"paused schedule {s.name}", json=json)


def schedule_resume(
    ctx: typer.Context,
    name: NameArg,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Fire a paused schedule again, from its next slot after now."""
    s = scheduler.resume(common.open_queue(ctx, queue), name)
    common.answer(_as_dict(s), f"resumed schedule {s.name}, next run {_next_run(s)}", json=json)


def schedule_trigger(
    ctx: typer.Context,
    name: NameArg,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Submit one run now, outside the timetable; prints the task id."""
    task_id = scheduler.trigger(common.open_queue(ctx, queue), name)
    common.answer({"id": task_id, "schedule": name}, task_id, json=json)


def schedule_remove(
    ctx: typer.Context,
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    queue: QueueOption = None,
) -> None:
    """Delete a schedule (tasks it already submitted are kept)."""
    q = common.open_queue(ctx, queue)
    if not scheduler.exists(q, name):  # a missing or invalid name fails before the question
        raise scheduler.ScheduleNotFound(f"no schedule named {name!r}")
    if not yes:
        if not common.is_interactive():
            raise CliError("refusing to remove a schedule without confirmation: pass --yes")
        if not typer.confirm(f"Remove schedule {name} from {q.url}?", err=True):
            raise CliError("remove cancelled; nothing deleted")
    scheduler.remove(q, name)
    say(f"removed schedule {name}")


# -- run ----------------------------------------------------------------------------


def schedule_run(
    ctx: typer.Context,
    refresh: Annotated[float, typer.Option(
        parser=_Duration, metavar="SECONDS",
        help="How often to list schedules for new or changed ones (one LIST each).")] = 60.0,
    log_level: Annotated[LogLevel, typer.Option(case_sensitive=False)] = LogLevel.info,
    log_format: Annotated[LogFormat, typer.Option(case_sensitive=False)] = LogFormat.text,
    max_rounds: Annotated[int | None, typer.Option(min=1, hidden=True)] = None,
    queue: QueueOption = None,
) -> None:
    """Fire due schedules until stopped (SIGTERM/Ctrl-C). Any number may run at once."""
    if refresh <= 0:
        raise CliError("--refresh must be positive")
    q = common.open_queue(ctx, queue)
    daemon = scheduler.SchedulerDaemon(q, refresh)
    with _restored_process_state():
        logs.setup(log_level.value, json=log_format == LogFormat.json)
        if threading.current_thread() is threading.main_thread():
            def on_signal(signum: int, _frame: object) -> None:
                daemon.stop(signum)  # no logging and no lock in a handler: see stop()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        log.info("scheduler started on %s (refresh %g s)", q.url, refresh,
                 extra={"event": "started"})
        daemon.run(max_rounds=max_rounds)
        if daemon.stop_signal is not None:
            log.info("signal %d: stopping", daemon.stop_signal, extra={"event": "stopping"})
        log.info("scheduler stopped", extra={"event": "stopped"})
    say(f"scheduler stopped after {daemon.rounds} round(s)")
