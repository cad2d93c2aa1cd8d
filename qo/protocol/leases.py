"""Leases: ``leases/{queue}/{id}``, created only if absent.

Holding a task's lease is what allows changing its record and its index
entries (except cancel, which only moves a record to a terminal state, and
the promoter, which only adds markers). A lease is deleted only once the task
is terminal or indexed again, so a crash while holding one is repaired by
whoever reaps it after it expires.

On a store without conditional DELETE (qo/store/modes.py) a lease is
released by a tombstone: an ``If-Match`` PUT that rewrites it as a lease of
kind ``released`` (the linearization point, fenced like a renewal), then an
unconditional DELETE. A lease whose DELETE fails for good (403, 501) is
tombstoned too. A tombstone left behind reads as held for
``RELEASE_SETTLE`` seconds, then as absent: ``acquire`` takes it over by a
CAS, and so does a reaper. See docs/protocol.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from qo.errors import PreconditionFailed, StoreError
from qo.ids import new_token
from qo.models import CorruptRecord, Lease, dumps, loads
from qo.protocol import keys
from qo.protocol.cas import delete_outcome, delete_quietly, get_retrying, put_checked
from qo.protocol.versioned import Versioned, parse
from qo.store.base import Store
from qo.store.failures import delete_failures
from qo.store.modes import releases_by_tombstone

log = logging.getLogger("qo.protocol.leases")

#: The kind of a released lease (a tombstone): every reader treats it as absent.
RELEASED = "released"
#: A tombstone reads as held this long (store clock), so that the releaser's
#: unconditional DELETE, sent at most RELEASE_SETTLE / 2 after its PUT, can
#: never remove a lease someone took over; then it may be taken over.
RELEASE_SETTLE = 10.0


@dataclass
class HeldLease(Versioned[Lease]):
    """A lease as last read or written (``value``, ``etag``), at ``key``.

    A thin subclass rather than a ``Versioned`` beside a key: the holder's
    operations (renew, release, check) are CAS on exactly that pair, and each
    one that succeeds moves both.
    """

    key: str

    def renew(self, store: Store) -> bool:
        """Extend the lease (its LastModified moves); False if it was taken over."""
        body = self.value.model_copy(update={"renewals": self.value.renewals + 1})
        try:
            self.etag = put_checked(store, self.key, dumps(body), if_match=self.etag)
        except PreconditionFailed:
            return False
        self.value = body
        return True

    def release(self, store: Store) -> bool:
        """Delete the lease if it is still ours; False if it was taken over or stayed.

        Conditional DELETE: 1 DELETE. Unconditional mode: 1 PUT (the tombstone,
        ``If-Match`` our etag: the linearization point) + 1 DELETE. A conditional
        DELETE that fails for good (403, 501, an outage) leaves a tombstone
        instead (1 PUT), so that the task does not stay locked: see ``acquire``.
        """
        if not releases_by_tombstone(store):
            outcome = delete_outcome(store, self.key, if_match=self.etag)
            if outcome == "failed":
                self._tombstone(store)
            return outcome == "deleted"
        started = time.monotonic()
        if not self._tombstone(store):
            return False
        if time.monotonic() - started > RELEASE_SETTLE / 2:
            log.warning("releasing %s took over %.0f s: left its tombstone for others to take "
                        "over", self.key, RELEASE_SETTLE / 2)
            return False
        return delete_quietly(store, self.key)

    def _tombstone(self, store: Store) -> bool:
        """Rewrite the lease as released, ``If-Match`` our etag; False if it is not ours."""
        tomb = self.value.model_copy(update={
            "kind": RELEASED, "seconds": RELEASE_SETTLE, "renewals": self.value.renewals + 1,
            "reaped_token": None})
        try:
            self.etag = put_checked(store, self.key, dumps(tomb), if_match=self.etag)
        except PreconditionFailed:
            return False  # taken over (expired and reaped): not ours to delete
        except StoreError as exc:
            delete_failures.record(store, self.key, exc)
            return False
        self.value = tomb
        return True

    def still_held(self, store: Store) -> bool:
        obj = get_retrying(store, self.key)
        return obj is not None and obj.etag == self.etag


def acquire(
    store: Store,
    queue: str,
    task_id: str,
    *,
    owner: str,
    kind: str,
    seconds: float,
    now: float,
    reaped_token: str | None = None,
) -> HeldLease | None:
    """Create the lease, or None if someone holds it."""
    lease = Lease(task_id=task_id, kind=kind, owner=owner, token=new_token(),
                  seconds=seconds, claimed_at=now, reaped_token=reaped_token)
    key = keys.lease_key(queue, task_id)
    try:
        etag = put_checked(store, key, dumps(lease), if_none_match=True)
    except PreconditionFailed:
        # Tombstones exist in the unconditional mode, or where deletes fail here.
        if releases_by_tombstone(store) or delete_failures.count(store):
            return take_over_released(store, key, lease, now)
        return None
    return HeldLease(lease, etag, key)


def take_over_released(store: Store, key: str, lease: Lease, now: float) -> HeldLease | None:
    """Replace a settled tombstone with ``lease`` by a CAS; None if the key is held.

    1 GET, + 1 PUT when the key holds a tombstone older than RELEASE_SETTLE
    (or is gone again: then a create-only PUT).
    """
    obj = get_retrying(store, key)
    try:
        if obj is None:
            etag = put_checked(store, key, dumps(lease), if_none_match=True)
            return HeldLease(lease, etag, key)
        try:
            current = loads(Lease, obj.body, f"lease {key}")
        except CorruptRecord:
            return None  # the reaper parks unreadable leases
        if not is_released(current) or not expired(current, obj.last_modified, now):
            return None
        etag = put_checked(store, key, dumps(lease), if_match=obj.etag)
    except PreconditionFailed:
        return None
    return HeldLease(lease, etag, key)


def is_released(lease: Lease) -> bool:
    """A tombstone: the holder is done; readers treat the task as having no lease."""
    return lease.kind == RELEASED


def read(store: Store, key: str) -> HeldLease | None:
    obj = get_retrying(store, key)
    if obj is None:
        return None
    current = parse(Lease, obj, f"lease {key}")
    return HeldLease(current.value, current.etag, key)


#: No lease lasts longer than this without a renewal, whatever its body says:
#: holders renew every ``seconds / 3``, so a longer one is corrupt or hostile and
#: would keep its task "running" forever. ``qo doctor`` reports such outliers.
MAX_LEASE_SECONDS = 3600.0


def duration(lease: Lease) -> float:
    """How long a lease lasts from its last write, capped at MAX_LEASE_SECONDS."""
    return min(lease.seconds, MAX_LEASE_SECONDS)


def outlier(lease: Lease) -> bool:
    """A lease whose stated duration is over the cap (reported by ``qo doctor``)."""
    return lease.seconds > MAX_LEASE_SECONDS


def expired(lease: Lease, last_modified: float, now: float) -> bool:
    return last_modified + duration(lease) < now
