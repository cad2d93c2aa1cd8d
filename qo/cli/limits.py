"""``qo limit set|ls|show|rm``: rate and concurrency limits' settings in the bucket.

A limit's settings object (``limits/{name}.json``) overrides the numbers of the
limit of that name the code declares (``@app.task(rate=...)`` names it after its
task type, ``App.limit`` by its own name) and may add task types to it
(``--type``). Workers read the settings within a minute (docs/protocol.md §11).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from qo.cli import common
from qo.cli.common import CliError, JsonOption, QueueOption, cell, emit_json, note, say
from qo.protocol import limits, slots
from qo.protocol.limits import LimitNotFound, LimitSpec, format_rate


def register(app: typer.Typer) -> None:
    common.add_group(
        app, "limit", "Rate and concurrency limits shared by every worker.",
        {"set": limit_set, "ls": limit_ls, "show": limit_show, "rm": limit_rm})


NameArg = Annotated[str, typer.Argument(metavar="NAME", show_default=False,
                                        help="Limit name (a task type's own limit has its name).")]


def _row(spec: LimitSpec) -> dict[str, Any]:
    return {"name": spec.name, "rate": None if spec.rate is None else format_rate(spec.rate),
            "per_second": spec.rate, "burst": spec.capacity if spec.rate else None,
            "per_key": spec.per_key, "concurrency": spec.concurrency,
            "concurrency_per_key": spec.concurrency_per_key, "shards": spec.shards,
            "types": spec.types}


def limit_set(
    ctx: typer.Context,
    name: NameArg,
    rate: Annotated[str | None, typer.Option(
        "--rate", metavar="RATE", help="Tasks per time: 10/s, 600/m, 1000/h.")] = None,
    burst: Annotated[int | None, typer.Option(
        "--burst", help="Bucket size: tasks admitted at once after a quiet spell "
        "(default: one second of the rate).")] = None,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", help="At most this many running at once.")] = None,
    per_key: Annotated[bool, typer.Option(
        "--per-key", help="One bucket (and one set of slots) per task's limit key.")] = False,
    shards: Annotated[int, typer.Option(
        "--shards", help="Split the bucket over this many objects (a hot limit).")] = 1,
    types: Annotated[list[str] | None, typer.Option(
        "--type", metavar="TYPE", help="A task type it governs (repeatable).")] = None,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Create or replace a limit's settings (1 PUT)."""
    q = common.open_queue(ctx, queue)
    spec = limits.make_spec(name, rate=rate, burst=burst, concurrency=concurrency,
                            per_key=per_key, concurrency_per_key=per_key and bool(concurrency),
                            shards=shards, types=list(types or []))
    limits.write_spec(q.store, spec)
    common.answer(_row(spec), f"set limit {name}: {_summary(spec)}", json=json)


def _summary(spec: LimitSpec) -> str:
    parts = []
    if spec.rate is not None:
        parts.append(f"rate {format_rate(spec.rate)}, burst {spec.capacity:g}")
    if spec.concurrency is not None:
        parts.append(f"concurrency {spec.concurrency}")
    if spec.per_key:
        parts.append("per key")
    if spec.shards > 1:
        parts.append(f"{spec.shards} shards")
    if spec.types:
        parts.append("types " + ",".join(spec.types))
    return "; ".join(parts)


def limit_ls(ctx: typer.Context, queue: QueueOption = None, json: JsonOption = False) -> None:
    """List the limits' settings in the bucket (1 LIST + 1 GET each)."""
    q = common.open_queue(ctx, queue)
    specs = sorted(limits.list_specs(q.store), key=lambda s: s.name)
    if json:
        emit_json({"limits": [_row(s) for s in specs]})
        return
    if not specs:
        note(f"no limit is set in {q.url} (limits the code declares apply as declared)")
        return
    table = Table()
    for column in ("name", "rate", "burst", "concurrency", "per key", "shards", "types"):
        table.add_column(column)
    for s in specs:
        row = _row(s)
        table.add_row(cell(s.name), cell(row["rate"] or "-"),
                      cell("-" if row["burst"] is None else f"{row['burst']:g}"),
                      cell(s.concurrency or "-"), cell("yes" if s.per_key else "no"),
                      cell(s.shards), cell(",".join(s.types) or "-"))
    common.console().print(table)


def limit_show(ctx: typer.Context, name: NameArg, queue: QueueOption = None,
               json: JsonOption = False) -> None:
    """A limit's settings and state: its buckets' tokens and its held slots."""
    q = common.open_queue(ctx, queue)
    spec = limits.read_spec(q.store, name)
    buckets = limits.read_buckets(q.store, name)
    held = slots.read_slots(q.store, name)
    if spec is None and not buckets and not held:
        raise LimitNotFound(f"no limit named {name!r} in {q.url}")
    now = q.store.now()
    state: list[dict[str, Any]] = [
        {"key": k, "shard": shard, "tokens": round(b.tokens, 3), "at": b.at,
         "blocked_until": b.blocked_until if b.blocked_until > now else None,
         "taken": b.taken} for k, shard, b in buckets]
    holders = [{"key": k, "slot": n, "task_id": s.task_id, "owner": s.owner} for k, n, s in held]
    if json:
        emit_json({"limit": None if spec is None else _row(spec), "buckets": state,
                   "slots": holders})
        return
    say(f"limit {name}: " + (_summary(spec) if spec else "no settings in the bucket "
                             "(declared in code)"))
    if state:
        table = Table(title="buckets")
        for column in ("key", "shard", "tokens", "taken", "blocked"):
            table.add_column(column)
        for b in state:
            blocked = "-" if b["blocked_until"] is None else common.fmt_time(b["blocked_until"])
            table.add_row(cell(b["key"]), cell(b["shard"]), cell(b["tokens"]), cell(b["taken"]),
                          cell(blocked))
        common.console().print(table)
    if holders:
        table = Table(title="slots")
        for column in ("key", "slot", "task", "owner"):
            table.add_column(column)
        for h in holders:
            table.add_row(cell(h["key"]), cell(h["slot"]), cell(h["task_id"]), cell(h["owner"]))
        common.console().print(table)


def limit_rm(
    ctx: typer.Context,
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Delete a limit's settings and state (the code's declaration applies again)."""
    q = common.open_queue(ctx, queue)
    if limits.read_spec(q.store, name) is None and not limits.read_buckets(q.store, name):
        raise LimitNotFound(f"no limit named {name!r} in {q.url}")
    if not yes:
        if not common.is_interactive():
            raise CliError("refusing to remove a limit without confirmation: pass --yes")
        if not typer.confirm(f"Remove limit {name} from {q.url}?", err=True):
            raise CliError("remove cancelled; nothing deleted")
    gone = limits.delete_spec(q.store, name)
    common.answer({"name": name, "deleted": gone}, f"removed limit {name} ({gone} object(s))",
                  json=json)
