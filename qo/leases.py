"""Leases: ``leases/{queue}/{id}``, created only if absent.

Holding a task's lease is what allows changing its record and its index
entries (except cancel, which only moves a record to a terminal state, and
the promoter, which only adds markers). A lease is deleted only once the task
is terminal or indexed again, so a crash while holding one is repaired by
whoever reaps it after it expires.
"""

from __future__ import annotations

from dataclasses import dataclass

from qo import keys
from qo.cas import delete_quietly, get_retrying, put_checked
from qo.errors import PreconditionFailed
from qo.ids import new_token
from qo.models import Lease, dumps, loads
from qo.store.base import Store


@dataclass
class HeldLease:
    key: str
    lease: Lease
    etag: str

    def renew(self, store: Store) -> bool:
        """Extend the lease (its LastModified moves); False if it was taken over."""
        body = self.lease.model_copy(update={"renewals": self.lease.renewals + 1})
        try:
            self.etag = put_checked(store, self.key, dumps(body), if_match=self.etag)
        except PreconditionFailed:
            return False
        self.lease = body
        return True

    def release(self, store: Store) -> bool:
        return delete_quietly(store, self.key, if_match=self.etag)

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
        return None
    return HeldLease(key, lease, etag)


def read(store: Store, key: str) -> HeldLease | None:
    obj = get_retrying(store, key)
    if obj is None:
        return None
    return HeldLease(key, loads(Lease, obj.body, f"lease {key}"), obj.etag)


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
