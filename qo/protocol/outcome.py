"""Recording what happened to a claimed task, with fencing.

Every outcome is one CAS on the record with the etag read at claim time: that
write is the linearization point. If the record changed meanwhile, the worker
reads it again: a terminal record (cancelled) wins; otherwise the worker may
write only while it still holds its lease, checked by etag. A worker whose
lease was taken over therefore never overwrites the new owner's outcome.
Follow-up writes (the retry or dead marker) happen before the lease is
deleted, so a crash in between is repaired by whoever reaps the lease.

A task cancelled while its handler ran keeps its ``cancelled`` status, but
the worker notes on it (one more CAS, only on that path) that the attempt ran
and that its outcome was dropped: ``attempt``, ``started_at``, ``worker`` and
an ``error`` of type ``OutcomeDropped``.
"""

from __future__ import annotations

import logging
import traceback as tb
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from qo.errors import PreconditionFailed
from qo.hooks import NO_HOOKS, Hooks, Kind
from qo.models import ErrorInfo, Status, TaskRecord
from qo.protocol import deps, index, keys, records
from qo.protocol.claim import Claim
from qo.retry import RetryDecision
from qo.settings import Settings
from qo.store.base import Store

log = logging.getLogger("qo.protocol.outcome")
MAX_RETRIES_ON_CONFLICT = 5
DROPPED = "OutcomeDropped"


#: The follow-up seam: called under the lease right after an outcome was recorded,
#: beside writing the marker the new state needs, with the store, the record as
#: written and the store time. A crash in it is repaired like any other step before
#: the lease is released: the reaper takes the lease over. It must be idempotent.
#: Dependencies (ready the dependents) and bulk expansion plug in here.
FollowUp = Callable[[Store, TaskRecord, float], None]
#: Follow-ups every outcome runs, before the caller's: each must cost nothing for a
#: task it does not concern (``deps.follow_up`` reads ``record.dependents`` first).
BUILTIN_FOLLOW_UPS: tuple[FollowUp, ...] = (deps.follow_up,)

_EVENT_OF = {Status.SUCCEEDED: Kind.SUCCEEDED, Status.FAILED: Kind.RETRYING,
             Status.DEAD: Kind.DEAD, Status.SKIPPED: Kind.SUCCEEDED}  # status says which


class Outcome(StrEnum):
    RECORDED = "recorded"  # our outcome is the task's state now
    SUPERSEDED = "superseded"  # the task was cancelled meanwhile: our outcome is dropped
    FENCED = "fenced"  # we had lost the lease (or the task ended without us); nothing written


def error_info(exc: BaseException, attempt: int, retryable: bool) -> ErrorInfo:
    text = "".join(tb.format_exception(exc))
    return ErrorInfo(
        type=type(exc).__name__,
        message=str(exc)[:2000],
        traceback=text[-8000:],
        attempt=attempt,
        retryable=retryable,
    )


def encode_result(claim: Claim, result: Any, settings: Settings) -> bytes:
    """The result as stored; ``InvalidPayload`` or ``PayloadTooLarge`` before any write."""
    what = f"result of task {claim.task_id}"
    encoded = records.encode_json(result, what)
    records.check_size(encoded, what, settings)
    return encoded


def succeed(
    store: Store, claim: Claim, result: Any, settings: Settings,
    *, encoded: bytes | None = None, declared: dict[str, Any] | None = None,
    hooks: Hooks = NO_HOOKS, follow_ups: Sequence[FollowUp] = (),
) -> Outcome:
    """Record a success. ``declared``: handler options the record left unset
    (``max_attempts``, ``timeout``), written with the outcome."""
    now = store.now()
    if encoded is None:
        encoded = encode_result(claim, result, settings)
    inline, ref = records.offload(
        store, keys.result_key(claim.task_id, claim.attempt), encoded, result, settings
    )

    def update(rec: TaskRecord) -> TaskRecord:
        return rec.model_copy(update={
            **(declared or {}),
            "status": Status.SUCCEEDED, "attempt": claim.attempt, "result": inline,
            "result_ref": ref, "error": None, "started_at": claim.lease.value.claimed_at,
            "finished_at": now, "worker": claim.lease.value.owner,
            "last_lease": claim.lease.value.token,
        })

    return _record(store, claim, update, now, "succeeded", declared, hooks, follow_ups)


def skip(
    store: Store, claim: Claim, reason: str, *, declared: dict[str, Any] | None = None,
    hooks: Hooks = NO_HOOKS, follow_ups: Sequence[FollowUp] = (),
) -> Outcome:
    """Record that the handler skipped the task (``qo.Skip``): ``skipped``, terminal,
    the reason as its error (type ``Skipped``). The same single CAS as ``succeed``."""
    now = store.now()
    info = ErrorInfo(type="Skipped", message=reason[:2000], attempt=claim.attempt,
                     retryable=False)

    def update(rec: TaskRecord) -> TaskRecord:
        return rec.model_copy(update={
            **(declared or {}),
            "status": Status.SKIPPED, "attempt": claim.attempt, "error": info,
            "started_at": claim.lease.value.claimed_at, "finished_at": now,
            "worker": claim.lease.value.owner, "last_lease": claim.lease.value.token,
        })

    return _record(store, claim, update, now, "skipped", declared, hooks, follow_ups)


def fail(
    store: Store, claim: Claim, error: ErrorInfo, *, retryable: bool = True,
    decision: RetryDecision | None = None, declared: dict[str, Any] | None = None,
    hooks: Hooks = NO_HOOKS, follow_ups: Sequence[FollowUp] = (),
) -> Outcome:
    """Record a failed attempt: ``failed`` with a retry due later, or ``dead``.

    ``decision`` (``qo.retry.RetryDecision``) says which; without one it is
    decided here from ``retryable`` and the record's ``max_attempts`` and
    ``retry`` policy, the same way.
    """
    now = store.now()

    def update(rec: TaskRecord) -> TaskRecord:
        decided = decision or RetryDecision.decide(
            retryable=retryable, attempt=claim.attempt, policy=rec.retry,
            max_attempts=(declared or {}).get("max_attempts", rec.max_attempts))
        changes: dict[str, Any] = {
            **(declared or {}),
            # a RateLimited attempt is given back: the next claim runs the same number
            "attempt": claim.attempt if decided.consumes_attempt else claim.attempt - 1,
            "error": error, "worker": claim.lease.value.owner,
            "started_at": claim.lease.value.claimed_at, "last_lease": claim.lease.value.token,
        }
        if decided.retry:
            changes["status"] = Status.FAILED
            changes["available_at"] = now + decided.delay
        else:
            changes["status"] = Status.DEAD
            changes["finished_at"] = now
        return rec.model_copy(update=changes)

    return _record(store, claim, update, now, f"failed ({error.type})", declared, hooks,
                   follow_ups)


def release(store: Store, claim: Claim, *, hooks: Hooks = NO_HOOKS) -> None:
    """Give a task back untouched (graceful shutdown): index it, then drop the lease."""
    index.ensure_indexed(store, claim.record, store.now())
    claim.lease.release(store)
    _emit(hooks, Kind.RELEASED, claim)


def cancelled(
    store: Store, claim: Claim, current: TaskRecord, etag: str, what: str,
    declared: dict[str, Any] | None = None, *, hooks: Hooks = NO_HOOKS,
) -> None:
    """The task was cancelled while this claim ran it: note that on the record, drop the lease.

    The note is one CAS that leaves the status, the index and ``cancel_reason``
    alone; it is skipped if the record is no longer cancelled or changed again.
    Emits ``FENCED`` (``cancelled``: True): this claim's outcome is dropped.
    """
    _note_cancelled(store, claim, current, etag, what, declared)
    _emit(hooks, Kind.FENCED, claim, dropped=what, cancelled=True)


def _note_cancelled(
    store: Store, claim: Claim, current: TaskRecord, etag: str, what: str,
    declared: dict[str, Any] | None,
) -> None:
    if current.status == Status.CANCELLED and current.last_lease != claim.lease.value.token:
        note = ErrorInfo(
            type=DROPPED, attempt=claim.attempt, retryable=False,
            message=f"cancelled while attempt {claim.attempt} ran on {claim.lease.value.owner}; "
                    f"its outcome ({what}) was dropped",
        )
        noted = current.model_copy(update={
            **(declared or {}),
            "attempt": max(current.attempt, claim.attempt), "error": note,
            "started_at": claim.lease.value.claimed_at, "worker": claim.lease.value.owner,
            "last_lease": claim.lease.value.token,
        })
        try:
            records.replace(store, noted, etag)
            claim.record = noted
        except PreconditionFailed:
            pass  # changed again (retried, purged): the newer state says what matters
    claim.lease.release(store)


def _is_own(current: TaskRecord, ours: TaskRecord, claim: Claim) -> bool:
    """Is ``current`` an outcome this claim wrote (a write reported failed that landed)?

    Only this claim writes its token with this status and error: a reaper
    writes ``LeaseExpired``, a cancel writes ``cancelled``.
    """
    return (current.last_lease == claim.lease.value.token and current.status == ours.status
            and current.error == ours.error)


def _emit(hooks: Hooks, kind: Kind, claim: Claim, **detail: Any) -> None:
    """One event about this claim; ``worker`` names the lease's owner (the runner)."""
    if not hooks:
        return
    rec = claim.record
    hooks.emit(kind, rec.id, queue=rec.queue, task_type=rec.type, attempt=claim.attempt,
               worker=claim.lease.value.owner, **detail)


def _settled(store: Store, claim: Claim, record: TaskRecord, now: float,
             follow_ups: Sequence[FollowUp]) -> None:
    """Under the lease: the marker the new state needs, the follow-ups, then the release."""
    index.ensure_indexed(store, record, now)
    for follow_up in (*BUILTIN_FOLLOW_UPS, *follow_ups):
        follow_up(store, record, now)
    claim.lease.release(store)


def _record(
    store: Store, claim: Claim, update: Callable[[TaskRecord], TaskRecord], now: float,
    what: str, declared: dict[str, Any] | None, hooks: Hooks = NO_HOOKS,
    follow_ups: Sequence[FollowUp] = (),
) -> Outcome:
    """The outcome CAS and what follows it; emits one event for what it decided."""
    result = _write(store, claim, update, now, what, declared, follow_ups)
    if result is Outcome.RECORDED:
        rec = claim.record
        detail: dict[str, Any] = {"seconds": round(now - claim.lease.value.claimed_at, 3)}
        if rec.error is not None and rec.status != Status.SUCCEEDED:
            detail |= {"error": rec.error.type, "message": rec.error.message}
        if rec.status == Status.FAILED:
            detail["retry_in"] = round(max(0.0, rec.available_at - now), 3)
        _emit(hooks, _EVENT_OF[rec.status], claim, status=rec.status, **detail)
    else:
        _emit(hooks, Kind.FENCED, claim, dropped=what,
              cancelled=result is Outcome.SUPERSEDED)
    return result


def _write(
    store: Store, claim: Claim, update: Callable[[TaskRecord], TaskRecord], now: float,
    what: str, declared: dict[str, Any] | None, follow_ups: Sequence[FollowUp],
) -> Outcome:
    record, etag = claim.record, claim.etag
    for _ in range(MAX_RETRIES_ON_CONFLICT):
        new = update(record)
        try:
            claim.etag = records.replace(store, new, etag)
        except PreconditionFailed:
            current = records.read(store, claim.task_id)
            if current is not None and current.value.terminal:
                if _is_own(current.value, new, claim):  # our earlier write had landed
                    record = current.value
                    claim.record, claim.etag = record, current.etag
                    _settled(store, claim, record, now, follow_ups)
                    return Outcome.RECORDED
                claim.record, claim.etag = current.value, current.etag
                if current.value.status == Status.CANCELLED:
                    # Note the attempt only while this claim still holds its lease: once
                    # it was reaped, the attempt is not ours to record (1 GET, this path only).
                    if claim.lease.still_held(store):
                        _note_cancelled(store, claim, current.value, current.etag, what,
                                        declared)
                    return Outcome.SUPERSEDED
                claim.lease.release(store)  # no-op unless still ours
                log.warning("task %s: finished without us (lease lost), outcome dropped",
                            claim.task_id)
                return Outcome.FENCED
            if current is None or not claim.lease.still_held(store):
                log.warning("task %s: lease lost, outcome dropped", claim.task_id)
                return Outcome.FENCED
            record, etag = current.value, current.etag
            continue
        claim.record = new
        _settled(store, claim, new, now, follow_ups)
        return Outcome.RECORDED
    return Outcome.FENCED
