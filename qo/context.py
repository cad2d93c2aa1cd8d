"""What a handler sees of the task it runs (its ``ctx`` parameter)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class StopReason(StrEnum):
    """Why the worker stopped waiting for a handler (``ctx.cancel_reason``).

    A ``StrEnum``: it compares equal to its string, so ``ctx.cancel_reason ==
    "timeout"`` keeps working.
    """

    CANCELLED = "cancelled"  # the task was cancelled
    TIMEOUT = "timeout"  # its deadline passed
    LEASE_LOST = "lease lost"  # taken over, or expired during a store outage
    SHUTTING_DOWN = "worker shutting down"  # handed back after the grace period
    ABANDONED = "the worker stopped waiting for it"  # the worker is exiting


class Skip(Exception):
    """Raised by a handler (or ``ctx.skip(reason)``): the task ends ``skipped``, not run
    again; its dependents' trigger rules see it skipped (docs/protocol.md section 10)."""


@dataclass
class Context:
    """Per-attempt facts and controls for a handler.

    ``cancelled`` is set whenever the worker stops waiting for the handler,
    with ``cancel_reason`` (a ``StopReason``) saying why. Whatever the handler returns after that is
    dropped, so long handlers should check ``ctx.is_cancelled()`` (or wait on
    ``ctx.cancelled``) and stop early; one that is still running when the
    worker process ends is abandoned (``qo worker`` exits with code 3).

    ``max_attempts`` is the limit this attempt runs under: the record's, or
    the handler's declared one when the submitter set none.
    """

    task_id: str
    task_type: str
    queue: str
    attempt: int
    max_attempts: int
    deadline: float | None  # time.monotonic() value, or None for no timeout
    #: The handler version the task was submitted for (a migrating handler may be newer).
    version: int = 1
    #: The W3C trace context stored with the task at submit (``qo.tracing``), or None.
    trace: Mapping[str, str] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_reason: StopReason | None = None
    #: The ids of the tasks it depended on (``depends_on``), in order.
    depends_on: tuple[str, ...] = ()
    _heartbeat: Callable[[], bool] | None = field(default=None, repr=False)
    _load_dependencies: Callable[[], list[Any]] | None = field(default=None, repr=False)
    _dependencies: list[Any] | None = field(default=None, repr=False)

    @property
    def dependencies(self) -> list[Any]:
        """How each dependency ended (``qo.protocol.deps.DependencyOutcome``: ``id``,
        ``type``, ``status``, ``result``, ``error``, ``node``), read once, when first
        asked (1 GET per dependency); empty for a task without dependencies."""
        if self._dependencies is None:
            loader = self._load_dependencies
            self._dependencies = [] if loader is None else loader()
        return self._dependencies

    def skip(self, reason: str = "skipped by its handler") -> None:
        """End this task as ``skipped`` (raises ``Skip``): e.g. a branch not taken."""
        raise Skip(reason)

    def parent_results(self) -> dict[str, Any]:
        """The results of the dependencies that succeeded, by workflow node name (or id)."""
        return {d.node or d.id: d.result for d in self.dependencies if d.succeeded}

    @property
    def log(self) -> logging.Logger:
        """The logger for this handler's lines (``qo.task.<type>``); like every line logged
        while the handler runs, they carry the task's id, type, attempt and trace id."""
        return logging.getLogger(f"qo.task.{self.task_type}")

    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()

    def time_left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def heartbeat(self) -> bool:
        """Extend the lease now; False (and ``cancelled`` set) if it was lost or the
        task was cancelled. A store failure is not a loss: it returns True while
        the lease lives by the worker's estimate."""
        if self._heartbeat is None:
            return True
        return self._heartbeat()

    async def aheartbeat(self) -> bool:
        """``heartbeat`` for an ``async def`` handler: the requests run in a thread, so
        the event loop (and every other task on it) keeps running meanwhile."""
        return await asyncio.to_thread(self.heartbeat)

    def cancel(self, reason: StopReason) -> None:
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()
