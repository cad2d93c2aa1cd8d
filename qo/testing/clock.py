"""A store clock your tests move by hand, and a wrapper that gives any store one.

qo reads time from the store (``store.now()``): leases, delays, retries and
schedules all follow it. A ``FakeClock`` makes that time a number a test
controls, so a retry backoff or a one-hour delay passes at once, without a
sleep::

    clock = FakeClock()
    queue = Queue(MemoryStore(clock=clock))
    queue.submit("report", delay=3600)
    clock.advance(3600)            # the task is now due

``ClockedStore(store, clock)`` does the same for a store that takes no
clock (a local directory, S3): every call but ``now()`` goes to the store.
"""

from __future__ import annotations

import threading
from typing import Any

#: Where a FakeClock starts: a fixed instant (2027-01-15), so runs repeat exactly.
START = 1_800_000_000.0


class FakeClock:
    """Epoch seconds that move only when told to; safe to share between threads.

    Call it for the time (it is a ``Callable[[], float]``, what
    ``MemoryStore(clock=...)`` takes). It never goes backwards.
    """

    def __init__(self, start: float = START) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (which must not be negative)."""
        if seconds < 0:
            raise ValueError(f"a FakeClock does not go back ({seconds} s)")
        with self._lock:
            self._now += seconds

    def advance_to(self, when: float) -> None:
        """Move the clock forward to ``when``; a time already past changes nothing."""
        with self._lock:
            self._now = max(self._now, when)

    def __repr__(self) -> str:
        return f"FakeClock({self():.3f})"


class ClockedStore:
    """Any store, with its clock (``now()``) replaced by ``clock``."""

    def __init__(self, inner: Any, clock: FakeClock) -> None:
        self.inner = inner
        self.clock = clock
        self.url = inner.url

    def now(self) -> float:
        return self.clock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


__all__ = ["START", "ClockedStore", "FakeClock"]
