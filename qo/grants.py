"""What one worker process holds of a limit: a grant of a bucket's tokens, a view of
a concurrency limit's slots (docs/protocol.md §11, "The gate").

A ``Grant`` is a batch of tokens taken from one bucket object by one CAS
(``qo.protocol.limits.take``), shared by the process's threads and valid for
``window`` seconds of store time; what is not used by then is dropped, never
returned. The batch adapts: it doubles when a grant is used up within its
window and shrinks to what was used when one expires, up to one window of the
bucket's rate. A refused take is not asked again before the bucket can have
refilled a batch (``retry_at``): no polling of the limiter.

Tokens are *promised* before they are used: the claimer's gate sets one aside
for a task before it takes that task's lease, and the admission check under
the lease uses it (``qo.limiter``), so that two threads never lease two tasks
for one token. A promise given up (the lease was lost) frees its token.

A ``Room`` is what the process knows of one concurrency limit key: nothing
(open), or "full" until a recheck, after which one claim at a time probes it.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field

from qo.protocol import limits
from qo.store.base import Store

#: How long a grant's tokens stay usable (store seconds); also the most one batch covers.
WINDOW = 1.0
#: While another thread asks the bucket, how soon the gate looks again (store seconds).
TAKING = 0.05
#: How long a concurrency limit found full is not tried again, unless a task of this
#: process that held one of its slots ends first (store seconds).
RECHECK = 0.25
#: How long a probe of a full concurrency limit keeps the others out, at most.
PROBE = 2.0


@dataclass
class Grant:
    """The tokens this process holds from one bucket (one shard of one limit key)."""

    key: str  # the bucket object
    rate: float  # this shard's rate, per second
    capacity: float  # this shard's size
    tokens: int = 0  # held, promised ones included
    promised: int = 0  # set aside for tasks the gate let through, not yet admitted
    granted: int = 0  # the size of the current grant
    expires: float = 0.0  # store time
    batch: int = 1
    retry_at: float = 0.0  # store time before which asking the bucket cannot pay off
    taking: bool = False  # a thread is asking the bucket now
    stats: dict[str, int] = field(default_factory=lambda: {"takes": 0, "refused": 0,
                                                           "granted": 0, "expired": 0,
                                                           "writes": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def max_batch(self) -> int:
        # At most half the bucket: waiting for a batch never lets the bucket overflow.
        return max(1, min(math.floor(self.rate * WINDOW), math.floor(self.capacity / 2)))

    def free(self, now: float) -> int:
        """Tokens that may still be promised (none once the grant expired)."""
        return self.tokens - self.promised if now < self.expires else 0

    def open_at(self, now: float) -> float | None:
        """None if a task may be let through now, else when to look again (store
        time). Reads without the lock: a hint, ``promise`` decides."""
        if self.free(now) > 0:
            return None
        if self.taking:
            return now + TAKING
        return None if now >= self.retry_at else self.retry_at

    def promise(self, store: Store, now: float, rng: random.Random, window: float
                ) -> float | None:
        """Set one token aside, asking the bucket if none is free and it may have some:
        None on success, else when to look again (store time). 1 GET + 1 PUT when it
        asks the bucket and gets tokens, 1 GET when refused, nothing otherwise."""
        with self.lock:
            if self.free(now) > 0:
                self.promised += 1
                return None
            if self.taking:  # another thread is asking: its tokens may be free soon
                return now + TAKING
            if now < self.retry_at:
                self.stats["refused"] += 1
                return self.retry_at
            self.taking = True
        try:
            got = self._ask(store, now, rng, window)
        finally:
            with self.lock:
                self.taking = False
        with self.lock:
            if got and self.free(now) > 0:
                self.promised += 1
                return None
            self.stats["refused"] += 1
            return max(self.retry_at, now + TAKING)

    def _ask(self, store: Store, now: float, rng: random.Random, window: float) -> bool:
        with self.lock:
            unused = self.tokens - self.promised
            if unused > 0:  # expired with tokens left: the batch was too big
                self.stats["expired"] += unused
                self.batch = max(1, self.granted - unused)
            elif self.granted and now < self.expires:  # used up within its window
                self.batch = min(self.max_batch, self.batch * 2)
            if now >= self.expires:  # promises lapse with their grant: a claim still in
                self.tokens = self.promised = 0  # flight takes a fresh token at admission
            self.granted = 0  # adapted once per grant
            want = min(self.batch, self.max_batch)
        got = limits.take(store, self.key, rate=self.rate, capacity=self.capacity, want=want,
                          least=(want + 1) // 2, now=now)
        with self.lock:
            self.stats["takes"] += 1
            if got.granted:
                self.granted = got.granted
                self.tokens += got.granted
                self.expires = now + window
                self.stats["granted"] += got.granted
                self.stats["writes"] += 1
                self.retry_at = 0.0
                return True
            # Jitter, so that the processes waiting for one bucket do not all read it at
            # the instant it refills (the tokens wait in the bucket meanwhile).
            self.retry_at = got.retry_at + rng.uniform(0, 0.5 * want / self.rate)
            return False

    def use(self, promised: bool) -> bool:
        """Use one token (a promised one, or a free one): False if there is none (the
        grant was dropped meanwhile, e.g. by ``RateLimited``)."""
        with self.lock:
            if promised and self.promised > 0 and self.tokens > 0:
                self.promised -= 1
                self.tokens -= 1
                return True
            if not promised and self.tokens - self.promised > 0:
                self.tokens -= 1
                return True
            return False

    def unpromise(self) -> None:
        with self.lock:
            self.promised = max(0, self.promised - 1)

    def give_back(self) -> None:
        """A token used for a task another limit refused goes back (free)."""
        with self.lock:
            self.tokens += 1

    def drop(self, until: float) -> None:
        """Hold no token and ask the bucket nothing before ``until`` (``RateLimited``)."""
        with self.lock:
            self.stats["expired"] += max(0, self.tokens - self.promised)
            self.tokens, self.promised, self.granted = 0, 0, 0
            self.retry_at = max(self.retry_at, until)


@dataclass
class Room:
    """One concurrency limit key as this process sees it (see the module docstring)."""

    limit: int
    full_until: float | None = None  # None: not known to be full
    probing_until: float = 0.0
    mine: int = 0  # slots this process's running tasks hold
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open_at(self, now: float) -> float | None:
        if self.mine >= self.limit:  # all held here: open again when one of ours ends
            return now + RECHECK
        if self.full_until is None:
            return None
        if now < self.full_until:
            return self.full_until
        return None if now >= self.probing_until else self.probing_until

    def enter(self, now: float) -> float | None:
        """Let one task try the slots: None, or when to look again. While the room is
        known full, one task at a time probes it after the recheck."""
        with self.lock:
            at = self.open_at(now)
            if at is None and self.full_until is not None:
                self.probing_until = now + PROBE
            return at

    def tried(self, now: float, *, got: bool, last: bool = False) -> None:
        """A task tried the slots: ``got`` one, and it was the ``last`` one free."""
        with self.lock:
            self.probing_until = 0.0
            self.full_until = None if got and not last else now + RECHECK
            self.mine += got

    def left(self) -> None:
        """A task let in did not try the slots after all (it lost its lease race)."""
        with self.lock:
            self.probing_until = 0.0

    def freed(self) -> None:
        """A task of this process that held a slot of it ended: a slot is free now (if it
        was full, one task at a time goes for it, so this process's threads do not race)."""
        with self.lock:
            if self.full_until is not None:  # one slot is free: one task at a time tries
                self.full_until = 0.0
            self.probing_until = 0.0
            self.mine = max(0, self.mine - 1)
