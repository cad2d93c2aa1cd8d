"""``qo doctor``: check that the configured store can safely carry a queue."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from qo.cli import common
from qo.cli.common import JsonOption, QueueOption, cell, emit_json, note
from qo.doctor import Level, diagnose
from qo.errors import ErrorKind, QoError

_STYLE = {Level.OK: "green", Level.WARN: "yellow", Level.FAIL: "bold red", Level.SKIP: "dim"}


class DoctorFailed(QoError):
    """At least one check failed; the report says which."""

    kind = ErrorKind.UNSUPPORTED_STORE


def register(app: typer.Typer) -> None:
    app.command()(doctor)


def doctor(
    ctx: typer.Context,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Check the store: reachable, writable, conditional writes enforced, clock in sync."""
    with common.spinner("checking the store"):
        report = diagnose(common.queue_url(ctx, queue))
    if json:
        emit_json(report.as_dict())
    else:
        table = Table(title=Text(f"qo doctor: {report.url}"), title_justify="left")
        for name in ("check", "result", "detail"):
            table.add_column(name)
        for check in report.checks:
            table.add_row(cell(check.name), Text(check.level.value, style=_STYLE[check.level]),
                          cell(check.detail))
        common.console().print(table)
    if report.failures:
        first = report.failures[0]
        more = len(report.failures) - 1
        raise DoctorFailed(f"{first.name} check failed: {first.detail}"
                           + (f" (and {more} more failed check(s))" if more else ""))
    if report.warnings and not json:
        note(f"{len(report.warnings)} warning(s); the store is usable")
