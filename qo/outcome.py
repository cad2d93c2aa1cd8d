"""Recording what happened to a claimed task, with fencing.

Every outcome is one CAS on the record with the etag read at claim time: that
write is the linearization point. If the record changed meanwhile, the worker
reads it again: a terminal record (cancelled) wins; otherwise the worker may
write only while it still holds its lease, checked by etag. A worker whose
lease was taken over therefore never overwrites the new owner's outcome.
Follow-up writes (the retry or dead marker) happen before the lease is
deleted, so a crash in between is repaired by whoever reaps the lease.
"""

from __future__ import annotations

import logging
import traceback as tb
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from qo import index, keys, records
from qo.claim import Claim
from qo.errors import PreconditionFailed
from qo.models import ErrorInfo, Status, TaskRecord
from qo.settings import Settings
from qo.store.base import Store

log = logging.getLogger("qo.outcome")
MAX_RETRIES_ON_CONFLICT = 5


class Outcome(StrEnum):
    RECORDED = "recorded"  # our outcome is the task's state now
    SUPERSEDED = "superseded"  # the record reached a terminal state without us (cancel)
    FENCED = "fenced"  # we had lost the lease; nothing written


def error_info(exc: BaseException, attempt: int, retryable: bool) -> ErrorInfo:
    text = "".join(tb.format_exception(exc))
    return ErrorInfo(
        type=type(exc).__name__,
        message=str(exc)[:2000],
        traceback=text[-8000:],
        attempt=attempt,
        retryable=retryable,
    )


def succeed(store: Store, claim: Claim, result: Any, settings: Settings) -> Outcome:
    now = store.now()
    encoded = records.encode_json(result, f"result of task {claim.task_id}")
    records.check_size(encoded, f"result of task {claim.task_id}", settings)
    inline, ref = records.offload(
        store, keys.result_key(claim.task_id, claim.attempt), encoded, result, settings
    )

    def update(rec: TaskRecord) -> TaskRecord:
        return rec.model_copy(update={
            "status": Status.SUCCEEDED, "attempt": claim.attempt, "result": inline,
            "result_ref": ref, "error": None, "started_at": claim.lease.lease.claimed_at,
            "finished_at": now, "worker": claim.lease.lease.owner,
            "last_lease": claim.lease.lease.token,
        })

    return _record(store, claim, update, now)


def fail(
    store: Store, claim: Claim, error: ErrorInfo, *, retryable: bool, settings: Settings
) -> Outcome:
    now = store.now()

    def update(rec: TaskRecord) -> TaskRecord:
        retry = retryable and claim.attempt < rec.max_attempts
        changes: dict[str, Any] = {
            "attempt": claim.attempt, "error": error, "worker": claim.lease.lease.owner,
            "started_at": claim.lease.lease.claimed_at, "last_lease": claim.lease.lease.token,
        }
        if retry:
            changes["status"] = Status.FAILED
            changes["available_at"] = now + rec.retry.delay(claim.attempt)
        else:
            changes["status"] = Status.DEAD
            changes["finished_at"] = now
        return rec.model_copy(update=changes)

    return _record(store, claim, update, now)


def release(store: Store, claim: Claim) -> None:
    """Give a task back untouched (graceful shutdown): index it, then drop the lease."""
    index.ensure_indexed(store, claim.record, store.now())
    claim.lease.release(store)


def _record(
    store: Store, claim: Claim, update: Callable[[TaskRecord], TaskRecord], now: float
) -> Outcome:
    record, etag = claim.record, claim.etag
    for _ in range(MAX_RETRIES_ON_CONFLICT):
        new = update(record)
        try:
            claim.etag = records.replace(store, new, etag)
        except PreconditionFailed:
            current = records.read(store, claim.task_id)
            if current is not None and current.record.terminal:
                claim.record = current.record
                claim.lease.release(store)  # no-op if it is not ours any more
                return Outcome.SUPERSEDED
            if current is None or not claim.lease.still_held(store):
                log.warning("task %s: lease lost, outcome dropped", claim.task_id)
                return Outcome.FENCED
            record, etag = current.record, current.etag
            continue
        claim.record = new
        index.ensure_indexed(store, new, now)
        claim.lease.release(store)
        return Outcome.RECORDED
    return Outcome.FENCED
