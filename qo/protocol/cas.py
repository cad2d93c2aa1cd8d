"""Conditional writes that survive ambiguous failures.

A write can be applied and still be reported as failed (a timeout, or
botocore retrying a PUT that had landed, which then answers 412 to our own
write). Every body qo writes is unique (it carries a fresh token or
timestamp), so "did my write land?" is answered by reading the key back and
comparing bytes. That read happens only on a failure path.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Literal

from qo.errors import PreconditionFailed, StoreError, StoreUnavailable
from qo.store.base import Store, StoredObject
from qo.store.failures import delete_failures

ATTEMPTS = 4


def _pause(attempt: int) -> None:
    time.sleep(random.uniform(0, 0.05 * 2**attempt))


@dataclass(frozen=True)
class Lost:
    """A conditional put that lost: the 412, and what the key holds now (None: missing,
    or not read: ``read`` False)."""

    error: PreconditionFailed
    current: StoredObject | None
    read: bool = True


def put_or_current(
    store: Store,
    key: str,
    body: bytes,
    *,
    if_match: str | None = None,
    if_none_match: bool = False,
    want_current: bool = True,
) -> str | Lost:
    """Conditional put; the etag it wrote, or ``Lost`` with the key's current object.

    1 PUT. On a 412, 1 GET: the key's current object, which tells our own
    landed write (the same bytes: its etag is returned) from someone else's.
    A caller that would read the key after losing uses ``Lost.current``
    instead, so losing costs no request beyond that GET. A 412 to a request
    sent once (``PreconditionFailed.sent_once``, and no earlier attempt of
    ours that may have landed) cannot be our own write: without
    ``want_current`` it costs no GET at all.
    """
    for attempt in range(ATTEMPTS):
        try:
            return store.put(key, body, if_match=if_match, if_none_match=if_none_match)
        except PreconditionFailed as exc:
            if not (if_match or if_none_match):
                raise
            if attempt == 0 and exc.sent_once and not want_current:
                return Lost(exc, None, read=False)
            current = get_retrying(store, key)
            if current is not None and current.body == body:
                return current.etag  # our own write had landed
            return Lost(exc, current)
        except StoreUnavailable:
            if attempt == ATTEMPTS - 1:
                raise
            _pause(attempt)
    raise AssertionError("unreachable")


def put_checked(
    store: Store,
    key: str,
    body: bytes,
    *,
    if_match: str | None = None,
    if_none_match: bool = False,
) -> str:
    """Conditional put; returns the etag, or raises PreconditionFailed if it lost."""
    result = put_or_current(store, key, body, if_match=if_match, if_none_match=if_none_match,
                            want_current=False)
    if isinstance(result, Lost):
        raise result.error
    return result


def put_if_absent(store: Store, key: str, body: bytes) -> bool:
    """Create an index marker; False if it already existed (which is fine)."""
    try:
        put_checked(store, key, body, if_none_match=True)
        return True
    except PreconditionFailed:
        return False


def get_retrying(store: Store, key: str) -> StoredObject | None:
    for attempt in range(ATTEMPTS):
        try:
            return store.get(key)
        except StoreUnavailable:
            if attempt == ATTEMPTS - 1:
                raise
            _pause(attempt)
    raise AssertionError("unreachable")


#: What a best-effort delete came to: gone, lost a race (412), or failed for good.
DeleteOutcome = Literal["deleted", "lost", "failed"]


def delete_quietly(store: Store, key: str, *, if_match: str | None = None) -> bool:
    """Best-effort delete of a hint; False when it lost or kept failing.

    Safe to lose: every key deleted this way is either re-checked by whoever
    finds it later (stale markers) or covered by a lease (repairs). See
    ``delete_outcome`` to tell a lost race from a failure.
    """
    return delete_outcome(store, key, if_match=if_match) == "deleted"


def delete_outcome(store: Store, key: str, *, if_match: str | None = None) -> DeleteOutcome:
    """Delete ``key``; ``"lost"`` on a 412, ``"failed"`` when the store would not.

    Losing a race is quiet; any other failure is loud: an outage is retried
    (``ATTEMPTS`` tries), while a refusal (403, 501 ``NotSupported``) is not,
    and either is logged (rate-limited) and counted by
    ``qo.store.failures.delete_failures``, which ``qo stats`` and
    ``qo doctor`` report. A caller that meets ``"failed"`` on a marker should
    move past it rather than read it again.
    """
    for attempt in range(ATTEMPTS):
        try:
            store.delete(key, if_match=if_match)
            return "deleted"
        except PreconditionFailed:
            return "lost"
        except StoreUnavailable as exc:
            if attempt == ATTEMPTS - 1:
                delete_failures.record(store, key, exc)
                return "failed"
            _pause(attempt)
        except StoreError as exc:  # denied, not supported: asking again changes nothing
            delete_failures.record(store, key, exc)
            return "failed"
    return "failed"
