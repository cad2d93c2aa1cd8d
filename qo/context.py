"""What a handler sees of the task it runs (its ``ctx`` parameter)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Context:
    """Per-attempt facts and controls for a handler.

    ``cancelled`` is set when the task is cancelled, its deadline passes, its
    lease is lost or the worker shuts down; long handlers should check
    ``ctx.is_cancelled()`` (or wait on ``ctx.cancelled``) and stop early.
    """

    task_id: str
    task_type: str
    queue: str
    attempt: int
    max_attempts: int
    deadline: float | None  # time.monotonic() value, or None for no timeout
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str | None = None
    _heartbeat: Callable[[], bool] | None = field(default=None, repr=False)

    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()

    def time_left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def heartbeat(self) -> bool:
        """Extend the lease now; False (and ``cancelled`` set) if it was lost."""
        if self._heartbeat is None:
            return True
        return self._heartbeat()

    def cancel(self, reason: str) -> None:
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()
