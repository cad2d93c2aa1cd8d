"""What a worker tells people about the store and its queues: once per change.

A store that fails every poll must not log once per poll, and a paused queue
or a ready task of an unknown type must not go unmentioned. ``StoreHealth``
logs the store going down and coming back, ``Notices`` logs each new fact
(a queue paused or resumed, a task type without a handler) once.
"""

from __future__ import annotations

import logging
import threading
import time

from qo.errors import QoError

log = logging.getLogger("qo.worker")


class StoreHealth:
    """Up or down, as the worker's last store requests saw it; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self.failures = 0  # failed requests (after the store client's own retries)
        #: ``time.monotonic()`` when a request last succeeded (None: none yet), for /readyz.
        self.answered_at: float | None = None

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, exc: QoError, doing: str) -> None:
        with self._lock:
            self.failures += 1
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
        if first:
            log.warning("store unavailable (%s: %s); retrying with backoff", doing, exc,
                        extra={"event": "store_down", "error": str(exc)})
        else:
            log.debug("store still unavailable (%s: %s)", doing, exc)

    def ok(self) -> None:
        self.answered_at = time.monotonic()
        if self._down_since is None:  # the common case: no lock, no log
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning("store reachable again after %.1f s", time.monotonic() - since,
                        extra={"event": "store_up", "seconds": round(time.monotonic() - since, 3)})


class Notices:
    """Facts the claimer saw, logged once each (and once when they end)."""

    def __init__(self) -> None:
        self._unknown: set[tuple[str, str]] = set()
        self._paused: set[str] = set()
        self._lock = threading.Lock()

    def unknown_types(self, seen: set[tuple[str, str]]) -> None:
        with self._lock:
            new, self._unknown = seen - self._unknown, self._unknown | seen
        for queue, task_type in sorted(new):
            log.warning("queue %s has ready tasks of type %r, which this worker has no handler "
                        "for; they wait for a worker that has one", queue, task_type,
                        extra={"event": "unknown_task_type", "queue": queue, "type": task_type})

    def paused(self, paused: set[str]) -> None:
        with self._lock:
            now_paused, resumed = paused - self._paused, self._paused - paused
            self._paused = set(paused)
        for queue in sorted(now_paused):
            log.info("queue %s is paused: no task of it starts until `qo resume %s`",
                     queue, queue, extra={"event": "queue_paused", "queue": queue})
        for queue in sorted(resumed):
            log.info("queue %s was resumed", queue,
                     extra={"event": "queue_resumed", "queue": queue})
