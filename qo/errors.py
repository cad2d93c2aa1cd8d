"""Every error qo raises on purpose derives from QoError, and has a kind.

The kind says what went wrong from the caller's side. Both the CLI's exit
code and the HTTP API's status (and its ``error`` code) derive from it, from
the one table in ``ErrorKind``, so a command and a route that fail the same way
answer the same way; docs/protocol.md shows the table for users.

A subclass declares ``kind = ErrorKind.X``; ``exit_code`` and ``http_status``
are read-only and follow it. The CLI prints ``str(error)`` as a one-line
message and exits with ``exit_code``, so messages must make sense to a
person without a traceback.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any


class ErrorKind(Enum):
    """What kind of failure an error is; the single source of exit codes and statuses."""

    code: str
    exit_code: int
    http_status: int

    # member = (API error code, CLI exit code, HTTP status)
    #: The input is wrong (a name, a field, a flag): fix it and try again.
    INVALID = ("bad_request", 2, 400)
    #: The input is over a size limit (a payload, a body, a batch).
    TOO_LARGE = ("payload_too_large", 2, 413)
    #: No such task or schedule.
    NOT_FOUND = ("not_found", 4, 404)
    #: The stored state rules it out (a key taken, a transition, a lost write).
    CONFLICT = ("conflict", 3, 409)
    #: The URL, bucket, credentials or app are wrong: a retry cannot help.
    MISCONFIGURED = ("misconfigured", 2, 500)
    #: The store answers but cannot safely carry a queue (``qo doctor`` failed).
    UNSUPPORTED_STORE = ("unsupported_store", 1, 500)
    #: Transient: the store is unreachable or a wait ran out; a retry may succeed.
    UNAVAILABLE = ("unavailable", 5, 503)
    #: Backpressure: the queue holds its ``max_depth`` of tasks; submit again later.
    FULL = ("queue_full", 6, 429)
    #: A bug or a corrupt object; the API logs it and shows no detail.
    INTERNAL = ("internal_error", 1, 500)

    def __init__(self, code: str, exit_code: int, http_status: int) -> None:
        self.code = code
        self.exit_code = exit_code
        self.http_status = http_status


class _FromKind:
    """A read-only attribute of an error class or instance, taken from its kind."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> int:
        source: Any = obj if obj is not None else owner
        return int(getattr(source.kind, self.name))

    def __set__(self, obj: Any, value: object) -> None:
        raise AttributeError(f"{self.name} derives from the error's kind: set kind instead")


class QoError(Exception):
    """Base of all deliberate qo errors; its message is shown to users as is.

    A bare ``QoError`` is about the caller's input (``ErrorKind.INVALID``); every
    subclass names its own kind.
    """

    kind: ErrorKind = ErrorKind.INVALID
    exit_code = _FromKind()
    http_status = _FromKind()


class ConfigError(QoError):
    """The queue URL, credentials or options are wrong."""

    kind = ErrorKind.MISCONFIGURED


class InvalidName(QoError):
    """A name or key would be unsafe to use in the store (key injection)."""

    kind = ErrorKind.INVALID


class StoreError(QoError):
    """The store refused or failed a request."""

    kind = ErrorKind.INTERNAL


class PreconditionFailed(StoreError):
    """A conditional write lost: the key exists, or holds another version.

    Every backend raises exactly this type, whatever its wire status (S3 uses
    412, and 409 ConditionalRequestConflict under concurrency).

    ``sent_once``: the backend knows the request reached the store exactly
    once (no client retry), so the 412 cannot be the echo of our own landed
    write and ``qo.protocol.cas`` need not read the key back.
    """

    kind = ErrorKind.CONFLICT
    sent_once = False

    @classmethod
    def first_try(cls, message: str) -> PreconditionFailed:
        """A 412 to a request that was sent once (memory, local directory, S3 without retry)."""
        error = cls(message)
        error.sent_once = True
        return error


class StoreUnavailable(StoreError):
    """A transient failure that survived the backend's own retries."""

    kind = ErrorKind.UNAVAILABLE


class BucketNotFound(StoreError):
    """The bucket (or local root) does not exist."""

    kind = ErrorKind.MISCONFIGURED


class AccessDenied(StoreError):
    """Credentials are valid but lack a permission on the queue's prefix."""

    kind = ErrorKind.MISCONFIGURED


#: Characters of a user's value that an error message shows, at most.
SHOWN_CHARS = 60


def shorten(value: object, width: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to about ``width`` characters.

    A message echoes what the user gave (a key, a tag, a URL) so they can find
    it, but a 5,000-character key would bury the message: the middle is cut
    and the length named. ``shorten("k" * 5000)`` is ``'kkk…kkk' (5000 characters)``.
    """
    text = repr(value)
    if len(text) <= width:
        return text
    size = len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else len(text)
    return _cut(text, size, width)


def _cut(text: str, size: int, width: int = SHOWN_CHARS) -> str:
    head = max(8, width * 2 // 3)
    tail = max(4, width - head - 1)
    return f"{text[:head]}…{text[-tail:]} ({size} characters)"


#: ``shorten_values`` cuts runs without spaces longer than this (a key, a tag, a URL):
#: longer than any path or URL worth copying from a message.
LONGEST_RUN = 200
_LONG_RUN = re.compile(r"\S{" + str(LONGEST_RUN + 1) + ",}")
#: A whole message is cut to this many characters at most.
MAX_MESSAGE = 1000


def shorten_values(message: str) -> str:
    """Cut every overlong value in a finished message, as ``shorten`` does.

    The CLI's ``error:`` line and the API's error body pass through this, so a
    message built with a plain ``{value!r}`` stays readable too. Prose is made
    of short words; a run of more than ``LONGEST_RUN`` characters without a
    space is a value, and loses its middle. A message still over
    ``MAX_MESSAGE`` characters loses its middle too.
    """

    def cut(match: re.Match[str]) -> str:
        run = match.group()
        value = run.rstrip(":;,.")
        return _cut(value, len(value.strip("'\"`()[]{}"))) + run[len(value):]

    message = _LONG_RUN.sub(cut, message)
    if len(message) > MAX_MESSAGE:
        half = MAX_MESSAGE // 2
        message = f"{message[:half]} … {message[-half:]}"
    return message

class NotSupported(StoreError):
    """The store does not implement a request qo needs (HTTP 501, or a 400
    naming an unsupported header such as ``If-Match``).

    Never retried: asking again gets the same answer. It is not an outage.
    """

    kind = ErrorKind.UNSUPPORTED_STORE


class ListingStalled(StoreError):
    """A paginated listing did not advance past the previous page.

    Raised instead of looping forever (or silently skipping keys) on a store
    whose pagination is broken.
    """

    kind = ErrorKind.UNSUPPORTED_STORE


class StoreRefused(StoreError):
    """The store lacks a feature qo's guarantees depend on (see ``qo doctor``)."""

    kind = ErrorKind.MISCONFIGURED  # choose another store, or a mode for it


class DependencyError(QoError):
    """A ``depends_on`` or a workflow that cannot be submitted: an unknown id, a cycle.

    Refused before anything is written (qo/protocol/deps.py, qo/protocol/workflow.py).
    """

    kind = ErrorKind.INVALID


class DependencyCycle(DependencyError):
    """A workflow's dependencies form a cycle; the message names it (``a -> b -> a``)."""

    kind = ErrorKind.INVALID


class NoStatsSnapshot(QoError):
    """No fleet statistics snapshot has been written yet (``qo.protocol.fleetstats``)."""

    kind = ErrorKind.NOT_FOUND


class RateLimited(QoError):
    """Raise in a handler when the remote API said "too many requests" (a 429).

    The task goes back to the queue without consuming an attempt, due again in
    ``retry_after`` seconds, and the worker's limiter admits no task of that
    type's rate limits and key until then, in every process (docs/protocol.md §11).
    """

    kind = ErrorKind.UNAVAILABLE

    def __init__(self, message: str = "rate limited by the remote service", *,
                 retry_after: float = 1.0) -> None:
        if not 0 <= retry_after <= 7 * 86_400:
            raise ValueError(f"retry_after must be between 0 s and 7 days, got {retry_after!r}")
        super().__init__(message)
        self.retry_after = float(retry_after)
