"""One poll for all of a worker's idle slots, with a shared, jittered backoff.

While work flows, every free slot claims (they share the claimer's listing).
Once a claim finds nothing, one slot polls for all of them (``may_poll``),
and the first empty poll of a round backs the interval off once, doubling
with jitter up to ``poll_max`` (``polled``). A claim that found only others'
keys not yet ours to try (``Claimer.next_try``) brings the next poll forward
to that time instead. So an idle worker makes one LIST per poll per queue,
whatever its concurrency (docs/protocol.md, Claim).
"""

from __future__ import annotations

import random
import threading
import time

from qo.protocol.claim import Claimer


class IdlePoll:
    """The idle state a worker's slots share; thread-safe."""

    def __init__(self, claimer: Claimer, poll_min: float, poll_max: float) -> None:
        self.claimer = claimer
        self.poll_min, self.poll_max = poll_min, poll_max
        self.polls = 0  # polls made while idle (one claim each, whatever the concurrency)
        self._idle = poll_min  # the current backoff
        self._next_poll = 0.0  # monotonic time before which idle slots do not poll; 0: busy
        self._polling = False  # an idle slot is polling for all of them
        self._cond = threading.Condition()
        self._rng = random.Random()

    def may_poll(self) -> bool:
        """May this slot claim now? False after waiting a little (call again)."""
        with self._cond:
            if self._next_poll == 0.0:
                return True
            wait = self._next_poll - time.monotonic()
            if wait > 0 or self._polling:
                self._cond.wait(min(wait, 1.0) if wait > 0 else 1.0)
                return False
            self._polling = True
            self.polls += 1
            return True

    def polled(self, *, found: bool) -> None:
        """After a claim: work resets the backoff for every slot; nothing (or a store
        failure) backs it off once per poll."""
        with self._cond:
            self._polling = False
            now = time.monotonic()
            if found:
                self._idle, self._next_poll = self.poll_min, 0.0
            elif self._next_poll <= now:  # the first empty claim of this round backs off
                soon = self.claimer.next_try  # others' keys this worker may take then
                if soon is not None and soon > now:
                    self._next_poll = min(soon, now + self._idle)
                else:
                    self._next_poll = now + self._rng.uniform(self._idle / 2, self._idle)
                    self._idle = min(self.poll_max, self._idle * 2)
                self.claimer.forget()
            self._cond.notify_all()

    def others_pending(self) -> bool:
        """Are there ready keys other workers rank first, that this one may take soon?"""
        soon = self.claimer.next_try
        return soon is not None and soon > time.monotonic()

    def wake(self) -> None:
        """Wake every waiting slot (the worker is stopping)."""
        with self._cond:
            self._cond.notify_all()
