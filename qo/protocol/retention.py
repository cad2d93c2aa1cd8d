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

Then, at the end of ``tasks/``, the workflows' manifests: one written before
the cutoff is deleted once none of its nodes' records is left, so a workflow
goes with its last task (``_retain_manifests``; same budget, its own place
in the cursor).

**Request cost per run:** 1 GET (the cursor). When a pass is under way, add
1 LIST (a page of up to ``budget`` keys), 1 GET per record examined, 1 PUT
(the cursor), free DELETEs, and 1 LIST per deleted task that had payloads
stored apart (over 256 KiB); at its end 1 LIST of ``workflows/`` (per
``budget`` manifests), + 1 GET per manifest older than the cutoff and 1 HEAD
per node until one is still there. With nothing to delete, a pass costs
2 LIST + 1 PUT once per ``interval`` (an hour by default) plus 1 GET per
sweep that runs retention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from qo.errors import PreconditionFailed, StoreError
from qo.ids import new_task_id
from qo.models import CorruptRecord, Status, TaskRecord
from qo.protocol import cursor, deps, keys, records, workflow
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
    pass_done: bool = False  # this run reached the end of tasks/ (and of workflows/)
    workflows_deleted: int = 0  # manifests whose every node had been deleted
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
    tasks_page = [] if after == _DONE else store.list(keys.TASKS, start_after=start,
                                                       limit=max(1, budget))
    for info in tasks_page:
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
    new_cursor: dict[str, Any]
    if listed >= budget:
        new_cursor = {"after": last, "finished_at": finished, "at": now}
    else:  # the end of tasks/: then the workflows' manifests, with a cursor of their own
        wf_after = _retain_manifests(store, state.get("wf_after"), cutoff, budget, report)
        if wf_after is None:
            report.pass_done = True
            new_cursor = {"after": None, "finished_at": now}
        else:
            new_cursor = {"after": _DONE, "wf_after": wf_after, "finished_at": finished,
                          "at": now}
    cursor.write(store, CURSOR_KEY, new_cursor, cursor_etag)
    if report.deleted or report.workflows_deleted:
        log.info("retention deleted %d task(s) finished before %.0f and %d workflow(s)",
                 report.deleted, cutoff, report.workflows_deleted,
                 extra={"event": "retention", "deleted": report.deleted,
                        "examined": report.examined,
                        "workflows_deleted": report.workflows_deleted})
    return report


#: The cursor's ``after`` while the manifests' part of a pass is under way.
_DONE = "~tasks-done"


def _retain_manifests(store: Store, after: object, cutoff: float, budget: int,
                      report: RetentionReport) -> str | None:
    """Delete the manifests (``workflows/{id}.json``) written before ``cutoff`` whose every
    node's record is gone (retention deleted them): a workflow goes with its last task.
    Returns where to resume, or None at the end of ``workflows/``. 1 LIST, + per old
    manifest 1 GET and 1 HEAD per node until one still exists, + free DELETEs."""
    start = after if isinstance(after, str) else None
    last, listed = None, 0
    for info in store.list(keys.WORKFLOWS, start_after=start, limit=max(1, budget)):
        listed += 1
        last = info.key
        if info.last_modified > cutoff or not info.key.endswith(".json"):
            continue
        try:
            manifest = workflow.read(store, info.key[len(keys.WORKFLOWS):-len(".json")])
        except (workflow.WorkflowNotFound, CorruptRecord, StoreError) as exc:
            if not isinstance(exc, workflow.WorkflowNotFound):
                report.errors.append(f"{info.key}: {exc}")
            continue
        if any(store.head(keys.task_key(n.task_id)) is not None for n in manifest.nodes):
            continue  # a node is still there (lazily: stops at the first one found)
        if delete_quietly(store, info.key, if_match=info.etag):
            report.workflows_deleted += 1
    return last if listed >= budget else None


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
