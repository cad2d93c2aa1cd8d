"""qo on AWS Lambda: the worker, sweeper and API handlers, and their shared runtime.

The handlers are thin layers over the same core the CLI uses (``Queue``,
``Worker``, ``Claimer``, ``admin``). Everything is configured from the
environment, read once per execution environment and cached across warm
invocations:

============================  ==============================================================
``QO_QUEUE``                  the queue URL, ``s3://bucket/prefix`` (required)
``QO_APP``                    ``module:object``, the ``qo.app.App`` with the handlers
                              (``module`` alone means ``module:app``); required by the worker
``QO_QUEUES``                 comma list of queue names to work (default: the app's queues)
``QO_SAFETY_MARGIN``          seconds kept free before the Lambda timeout (default 10)
``QO_TASK_BUDGET``            seconds assumed for a task without a timeout (default 60)
``QO_FUNCTION_TIMEOUT``       the worker function's timeout in seconds (default 900)
``QO_LEASE_SECONDS``          run lease length (default 60)
``QO_RETENTION_DAYS``         sweeper: delete finished tasks this old (default 7; 0: never)
``QO_RETENTION_BUDGET``       sweeper: records examined per run for retention (default 200)
``QO_WORKER_FUNCTION``        sweeper: worker function to kick when ready work sits unclaimed
``QO_KICK_AFTER``             sweeper: how old an unclaimed ready marker must be (default 60)
``QO_API_MAX_BODY``           API: largest request body in bytes (default 1 MiB)
``QO_LOG_LEVEL``              level of the ``qo`` loggers (default INFO)
``QO_METRICS_PER_QUEUE``      sweeper: ``1`` adds per-queue CloudWatch gauges (default 0)
============================  ==============================================================

Powertools' own variables name the metrics and logs (``qo.serverless.telemetry``):
``POWERTOOLS_METRICS_NAMESPACE``, the CloudWatch namespace (default ``qo``),
and ``POWERTOOLS_SERVICE_NAME``, the ``service`` dimension and log key
(default ``qo-worker``, ``qo-sweeper`` or ``qo-api``).

Tests (and local tools) call ``reset()`` between cases, or ``configure()`` to
inject a queue and an app directly.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from qo import app as app_module
from qo.app import App, AppLoadError
from qo.errors import ConfigError, InvalidName
from qo.names import check_name
from qo.queue import Queue
from qo.settings import MiB

log = logging.getLogger("qo.serverless")



@dataclass(frozen=True)
class Config:
    """What the environment says; every field has a safe default but the URLs."""

    queue_url: str | None = None
    app_spec: str | None = None
    queues: list[str] | None = None
    safety_margin: float = 10.0
    task_budget: float = 60.0
    function_timeout: float = 900.0
    lease_seconds: float | None = None
    retention_days: float = 7.0
    retention_budget: int = 200
    worker_function: str | None = None
    kick_after: float = 60.0
    api_max_body: int = 1 * MiB
    log_level: str = "INFO"
    #: CloudWatch namespace and ``service`` dimension of the EMF metrics (Powertools' names).
    metrics_namespace: str = "qo"
    service_name: str | None = None
    #: Also the sweeper's gauges per queue (3 more custom metrics a queue).
    metrics_per_queue: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Config:
        env = dict(os.environ if env is None else env)

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def number(name: str, default: float, minimum: float = 0.0) -> float:
            raw = text(name)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a number") from None
            if not value >= minimum:  # also refuses NaN
                raise ConfigError(f"{name}={raw!r} must be at least {minimum:g}")
            return value

        queues = None
        if text("QO_QUEUES"):
            try:
                queues = [check_name(q.strip(), "queue name")
                          for q in env["QO_QUEUES"].split(",") if q.strip()]
            except InvalidName as exc:
                raise ConfigError(f"QO_QUEUES: {exc}") from None
        lease = text("QO_LEASE_SECONDS")
        level = (text("QO_LOG_LEVEL") or "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"QO_LOG_LEVEL={level!r} is not a logging level")
        return cls(
            queue_url=text("QO_QUEUE"),
            app_spec=text("QO_APP"),
            queues=queues or None,
            safety_margin=number("QO_SAFETY_MARGIN", cls.safety_margin),
            task_budget=number("QO_TASK_BUDGET", cls.task_budget, 0.001),
            function_timeout=number("QO_FUNCTION_TIMEOUT", cls.function_timeout, 1.0),
            lease_seconds=None if lease is None else number("QO_LEASE_SECONDS", 60.0, 0.001),
            retention_days=number("QO_RETENTION_DAYS", cls.retention_days),
            retention_budget=int(number("QO_RETENTION_BUDGET", cls.retention_budget, 1)),
            worker_function=text("QO_WORKER_FUNCTION"),
            kick_after=number("QO_KICK_AFTER", cls.kick_after),
            api_max_body=int(number("QO_API_MAX_BODY", cls.api_max_body, 1)),
            log_level=level,
            metrics_namespace=text("POWERTOOLS_METRICS_NAMESPACE") or cls.metrics_namespace,
            service_name=text("POWERTOOLS_SERVICE_NAME"),
            metrics_per_queue=(text("QO_METRICS_PER_QUEUE") or "0").lower() in ("1", "true"),
        )


@dataclass
class Runtime:
    """The queue, the app (if any) and the configuration of this execution environment."""

    queue: Queue
    app: App | None
    config: Config = field(default_factory=Config)
    #: The worker function published the app's task types (once per container).
    published: bool = False

    def require_app(self) -> App:
        if self.app is None:
            raise ConfigError("QO_APP is not set: name the App with your handlers (module:object)")
        return self.app

    def worker_queues(self) -> list[str]:
        """The queues a worker claims from: ``QO_QUEUES``, else the app's."""
        if self.config.queues:
            return list(self.config.queues)
        return self.require_app().queues()


_lock = threading.Lock()
_build_lock = threading.Lock()
_runtime: Runtime | None = None


def load_app(spec: str) -> App:
    """The App ``QO_APP`` names (``module:object``); a one-line ConfigError otherwise."""
    try:
        return app_module.load_app(spec)
    except AppLoadError as exc:
        raise ConfigError(f"QO_APP: {exc}") from None


def open_queue(config: Config) -> Queue:
    """The queue ``QO_QUEUE`` names, with ``QO_LEASE_SECONDS`` applied."""
    if not config.queue_url:
        raise ConfigError("QO_QUEUE is not set: give the queue URL, e.g. s3://bucket/prefix")
    settings: dict[str, Any] = {}
    if config.lease_seconds is not None:
        settings["lease_seconds"] = config.lease_seconds
    return Queue.from_url(config.queue_url, **settings)


def configure(
    queue: Queue | None = None, app: App | None = None, config: Config | None = None
) -> Runtime:
    """Install a runtime (tests, local tools); what is not given comes from the env."""
    global _runtime
    config = config or Config.from_env()
    logging.getLogger("qo").setLevel(config.log_level)
    if app is None and config.app_spec:
        app = load_app(config.app_spec)
    if queue is None:
        queue = open_queue(config)
    if app is not None:
        app.use(queue)
    built = Runtime(queue, app, config)
    with _lock:
        _runtime = built
    log.info("qo serverless runtime on %s (app %s)", queue.url, config.app_spec or "none")
    return built


def runtime() -> Runtime:
    """The cached runtime, built from the environment on first use."""
    current = _runtime
    if current is not None:
        return current
    with _build_lock:
        return _runtime or configure()


def reset() -> None:
    """Forget the cached runtime: the next invocation reads the environment again."""
    global _runtime
    with _lock:
        current, _runtime = _runtime, None
    if current is not None:
        close = getattr(current.queue.store, "close", None)
        if close is not None:
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - best effort when tearing down
                log.debug("closing the store failed: %s", exc)


__all__ = ["Config", "Runtime", "configure", "load_app", "open_queue", "reset", "runtime"]
