"""Audit: find and repair waiting records that no marker and no lease points at.

Invariant 3 of docs/protocol.md says that a waiting task with no lease always
has a marker. A record that breaks it is *stranded*: nothing would ever claim
it. The protocol is built so that this never happens; the audit is the safety
net that proves it in production and repairs what a bug (or a person deleting
objects by hand) left behind.

A record is checked only if it was last written more than ``GRACE`` seconds
ago, so that transitions in flight (a submit between its two writes, a claim
between its lease and its marker delete) are never mistaken for strandings.
A stranded record is repaired under an ``admin`` lease: the record is read
again, and if it is still waiting with no marker, the marker its state needs
is written (``index.ensure_indexed``). The lease is the linearization point:
a worker that claims the task meanwhile holds it, and the audit backs off.

Work is bounded per run and resumable, like retention: at most ``budget``
records are examined per run, the position is kept in
``sweep/audit-cursor``, and a new pass starts no sooner than ``interval``
seconds after the previous one ended. At the end of a pass the audit also
deletes the heartbeat records (``workers/``) of workers not seen for
``WORKER_GONE`` seconds (a killed worker never removes its own).

**Request cost:** 1 GET (the cursor) per run. During a pass, per page of up
to ``budget`` records: 1 LIST, 1 GET per record older than ``GRACE``, and
for each *waiting* record up to 3 HEADs (its lease, its ready and its delayed
marker), then 1 PUT (the cursor). A repair costs 1 PUT (admin lease) + 1 GET
+ 2 HEAD + 1 PUT (the marker) + 1 free DELETE. The end of a pass adds 1 LIST
of ``workers/`` and a free DELETE per gone worker. With N records stored, a
pass costs about N/budget LIST + N GET, once per ``interval`` (a day by
default): for 100,000 stored tasks, about $0.04 of GETs and $0.002 of LIST and PUT.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from qo.errors import PreconditionFailed, StoreError
from qo.hooks import NO_HOOKS, Hooks, Kind
from qo.models import WAITING, CorruptRecord, Status, TaskRecord
from qo.protocol import cursor, deps, fleet, index, keys, leases, records
from qo.settings import Settings
from qo.store.base import Store

log = logging.getLogger("qo.protocol.audit")

DEFAULT_BUDGET = 500
DEFAULT_INTERVAL = 86_400.0
#: Records written more recently than this are not judged (transitions in flight).
GRACE = 300.0
#: A worker heartbeat record untouched this long belongs to a worker that is gone
#: (an hour: well past the point where ``qo.protocol.fleet`` stops counting it as live).
WORKER_GONE = 4 * fleet.STALE_AFTER


@dataclass
class AuditReport:
    examined: int = 0
    stranded: list[str] = field(default_factory=list)  # ids found stranded
    repaired: int = 0
    workers_removed: int = 0
    skipped: bool = False  # the last pass ended less than `interval` ago
    pass_done: bool = False
    errors: list[str] = field(default_factory=list)


def is_stranded(store: Store, record: TaskRecord) -> bool:
    """Is this waiting record without a lease and without any marker? (up to 3 HEAD)"""
    if record.status not in WAITING:
        return False
    if store.head(keys.lease_key(record.queue, record.id)) is not None:
        return False
    return not _has_marker(store, record)


def _has_marker(store: Store, record: TaskRecord) -> bool:
    """Does the record's ready or delayed marker exist? (1-2 HEAD)"""
    m = index.marker_of(record)
    return store.head(m.ready_key) is not None or store.head(m.delayed_key) is not None


def repair(store: Store, settings: Settings, record: TaskRecord, owner: str, now: float,
           *, hooks: Hooks = NO_HOOKS) -> bool:
    """Index a stranded task (``record`` as last read) again, under an admin lease;
    True if it was repaired."""
    task_id, queue = record.id, record.queue
    held = leases.acquire(store, queue, task_id, owner=owner, kind="admin",
                          seconds=settings.repair_lease_seconds, now=now)
    if held is None:
        return False  # someone holds the task: it is not stranded
    try:
        current = records.read(store, task_id)  # the truth, under the lease
        if current is None or current.value.status not in WAITING:
            return False
        if _has_marker(store, current.value):
            return False
        key = index.ensure_indexed(store, current.value, now)
        log.error("task %s was waiting with no marker and no lease; indexed it again at %s",
                  task_id, key, extra={"event": "stranded_repaired", "task_id": task_id})
        hooks.emit(Kind.REPAIRED, task_id, queue=queue, task_type=current.value.type, key=key)
        return True
    finally:
        held.release(store)


def scan(
    store: Store,
    settings: Settings,
    *,
    start_after: str | None = None,
    limit: int | None = None,
    fix: bool = False,
    owner: str = "audit",
    now: float | None = None,
    hooks: Hooks = NO_HOOKS,
) -> tuple[AuditReport, str | None, int]:
    """Check up to ``limit`` records after ``start_after``; (report, last key, keys listed)."""
    now = store.now() if now is None else now
    report = AuditReport()
    last, listed = None, 0
    for info in store.list(keys.TASKS, start_after=start_after, limit=limit):
        listed += 1
        last = info.key
        task_id = keys.task_id_from_key(info.key)
        if task_id is None or info.last_modified > now - GRACE:
            continue
        report.examined += 1
        try:
            current = records.read(store, task_id)
            if fix and current is not None and current.value.status == Status.BLOCKED:
                if deps.repair_blocked(store, current.value, now):  # its submit died early
                    report.repaired += 1
                continue
            if current is None or not is_stranded(store, current.value):
                continue
            report.stranded.append(task_id)
            if fix and repair(store, settings, current.value, owner, now, hooks=hooks):
                report.repaired += 1
        except (StoreError, CorruptRecord) as exc:
            report.errors.append(f"{info.key}: {exc}")
    return report, last, listed


@dataclass
class LeaseReport:
    examined: int = 0
    outliers: list[str] = field(default_factory=list)  # keys whose duration is over the cap
    unreadable: list[str] = field(default_factory=list)


def scan_leases(store: Store, limit: int = 10_000) -> LeaseReport:
    """Read every lease (1 LIST per 1,000 + 1 GET each) and report the suspicious ones."""
    report = LeaseReport()
    for info in store.list(keys.LEASES, limit=limit):
        report.examined += 1
        try:
            held = leases.read(store, info.key)
        except CorruptRecord:
            report.unreadable.append(info.key)
            continue
        if held is not None and leases.outlier(held.value):
            report.outliers.append(info.key)
    return report


def remove_gone_workers(store: Store, now: float) -> int:
    """Delete heartbeat records of workers not seen for WORKER_GONE seconds."""
    removed = 0
    for info in store.list(keys.WORKERS):
        if info.last_modified + WORKER_GONE < now:
            try:
                store.delete(info.key, if_match=info.etag)
                removed += 1
            except (PreconditionFailed, StoreError):
                continue  # it came back, or the delete failed: next pass
    return removed


def _complete_workflows(store: Store, settings: Settings, now: float,
                        report: AuditReport) -> int:
    """Workflows a crashed submit left half-written (1 LIST; see qo/protocol/workflow.py)."""
    from qo.protocol import workflow  # it imports submit, which the audit needs nowhere else

    try:
        return workflow.complete_pending(store, settings, now)
    except (StoreError, CorruptRecord) as exc:
        report.errors.append(f"{keys.WORKFLOWS_PENDING}: {exc}")
        return 0


def run_audit(
    store: Store,
    settings: Settings,
    *,
    owner: str = "audit",
    budget: int = DEFAULT_BUDGET,
    interval: float = DEFAULT_INTERVAL,
    now: float | None = None,
    hooks: Hooks = NO_HOOKS,
) -> AuditReport:
    """One bounded, resumable step of the audit, repairing what it finds."""
    now = store.now() if now is None else now
    state, cursor_etag = cursor.read(store, keys.AUDIT_CURSOR)
    after, finished = state.get("after"), state.get("finished_at")
    if after is None and isinstance(finished, (int, float)) and now - finished < interval:
        return AuditReport(skipped=True)
    report, last, listed = scan(store, settings, start_after=after if isinstance(after, str)
                                else None, limit=max(1, budget), fix=True, owner=owner, now=now,
                                hooks=hooks)
    new_cursor: dict[str, Any]
    if listed < budget:
        report.pass_done = True
        report.workers_removed = remove_gone_workers(store, now)
        report.repaired += _complete_workflows(store, settings, now, report)
        new_cursor = {"after": None, "finished_at": now}
    else:
        new_cursor = {"after": last, "finished_at": finished, "at": now}
    cursor.write(store, keys.AUDIT_CURSOR, new_cursor, cursor_etag)
    if report.stranded:
        log.error("audit found %d stranded task(s), repaired %d", len(report.stranded),
                  report.repaired, extra={"event": "audit", "stranded": len(report.stranded)})
    return report
