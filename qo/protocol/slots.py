"""Concurrency slots: at most N running tasks per limit (and limit key), fleet-wide.

``slots/{name}/{lkey}/{n}`` for ``n`` in ``0..N-1``; a slot is held by the task
whose run lease it names (``Slot.lease_key``, ``Slot.token``). It is taken
under that lease, after it was acquired, by a create-only PUT (the
linearization point), or by an ``If-Match`` PUT over a *stale* slot: one whose
lease is gone, holds another token (taken over by a reaper) or has expired.
So a slot lasts no longer than its task's lease: a dead worker's slot is free
once its lease expires, with no renewal of its own, and one left behind by a
crash between the lease's release and the slot's is free at once.

Cost: taking a slot 1 LIST + 1 PUT while one is free; with all N held, + 2 GET
(slot, lease) for each of the ``STALE_CHECKS`` oldest taken over ``STALE_AGE``
seconds ago, + 1 PUT to take a stale one over. Releasing: 1 DELETE (free),
``If-Match`` the etag it was taken at. ``looks_full``, before a lease: 1 LIST.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from qo.errors import PreconditionFailed
from qo.ids import new_token
from qo.models import CorruptRecord, Lease, dumps, loads
from qo.protocol import keys, leases
from qo.protocol.cas import delete_quietly, get_retrying, put_checked
from qo.store.base import ObjectInfo, Store

#: With every slot held, how many of the oldest are checked for staleness per try, and
#: how old (store seconds) a slot must be to be checked: one of a live task is never
#: stale, so young ones are not worth the two GETs (a crashed holder's slot is free once
#: its lease expired, ``lease_seconds`` after its last renewal).
STALE_CHECKS = 2
STALE_AGE = 5.0


class Slot(BaseModel):
    """Body of a slot: the task and the run lease holding it."""

    model_config = ConfigDict(extra="forbid")

    v: int = 1
    task_id: str
    lease_key: str
    token: str  # the run lease's token (survives renewals, not a takeover)
    owner: str
    at: float
    rev: str = ""  # unique bytes per write (qo.protocol.cas)


@dataclass(frozen=True, slots=True)
class HeldSlot:
    key: str
    etag: str
    last: bool = False  # the listing showed no other free slot: the limit is full now


def acquire(store: Store, name: str, lkey: str, limit: int, *, held: leases.HeldLease,
            now: float, rng: random.Random | None = None) -> HeldSlot | None:
    """Take one of the ``limit`` slots for the task ``held`` is the run lease of; None if
    all are held by live leases. See the module docstring for the cost."""
    rng = rng or random.Random()
    prefix = keys.slots_prefix(name, lkey)
    taken: dict[int, ObjectInfo] = {}
    for info in store.list(prefix):
        tail = info.key[len(prefix):]
        if tail.isdigit() and int(tail) < limit:
            taken[int(tail)] = info
    lease = held.value
    body = Slot(task_id=lease.task_id, lease_key=held.key, token=lease.token, owner=lease.owner,
                at=now, rev=new_token())
    free = [n for n in range(limit) if n not in taken]
    rng.shuffle(free)
    for n in free[:2]:
        try:
            etag = put_checked(store, f"{prefix}{n}", dumps(body), if_none_match=True)
        except PreconditionFailed:
            continue
        return HeldSlot(f"{prefix}{n}", etag, last=len(free) == 1)
    old = [i for i in taken.values() if now - i.last_modified >= STALE_AGE]
    for info in sorted(old, key=lambda i: i.last_modified)[:STALE_CHECKS]:
        if not _stale(store, info, now):
            continue
        try:
            etag = put_checked(store, info.key, dumps(body), if_match=info.etag)
        except PreconditionFailed:
            continue
        return HeldSlot(info.key, etag, last=not free)
    return None


def looks_full(store: Store, name: str, lkey: str, limit: int, now: float) -> bool:
    """Are all ``limit`` slots held, none old enough to be worth a staleness check? 1 LIST,
    asked before a task's lease is taken (the limiter's gate), so that a limit full of
    live tasks costs its waiting tasks no lease. A hint: ``acquire`` decides."""
    prefix = keys.slots_prefix(name, lkey)
    held = [i for i in store.list(prefix)
            if i.key[len(prefix):].isdigit() and int(i.key[len(prefix):]) < limit]
    return len(held) >= limit and all(now - i.last_modified < STALE_AGE for i in held)


def release(store: Store, slot: HeldSlot) -> bool:
    """Free a slot this task holds (1 free DELETE); False if someone took it over."""
    return delete_quietly(store, slot.key, if_match=slot.etag)


def _stale(store: Store, info: ObjectInfo, now: float) -> bool:
    """Is the slot's task over: its lease gone, another claim's, or expired? 2 GET."""
    obj = get_retrying(store, info.key)
    if obj is None or obj.etag != info.etag:
        return False  # changed since the LIST: someone else is at it
    try:
        slot = loads(Slot, obj.body, f"slot {info.key}")
    except CorruptRecord:
        return True
    lease_obj = get_retrying(store, slot.lease_key)
    if lease_obj is None:
        return True
    try:
        lease = loads(Lease, lease_obj.body, f"lease {slot.lease_key}")
    except CorruptRecord:
        return False  # the reaper parks unreadable leases; until then, held
    return (lease.token != slot.token or leases.is_released(lease)
            or leases.expired(lease, lease_obj.last_modified, now))


def read_slots(store: Store, name: str) -> list[tuple[str, int, Slot]]:
    """(limit key, n, slot) of every slot of a limit: 1 LIST + 1 GET each."""
    found = []
    for info in store.list(f"{keys.SLOTS}{name}/"):
        parts = info.key.split("/")
        obj = get_retrying(store, info.key)
        if obj is None or len(parts) != 4 or not parts[3].isdigit():
            continue
        try:
            found.append((parts[2], int(parts[3]), loads(Slot, obj.body, info.key)))
        except CorruptRecord:
            continue
    return found
