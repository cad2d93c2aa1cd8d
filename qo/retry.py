"""One retry decision, shared by the app, the retry policy and the outcome path.

A failed attempt is decided in one place, ``RetryDecision.decide``: the app
says whether the error may be retried at all (``TaskDef.retryable``: not for
``Fatal``, a validation error or a ``no_retry`` type), the record's
``max_attempts`` says whether an attempt is left, and the record's
``RetryPolicy`` (or a handler's ``raise Retry(delay=...)``) says when. The
outcome path writes what the decision says; the reaper decides a lost run
with the same call (no backoff: the attempt never reported an error).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from qo.models import RetryPolicy


class Retry(Exception):
    """Raise in a handler to retry the task, after ``delay`` seconds (default: its policy).

    It counts as an attempt like any failure: with no attempt left the task is dead.
    """

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        if delay is not None and not 0 <= delay <= 7 * 86_400:
            raise ValueError(f"retry delay must be between 0 s and 7 days, got {delay!r}")
        super().__init__(message)
        self.delay = delay


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Whether a failed attempt runs again, and after how long."""

    retry: bool
    delay: float = 0.0  # seconds from the failure until the next attempt may start
    reason: str = ""

    @classmethod
    def decide(
        cls, *, retryable: bool, attempt: int, max_attempts: int,
        policy: RetryPolicy | None, error: BaseException | None = None,
        rng: random.Random | None = None,
    ) -> RetryDecision:
        """The decision for attempt ``attempt`` (1-based) of ``max_attempts``.

        ``policy`` None means retry at once (a lost run); ``error`` a ``Retry``
        with a delay overrides the policy's delay.
        """
        if not retryable:
            return cls(False, reason="not retryable")
        if attempt >= max_attempts:
            return cls(False, reason=f"no attempt left ({attempt} of {max_attempts})")
        if isinstance(error, Retry) and error.delay is not None:
            return cls(True, error.delay, reason="the handler asked to retry")
        delay = 0.0 if policy is None else policy.delay(attempt, rng)
        return cls(True, delay, reason=f"attempt {attempt} of {max_attempts} failed")
