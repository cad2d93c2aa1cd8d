"""Request counting, shared by the memory store and the test S3 server.

Cost on S3 is requests, so tests assert exact counts per operation and the
benchmarks turn counts into dollars.
"""

from __future__ import annotations

import threading
from collections import Counter

#: USD per request on S3 Standard (PUT/COPY/POST/LIST vs GET/HEAD; DELETE is free).
PRICE_PER_REQUEST = {
    "PUT": 0.005 / 1000,
    "LIST": 0.005 / 1000,
    "GET": 0.0004 / 1000,
    "HEAD": 0.0004 / 1000,
    "DELETE": 0.0,
}

BILLABLE = ("PUT", "LIST", "GET", "HEAD")


class RequestCounter:
    """Thread-safe counts of requests by kind, and of failed preconditions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._counts[kind] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def __getitem__(self, kind: str) -> int:
        with self._lock:
            return self._counts.get(kind, 0)

    @property
    def billable(self) -> int:
        with self._lock:
            return sum(self._counts.get(k, 0) for k in BILLABLE)

    def cost_usd(self) -> float:
        with self._lock:
            return sum(self._counts.get(k, 0) * p for k, p in PRICE_PER_REQUEST.items())


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Counts made between two snapshots, zeros dropped."""
    keys = set(after) | set(before)
    out = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    return {k: v for k, v in sorted(out.items()) if v}
