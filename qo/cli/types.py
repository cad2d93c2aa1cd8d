"""``qo types``: the task types workers published, who serves them and what waits for them."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from qo.cli import common
from qo.cli.common import CliError, JsonOption, QueueOption, cell, emit_json, note
from qo.protocol import typeview


def register(app: typer.Typer) -> None:
    app.command("types")(types)


def types(
    ctx: typer.Context,
    publish: Annotated[bool, typer.Option(
        "--publish", help="Publish the --app's task types (as a starting worker does).")
    ] = False,
    app_spec: Annotated[str | None, typer.Option(
        "--app", metavar="MODULE:OBJ", help="The app whose types --publish writes.")] = None,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """List the registered task types: versions, live workers, tasks waiting for each."""
    if publish:
        if app_spec is None:
            raise CliError("--publish needs --app MODULE:OBJ")
        app = common.bind_app(ctx, queue, common.load_app(app_spec))
        report = app.publish(app.queue.check_store().store, owner="qo-types-publish")
        common.answer({"written": report.written, "unchanged": report.unchanged,
                       "contested": report.contested},
                      f"published {len(report.written)} definition(s), "
                      f"{report.unchanged} unchanged", json=json)
        return
    if app_spec is not None:
        raise CliError("--app only goes with --publish")
    q = common.open_queue(ctx, queue)
    rows = typeview.overview(q.store)
    if json:
        emit_json({"types": [r.as_dict() for r in rows]})
        return
    if not rows:
        note(f"no task type is registered in {q.url}, and no task waits")
        return
    table = Table()
    for name in ("type", "versions", "queue", "workers", "ready", "delayed", "doc"):
        table.add_column(name, justify="right" if name in ("ready", "delayed", "workers")
                         else "left")
    for r in rows:
        versions = ",".join(str(v) for v in r.versions) or "unregistered"
        workers = Text(str(len(r.workers)), style="bold red" if r.unserved else "")
        table.add_row(cell(r.name), cell(versions), cell(r.queue or "-"), workers,
                      cell(r.ready), cell(r.delayed), cell(r.doc or ""))
    common.console().print(table)
    unserved = [r for r in rows if r.unserved]
    if unserved:
        shown = ", ".join(f"{r.name!r} ({r.ready + r.delayed} waiting)" if r.unserved_versions
                          == [1] else f"{r.name!r} version(s) "
                          f"{','.join(map(str, r.unserved_versions))}" for r in unserved)
        note(f"warning: no live worker serves {shown}")
    elif not any(r.workers for r in rows):
        note("no live worker record (Lambda workers publish none)")
