"""Registering handlers: ``@app.task`` keeps the function callable as before.

A handler receives the task's input as keyword arguments (a JSON object), or
as its single argument when the input is not an object. A parameter named
``ctx`` receives the ``Context``. Arguments are validated against the type
hints with pydantic when the task runs; a validation error is not retried.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Callable, Collection
from typing import Any, Generic, ParamSpec, TypeVar

from qo.errors import ConfigError, ErrorKind, QoError
from qo.lifecycle import WHEN, Hook, LifecycleHooks
from qo.middleware import Middleware
from qo.models import RetryPolicy
from qo.names import check_labels, check_name
from qo.protocol import identity as identities
from qo.protocol.identity import Identity
from qo.protocol.identity import check as check_identity
from qo.protocol.keys import handler_name
from qo.protocol.limits import LimitSpec, make_spec
from qo.protocol.registry import PublishReport, TypeDefinition, publish
from qo.protocol.submit import SubmitRequest
from qo.queue import Queue, TaskHandle
from qo.retry import RetryDecider
from qo.store.base import Store
from qo.taskdef import MAX_VERSION, Fatal, TaskDef

__all__ = ["MAX_VERSION", "App", "AppLoadError", "Fatal", "TaskDef", "TaskFunction",
           "UnknownTaskType", "load_app"]

P = ParamSpec("P")
R = TypeVar("R")


class UnknownTaskType(QoError):
    kind = ErrorKind.INVALID


class AppLoadError(ConfigError):
    """``module:obj`` does not name an importable ``qo.app.App``."""


_APP_SPEC = re.compile(r"[A-Za-z_][\w.]*(?::[A-Za-z_][\w.]*)?")


def load_app(spec: str) -> App:
    """Import ``module:obj`` (``module`` alone means ``module:app``); it must be an App.

    Shared by ``qo worker --app`` and the Lambda handlers (``QO_APP``).
    """
    if not _APP_SPEC.fullmatch(spec):
        raise AppLoadError(f"invalid app {spec!r}: expected module:object, e.g. tasks:app")
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(
                f"cannot import app module {module_name!r}: no module named {exc.name!r} "
                "(is it on sys.path, or in the deployment package?)"
            ) from None
        raise AppLoadError(f"importing {module_name!r} failed: {_one_line(exc)}") from exc
    except Exception as exc:  # the user's module raised while importing
        raise AppLoadError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AppLoadError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, App):
        raise AppLoadError(f"{spec!r} is a {type(obj).__name__}, not a qo.app.App")
    return obj


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class TaskFunction(Generic[P, R]):
    """The decorated function: call it directly, or ``.submit()`` it to the queue."""

    def __init__(self, app: App, definition: TaskDef) -> None:
        self.app = app
        self.definition = definition
        functools.update_wrapper(self, definition.fn)

    @property
    def name(self) -> str:
        return self.definition.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.definition.fn(*args, **kwargs)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        return self.app.submit(self.name, self.definition.input_for(args, kwargs))

    def on(self, when: str, fn: Hook | None = None) -> Any:
        """A lifecycle hook for this task type only (``App.on(when, task=...)``)."""
        return self.app.on(when, fn, task=self.name)

    def options(self, **options: Any) -> _BoundOptions[P, R]:
        """``fn.options(priority=200, delay=60, key="x").submit(...)``."""
        return _BoundOptions(self, options)


class _BoundOptions(Generic[P, R]):
    def __init__(self, fn: TaskFunction[P, R], options: dict[str, Any]) -> None:
        self.fn = fn
        self.opts = options

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        payload = self.fn.definition.input_for(args, kwargs)
        return self.fn.app.submit(self.fn.name, payload, **self.opts)


class App:
    """A registry of handlers, bound to a queue URL (or ``QO_QUEUE``)."""

    def __init__(self, url: str | Queue | None = None, *, default_queue: str = "default",
                 middleware: list[Middleware] | None = None) -> None:
        self._queue = url if isinstance(url, Queue) else None
        self._url = None if isinstance(url, Queue) else url
        self.default_queue = check_name(default_queue, "queue name")
        self.tasks: dict[str, TaskDef] = {}
        #: Around every handler call, first outermost (``qo.middleware``).
        self.middleware_stack: list[Middleware] = list(middleware or [])
        #: ``start``, ``success``, ``failure``, ``retry``, ``dead``, ``cancel`` (``qo.lifecycle``).
        self.lifecycle = LifecycleHooks()
        #: Rate and concurrency limits by name (``limit``, ``@app.task(rate=...)``; section 11).
        self.limits: dict[str, LimitSpec] = {}

    def limit(self, name: str, *, rate: str | float | None = None, burst: int | None = None,
              concurrency: int | None = None, per_key: bool = False,
              concurrency_per_key: bool = False, shards: int = 1) -> LimitSpec:
        """Declare a named limit that task types share (``@app.task(rate_limit=name)``)."""
        spec = make_spec(name, rate=rate, burst=burst, concurrency=concurrency,
                         per_key=per_key, concurrency_per_key=concurrency_per_key,
                         shards=shards, types=list(self.limits[name].types)
                         if name in self.limits else [])
        self.limits[name] = spec
        return spec

    def _use_limit(self, name: str, task_type: str) -> None:
        spec = self.limits.get(name)
        if spec is None:  # declared later (``limit``) or only in the bucket (``qo limit set``)
            spec = self.limits[name] = LimitSpec.model_construct(name=name, types=[])
        if task_type not in spec.types:
            spec.types.append(task_type)

    def on(self, when: str, fn: Hook | None = None, *, task: str | None = None) -> Any:
        """Call ``fn(event)`` at each ``when`` transition a worker of this app records, for
        every task type or only ``task``; usable as a decorator (see ``qo.lifecycle``)."""
        if when not in WHEN:
            raise QoError(f"unknown hook {when!r}: one of {', '.join(WHEN)}")

        def register(f: Hook) -> Hook:
            self.lifecycle.add(when, f, task)
            return f

        return register(fn) if fn is not None else register

    def middleware(self, fn: Middleware) -> Middleware:
        """Register ``fn`` as the innermost middleware so far; usable as a decorator."""
        self.middleware_stack.append(fn)
        return fn

    @property
    def queue(self) -> Queue:
        if self._queue is None:
            self._queue = Queue.from_url(self._url)
        return self._queue

    def use(self, queue: Queue) -> None:
        self._queue = queue

    def use_unless_bound(self, queue: Queue) -> None:
        """Use ``queue`` if the app was given no queue or URL of its own: what a
        ``Worker(app, queue)`` does, so that its handlers' ``submit`` calls go to the
        queue it works on rather than to ``QO_QUEUE`` or the default store."""
        if self._queue is None and self._url is None:
            self._queue = queue

    def task(
        self,
        fn: Callable[P, R] | None = None,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int = 128,
        max_attempts: int = 3,
        retry: RetryPolicy | RetryDecider | None = None,
        timeout: float | None = None,
        no_retry: tuple[type[BaseException], ...] = (),
        version: int = 1,
        migrate: Callable[[Any, int], Any] | None = None,
        labels: tuple[str, ...] | list[str] = (),
        identity: Identity | None = None,
        unique_for: float | None = None,
        rate: str | float | None = None,
        burst: int | None = None,
        rate_key: str | Callable[[Any], Any] | None = None,
        concurrency: int | None = None,
        concurrency_key: str | Callable[[Any], Any] | None = None,
        rate_limit: str | list[str] | tuple[str, ...] = (),
    ) -> Any:
        """Register a handler. Several versions of one type may be registered side by
        side (``version=``); ``migrate(input, from_version)`` lets one run older ones."""
        if not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
            raise QoError(f"invalid handler version {version!r}: a whole number from 1 to "
                          f"{MAX_VERSION}")

        required = check_labels(list(labels))
        check_identity(identity)
        if unique_for is not None and not 0 < unique_for <= 366 * 86_400:
            raise QoError(f"unique_for must be between 0 s and 366 days, got {unique_for!r}")
        if rate_key is not None and concurrency_key is not None and rate_key != concurrency_key:
            raise QoError("rate_key and concurrency_key must be the same: a task has one limit key")
        shared = [rate_limit] if isinstance(rate_limit, str) else list(rate_limit)
        for limit_name in shared:
            check_name(limit_name, "limit name")
        own_limit = None
        if rate is not None or concurrency is not None:
            own_limit = make_spec(name or "t", rate=rate, burst=burst, concurrency=concurrency,
                                  per_key=rate_key is not None,
                                  concurrency_per_key=concurrency_key is not None)
        elif burst is not None:
            raise QoError("burst needs a rate (@app.task(rate=\"10/s\", burst=20))")

        def register(f: Callable[P, R]) -> TaskFunction[P, R]:
            task_name = check_name(name or f.__name__, "task type")
            if handler_name(task_name, version) in self.tasks:
                what = f"task type {task_name!r}" + (f" version {version}" if version > 1 else "")
                raise QoError(f"{what} is registered twice")
            params = [p for p in inspect.signature(f).parameters if p != "ctx"]
            definition = TaskDef(
                name=task_name, fn=f, queue=queue and check_name(queue, "queue name"),
                priority=priority, max_attempts=max_attempts,
                retry=RetryPolicy() if retry is None or callable(retry)
                else RetryPolicy.model_validate(retry),
                retry_decider=retry if callable(retry) else None,
                timeout=timeout, no_retry=no_retry,
                wants_ctx="ctx" in inspect.signature(f).parameters, params=params,
                version=version, labels=tuple(required), migrate=migrate,
                identity=identity, unique_for=unique_for,
                limit_key=rate_key if rate_key is not None else concurrency_key,
                limits=(*([task_name] if own_limit else []), *shared),
            )
            if own_limit is not None:  # the type's own limit is named after it
                self.limits[task_name] = own_limit.model_copy(update={"name": task_name})
            for limit_name in definition.limits:
                self._use_limit(limit_name, task_name)
            self.tasks[definition.key] = definition
            return TaskFunction(self, definition)

        return register(fn) if fn is not None else register

    def submit(self, task_type: str, input: Any = None, **options: Any) -> TaskHandle:
        """Submit with the task's registered defaults; unknown types are refused.

        The app's own definition is used, never the bucket's registry.
        """
        definition = self.definition(task_type)
        defaults = self.submit_defaults(definition)
        if definition.limit_key is not None and "limit_key" not in options:
            defaults["limit_key"] = definition.limit_key_of(input)
        if definition.identity is not None and options.get("key") is None:
            defaults["key"] = identities.derive_key(definition.identity, input, task_type)
            if definition.unique_for is not None:
                defaults["retention"] = definition.unique_for
        req = SubmitRequest(type=task_type, input=input, **(defaults | options))
        return self.queue.submit_request(req)

    def type_definitions(self) -> list[TypeDefinition]:
        """What a worker of this app publishes to the registry, one per handler."""
        return [d.published(self.default_queue) for _, d in sorted(self.tasks.items())]

    def publish(self, store: Store, owner: str) -> PublishReport:
        """Publish the handlers' definitions that changed (``qo.protocol.registry.publish``)."""
        return publish(store, self.type_definitions(), owner=owner)

    def definition(self, task_type: str) -> TaskDef:
        """The registered task type (its highest version), or a one-line UnknownTaskType."""
        definition = self.latest(task_type)
        if definition is None:
            registered = ", ".join(self.type_names()) or "none"
            raise UnknownTaskType(f"unknown task type {task_type!r}; registered: {registered}")
        return definition

    def latest(self, task_type: str) -> TaskDef | None:
        """The highest version registered for ``task_type``: what a submit targets."""
        found = [d for d in self.tasks.values() if d.name == task_type]
        return max(found, key=lambda d: d.version) if found else None

    def type_names(self) -> list[str]:
        return sorted({d.name for d in self.tasks.values()})

    def handler_for(self, task_type: str, version: int = 1) -> TaskDef | None:
        """The handler that runs a task of this type and version: the one of exactly that
        version, else the lowest newer one that migrates; None if none accepts it."""
        exact = self.tasks.get(handler_name(task_type, version))
        if exact is not None:
            return exact
        newer = [d for d in self.tasks.values() if d.name == task_type and d.accepts(version)]
        return min(newer, key=lambda d: d.version) if newer else None

    def accepted(self, labels: Collection[str] | None = None) -> set[str]:
        """Every ``type[@version]`` some handler runs (markers name a task this way), for the
        claimer's filter and the worker's record. With a worker's ``labels``, only the
        handlers whose type's labels it has: it never claims a type it cannot run, whatever
        a task's marker says."""
        names: set[str] = set()
        for d in self.tasks.values():
            if labels is not None and not set(d.labels).issubset(labels):
                continue
            names.add(d.key)
            if d.migrate is not None:
                names |= {handler_name(d.name, v) for v in range(1, d.version)}
        return names

    def submit_defaults(self, definition: TaskDef) -> dict[str, Any]:
        """The SubmitRequest fields a registered task type fills in by default."""
        return {
            "queue": definition.queue or self.default_queue,
            "priority": definition.priority,
            "max_attempts": definition.max_attempts,
            "retry": definition.retry,
            "timeout": definition.timeout,
            "version": definition.version,
            "labels": list(definition.labels),
        }

    def queues(self) -> list[str]:
        names = {d.queue or self.default_queue for d in self.tasks.values()}
        return sorted(names)
