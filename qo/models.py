"""Records stored in the bucket: pydantic at the edges, orjson on the wire.

Schema versions. Every model stored as an object of its own (``TaskRecord``,
``Lease``, ``WorkerInfo``, ``Schedule`` in ``qo.protocol.schedule_model``)
has its own version: the default of its ``v`` field, which is the version
this qo writes and the highest it reads. ``loads`` reads a body without
``v`` as version 1 and any older version as the current one, and refuses a
newer one with ``FutureSchema``, before it looks at any field (a newer body
may have fields this qo does not know). Models old qo wrote without ``v``
(``unversioned_v1``) are still written without it at version 1, because
that qo refuses any field it does not know. See docs/protocol.md, "Schema
versions".
"""

from __future__ import annotations

import random
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qo.errors import ErrorKind, QoError

M = TypeVar("M", bound=BaseModel)


class Status(StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"  # shown, never stored: a live lease means running
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # an attempt failed, a retry is scheduled
    DEAD = "dead"
    CANCELLED = "cancelled"
    BLOCKED = "blocked"  # waits on its dependencies (qo/protocol/deps.py): no marker
    SKIPPED = "skipped"  # will never run: its trigger rule said so (terminal)


#: Stored statuses of a task that still has to run once it is due.
WAITING = frozenset({Status.PENDING, Status.SCHEDULED, Status.FAILED})
TERMINAL = frozenset({Status.SUCCEEDED, Status.DEAD, Status.CANCELLED, Status.SKIPPED})


class Trigger(StrEnum):
    """When a task with dependencies runs (``depends_on``; qo/protocol/deps.py)."""

    ALL_SUCCESS = "all_success"  # every dependency succeeded (the default)
    ALL_DONE = "all_done"  # every dependency is terminal, whatever its outcome
    NONE_FAILED = "none_failed"  # none dead or cancelled (skipped counts as done)
    ALWAYS = "always"  # the handler decides: it runs once all are terminal, sees each outcome


class CorruptRecord(QoError):
    """An object in the store is not a record this version of qo can read."""

    kind = ErrorKind.INTERNAL


class FutureSchema(CorruptRecord):
    """An object written by a newer qo, in a schema version this qo cannot read.

    A ``CorruptRecord``, so that every reader that copes with an unreadable
    object copes with it too; the paths that would park or replace an
    unreadable object (the claimer, the reaper, ``schedule add --replace``)
    leave this one alone for a newer qo instead.
    """

    kind = ErrorKind.MISCONFIGURED


class RetryPolicy(BaseModel):
    """Exponential backoff with full jitter: delay ~ U(0, min(cap, base * 2**(n-1)))."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: float = Field(1.0, ge=0, le=86_400)
    cap: float = Field(300.0, ge=0, le=7 * 86_400)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.cap, self.base * 2 ** max(0, attempt - 1))
        return (rng or random).uniform(0, ceiling)


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    message: str
    traceback: str | None = None
    attempt: int = 0
    retryable: bool = True


class TaskRecord(BaseModel):
    """The source of truth for one task. Index keys are hints derived from it.

    ``max_attempts`` is stored only when the submitter set it: a record
    without the key reads as 3 (older readers too), and ``declares`` tells a
    worker whether the handler's own ``@app.task(max_attempts=...)`` applies.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=False)
    #: Fields left out of the stored body unless the submitter set them.
    omit_unset: ClassVar[frozenset[str]] = frozenset({"max_attempts"})
    #: Fields of schema version 2, left out at their default: a record that does not
    #: use them is written as version 1, byte for byte what qo before them wrote.
    since_v2: ClassVar[dict[str, Any]] = {"version": 1, "labels": []}
    #: Fields of schema version 3, likewise: a record without them is written as 2 or 1.
    since_v3: ClassVar[dict[str, Any]] = {"trace": None, "aging": None}
    #: Fields of schema version 4 (a record without them is written as 3, 2 or 1): the
    #: limit key (section 11) and dependencies (section 10, qo/protocol/deps.py).
    since_v4: ClassVar[dict[str, Any]] = {"limit_key": None, "depends_on": [],
                                          "trigger": Trigger.ALL_SUCCESS,
                                          "has_dependents": False, "workflow": None}

    v: int = 4  # the schema version (see the module docstring and ``body_version``)
    id: str
    queue: str
    type: str
    #: The handler version the task was submitted for (``@app.task(version=N)``).
    version: int = Field(1, ge=1, le=1_000_000)
    #: Labels a worker needs to run it (``qo worker --label``), sorted; in its marker key.
    labels: list[str] = Field(default_factory=list)
    #: Seconds of waiting worth one priority level, from its queue's settings at submit
    #: (None: strict priority); in its marker keys (docs/protocol.md section 12).
    aging: int | None = Field(None, ge=1, le=86_400)
    #: The hashed rate/concurrency key (``keys.hash_limit_key``), in its marker key.
    limit_key: str | None = Field(None, pattern=r"^[0-9a-f]{16}$")
    input: Any = None
    input_ref: str | None = None
    input_hash: str
    priority: int = Field(128, ge=0, le=255)
    status: Status = Status.PENDING
    attempt: int = 0  # attempts finished (or lost) so far
    max_attempts: int = Field(3, ge=1, le=1000)
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = Field(None, gt=0)
    created_at: float
    available_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    result_ref: str | None = None
    error: ErrorInfo | None = None
    idempotency_key: str | None = None
    idempotency_expires_at: float | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    worker: str | None = None
    cancel_reason: str | None = None
    last_lease: str | None = None  # token of the last run lease whose outcome is recorded
    #: The W3C trace context of the submit (``traceparent``, ``tracestate``; ``qo.tracing``).
    trace: dict[str, str] | None = None
    #: A fresh token on every write (records.create/replace), so that no two
    #: writes of a record have the same bytes; see qo/protocol/cas.py.
    rev: str | None = None
    #: The tasks it waits for (``depends_on``) and when it runs then (qo/protocol/deps.py).
    depends_on: list[str] = Field(default_factory=list, max_length=1000)
    trigger: Trigger = Trigger.ALL_SUCCESS
    #: Set (once, by a CAS) when some task depends on this one: its end readies them.
    has_dependents: bool = False
    #: The workflow this task is a node of (qo/protocol/workflow.py), if any.
    workflow: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def declares(self, field: str) -> bool:
        """Did the submitter (or an outcome) set ``field``, rather than leave the default?"""
        return field in self.model_fields_set

    def claimable(self, now: float) -> bool:
        return self.status in WAITING and self.available_at <= now


class Lease(BaseModel):
    """Body of ``leases/{queue}/{id}``; expiry is LastModified + seconds (store clock).

    ``kind`` says who holds it: a worker running the task (``run``), an admin
    command changing the record (``admin``), or a reaper repairing an expired
    lease (``reap``). ``token`` names one claim and survives renewals; a reap
    lease remembers the token of the run lease it took over, so that the lost
    attempt is recorded exactly once (the record keeps ``last_lease``).
    """

    model_config = ConfigDict(extra="forbid")
    #: Written without ``v`` at version 1: qo before schema versions refuses it here.
    unversioned_v1: ClassVar[bool] = True

    v: int = 1
    task_id: str
    kind: str = "run"
    owner: str
    token: str
    seconds: float = Field(60.0, gt=0)
    claimed_at: float
    renewals: int = 0
    reaped_token: str | None = None


class WorkerInfo(BaseModel):
    """Body of ``workers/{id}.json``: a worker's heartbeat (``qo.protocol.fleet``)."""

    model_config = ConfigDict(extra="forbid")
    #: Written without ``v`` at version 1: qo before schema versions refuses it here.
    unversioned_v1: ClassVar[bool] = True
    #: Version 2 adds ``labels``; a worker without labels still writes version 1.
    since_v2: ClassVar[dict[str, Any]] = {"labels": []}

    v: int = 2
    id: str
    host: str
    pid: int
    queues: list[str]
    #: The task types it has handlers for (None: a worker too old to say).
    task_types: list[str] | None = None
    concurrency: int
    started_at: float
    seen_at: float
    running: list[str] = Field(default_factory=list)
    #: Its capability labels (``qo worker --label``): it runs tasks needing a subset.
    labels: list[str] = Field(default_factory=list)
    processed: int = 0
    failed: int = 0
    state: str = "running"


def schema_version(cls: type[BaseModel]) -> int | None:
    """The schema version ``cls`` writes (its ``v`` default), or None if it has none."""
    field = cls.model_fields.get("v")
    return None if field is None else int(field.default)


def dumps(model: BaseModel) -> bytes:
    omit: set[str] = set(getattr(model, "omit_unset", ())) - model.model_fields_set
    ladder: list[tuple[int, dict[str, Any]]] = [
        (n, fields) for n in (2, 3, 4) if (fields := getattr(model, f"since_v{n}", {}))]
    unused = {name for _, fields in ladder for name, default in fields.items()
              if getattr(model, name) == default}
    data = model.model_dump(mode="json", exclude_defaults=False, exclude=(omit | unused) or None)
    version = schema_version(type(model))
    if ladder:  # the lowest version whose readers know every field used: what old qo reads
        version = max((n for n, fields in ladder if set(fields) - unused), default=1)
    if version is not None:
        data["v"] = version  # what was read is held as the current version (see ``loads``)
        if version == 1 and getattr(model, "unversioned_v1", False):
            del data["v"]
    return orjson.dumps(data)


def loads(cls: type[M], body: bytes, what: str) -> M:
    """Parse a stored body; anything unreadable is a CorruptRecord, never a crash.

    A body of a newer schema version than ``cls`` knows is a ``FutureSchema``
    (a one-line message naming both versions), checked before any field.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CorruptRecord(f"{what} is not valid JSON: {exc}") from None
    known = schema_version(cls)
    if isinstance(data, dict) and known is not None:
        found = data.get("v", 1)
        if type(found) is not int or found < 1:
            raise CorruptRecord(f"{what} has an invalid schema version {found!r}")
        if found > known:
            raise FutureSchema(f"{what} has schema version {found}, newer than this qo reads "
                               f"({known}): upgrade qo")
        data["v"] = known  # every older version reads as the current one
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise CorruptRecord(f"{what} is invalid: {where}: {first.get('msg')}") from None
