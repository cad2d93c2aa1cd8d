"""``qo worker``: run an App's handlers against a queue until stopped."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Protocol, TypeVar

import typer

from qo import logs
from qo.cli import common
from qo.cli.common import CliError, QueueOption, note, say
from qo.errors import ConfigError
from qo.names import check_labels, check_name
from qo.probes import HealthServer, Probes
from qo.shutdown import EXIT_ABANDONED
from qo.worker import Worker, WorkerOptions

if TYPE_CHECKING:
    from qo.metrics import WorkerMetrics

log = logging.getLogger("qo.worker")


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


def register(app: typer.Typer) -> None:
    app.command()(worker)


def parse_queues(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [check_name(n.strip(), "queue name") for n in value.split(",") if n.strip()]
    if not names:
        raise CliError("--queues needs at least one queue name")
    return names


@contextmanager
def _restored_process_state() -> Iterator[None]:
    """Put back the qo logger and the signal handlers the worker replaces.

    Matters when the CLI runs in-process (tests, embedding): otherwise the
    logger would keep writing to a stream the caller has since closed.
    """
    logger, top = logging.getLogger("qo"), logging.getLogger()
    saved_log = (logger.handlers[:], logger.level, logger.propagate)
    saved_top = (top.handlers[:], top.level)
    main = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGINT, signal.SIGTERM) if main else ()
    saved_signals = {s: signal.getsignal(s) for s in signals}
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved_log
        top.handlers[:], top.level = saved_top
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)


def worker(
    ctx: typer.Context,
    app_spec: Annotated[str, typer.Option(
        "--app", metavar="MODULE:OBJ", help="The qo.app.App to run, e.g. myproject.tasks:app.",
        show_default=False)],
    queues: Annotated[str | None, typer.Option(
        metavar="A,B",
        help="Queue names to serve (default: the queues of the app's tasks).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=1024, help="Tasks run at once.")] = 4,
    threads: Annotated[int | None, typer.Option(
        min=1, max=1024, help="Slot threads (at most this many sync handlers at once; async "
        "handlers run on the event loop). Default: the concurrency, or 8 if every handler "
        "is async.", show_default=False)] = None,
    burst: Annotated[bool, typer.Option("--burst", help="Exit once no task is ready.")] = False,
    poll_max: Annotated[float, typer.Option(
        parser=common.as_param(common.parse_duration), metavar="SECONDS",
        help="Longest idle wait between polls.")] = 20.0,
    grace: Annotated[float, typer.Option(
        parser=common.as_param(common.parse_duration), metavar="SECONDS",
        help="On SIGTERM, how long running tasks may finish.")] = 30.0,
    cancel_wait: Annotated[float, typer.Option(
        parser=common.as_param(common.parse_duration), metavar="SECONDS",
        help="Once stopped, how long handlers told to stop may take to return before the "
             f"worker gives up on them and exits with code {EXIT_ABANDONED}.")] = 5.0,
    label: Annotated[list[str] | None, typer.Option(
        "--label", metavar="NAME[=VALUE]",
        help="A capability of this worker (repeatable): it runs tasks that need only "
             "labels it has.")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        min=0, max=65535, metavar="PORT",
        help="Serve Prometheus metrics on this port (/metrics; needs the metrics extra).",
        show_default=False)] = None,
    health_port: Annotated[int | None, typer.Option(
        min=0, max=65535, metavar="PORT",
        help="Serve health checks on this port: /livez and /readyz (also /metrics when it "
             "is the --metrics-port).", show_default=False)] = None,
    metrics_host: Annotated[str, typer.Option(
        metavar="HOST", help="The address the metrics and health servers listen on.")
    ] = "127.0.0.1",
    limits: Annotated[bool | None, typer.Option(
        "--limits/--no-limits",
        help="Apply rate and concurrency limits, the bucket's (qo limit set) too; default: "
             "if the app declares any.")] = None,
    retention: Annotated[float, typer.Option(
        parser=common.as_param(common.parse_duration), metavar="DURATION",
        help="Delete finished tasks (and done workflows) this old, on the fleet's sweep "
             "turns; 0 keeps them.")] = WorkerOptions.retention,
    log_level: Annotated[LogLevel, typer.Option(case_sensitive=False)] = LogLevel.info,
    log_format: Annotated[LogFormat, typer.Option(case_sensitive=False)] = LogFormat.text,
    queue: QueueOption = None,
) -> None:
    """Run the app's handlers on the queue until stopped (SIGTERM/Ctrl-C: graceful).

    Exit codes: 0 once stopped after a clean drain (or --burst found nothing
    left); 3 when handlers were still running when it stopped (their tasks
    were handed back or timed out; their late outcomes are dropped); 1 or 2
    with one error: line when the store or the options are unusable at start.
    """
    names = parse_queues(queues)
    app = common.bind_app(ctx, queue, common.load_app(app_spec))
    if not app.tasks:
        raise CliError(f"app {app_spec!r} has no tasks registered: nothing to run")
    metrics = _metrics(metrics_port)
    q = app.queue.check_store()  # refuse a store that cannot keep qo's guarantees
    if poll_max <= 0:
        raise CliError("--poll-max must be positive")
    if retention < 0:
        raise CliError("--retention must be 0 (keep finished tasks) or a duration")
    options = WorkerOptions(queues=names, concurrency=concurrency, burst=burst,
                            poll_max=max(poll_max, WorkerOptions.poll_min), grace=grace,
                            cancel_wait=cancel_wait, threads=threads,
                            labels=check_labels(label or []), limits=limits,
                            retention=retention)
    if metrics is not None:
        q.store = metrics.observe_store(q.store)  # before the worker holds it
    w = Worker(app, q, options)
    with _restored_process_state(), contextlib.ExitStack() as serving:
        logs.setup(log_level.value, json=log_format == LogFormat.json, handlers_too=True)
        one_port = health_port is not None and health_port != 0 and metrics_port == health_port
        if metrics is not None and metrics_port is not None:
            serving.callback(metrics.attach(w))
            if not one_port:
                serving.callback(_serve(metrics.serve, metrics_host, metrics_port,
                                        "metrics").close)
        if health_port is not None:
            shared = metrics if one_port else None
            start = functools.partial(HealthServer, Probes(w), metrics=shared)
            serving.callback(_serve(start, metrics_host, health_port,
                                    "health checks" + (" and metrics" if shared else "")).close)
        summary = w.run()
    say(f"processed {summary.processed}: {summary.succeeded} succeeded, {summary.failed} failed, "
        f"{summary.released} released, {summary.cancelled} cancelled, {summary.fenced} fenced")
    if summary.abandoned:
        note(f"{summary.abandoned} handler(s) were still running when the worker stopped; "
             f"exiting with code {EXIT_ABANDONED}")
        raise typer.Exit(EXIT_ABANDONED)


def _metrics(port: int | None) -> WorkerMetrics | None:
    """The worker's metrics when ``--metrics-port`` asks for them (the extra is imported here)."""
    if port is None:
        return None
    from qo.metrics import INSTALL, WorkerMetrics

    try:
        return WorkerMetrics()
    except ConfigError:
        raise CliError(f"--metrics-port needs the metrics extra: {INSTALL}") from None


class _Server(Protocol):
    port: int

    def close(self) -> None: ...


S = TypeVar("S", bound=_Server)


def _serve(start: Callable[[str, int], S], host: str, port: int, what: str) -> S:
    """Start a server; a port in use (or a bad host) is one error line."""
    try:
        server = start(host, port)
    except OSError as exc:
        raise CliError(f"cannot serve {what} on {host}:{port}: {exc.strerror or exc}") from None
    url = f"http://{host}:{server.port}"
    log.info("serving %s on %s", what, url, extra={"event": "serving", "what": what, "url": url})
    return server
