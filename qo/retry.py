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

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from qo.errors import RateLimited
from qo.models import RetryPolicy

#: A retry policy as a function: ``(error, attempt) -> seconds``, or None (or False) to
#: give up. ``@app.task(retry=fn)``; it runs in the worker, after the error is recorded
#: as retryable and while attempts are left.
RetryDecider = Callable[[BaseException, int], "float | bool | None"]
MAX_DELAY = 7 * 86_400

log = logging.getLogger("qo.retry")


class Retry(Exception):
    """Raise in a handler to retry the task, ``after`` seconds (default: its policy).

    ``delay`` is the older name of ``after``. It uses up this attempt only, like any
    failure: with no attempt left the task is dead.
    """

    def __init__(self, message: str = "retry requested", *, after: float | None = None,
                 delay: float | None = None) -> None:
        if after is not None and delay is not None and after != delay:
            raise ValueError("give after or delay (its older name), not both")
        delay = after if after is not None else delay
        if delay is not None and not 0 <= delay <= MAX_DELAY:
            raise ValueError(f"retry delay must be between 0 s and 7 days, got {delay!r}")
        super().__init__(message)
        self.delay = delay

    @property
    def after(self) -> float | None:
        return self.delay


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Whether a failed attempt runs again, and after how long."""

    retry: bool
    delay: float = 0.0  # seconds from the failure until the next attempt may start
    reason: str = ""
    #: False for a ``RateLimited`` handler: the attempt is given back, not used up.
    consumes_attempt: bool = True

    @classmethod
    def decide(
        cls, *, retryable: bool, attempt: int, max_attempts: int,
        policy: RetryPolicy | None, error: BaseException | None = None,
        rng: random.Random | None = None, decider: RetryDecider | None = None,
    ) -> RetryDecision:
        """The decision for attempt ``attempt`` (1-based) of ``max_attempts``.

        ``policy`` None means retry at once (a lost run); ``error`` a ``Retry``
        with a delay overrides the policy's delay, and otherwise ``decider`` (the
        handler's callable policy) is asked: seconds, True for the policy's delay,
        or None/False to give up. A decider that raises or answers nonsense is
        logged and the policy decides.
        """
        if isinstance(error, RateLimited):  # before the attempt count: none is used up
            return cls(True, error.retry_after, reason="rate limited", consumes_attempt=False)
        if not retryable:
            return cls(False, reason="not retryable")
        if attempt >= max_attempts:
            return cls(False, reason=f"no attempt left ({attempt} of {max_attempts})")
        if isinstance(error, Retry) and error.delay is not None:
            return cls(True, error.delay, reason="the handler asked to retry")
        if decider is not None and error is not None:
            answer = _ask(decider, error, attempt)
            if answer is False:
                return cls(False, reason="the retry policy gave up")
            if answer is not True:
                return cls(True, answer, reason="the retry policy chose the delay")
        delay = 0.0 if policy is None else policy.delay(attempt, rng)
        return cls(True, delay, reason=f"attempt {attempt} of {max_attempts} failed")


def _ask(decider: RetryDecider, error: BaseException, attempt: int) -> float | bool:
    """The decider's answer: seconds, False (give up), or True (the policy decides)."""
    try:
        answer = decider(error, attempt)
    except Exception:
        log.exception("retry policy %r failed; the backoff policy decides", decider)
        return True
    if answer is None or answer is False:
        return False
    if answer is True:
        return True
    if (isinstance(answer, (int, float)) and math.isfinite(answer)
            and 0 <= answer <= MAX_DELAY):
        return float(answer)
    log.error("retry policy %r answered %r, not seconds from 0 to %d or None; the backoff "
              "policy decides", decider, answer, MAX_DELAY)
    return True
