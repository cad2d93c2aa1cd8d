"""Every error qo raises on purpose derives from QoError.

The CLI prints ``str(error)`` as a one-line message and exits non-zero, so
messages must make sense to a person without a traceback.
"""

from __future__ import annotations


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


class NotSupported(StoreError):
    """The store does not implement a request qo needs (HTTP 501, or a 400
    naming an unsupported header such as ``If-Match``).

    Never retried: asking again gets the same answer. It is not an outage.
    """


class ListingStalled(StoreError):
    """A paginated listing did not advance past the previous page.

    Raised instead of looping forever (or silently skipping keys) on a store
    whose pagination is broken.
    """


class StoreRefused(StoreError):
    """The store lacks a feature qo's guarantees depend on (see ``qo doctor``)."""

    exit_code = 2
