"""A schedule as stored: its definition, its state and the rules of its history.

One object per schedule, ``schedules/{name}.json``. This module knows what a
schedule *is* (fields, keys, the task a slot submits, which history entries
must be kept); ``qo.scheduler`` manages schedules and ``qo.protocol.firing`` fires
them.

History rule: an entry is *unconfirmed* (``submitted: false``) from the CAS
that decides its slot until the CAS that records its task as submitted.
Every unconfirmed entry is kept, whatever the interval, so that a repair
``SETTLE`` seconds later can still find it; of the confirmed entries only the
newest ``HISTORY`` are kept. Firers decide no new slot while
``MAX_UNCONFIRMED`` entries are unconfirmed, so a schedule object stays
bounded (at most ``HISTORY + MAX_UNCONFIRMED`` entries) even when its
submits keep failing.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from qo.cron import CronSpec, IntervalSpec, Spec, upcoming
from qo.ids import idempotent_task_id, new_token
from qo.models import CorruptRecord, RetryPolicy, dumps
from qo.names import check_name
from qo.protocol import keys
from qo.protocol.cas import Lost, get_retrying, put_or_current
from qo.protocol.submit import SubmitRequest
from qo.store.base import Store

PREFIX = keys.SCHEDULES
#: Confirmed history entries kept per schedule (the newest ones).
HISTORY = 20
#: At most this many slots are decided by one CAS.
MAX_DECIDE = 20
#: No new slot is decided while this many are decided but unconfirmed.
MAX_UNCONFIRMED = 100
#: An unconfirmed slot older than this is resubmitted by whoever sees it.
SETTLE = 30.0
#: Slot tasks dedupe for this long, far beyond any repair.
SLOT_KEY_RETENTION = 30 * 86_400.0
KEY_SCOPE = "schedule"
#: Large schedule inputs a firer keeps in memory (content-addressed: never stale).
INPUT_CACHE = 4
CatchUp = Literal["none", "latest", "all"]


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slot: float  # the nominal instant (epoch seconds, store clock)
    task_id: str
    fired_at: float
    kind: str = "slot"  # slot | catchup | trigger
    submitted: bool = True  # False between deciding the slot and confirming its submit


class Schedule(BaseModel):
    """Definition and state of one schedule, as stored."""

    model_config = ConfigDict(extra="forbid")

    #: Version 2 added ``rev``; version 1 bodies (without it) read as they are.
    v: int = 2
    name: str
    task_type: str
    input: Any = None
    input_ref: str | None = None  # a large input lives in its own object (keys.SCHEDULE_INPUTS)
    queue: str | None = None
    priority: int = Field(128, ge=0, le=255)
    max_attempts: int = Field(3, ge=1, le=1000)
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = Field(None, gt=0, le=7 * 86_400)  # as SubmitRequest allows
    cron: str | None = None
    tz: str = "UTC"
    every: float | None = Field(None, ge=1)
    catchup: CatchUp = "none"
    catchup_limit: int = Field(10, ge=1, le=MAX_DECIDE)
    misfire_grace: float = Field(120.0, ge=0)
    jitter: float = Field(0.0, ge=0, le=86_400)
    start_at: float | None = None
    end_at: float | None = None
    paused: bool = False
    created_at: float
    updated_at: float
    next_slot: float | None = None  # None: finished (past end_at)
    history: list[HistoryEntry] = Field(default_factory=list)
    skipped: int = 0  # slots missed and skipped by the catch-up policy
    #: A fresh token on every write (``body``), so that no two writes of a schedule
    #: have the same bytes and ``cas`` can tell its own landed write.
    rev: str | None = None

    def spec(self) -> Spec:
        if self.cron is not None:
            return CronSpec(self.cron, self.tz)
        assert self.every is not None
        return IntervalSpec(self.every, self.start_at or 0.0)

    def describe(self) -> str:
        return self.spec().describe()

    def following(self, after: float) -> float | None:
        """The first slot strictly after ``after`` within [start_at, end_at]."""
        if self.start_at is not None and after < self.start_at:
            after = self.start_at - 1e-6
        nxt = self.spec().next_after(after)
        if nxt is None or (self.end_at is not None and nxt > self.end_at):
            return None
        return nxt

    def at_or_after(self, t: float) -> float | None:
        """The first slot at or after ``t``."""
        return self.following(math.nextafter(t, -math.inf))

    def upcoming(self, count: int, after: float) -> list[float]:
        start = max(after, (self.start_at - 1e-6) if self.start_at else after)
        return upcoming(self.spec(), start, count, self.end_at)

    def unconfirmed(self) -> list[HistoryEntry]:
        return [e for e in self.history if not e.submitted]


def trim_history(entries: list[HistoryEntry]) -> list[HistoryEntry]:
    """Every unconfirmed entry, and the newest ``HISTORY`` confirmed ones, in order."""
    confirmed = [i for i, e in enumerate(entries) if e.submitted]
    dropped = set(confirmed[:-HISTORY]) if len(confirmed) > HISTORY else set()
    return [e for i, e in enumerate(entries) if i not in dropped]


def body(sched: Schedule) -> bytes:
    """The bytes of one write of ``sched``: a fresh ``rev`` makes them unique."""
    return dumps(sched.model_copy(update={"rev": new_token()}))


def write(store: Store, sched: Schedule, etag: str | None) -> str | Lost:
    """Create the schedule object (``etag`` None) or CAS it ``If-Match`` ``etag``.

    1 PUT: the linearization point of every change of a schedule. Returns the
    new etag, or ``Lost`` with the object that won (read back once, which also
    recognises our own write when its first answer was lost: botocore retried
    a PUT that had landed, say).
    """
    key = schedule_key(sched.name)
    if etag is None:
        return put_or_current(store, key, body(sched), if_none_match=True)
    return put_or_current(store, key, body(sched), if_match=etag)


def schedule_key(name: str) -> str:
    return f"{PREFIX}{check_name(name, 'schedule name')}.json"


def name_from_key(key: str) -> str | None:
    if key.startswith(PREFIX) and key.endswith(".json") and len(key) > len(PREFIX) + 5:
        return key[len(PREFIX):-len(".json")]
    return None


def input_key(name: str, encoded: bytes) -> str:
    """Where a large schedule input is stored: content-addressed, so never rewritten."""
    digest = hashlib.sha256(encoded).hexdigest()[:32]
    return f"{keys.SCHEDULE_INPUTS}{check_name(name, 'schedule name')}/{digest}"


def slot_task_key(name: str, slot: float) -> str:
    return f"{name}@{slot:.6f}"


def slot_task_id(name: str, slot: float) -> str:
    return idempotent_task_id(f"custom:{KEY_SCOPE}", slot_task_key(name, slot))


def jitter_of(name: str, slot: float, jitter: float) -> float:
    if not jitter:
        return 0.0
    h = int.from_bytes(hashlib.sha256(slot_task_key(name, slot).encode()).digest()[:8], "big")
    return jitter * (h / 2**64)


def load_input(store: Store, sched: Schedule, cache: dict[str, Any] | None = None) -> Any:
    """The schedule's input: inline, or one GET of its payload object (cached by key)."""
    ref = sched.input_ref
    if ref is None:
        return sched.input
    if cache is not None and ref in cache:
        return cache[ref]
    obj = get_retrying(store, ref)
    if obj is None:
        raise CorruptRecord(f"input of schedule {sched.name!r} is missing ({ref})")
    try:
        value = orjson.loads(obj.body)
    except orjson.JSONDecodeError as exc:
        raise CorruptRecord(f"input of schedule {sched.name!r} is not valid JSON: {exc}") from None
    if cache is not None:
        while len(cache) >= INPUT_CACHE:
            cache.pop(next(iter(cache)))
        cache[ref] = value
    return value


def slot_request(sched: Schedule, slot: float, kind: str, input: Any) -> SubmitRequest:
    """The submit request of one slot; a repeated submit is an identical request."""
    if kind == "trigger":
        key, at = f"{sched.name}@trigger-{slot:.6f}", slot
    else:
        key, at = slot_task_key(sched.name, slot), slot + jitter_of(sched.name, slot, sched.jitter)
    return SubmitRequest(
        type=sched.task_type, input=input, queue=sched.queue, priority=sched.priority,
        max_attempts=sched.max_attempts, retry=sched.retry, timeout=sched.timeout,
        at=at, key=key, key_scope=KEY_SCOPE, retention=SLOT_KEY_RETENTION,
        tags={"schedule": sched.name},
    )
