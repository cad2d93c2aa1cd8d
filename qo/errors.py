"""Every error qo raises on purpose derives from QoError.

The CLI prints ``str(error)`` as a one-line message and exits non-zero, so
messages must make sense to a person without a traceback.
"""

from __future__ import annotations

import re

#: Characters of a user's value that an error message shows, at most.
SHOWN_CHARS = 60


class QoError(Exception):
    """Base of all deliberate qo errors; its message is shown to users as is."""

    exit_code = 1


class ConfigError(QoError):
    """The queue URL, credentials or options are wrong."""

    exit_code = 2


class InvalidName(QoError):
    """A name or key would be unsafe to use in the store (key injection)."""

    exit_code = 2


class StoreError(QoError):
    """The store refused or failed a request."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the key exists, or holds another version.

    Every backend raises exactly this type, whatever its wire status (S3 uses
    412, and 409 ConditionalRequestConflict under concurrency).
    """


class StoreUnavailable(StoreError):
    """A transient failure that survived the backend's own retries."""


class BucketNotFound(StoreError):
    """The bucket (or local root) does not exist."""


class AccessDenied(StoreError):
    """Credentials are valid but lack a permission on the queue's prefix."""


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
