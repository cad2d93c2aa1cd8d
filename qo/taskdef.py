"""One registered handler (``TaskDef``): how to run a task type, and its submit defaults.

``qo.app`` registers them (``@app.task``) and re-exports ``TaskDef`` and ``Fatal``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict, ValidationError, validate_call

from qo.context import Context
from qo.errors import QoError
from qo.handler_schema import input_schema
from qo.middleware import TaskCall
from qo.models import RetryPolicy
from qo.protocol import identity as identities
from qo.protocol.identity import Identity
from qo.protocol.keys import handler_name
from qo.protocol.registry import TypeDefinition
from qo.retry import RetryDecider

#: The highest handler version (``@app.task(version=N)``); a migrating handler accepts
#: every lower one, so keep versions small and consecutive.
MAX_VERSION = 1000


class Fatal(Exception):
    """Raise (or subclass) to fail a task at once, without retries."""


@dataclass(eq=False)
class TaskDef:
    """How to run one task type, and its submit defaults."""

    name: str
    fn: Callable[..., Any]
    queue: str | None = None
    priority: int = 128
    max_attempts: int = 3
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    no_retry: tuple[type[BaseException], ...] = ()
    wants_ctx: bool = False
    params: list[str] = field(default_factory=list)
    version: int = 1
    labels: tuple[str, ...] = ()
    #: ``migrate(input, from_version) -> input``: lets this handler run tasks submitted
    #: for any older version, their input upgraded first (``run``).
    migrate: Callable[[Any, int], Any] | None = None
    #: ``@app.task(retry=fn)``: a callable retry policy (``qo.retry.RetryDecider``).
    retry_decider: RetryDecider | None = None
    #: How a task's idempotency key is derived from its input (``qo.protocol.identity``),
    #: and how long it stays unique (the key's retention; default: the queue's).
    identity: Identity | None = None
    unique_for: float | None = None
    #: The limits governing it (names in ``App.limits``), and how a task's limit key is
    #: read from its input: a field name or a callable (``rate_key=``/``concurrency_key=``).
    limits: tuple[str, ...] = ()
    limit_key: str | Callable[[Any], Any] | None = None

    def limit_key_of(self, payload: Any) -> str | None:
        """The limit key value of a task with this input (None: it has none)."""
        if self.limit_key is None:
            return None
        if callable(self.limit_key):
            value = self.limit_key(payload)
        elif isinstance(payload, dict):
            value = payload.get(self.limit_key)
        else:
            raise QoError(f"task {self.name!r}: its limit key is the field "
                          f"{self.limit_key!r}, but its input is not an object")
        return None if value is None else str(value)

    @property
    def key(self) -> str:
        """Its name in ``App.tasks``, worker records and markers: ``type`` or ``type@N``."""
        return handler_name(self.name, self.version)

    def accepts(self, version: int) -> bool:
        """Runs tasks of ``version``: its own, or an older one when it can migrate."""
        return version == self.version or (self.migrate is not None and version < self.version)

    def published(self, default_queue: str) -> TypeDefinition:
        """What a worker publishes about this handler (``qo.protocol.registry``)."""
        doc = inspect.getdoc(self.fn)
        return TypeDefinition(
            name=self.name, version=self.version, queue=self.queue or default_queue,
            priority=self.priority, max_attempts=self.max_attempts, retry=self.retry,
            timeout=self.timeout, input_schema=input_schema(self.fn), labels=list(self.labels),
            doc=doc[:4096] if doc else None, identity=identities.published(self.identity),
            unique_for=self.unique_for,
        )

    def retryable(self, exc: BaseException) -> bool:
        """May this error be retried at all? Not ``Fatal``, a validation error or
        ``no_retry``. The app's part of the retry decision (``qo.retry``)."""
        return not isinstance(exc, (Fatal, ValidationError, *self.no_retry))

    def run(self, call: TaskCall) -> Any:
        """The innermost step of the middleware chain: the handler itself (an older
        version's input migrated first)."""
        payload = call.input
        if call.ctx.version != self.version:
            if self.migrate is None or call.ctx.version > self.version:
                raise Fatal(f"task {self.name!r} of version {call.ctx.version} cannot run on "
                            f"the handler of version {self.version}")
            payload = self.migrate(payload, call.ctx.version)
        return self.call(payload, call.ctx)

    def call(self, payload: Any, ctx: Context) -> Any:
        """Invoke the handler with a task's input (validated against its hints)."""
        validated = self._validated()
        extra = {"ctx": ctx} if self.wants_ctx else {}
        if isinstance(payload, dict):
            return validated(**payload, **extra)
        if payload is None and self._all_optional():
            return validated(**extra)
        if len(self.params) == 1:
            return validated(payload, **extra)
        raise Fatal(
            f"task {self.name!r} takes keyword arguments {self.params}; "
            f"its input must be a JSON object, got {type(payload).__name__}"
        )

    def _all_optional(self) -> bool:
        sig = inspect.signature(self.fn)
        return all(sig.parameters[p].default is not inspect.Parameter.empty for p in self.params)

    @functools.cache  # noqa: B019 - one wrapper per TaskDef, kept for its lifetime
    def _validated(self) -> Callable[..., Any]:
        """Validate the arguments with pydantic, then call the handler from Python.

        ``validate_call(fn)`` would call ``fn`` from inside pydantic-core, which
        keeps a native frame on the handler thread's stack while it runs; a
        daemon thread woken during interpreter shutdown is stopped by unwinding
        its stack, and that frame turns the unwinding into an abort (exit 134,
        see ``qo.shutdown``). Here pydantic validates the same signature and
        returns, and the handler runs in plain Python frames.
        """
        # arbitrary types: a ``ctx: Context`` annotation is checked with isinstance
        config = ConfigDict(arbitrary_types_allowed=True)
        fn = self.fn
        try:
            sig = inspect.signature(fn, eval_str=True)
        except Exception:  # noqa: BLE001 - unresolvable hints: let pydantic report them
            return validate_call(config=config)(fn)

        def arguments(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
            return args, kwargs

        arguments.__signature__ = sig.replace(  # type: ignore[attr-defined]
            return_annotation=inspect.Signature.empty)
        arguments.__annotations__ = {n: p.annotation for n, p in sig.parameters.items()
                                     if p.annotation is not inspect.Parameter.empty}
        arguments.__name__, arguments.__qualname__ = fn.__name__, fn.__qualname__
        arguments.__module__ = fn.__module__
        check = validate_call(config=config)(arguments)

        def call(*args: Any, **kwargs: Any) -> Any:
            valid_args, valid_kwargs = check(*args, **kwargs)
            return fn(*valid_args, **valid_kwargs)

        return call

    def input_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Map a Python call to the JSON input a worker will pass back."""
        sig = inspect.signature(self.fn)
        params = [p for p in sig.parameters.values() if p.name != "ctx"]
        try:
            bound = sig.replace(parameters=params).bind(*args, **kwargs)
        except TypeError as exc:
            raise QoError(f"bad arguments for task {self.name!r}: {exc}") from None
        return dict(bound.arguments)
