"""Housekeeping anyone may run at any time, any number of times at once.

- ``promote``: delayed markers that are due become ready markers (create the
  ready marker, then delete the delayed one; both idempotent).
- ``reap``: an expired lease is taken over by a CAS on the lease itself (the
  linearization point that fences the old holder's heartbeat), then the
  record is repaired (a lost run counts as an attempt, recorded once thanks to
  ``last_lease``), the task is indexed again and the lease deleted. A reaper
  that dies midway leaves its own short lease, which the next reaper takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import orjson

from qo.errors import PreconditionFailed, StoreError
from qo.hooks import NO_HOOKS, Hooks, Kind
from qo.ids import new_token
from qo.models import CorruptRecord, ErrorInfo, FutureSchema, Lease, Status, TaskRecord, dumps
from qo.protocol import deps, index, keys, leases, records
from qo.protocol.cas import delete_quietly, put_checked, put_if_absent
from qo.protocol.keys import parse_delayed_key
from qo.retry import RetryDecision
from qo.settings import Settings
from qo.store.base import ObjectInfo, Store

log = logging.getLogger("qo.protocol.sweep")


@dataclass
class SweepReport:
    promoted: int = 0
    reaped: int = 0
    fired: int = 0  # schedule slots submitted (or repaired)
    repaired: int = 0  # stranded tasks indexed again by the audit (qo/protocol/audit.py)
    next_due: float | None = None
    errors: list[str] = field(default_factory=list)


TURN_KEY = keys.SWEEP_TURN


def take_sweep_turn(store: Store, owner: str, interval: float) -> bool:
    """Elect one periodic sweeper per interval among many idle workers.

    One HEAD (cheap) tells whether someone swept recently; otherwise a
    conditional PUT takes the turn. N idle workers then pay N HEADs per
    interval and share one sweep, instead of N sweeps of several LISTs each.
    """
    info = store.head(TURN_KEY)
    now = store.now()
    if info is not None and now - info.last_modified < interval * 0.9:
        return False
    body = orjson.dumps({"owner": owner, "at": now})
    try:
        if info is None:
            store.put(TURN_KEY, body, if_none_match=True)
        else:
            store.put(TURN_KEY, body, if_match=info.etag)
    except PreconditionFailed:
        return False
    return True


def promote(store: Store, now: float | None = None, limit: int = 1000,
            *, hooks: Hooks = NO_HOOKS) -> SweepReport:
    """Give due delayed tasks their ready marker (emits PROMOTED for markers it created)."""
    now = store.now() if now is None else now
    report = SweepReport()
    for info in store.list(keys.DELAYED, limit=limit):
        marker = parse_delayed_key(info.key)
        if marker is None:
            continue
        if marker.available_at > now:
            report.next_due = marker.available_at
            break
        if put_if_absent(store, marker.ready_key, index.marker_body()):
            hooks.emit(Kind.PROMOTED, marker.task_id, queue=marker.queue,
                       task_type=marker.task_type)
        delete_quietly(store, info.key, if_match=info.etag)
        report.promoted += 1
    return report


def reap(store: Store, settings: Settings, owner: str, now: float | None = None,
         *, hooks: Hooks = NO_HOOKS) -> SweepReport:
    """Take over and repair expired leases (emits REAPED, and DEAD when a lost run was the last)."""
    now = store.now() if now is None else now
    report = SweepReport()
    for info in store.list(keys.LEASES):
        if info.last_modified + min(settings.repair_lease_seconds, settings.lease_seconds) >= now:
            continue  # too young to have expired, whatever its length
        try:
            if reap_one(store, settings, info, owner, now, hooks=hooks):
                report.reaped += 1
        except (StoreError, CorruptRecord) as exc:
            report.errors.append(f"{info.key}: {exc}")
            log.warning("reaping %s failed: %s", info.key, exc)
    return report


#: An unreadable lease body is treated as expired once it is this old.
CORRUPT_LEASE_AGE = 3600.0


def reap_one(store: Store, settings: Settings, info: ObjectInfo, owner: str, now: float,
             *, hooks: Hooks = NO_HOOKS) -> bool:
    try:
        held = leases.read(store, info.key)
    except FutureSchema:
        raise  # a newer qo's lease: left for a newer reaper (reported by ``reap``)
    except CorruptRecord:
        held = None
        if info.last_modified + CORRUPT_LEASE_AGE >= now:
            return False
        task_id, etag, run_token = info.key.rsplit("/", 1)[1], info.etag, None
    else:
        if held is None or not leases.expired(held.value, info.last_modified, now):
            return False
        if held.etag != info.etag:
            return False  # renewed since we listed it
        old = held.value
        task_id, etag = old.task_id, held.etag
        run_token = old.token if old.kind == "run" else old.reaped_token
    takeover = Lease(task_id=task_id, kind="reap", owner=owner, token=new_token(),
                     seconds=settings.repair_lease_seconds, claimed_at=now,
                     reaped_token=run_token)
    try:
        etag = put_checked(store, info.key, dumps(takeover), if_match=etag)
    except PreconditionFailed:
        return False  # the holder renewed it, or another reaper won
    mine = leases.HeldLease(takeover, etag, info.key)
    queue = info.key.split("/")[1]
    try:
        record, counted = _repair(store, mine, run_token, now)
    except FutureSchema:
        # A newer qo's record: keep the reap lease, so that a newer reaper takes it
        # over once it expires and repairs the task (the lost run's token goes along).
        raise
    except CorruptRecord as exc:  # park it for qo doctor; never retry it forever
        index.quarantine(store, queue, task_id, str(exc))
        hooks.emit(Kind.QUARANTINED, task_id, queue=queue, reason=str(exc))
        record, counted = None, False
    mine.release(store)
    if record is not None:
        hooks.emit(Kind.REAPED, task_id, queue=queue, task_type=record.type,
                   attempt=record.attempt, status=record.status, counted=counted,
                   reaper=owner)
        if counted and record.status == Status.DEAD:
            hooks.emit(Kind.DEAD, task_id, queue=queue, task_type=record.type,
                       attempt=record.attempt, reason="LeaseExpired", reaper=owner)
    return True


def _repair(store: Store, held: leases.HeldLease, run_token: str | None,
            now: float) -> tuple[TaskRecord | None, bool]:
    """Repair the record under the reap lease: (the record, whether this call counted a lost run)."""
    current = records.read(store, held.value.task_id)
    if current is None:
        return None, False  # a claim of a marker whose submitter died: nothing to repair
    counted = False
    record = current.value
    if not record.terminal and run_token is not None and record.last_lease != run_token:
        attempt = record.attempt + 1
        error = ErrorInfo(type="LeaseExpired",
                          message="the worker stopped renewing its lease (crash or stall)",
                          attempt=attempt)
        changes = {"attempt": attempt, "error": error, "last_lease": run_token}
        decision = RetryDecision.decide(retryable=True, attempt=attempt, policy=None,
                                        max_attempts=record.max_attempts)
        if decision.retry:  # at once: the run never reported an error
            changes.update(status=Status.PENDING, available_at=now + decision.delay)
        else:
            changes.update(status=Status.DEAD, finished_at=now)
        record = record.model_copy(update=changes)
        records.replace(store, record, current.etag)
        counted = True
    index.ensure_indexed(store, record, now)
    if record.terminal and record.has_dependents:  # the outcome's follow-up may not have run
        deps.on_terminal(store, record, now, repair=True)
    return record, counted
