"""The ``qo`` command line: ``qo [--queue URL] COMMAND ...``.

Commands live in small modules (``tasks``, ``worker``, ``doctor``) that
register themselves on ``app``. ``QoGroup.main`` runs click in non-standalone
mode so that every exception, usage errors included, goes through one
handler that prints a single ``error:`` line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from qo import shutdown
from qo.cli import common
from qo.cli.common import CliState


class QoGroup(TyperGroup):
    """The root group: one error handler around parsing and running any command."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        common.DEBUG["on"] = common.env_debug()
        common.plain_flags(self, HELP_NAMES)
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except BaseException as exc:  # the one place every error ends
            if isinstance(exc, SystemExit):
                raise
            code = common.handle_error(exc)
            if not standalone_mode:
                raise
            sys.exit(code)
        # Non-standalone click returns an Exit's code; our commands never return ints.
        code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        if standalone_mode:
            sys.exit(code)
        return code


HELP_NAMES = ["-h", "--help"]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"qo {common.installed_version()}")
        raise typer.Exit()


app = typer.Typer(
    name="qo",
    cls=QoGroup,
    help="qo: a task queue whose only infrastructure is an object store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": HELP_NAMES},
)


@app.callback()
def root(
    ctx: typer.Context,
    queue: Annotated[
        str | None,
        typer.Option(
            "--queue",
            "-q",
            envvar="QO_QUEUE",
            help="Queue URL: s3://bucket/prefix, file:///dir or memory://name "
            "(default: a local directory store)",
            metavar="URL",
            show_default=False,
        ),
    ] = None,
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar="QO_DEBUG", help="Show tracebacks of unexpected errors."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version,
                     help="Print the installed qo version and exit."),
    ] = False,
) -> None:
    """qo: a task queue whose only infrastructure is an object store."""
    common.DEBUG["on"] = debug
    ctx.obj = CliState(queue=queue or None, debug=debug)


def _register() -> None:
    from qo.cli import doctor, graph, health, limits, queues, schedule, tasks, types, worker

    tasks.register(app)
    types.register(app)
    worker.register(app)
    doctor.register(app)
    schedule.register(app)
    graph.register(app)
    queues.register(app)
    health.register(app)
    limits.register(app)


_register()


def main(argv: Sequence[str] | None = None) -> None:
    """Console script entry point (``qo = "qo.cli:main"``)."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="qo")
    except SystemExit as exc:  # never finalize under a lingering handler thread
        shutdown.exit_process(exc.code)


__all__ = ["app", "main"]
