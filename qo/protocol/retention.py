"""Retention: delete finished tasks (succeeded, cancelled, dead) once they are old.

A task is deleted when its record is terminal, its ``finished_at`` is older
than the retention period, and its idempotency key (if any) has expired, so
that retention never breaks deduplication. The record is deleted first, with
``If-Match`` set to the etag that was read: a task retried meanwhile changed
etag and is kept. Then its payloads and its dead-letter marker go.

Work is bounded per run and resumable:

* Fresh task ids are inverted milliseconds, so ``tasks/`` lists newest first.
  A run starts listing *after* the key of the cutoff time, so tasks created
  within the retention period are never even listed (idempotent ids, ``k…``,
  sort after all fresh ids and are always examined).
* At most ``budget`` records are examined per run. Where a run stops is kept
  in ``sweep/retention-cursor``; the next run resumes there. When a pass
  reaches the end of ``tasks/``, the cursor records when, and the next pass
  starts no sooner than ``interval`` seconds later.

**Request cost per run:** 1 GET (the cursor). When a pass is under way, add
1 LIST (a page of up to ``budget`` keys), 1 GET per record examined, 1 PUT
(the cursor), free DELETEs, and 1 LIST per deleted task that had payloads
stored apart (over 256 KiB). With nothing to delete, a pass costs 1 LIST +
1 PUT once per ``interval`` (an hour by default) plus 1 GET per minute.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from qo.errors import PreconditionFailed, StoreError
from qo.ids import new_task_id
from qo.models import CorruptRecord, Status, TaskRecord
from qo.protocol import cursor, deps, keys, records
from qo.protocol.cas import delete_quietly
from qo.store.base import Store

log = logging.getLogger("qo.protocol.retention")

CURSOR_KEY = keys.RETENTION_CURSOR
DEFAULT_BUDGET = 200
DEFAULT_INTERVAL = 3600.0


@dataclass
class RetentionReport:
    examined: int = 0
    deleted: int = 0
    skipped: bool = False  # the last pass ended less than `interval` ago
    pass_done: bool = False  # this run reached the end of tasks/
    errors: list[str] = field(default_factory=list)


def cutoff_key(cutoff: float) -> str:
    """Every fresh task created before ``cutoff`` sorts after this key."""
    return keys.TASKS + new_task_id(cutoff)[:12]  # the inverted-milliseconds part


def expired(record: TaskRecord, cutoff: float, now: float) -> bool:
    """Is this record finished, older than the cutoff, and free of a live idempotency key?"""
    if not record.terminal or record.finished_at is None or record.finished_at > cutoff:
        return False
    return record.idempotency_expires_at is None or record.idempotency_expires_at <= now


def run_retention(
    store: Store,
    older_than_seconds: float,
    *,
    budget: int = DEFAULT_BUDGET,
    interval: float = DEFAULT_INTERVAL,
    now: float | None = None,
) -> RetentionReport:
    """One bounded step of retention; see the module docstring."""
    report = RetentionReport()
    if older_than_seconds <= 0:
        report.skipped = True
        return report
    now = store.now() if now is None else now
    cutoff = now - older_than_seconds
    state, cursor_etag = cursor.read(store, CURSOR_KEY)
    after = state.get("after")
    finished = state.get("finished_at")
    if after is None and isinstance(finished, (int, float)) and now - finished < interval:
        report.skipped = True
        return report
    start = cutoff_key(cutoff)
    if isinstance(after, str) and after > start:
        start = after
    last = None
    listed = 0
    for info in store.list(keys.TASKS, start_after=start, limit=max(1, budget)):
        listed += 1
        last = info.key
        task_id = keys.task_id_from_key(info.key)
        if task_id is None:
            continue
        report.examined += 1
        try:
            if _delete_if_expired(store, task_id, cutoff, now):
                report.deleted += 1
        except (StoreError, CorruptRecord) as exc:
            report.errors.append(f"{info.key}: {exc}")
            log.warning("retention of %s failed: %s", info.key, exc)
    if listed < budget:
        report.pass_done = True
        new_cursor: dict[str, Any] = {"after": None, "finished_at": now}
    else:
        new_cursor = {"after": last, "finished_at": finished, "at": now}
    cursor.write(store, CURSOR_KEY, new_cursor, cursor_etag)
    if report.deleted:
        log.info("retention deleted %d task(s) finished before %.0f", report.deleted, cutoff,
                 extra={"event": "retention", "deleted": report.deleted,
                        "examined": report.examined})
    return report


def _delete_if_expired(store: Store, task_id: str, cutoff: float, now: float) -> bool:
    current = records.read(store, task_id)
    if current is None:
        return False
    record = current.value
    if not expired(record, cutoff, now):
        return False
    try:
        store.delete(keys.task_key(task_id), if_match=current.etag)
    except PreconditionFailed:
        return False  # changed since we read it (retried): keep it
    if record.input_ref or record.result_ref:
        for payload in store.list(f"{keys.PAYLOADS}{task_id}/"):
            delete_quietly(store, payload.key)
    if record.status == Status.DEAD:
        delete_quietly(store, keys.dead_key(record.queue, task_id))
    if record.depends_on or record.has_dependents:  # nothing to list for other tasks
        deps.forget(store, record)
    return True


__all__ = ["CURSOR_KEY", "RetentionReport", "cutoff_key", "run_retention"]
