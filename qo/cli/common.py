"""Plumbing shared by every command: the queue option, output, errors, parsers.

Commands print data to stdout (a rich table for people, JSON with ``--json``)
and everything else to stderr, so ``qo ... --json | jq`` always parses. Every
failure a user can cause becomes one ``error: <message>`` line and the exit
code of the error's kind (``qo.errors.ErrorKind``: 2 invalid input or configuration,
3 conflict, 4 not found, 5 unavailable, 1 otherwise); only ``--debug`` (or
``QO_DEBUG=1``) shows tracebacks.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from typing import Annotated, Any, TypeVar

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.text import Text

from qo import app as app_module
from qo import cron
from qo.app import App
from qo.errors import ErrorKind, QoError, shorten, shorten_values
from qo.queue import Queue

T = TypeVar("T")

#: Width for tables when stdout is not a terminal: wide enough that ids never wrap.
PIPE_WIDTH = 240


class CliError(QoError):
    """Bad input caught by the CLI itself (a flag combination, a file, a format)."""

    kind = ErrorKind.INVALID


# -- global state -------------------------------------------------------------------


@dataclass
class CliState:
    """What the root callback parsed, for the subcommands (``ctx.obj``)."""

    queue: str | None = None  # from --queue before the command, or QO_QUEUE
    debug: bool = False


#: Read by the error handler, which runs after the click context is gone.
DEBUG = {"on": False}


def env_debug() -> bool:
    return os.environ.get("QO_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


QueueOption = Annotated[
    str | None,
    typer.Option(
        "--queue",
        "-q",
        help="Queue URL: s3://bucket/prefix, file:///dir or memory://name "
        "(default: $QO_QUEUE, else a local directory).",
        show_default=False,
        metavar="URL",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON on stdout, nothing else.")
]
QueueNameOption = Annotated[
    str | None,
    typer.Option("--queue-name", help="Only this queue (a name inside the store).", metavar="NAME"),
]


def queue_url(ctx: typer.Context, local: str | None) -> str | None:
    """The URL given to this command, else before it, else via QO_QUEUE; None if none."""
    if local:
        return local
    state = ctx.find_root().obj
    return state.queue if isinstance(state, CliState) else None


def open_queue(ctx: typer.Context, local: str | None) -> Queue:
    """The queue the user named (``Queue.from_url`` falls back to the default store).

    Its store is checked (``Queue.check_store``: 1 GET on S3, nothing locally),
    so that every command refuses an unsafe store and uses the delete mode it needs.
    """
    return Queue.from_url(queue_url(ctx, local)).check_store()


def add_group(app: typer.Typer, name: str, summary: str,
              commands: dict[str, Callable[..., None]]) -> None:
    """Add ``qo NAME SUBCOMMAND`` for each of ``commands`` (bare ``qo NAME`` shows help)."""
    group = typer.Typer(help=summary, no_args_is_help=True)
    for subcommand, fn in commands.items():
        group.command(subcommand)(fn)
    app.add_typer(group, name=name)


def plain_flags(command: Any, help_names: list[str]) -> None:
    """Boolean flags take no value, so ``--help`` shows none after them.

    typer's rich help prints ``<bool>`` after every flag (``--json``, ``--yes``,
    ``--help`` itself), as if it took a value, and ``--json true`` is then an
    error. This clears the shown type of every flag of ``command`` and of its
    subcommands, whichever module declared them; run it on the root command.
    """
    help_option = command.get_help_option(typer.Context(command, help_option_names=help_names))
    for param in [*command.params, help_option]:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        plain_flags(sub, help_names)


def installed_version() -> str:
    """The installed qo-queue distribution's version (what ``qo --version`` prints)."""
    try:
        return metadata.version("qo-queue")
    except metadata.PackageNotFoundError:
        return "unknown (qo-queue is not installed)"


# -- output -------------------------------------------------------------------------


def console(stderr: bool = False) -> Console:
    """A console bound to the current stdout/stderr (so test runners capture it).

    rich already drops colours when the stream is not a terminal; we also widen
    it there, so that piped tables never wrap ids onto two lines.
    """
    con = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not con.is_terminal:
        con.width = PIPE_WIDTH
    return con


def is_tty() -> bool:
    return sys.stdout.isatty()


def is_interactive() -> bool:
    """Can we ask a question? Both ends must be a terminal."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def emit_json(data: Any) -> None:
    """One JSON document on stdout (indented for people at a terminal)."""
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if is_tty() else 0)
    typer.echo(orjson.dumps(data, option=option, default=str).decode())


def emit_listing(items: list[Any], *, more: bool, next_after: str | None = None,
                 name: str = "tasks") -> None:
    """The one JSON shape of every listing: ``{name: [...], "more": bool, "next_after": id}``.

    ``next_after`` is the ``--after`` cursor of the next page, when the listing
    pages by id and there is a next page; ``more`` says whether anything was left out.
    """
    emit_json({name: items, "more": more, "next_after": next_after})


def answer(data: Any, line: str, *, json: bool) -> None:
    """What a command that acts on one thing prints: ``data`` with ``--json``, else ``line``."""
    if json:
        emit_json(data)
    else:
        say(line)


def say(message: str) -> None:
    """A plain line on stdout, never interpreted as rich markup."""
    typer.echo(message)


def note(message: str) -> None:
    """A remark for people on stderr (keeps stdout clean for data)."""
    typer.echo(message, err=True)


def cell(value: Any) -> Text:
    """Table cell text, shown literally (user data may contain ``[markup]``)."""
    return Text("" if value is None else str(value))


def fmt_time(ts: float | None) -> str:
    """Epoch seconds as local ISO 8601 with the offset, or '-' when unset."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


@contextmanager
def progress(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal, silence elsewhere; yields ``advance(n)``."""
    if not console(stderr=True).is_terminal or total <= 1:
        yield lambda _n: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn())
    with Progress(*columns, console=console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def spinner(description: str) -> Iterator[None]:
    """A spinner on stderr while one long call runs, on a terminal only."""
    con = console(stderr=True)
    if not con.is_terminal:
        yield
        return
    with con.status(description):
        yield


# -- parsers ------------------------------------------------------------------------



def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``5m``, ``1h30m``, ``2d``, ``250ms`` -> seconds (bare numbers: seconds)."""
    try:
        return cron.parse_duration(text)
    except cron.InvalidSchedule as exc:
        raise CliError(str(exc)) from None


def parse_datetime(text: str) -> datetime:
    """An ISO 8601 time that names its time zone (``Z`` or ``+02:00``)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            f"invalid time {shorten(text)}: use ISO 8601 with a time zone, "
            "e.g. 2030-01-31T09:00:00+00:00"
        ) from None
    if when.tzinfo is None:
        raise CliError(f"time {shorten(text)} has no time zone: add one, e.g. Z or +02:00")
    return when


def as_param(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Adapt a parser for ``typer.Option(parser=...)``: its error names the option."""

    def convert(value: str) -> T:
        if not isinstance(value, str):  # already converted (a default, or a re-parse)
            return value
        try:
            return parse(value)
        except CliError as exc:
            raise typer.BadParameter(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def load_app(spec: str) -> App:
    """Import ``module:obj`` (``module`` alone means ``module:app``), like uvicorn does.

    The current directory goes first on ``sys.path`` so that ``qo worker --app
    tasks:app`` finds ``./tasks.py`` when qo runs as an installed script.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return app_module.load_app(spec)


def bind_app(ctx: typer.Context, local: str | None, app: App) -> App:
    """Point the app at the queue named on the command line or in QO_QUEUE, if any."""
    url = queue_url(ctx, local)
    if url:
        app.use(Queue.from_url(url))
    return app


# -- errors -------------------------------------------------------------------------


def one_line(value: object) -> str:
    return " ".join(str(value).split())


def describe_validation(exc: ValidationError) -> str:
    """A pydantic error as one line: ``field: problem; other: problem``."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = err.get("msg", "invalid")
        parts.append(f"{where}: {msg}" if where else msg)
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _parser_errors() -> list[Any]:
    """The exception modules of the click typer runs on (vendored since typer 0.23)."""
    found = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            pass
    return found


_MODULES = _parser_errors()
_NO_ARGS = tuple(m.NoArgsIsHelpError for m in _MODULES if hasattr(m, "NoArgsIsHelpError"))
_USAGE = tuple(m.UsageError for m in _MODULES)
_CLICK = (typer.TyperException, *(m.ClickException for m in _MODULES))
_ABORT = (typer.Abort, *(m.Abort for m in _MODULES if hasattr(m, "Abort")))


#: ``qo ls --json true``: a value after a flag shows up as an extra argument.
_FLAG_VALUE = re.compile(r"unexpected extra argument\S* \((true|false|yes|no|on|off)\)",
                         re.IGNORECASE)


def handle_error(exc: BaseException) -> int:
    """Print one ``error:`` line for ``exc`` on stderr; return the exit code."""
    if isinstance(exc, _NO_ARGS):
        exc.show()  # `qo` or `qo dlq` alone: the help text, not an error line
        return 2
    if isinstance(exc, _USAGE):
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = exc.format_message()
        if _FLAG_VALUE.search(message):
            message += "; flags such as --json take no value: give the flag alone"
        return _fail(message + hint, exc.exit_code)
    if isinstance(exc, _CLICK):
        return _fail(exc.format_message(), getattr(exc, "exit_code", 1))
    if isinstance(exc, _ABORT):
        return _fail("aborted", 1)
    if isinstance(exc, QoError):  # the exit code is the kind's (see qo.errors.ErrorKind)
        return _fail(str(exc) or type(exc).__name__, exc.kind.exit_code, exc)
    if isinstance(exc, ValidationError):
        return _fail(describe_validation(exc), ErrorKind.INVALID.exit_code, exc)
    if isinstance(exc, KeyboardInterrupt):
        return _fail("interrupted", 130)
    return _fail(
        f"unexpected {type(exc).__name__}: {exc}"
        + ("" if DEBUG["on"] else " (run with --debug for the traceback)"),
        ErrorKind.INTERNAL.exit_code,
        exc,
    )


def _fail(message: str, code: int, exc: BaseException | None = None) -> int:
    if exc is not None and DEBUG["on"]:
        traceback.print_exception(exc, file=sys.stderr)
    typer.echo(f"error: {shorten_values(one_line(message))}", err=True)
    return code if code else 1
