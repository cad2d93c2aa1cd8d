"""Submitting tasks: the marker first, then the record, both create-only.

Writing the index marker before the record means an acknowledged task is
always findable; a submitter that dies between the two writes leaves only a
marker without a record, which claimers delete once it is older than
``Settings.orphan_grace``. With an idempotency key the task id is derived
from the key, so the record's create-only PUT is the duplicate check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from qo import tracing
from qo.errors import ErrorKind, PreconditionFailed, QoError, shorten
from qo.hooks import NO_HOOKS, Hooks, Kind
from qo.ids import idempotent_task_id, new_task_id
from qo.models import RetryPolicy, Status, TaskRecord, Trigger
from qo.names import check_free_text, check_labels, check_name
from qo.protocol import deps, index, keys, leases, records
from qo.protocol.cas import delete_quietly, put_checked
from qo.protocol.versioned import Versioned
from qo.settings import Settings
from qo.store.base import Store

MAX_BATCH_THREADS = 32


class IdempotencyConflict(QoError):
    """The idempotency key is taken by a task with a different input."""

    kind = ErrorKind.CONFLICT


#: The fields of a ``SubmitRequest`` that are names, and what an error calls them.
_NAME_FIELDS = {"type": "task type", "queue": "queue name", "key_scope": "idempotency scope"}


class SubmitRequest(BaseModel):
    """Everything a caller can say about a task to submit (validated here)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=False)

    type: str
    input: Any = None
    queue: str | None = None
    priority: int = Field(128, ge=0, le=255)
    delay: float | None = Field(None, ge=0, le=366 * 86_400)
    at: datetime | float | None = None
    key: str | None = None
    key_scope: str = "type"  # "type", "queue", "global" or a custom scope name
    retention: float | None = Field(None, gt=0, le=366 * 86_400)
    max_attempts: int = Field(3, ge=1, le=1000)
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = Field(None, gt=0, le=7 * 86_400)
    tags: dict[str, str] = Field(default_factory=dict)
    #: The handler version to run it (``@app.task(version=N)``); the registry fills it in.
    version: int = Field(1, ge=1, le=1_000_000)
    #: Labels a worker needs to run it (``qo worker --label``); the type's by default.
    labels: list[str] = Field(default_factory=list)
    #: The value a per-key limit counts it under (``@app.task(rate_key=...)``, e.g. a
    #: customer id); its hash goes into the record and the marker key (section 11).
    limit_key: str | None = Field(None, min_length=1, max_length=1024)
    #: Tasks (ids or handles) it waits for, ``blocked``, and when it runs then (deps.py).
    depends_on: list[str] = Field(default_factory=list, max_length=1000)
    trigger: Trigger = Trigger.ALL_SUCCESS

    @field_validator("depends_on", mode="before")
    @classmethod
    def _depends_on(cls, v: Any) -> list[str]:
        if isinstance(v, str) or not isinstance(v, (list, tuple)):
            v = [v]
        return deps.ids_of(v)

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, v: Any) -> list[str]:
        return check_labels(v)

    @field_validator("type", "queue", "key_scope")
    @classmethod
    def _name(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_name(v, _NAME_FIELDS[info.field_name or ""])

    @field_validator("key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        return None if v is None else check_free_text(v, "idempotency key")

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 32:
            raise ValueError("at most 32 tags")
        return {
            check_name(name, "tag name"): check_free_text(value, f"tag {name!r}", 256)
            for name, value in v.items()
        }


@dataclass(frozen=True)
class Submitted:
    """Outcome of one submit: the task id, and whether this call created it."""

    id: str
    created: bool
    status: Status


def scope_string(req: SubmitRequest, queue: str) -> str:
    if req.key_scope == "type":
        return f"type:{req.type}"
    if req.key_scope == "queue":
        return f"queue:{queue}"
    if req.key_scope == "global":
        return "global"
    return f"custom:{req.key_scope}"


def available_at(req: SubmitRequest, now: float) -> float:
    if req.delay is not None and req.at is not None:
        raise QoError("give either a delay or a time to run at, not both")
    if req.delay is not None:
        return now + req.delay
    if isinstance(req.at, datetime):
        if req.at.tzinfo is None:
            raise QoError(f"time {req.at.isoformat()} has no time zone; add one (e.g. +00:00)")
        return req.at.timestamp()
    if req.at is not None:
        return float(req.at)
    return now


class InvalidBatchItem(QoError):
    """One request of a batch is invalid; nothing of the batch was written."""

    kind = ErrorKind.INVALID  # an instance takes the kind of its item's error

    def __init__(self, index: int, error: QoError) -> None:
        super().__init__(f"item {index}: {error}")
        self.index = index  # 0-based position in the batch
        self.error = error
        self.kind = error.kind


@dataclass(frozen=True)
class Prepared:
    """A validated request: its record and canonical input, built once, written later.

    Write it once: ``body`` carries one fresh ``rev``, and a second write of the same
    bytes would read back as this one's own (see qo/protocol/cas.py). Prepare again instead.
    """

    req: SubmitRequest
    record: TaskRecord
    encoded_input: bytes
    body: bytes  # the record's bytes for its create-only PUT (records.body)


def prepare(req: SubmitRequest, settings: Settings, now: float, *,
            aging: int | None = None) -> Prepared:
    """Everything that can refuse a request, before any write.

    ``aging``: the queue's priority aging (qo/protocol/backpressure.py), kept in the record.
    """
    queue = req.queue or settings.default_queue
    encoded = records.encode_json(req.input, f"input of task type {req.type!r}")
    records.check_size(encoded, f"input of task type {req.type!r}", settings)
    if req.key is not None:
        task_id = idempotent_task_id(scope_string(req, queue), req.key)
    else:
        task_id = new_task_id(now)
    inline, ref = req.input, None
    if len(encoded) > settings.inline_limit:
        ref = keys.input_key(task_id)
    when = available_at(req, now)
    retention = req.retention or settings.idempotency_retention
    record = TaskRecord(
        id=task_id,
        queue=queue,
        type=req.type,
        version=req.version,
        labels=req.labels,
        aging=aging,
        limit_key=None if req.limit_key is None else keys.hash_limit_key(req.limit_key),
        input=None if ref else inline,
        input_ref=ref,
        input_hash=records.input_hash(req.type, encoded),
        priority=req.priority,
        status=(Status.BLOCKED if req.depends_on
                else Status.PENDING if when <= now else Status.SCHEDULED),
        retry=req.retry,
        timeout=req.timeout,
        created_at=now,
        available_at=when,
        idempotency_key=req.key,
        idempotency_expires_at=(when + retention) if req.key else None,
        tags=req.tags,
        depends_on=req.depends_on,
        trigger=req.trigger,
        trace=tracing.carrier(),  # the current span's context (qo.tracing), if any
        # unset, the record omits it and a worker applies its handler's declared value
        **({"max_attempts": req.max_attempts} if "max_attempts" in req.model_fields_set else {}),
    )
    try:
        body = records.body(record)  # anything that cannot be stored fails here, before any write
    except (TypeError, ValueError) as exc:
        raise records.InvalidPayload(f"task of type {req.type!r} cannot be stored: {exc}") from None
    return Prepared(req, record, encoded, body)


def prepare_batch(reqs: list[SubmitRequest], settings: Settings, now: float,
                  aging_of: Callable[[str], int | None] | None = None) -> list[Prepared]:
    """Prepare every request; the first invalid one raises InvalidBatchItem.

    ``aging_of(queue)``: each queue's priority aging (None: strict priority).
    """
    prepared = []
    for n, req in enumerate(reqs):
        try:
            aging = aging_of(req.queue or settings.default_queue) if aging_of else None
            prepared.append(prepare(req, settings, now, aging=aging))
        except QoError as exc:
            raise InvalidBatchItem(n, exc) from None
    return prepared


def submit_one(
    store: Store, req: SubmitRequest, settings: Settings, now: float | None = None,
    *, hooks: Hooks = NO_HOOKS, aging: int | None = None,
) -> Submitted:
    now = store.now() if now is None else now
    return submit_prepared(store, prepare(req, settings, now, aging=aging), settings, now,
                           hooks=hooks)


def submit_prepared(store: Store, prepared: Prepared, settings: Settings, now: float,
                    *, hooks: Hooks = NO_HOOKS,
                    seen: dict[str, Versioned[TaskRecord]] | None = None) -> Submitted:
    """Write one prepared task (emits SUBMITTED when this call created it). ``seen``: its
    dependencies, already read and checked (``deps.validate``) by the caller."""
    record, req = prepared.record, prepared.req
    if record.depends_on:
        return _submit_blocked(store, prepared, settings, now, hooks, seen)
    if record.input_ref:
        put_checked(store, record.input_ref, prepared.encoded_input)
    marker = index.index_key(record, now)
    assert marker is not None
    started = time.monotonic()
    try:
        marker_etag: str | None = put_checked(
            store, marker, index.marker_body(), if_none_match=True
        )
    except PreconditionFailed:
        marker_etag = None  # an earlier submit of this id wrote it: it is not ours to delete
    try:
        records.create(store, record, prepared.body)
    except PreconditionFailed:
        done = _existing(store, record, req, settings, marker, marker_etag, now)
    else:
        if time.monotonic() - started > settings.orphan_grace / 2:
            index.ensure_indexed(store, record, now)  # a claimer may have judged it orphaned
        done = Submitted(record.id, True, record.status)
    if done.created:
        hooks.emit(Kind.SUBMITTED, record.id, queue=record.queue, task_type=record.type,
                   status=record.status)
    return done


def _submit_blocked(store: Store, prepared: Prepared, settings: Settings, now: float,
                    hooks: Hooks, seen: dict[str, Versioned[TaskRecord]] | None) -> Submitted:
    """A task with dependencies: no marker; its edges, its record (``blocked``), then
    ``deps.arm``. Unknown dependencies are refused before any write (docs/protocol.md §10)."""
    record, req = prepared.record, prepared.req
    if seen is None:
        seen = deps.validate(store, record.id, record.depends_on)
    if record.input_ref:
        put_checked(store, record.input_ref, prepared.encoded_input)
    deps.write_edges(store, record)
    try:
        records.create(store, record, prepared.body)
    except PreconditionFailed:
        current = records.read(store, record.id)
        if current is None:
            return submit_one(store, req, settings, now)
        old = current.value
        if old.input_hash != record.input_hash or old.type != record.type:
            raise IdempotencyConflict(
                f"idempotency key {shorten(req.key)} is already used by task {old.id} "
                f"with a different input (status {old.status})") from None
        if old.status == Status.BLOCKED:
            deps.arm(store, old, now)  # the first submit may have died before arming it
        return Submitted(old.id, False, old.status)
    deps.arm(store, record, now, seen)
    hooks.emit(Kind.SUBMITTED, record.id, queue=record.queue, task_type=record.type,
               status=record.status)
    return Submitted(record.id, True, record.status)


def _existing(
    store: Store,
    record: TaskRecord,
    req: SubmitRequest,
    settings: Settings,
    marker: str,
    marker_etag: str | None,
    now: float,
) -> Submitted:
    """The id was taken: same input returns it, different input is a conflict.

    The marker this call wrote (``marker_etag`` is None when it already
    existed) is deleted only if the existing record cannot be using that key:
    with a fixed ``at`` a repeated submit names the very marker that the
    original task needs.
    """
    current = records.read(store, record.id)
    if current is None:  # deleted in between (retention); try once more from scratch
        return submit_one(store, req, settings, now, aging=record.aging)  # the caller emits
    old = current.value
    expired = (
        old.terminal
        and old.idempotency_expires_at is not None
        and old.idempotency_expires_at <= now
    )
    if expired and _replace_expired(store, record, current, settings, now):
        return Submitted(record.id, True, record.status)
    if marker_etag is not None and marker not in _keys_in_use(old):
        delete_quietly(store, marker, if_match=marker_etag)
    if old.input_hash != record.input_hash or old.type != record.type:
        raise IdempotencyConflict(
            f"idempotency key {shorten(req.key)} is already used by task {old.id} "
            f"with a different input (status {old.status})"
        )
    return Submitted(old.id, False, old.status)


def _keys_in_use(record: TaskRecord) -> set[str]:
    """The index keys a record may be relying on right now (none once it is terminal)."""
    if record.terminal:
        return set()
    m = index.marker_of(record)
    return {m.ready_key, m.delayed_key}


def _replace_expired(
    store: Store, record: TaskRecord, current: records.Versioned, settings: Settings, now: float
) -> bool:
    """Reuse an id whose idempotency retention has passed, under its lease."""
    held = leases.acquire(store, record.queue, record.id, owner="submit", kind="admin",
                          seconds=settings.repair_lease_seconds, now=now)
    if held is None:
        return False
    try:
        records.replace(store, record, current.etag)
        return True
    except PreconditionFailed:
        return False
    finally:
        held.release(store)


def _validate_all(store: Store, prepared: list[Prepared]) -> dict[str, Versioned[TaskRecord]]:
    """Every dependency of the batch, read once (1 GET each); ``InvalidBatchItem`` names
    the first item with an unknown one."""
    wanted = sorted({d for p in prepared for d in p.record.depends_on})
    if not wanted:
        return {}
    with ThreadPoolExecutor(min(MAX_BATCH_THREADS, len(wanted))) as pool:
        found = dict(zip(wanted, pool.map(lambda d: records.read(store, d), wanted),
                         strict=True))
    for n, p in enumerate(prepared):
        missing = [d for d in p.record.depends_on if found[d] is None]
        if p.record.id in p.record.depends_on or missing:
            try:
                deps.validate(store, p.record.id, p.record.depends_on)
            except QoError as exc:
                raise InvalidBatchItem(n, exc) from None
    return {d: cur for d, cur in found.items() if cur is not None}


def submit_all(
    store: Store, prepared: list[Prepared], settings: Settings, now: float,
    *, hooks: Hooks = NO_HOOKS,
) -> list[Submitted]:
    """Write prepared tasks: about 2 round trips per 32 tasks, not 2 per task.

    The dependencies of every task are read and checked first, so that an unknown
    one refuses the whole batch before any write (a task may not depend on another
    task of the same batch: submit those as a ``Workflow``)."""
    seen = _validate_all(store, prepared)

    def one(p: Prepared) -> Submitted:
        return submit_prepared(store, p, settings, now, hooks=hooks,
                               seen={d: seen[d] for d in p.record.depends_on if d in seen}
                               if seen else None)

    if len(prepared) <= 1:
        return [one(p) for p in prepared]
    with ThreadPoolExecutor(min(MAX_BATCH_THREADS, len(prepared))) as pool:
        return list(pool.map(one, prepared))
