"""Keeping a run lease alive while its handler runs, through short store outages.

A run lease expires at its ``LastModified + seconds`` on the store's clock.
The worker cannot read that instant, but it can bound it from its own side:
the store applied a lease write no earlier than the moment the request was
sent, so the lease lives at least until ``sent + seconds``. ``LeaseKeeper``
keeps that estimate on the monotonic clock (elapsed store time equals
elapsed local time; only the offset between the clocks is unknown), minus a
margin for the one-second resolution of the store's clock that reapers read:
``CLOCK_TOLERANCE``, or a quarter of the lease for sub-4 s leases (tests).

Renewal is due every ``seconds / 3``. A renewal that fails for a store error
(an outage, a timeout) is retried with backoff (1, 2, 4, then every 5 s)
until the estimated expiry: the worker gives up its task only when its lease
really is gone, by its own estimate, or when the store says it was taken
over (a 412 on the renewal CAS).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum

from qo.errors import StoreError
from qo.protocol.claim import CLOCK_TOLERANCE
from qo.protocol.leases import HeldLease
from qo.store.base import Store

MAX_BACKOFF = 5.0


class Renewal(Enum):
    RENEWED = "renewed"
    FAILED = "failed"  # the store failed; the lease may still be ours: try again
    LOST = "lost"  # taken over (412), or expired by our estimate


class LeaseKeeper:
    """One run lease's renewals and its expiry estimate; safe to share between threads."""

    def __init__(
        self,
        store: Store,
        held: HeldLease,
        *,
        sent_at: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.held = held
        self.seconds = held.value.seconds
        self.clock = clock
        self.margin = min(CLOCK_TOLERANCE, self.seconds / 4)
        self.expires = sent_at + self.seconds - self.margin
        self.next_renew = sent_at + self.seconds / 3
        self.last_error: StoreError | None = None
        self._failures = 0
        self._lost = False
        self._lock = threading.Lock()

    @classmethod
    def for_claim(cls, store: Store, held: HeldLease) -> LeaseKeeper:
        """For a lease just acquired: ``claimed_at`` is the store time before its PUT."""
        elapsed = max(0.0, store.now() - held.value.claimed_at)
        return cls(store, held, sent_at=time.monotonic() - elapsed)

    def remaining(self) -> float:
        """Seconds the lease surely lives, by this worker's estimate (0 once lost)."""
        return 0.0 if self._lost else max(0.0, self.expires - self.clock())

    def due(self) -> bool:
        return self.clock() >= self.next_renew

    def renew(self) -> Renewal:
        """Renew now: one CAS on the lease (with ``put_checked``'s quick retries)."""
        with self._lock:
            if self._lost:
                return Renewal.LOST
            sent = self.clock()
            if sent >= self.expires:
                self._lost = True
                return Renewal.LOST
            try:
                renewed = self.held.renew(self.store)
            except StoreError as exc:
                self.last_error = exc
                self._failures += 1
                backoff = min(MAX_BACKOFF, 2.0 ** (self._failures - 1))
                now = self.clock()  # one last try shortly before the expiry
                self.next_renew = max(min(now + backoff, self.expires - 0.5), now + 0.1)
                if now >= self.expires:
                    self._lost = True
                    return Renewal.LOST
                return Renewal.FAILED
            if not renewed:
                self._lost = True
                return Renewal.LOST
            self._failures, self.last_error = 0, None
            self.expires = sent + self.seconds - self.margin
            self.next_renew = sent + self.seconds / 3
            return Renewal.RENEWED

    def renew_if_due(self) -> Renewal | None:
        return self.renew() if self.due() else None
