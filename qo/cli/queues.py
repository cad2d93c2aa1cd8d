"""``qo queue``: a queue's settings, ``max_depth`` (backpressure) and priority ``aging``.

A thin layer over ``qo.protocol.backpressure``. A submit beyond ``max_depth``
fails with exit code 6 (``queue_full``; HTTP 429 from the API).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from qo.cli import common
from qo.cli.common import CliError, JsonOption, QueueOption, cell, emit_json, note
from qo.protocol import backpressure
from qo.protocol.backpressure import MAX_AGING, MAX_DEPTH, UNSET, QueueSettings


def register(app: typer.Typer) -> None:
    common.add_group(app, "queue", "Queue settings: maximum depth and priority aging.",
                     {"set": queue_set, "show": queue_show, "ls": queue_ls})


NameArg = Annotated[str, typer.Argument(metavar="QUEUE_NAME", help="Queue name.",
                                        show_default=False)]


def _number(value: str | None, flag: str, highest: int) -> int | None | object:
    """A flag's value: UNSET when not given, None for ``none``, else 1..highest."""
    if value is None:
        return UNSET
    if value.lower() in ("none", "off", "0"):
        return None
    if not value.isdigit() or not 1 <= int(value) <= highest:
        raise CliError(f"invalid {flag} {value!r}: a whole number from 1 to {highest}, or none")
    return int(value)


def _row(name: str, settings: QueueSettings | None) -> dict[str, object]:
    found = settings.as_dict() if settings else {"max_depth": None, "aging": None}
    return {"queue": name, **found}


def _line(name: str, settings: QueueSettings | None) -> str:
    if settings is None:
        return f"queue {name}: no max depth, strict priority"
    depth = f"max depth {settings.max_depth}" if settings.max_depth else "no max depth"
    aging = (f"aging {settings.aging} s per priority level" if settings.aging
             else "strict priority")
    return f"queue {name}: {depth}, {aging}"


def queue_set(
    ctx: typer.Context,
    name: NameArg,
    max_depth: Annotated[str | None, typer.Option(
        "--max-depth", metavar="N",
        help="Refuse submits beyond N ready tasks (exit 6, HTTP 429); 'none' removes it.")
    ] = None,
    aging: Annotated[str | None, typer.Option(
        "--aging", metavar="SECONDS",
        help="Waiting this long is worth one priority level, for tasks submitted from "
        "now on; 'none': strict priority.")] = None,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Set a queue's maximum depth and priority aging (submitters see it within 30 s)."""
    if max_depth is None and aging is None:
        raise CliError("give --max-depth and/or --aging")
    depth_value = _number(max_depth, "--max-depth", MAX_DEPTH)
    aging_value = _number(aging, "--aging", MAX_AGING)
    q = common.open_queue(ctx, queue)
    stored = backpressure.set_settings(q.store, name, max_depth=depth_value, aging=aging_value)
    common.answer(_row(name, stored), _line(name, stored), json=json)


def queue_show(ctx: typer.Context, name: NameArg, queue: QueueOption = None,
               json: JsonOption = False) -> None:
    """Show a queue's settings."""
    stored, _ = backpressure.read_settings(common.open_queue(ctx, queue).store, name)
    common.answer(_row(name, stored), _line(name, stored), json=json)


def queue_ls(ctx: typer.Context, queue: QueueOption = None, json: JsonOption = False) -> None:
    """List the queues that have settings."""
    found = backpressure.list_settings(common.open_queue(ctx, queue).store)
    rows = [_row(name, s) for name, s in sorted(found.items())]
    if json:
        emit_json(rows)
        return
    if not rows:
        note("no queue has settings (every queue: no max depth, strict priority)")
        return
    table = Table()
    for column in ("queue", "max depth", "aging (s/level)"):
        table.add_column(column, justify="left" if column == "queue" else "right")
    for row in rows:
        table.add_row(cell(row["queue"]), cell(row["max_depth"] or "-"), cell(row["aging"] or "-"))
    common.console().print(table)
