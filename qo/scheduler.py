"""Cron and interval schedules, fired exactly once per slot without a leader.

A schedule is one object, ``schedules/{name}.json``: its definition and its
state (``next_slot``, recent history). Firing a slot takes three writes:

1. CAS the schedule object from ``next_slot = S`` to the following slot, with
   the fired slot appended to its history as *unconfirmed*. **That write
   decides the slot**: of any number of concurrent schedulers, exactly one
   wins it.
2. Submit the slot's task with an idempotency key derived from schedule and
   slot, so its id is deterministic.
3. CAS the history entry to *submitted*.

A scheduler that dies between 1 and 3 leaves an unconfirmed entry; whoever
reads the schedule next and finds it older than ``SETTLE`` submits it again
(idempotent: same id, never a duplicate) and confirms it. Confirmed entries
are never resubmitted, even after retention deleted their task. Time is
always the store's clock.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qo.cron import CronSpec, IntervalSpec, InvalidSchedule, Spec, upcoming, zone
from qo.errors import ErrorKind, PreconditionFailed, QoError, StoreError
from qo.ids import idempotent_task_id
from qo.models import CorruptRecord, RetryPolicy, dumps, loads
from qo.names import check_name
from qo.queue import Queue
from qo.records import encode_json
from qo.submit import SubmitRequest, submit_one

log = logging.getLogger("qo.scheduler")

PREFIX = "schedules/"
HISTORY = 20
#: An unconfirmed slot older than this is resubmitted by whoever sees it.
SETTLE = 30.0
#: Slot tasks dedupe for this long, far beyond any repair.
SLOT_KEY_RETENTION = 30 * 86_400.0
KEY_SCOPE = "schedule"
CatchUp = Literal["none", "latest", "all"]


class ScheduleNotFound(QoError):
    kind = ErrorKind.NOT_FOUND


class ScheduleExists(QoError):
    kind = ErrorKind.CONFLICT


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

    v: int = 1
    name: str
    task_type: str
    input: Any = None
    queue: str | None = None
    priority: int = Field(128, ge=0, le=255)
    max_attempts: int = Field(3, ge=1, le=1000)
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = Field(None, gt=0, le=7 * 86_400)  # as SubmitRequest allows
    cron: str | None = None
    tz: str = "UTC"
    every: float | None = Field(None, ge=1)
    catchup: CatchUp = "none"
    catchup_limit: int = Field(10, ge=1, le=HISTORY)  # all fired slots stay repairable
    misfire_grace: float = Field(120.0, ge=0)
    jitter: float = Field(0.0, ge=0, le=86_400)
    start_at: float | None = None
    end_at: float | None = None
    paused: bool = False
    created_at: float
    updated_at: float
    next_slot: float | None = None  # None: finished (past end_at, or never fires)
    history: list[HistoryEntry] = Field(default_factory=list)
    skipped: int = 0  # slots missed and skipped by the catch-up policy

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

    def upcoming(self, count: int, after: float) -> list[float]:
        start = max(after, (self.start_at - 1e-6) if self.start_at else after)
        return upcoming(self.spec(), start, count, self.end_at)


def schedule_key(name: str) -> str:
    return f"{PREFIX}{check_name(name, 'schedule name')}.json"


def slot_task_key(name: str, slot: float) -> str:
    return f"{name}@{slot:.6f}"


def slot_task_id(name: str, slot: float) -> str:
    return idempotent_task_id(f"custom:{KEY_SCOPE}", slot_task_key(name, slot))


def _jitter(name: str, slot: float, jitter: float) -> float:
    if not jitter:
        return 0.0
    h = int.from_bytes(hashlib.sha256(slot_task_key(name, slot).encode()).digest()[:8], "big")
    return jitter * (h / 2**64)


# -- managing schedules -------------------------------------------------------


@dataclass
class Loaded:
    schedule: Schedule
    etag: str


def load(queue: Queue, name: str) -> Loaded:
    obj = queue.store.get(schedule_key(name))
    if obj is None:
        raise ScheduleNotFound(f"no schedule named {name!r}")
    return Loaded(loads(Schedule, obj.body, f"schedule {name}"), obj.etag)


def add(
    queue: Queue,
    name: str,
    task_type: str,
    /,  # positional only, so that ``queue=`` (the tasks' queue name) can go in **options
    *,
    cron: str | None = None,
    every: float | str | None = None,
    tz: str = "UTC",
    input: Any = None,
    replace: bool = False,
    **options: Any,
) -> Schedule:
    """Create (or with ``replace`` edit, keeping history) a schedule.

    A new schedule fires at its next slot, never immediately.
    """
    from qo.cron import parse_duration

    check_name(name, "schedule name")
    check_name(task_type, "task type")
    if (cron is None) == (every is None):
        raise InvalidSchedule("give exactly one of a cron expression or an interval")
    encode_json(input, f"input of schedule {name!r}")
    queue_name = options.pop("queue", None)
    if queue_name is not None:
        check_name(queue_name, "queue name")
    now = queue.store.now()
    interval = None if every is None else parse_duration(every, "interval")
    sched = Schedule(
        name=name, task_type=task_type, input=input, queue=queue_name, cron=cron, tz=tz,
        every=interval, created_at=now, updated_at=now, **options,
    )
    sched.spec()  # validates cron and time zone
    zone(sched.tz)  # an interval ignores it, but it is shown in it
    if sched.start_at is not None and sched.end_at is not None and sched.end_at <= sched.start_at:
        raise InvalidSchedule("the end time must be after the start time")
    first = sched.following(now)
    if first is None and (sched.end_at is None or sched.end_at > now):
        raise InvalidSchedule(f"schedule {name!r} would never fire ({sched.describe()})")
    sched.next_slot = first
    key = schedule_key(name)
    for _ in range(10):
        existing = queue.store.get(key)
        if existing is None:
            try:
                queue.store.put(key, dumps(sched), if_none_match=True)
                return sched
            except PreconditionFailed:
                continue
        if not replace:
            raise ScheduleExists(f"schedule {name!r} exists; use replace to change it")
        old = loads(Schedule, existing.body, f"schedule {name}")
        fired = [e.slot for e in old.history if e.kind != "trigger"]
        nxt = sched.next_slot
        if fired and nxt is not None and nxt <= max(fired):  # never refire a decided slot
            nxt = sched.following(max(fired))
        sched = sched.model_copy(update={
            "created_at": old.created_at, "history": old.history, "skipped": old.skipped,
            "paused": old.paused, "next_slot": nxt})
        try:
            queue.store.put(key, dumps(sched), if_match=existing.etag)
            return sched
        except PreconditionFailed:
            continue
    raise StoreError(f"schedule {name!r} kept changing; try again")


def list_schedules(queue: Queue) -> list[Schedule]:
    out = []
    for info in queue.store.list(PREFIX):
        obj = queue.store.get(info.key)
        if obj is None:
            continue
        try:
            out.append(loads(Schedule, obj.body, info.key))
        except CorruptRecord as exc:
            log.error("%s", exc)
    return out


def _update(queue: Queue, name: str, change) -> Schedule:
    for _ in range(10):
        current = load(queue, name)
        new = change(current.schedule, queue.store.now())
        try:
            queue.store.put(schedule_key(name), dumps(new), if_match=current.etag)
            return new
        except PreconditionFailed:
            continue
    raise StoreError(f"schedule {name!r} kept changing; try again")


def pause(queue: Queue, name: str) -> Schedule:
    return _update(queue, name, lambda s, now: s.model_copy(
        update={"paused": True, "updated_at": now}))


def resume(queue: Queue, name: str) -> Schedule:
    """Resume at the next slot from now: slots missed while paused are skipped."""
    return _update(queue, name, lambda s, now: s.model_copy(
        update={"paused": False, "updated_at": now, "next_slot": s.following(now)}))


def remove(queue: Queue, name: str) -> None:
    current = load(queue, name)
    try:
        queue.store.delete(schedule_key(name), if_match=current.etag)
    except PreconditionFailed:
        raise StoreError(f"schedule {name!r} changed while removing it; try again") from None


def trigger(queue: Queue, name: str) -> str:
    """Submit one run now; the schedule's slots are left as they are."""
    now = queue.store.now()
    sched = load(queue, name).schedule
    task_id = _submit(queue, sched, now, kind="trigger", at=now)
    entry = HistoryEntry(slot=now, task_id=task_id, fired_at=now, kind="trigger")
    _update(queue, name, lambda s, _now: s.model_copy(
        update={"history": (s.history + [entry])[-HISTORY:]}))
    return task_id


def _submit(queue: Queue, sched: Schedule, slot: float, *, kind: str, at: float | None = None) -> str:
    key = slot_task_key(sched.name, slot) if kind != "trigger" else f"{sched.name}@trigger-{slot:.6f}"
    req = SubmitRequest(
        type=sched.task_type, input=sched.input, queue=sched.queue, priority=sched.priority,
        max_attempts=sched.max_attempts, retry=sched.retry, timeout=sched.timeout,
        at=at if at is not None else slot + _jitter(sched.name, slot, sched.jitter),
        key=key, key_scope=KEY_SCOPE, retention=SLOT_KEY_RETENTION, tags={"schedule": sched.name},
    )
    return submit_one(queue.store, req, queue.settings).id


# -- firing -------------------------------------------------------------------


def slots_to_fire(sched: Schedule, now: float) -> tuple[list[tuple[float, str]], float | None, int]:
    """Which due slots fire now under the catch-up policy, the new next_slot, and skips."""
    due: list[float] = []
    slot = sched.next_slot
    while slot is not None and slot <= now and len(due) < 100_000:
        due.append(slot)
        slot = sched.following(slot)
    if not due:
        return [], sched.next_slot, 0
    on_time = [s for s in due if now - s <= sched.misfire_grace]
    missed = [s for s in due if now - s > sched.misfire_grace]
    if sched.catchup == "all":
        chosen = [(s, "catchup") for s in missed[-sched.catchup_limit:]]
    elif sched.catchup == "latest" and missed and not on_time:
        chosen = [(missed[-1], "catchup")]
    else:
        chosen = []
    chosen += [(s, "slot") for s in on_time]
    chosen = chosen[-HISTORY:]  # every decided slot must stay in the history until confirmed
    skipped = len(due) - len(chosen)
    return chosen, slot, skipped


@dataclass
class FireReport:
    fired: list[tuple[str, float, str]] = field(default_factory=list)  # (schedule, slot, task id)
    repaired: list[str] = field(default_factory=list)
    skipped: int = 0
    next_slot: float | None = None  # soonest next slot over all active schedules


class Firer:
    """Fires due schedules; one per scheduler process.

    It remembers the etag of each schedule it read (LIST returns etags, so an
    unchanged schedule is not read again).
    """

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.store = queue.store
        self._docs: dict[str, Loaded] = {}

    def refresh(self) -> None:
        """LIST schedules; GET only those whose etag changed."""
        seen: dict[str, Loaded] = {}
        for info in self.store.list(PREFIX):
            name = info.key[len(PREFIX):-len(".json")] if info.key.endswith(".json") else None
            if not name:
                continue
            cached = self._docs.get(name)
            if cached is not None and cached.etag == info.etag:
                seen[name] = cached
                continue
            obj = self.store.get(info.key)
            if obj is None:
                continue
            try:
                seen[name] = Loaded(loads(Schedule, obj.body, info.key), obj.etag)
            except CorruptRecord as exc:
                log.error("%s", exc)
        self._docs = seen

    def soonest(self) -> float | None:
        slots = [d.schedule.next_slot for d in self._docs.values()
                 if not d.schedule.paused and d.schedule.next_slot is not None]
        return min(slots) if slots else None

    def fire_due(self, refresh: bool = True) -> FireReport:
        if refresh:
            self.refresh()
        report = FireReport()
        now = self.store.now()
        for name in sorted(self._docs):
            try:
                self._fire_one(name, now, report)
            except (QoError, ValidationError) as exc:  # one bad schedule never blocks others
                log.warning("schedule %s: %s", name, exc)
        report.next_slot = self.soonest()
        return report

    def _fire_one(self, name: str, now: float, report: FireReport) -> None:
        self._repair(name, now, report)
        for _ in range(5):
            doc = self._docs.get(name)
            if doc is None:
                return
            sched = doc.schedule
            if sched.paused or sched.next_slot is None or sched.next_slot > now:
                return
            chosen, next_slot, skipped = slots_to_fire(sched, now)
            entries = [HistoryEntry(slot=s, task_id=slot_task_id(name, s), fired_at=now, kind=k,
                                    submitted=False) for s, k in chosen]
            new = sched.model_copy(update={
                "next_slot": next_slot, "skipped": sched.skipped + skipped,
                "history": (sched.history + entries)[-HISTORY:]})
            try:  # the linearization point: this write decides these slots
                etag = self.store.put(schedule_key(name), dumps(new), if_match=doc.etag)
            except PreconditionFailed:
                self._reload(name)
                continue
            self._docs[name] = Loaded(new, etag)
            report.skipped += skipped
            for entry in entries:
                _submit(self.queue, new, entry.slot, kind=entry.kind)
                report.fired.append((name, entry.slot, entry.task_id))
            self._confirm(name, {e.task_id for e in entries})
            return

    def _repair(self, name: str, now: float, report: FireReport) -> None:
        """Submit slots that were decided but never confirmed (their firer died).

        Only entries older than ``SETTLE`` seconds: a younger one may still be
        being submitted by the scheduler that won it.
        """
        doc = self._docs.get(name)
        if doc is None:
            return
        stale = [e for e in doc.schedule.history
                 if not e.submitted and now - e.fired_at >= SETTLE]
        for entry in stale:
            _submit(self.queue, doc.schedule, entry.slot, kind=entry.kind)
            report.repaired.append(entry.task_id)
            log.info("schedule %s: repaired slot %s", name, entry.slot)
        if stale:
            self._confirm(name, {e.task_id for e in stale})

    def _confirm(self, name: str, task_ids: set[str]) -> None:
        """Mark submitted slots as such, so nobody ever submits them again."""
        for _ in range(5):
            doc = self._docs.get(name)
            if doc is None:
                return
            history = [e.model_copy(update={"submitted": True}) if e.task_id in task_ids else e
                       for e in doc.schedule.history]
            if history == doc.schedule.history:
                return
            new = doc.schedule.model_copy(update={"history": history})
            try:
                etag = self.store.put(schedule_key(name), dumps(new), if_match=doc.etag)
            except PreconditionFailed:
                self._reload(name)
                continue
            self._docs[name] = Loaded(new, etag)
            return

    def _reload(self, name: str) -> None:
        obj = self.store.get(schedule_key(name))
        if obj is None:
            self._docs.pop(name, None)
        else:
            self._docs[name] = Loaded(loads(Schedule, obj.body, name), obj.etag)


def fire_due(queue: Queue) -> FireReport:
    """Fire every due schedule once (sweeps, workers and the Lambda sweeper call this).

    The Firer lives on the Queue object, so a warm process keeps its etag cache.
    """
    firer = getattr(queue, "_firer", None)
    if firer is None:
        firer = Firer(queue)
        queue._firer = firer  # type: ignore[attr-defined]
    return firer.fire_due()


class SchedulerDaemon:
    """``qo schedule run``: sleeps until the next slot, fires, repeats.

    It re-lists schedules every ``refresh`` seconds (to see new or edited
    ones) and otherwise sleeps until the soonest slot: an idle daemon costs
    one LIST per ``refresh`` interval, whatever the number of schedules.
    """

    def __init__(self, queue: Queue, refresh: float = 60.0) -> None:
        queue.check_store()  # refuse a store that cannot keep qo's guarantees
        self.firer = Firer(queue)
        self.queue = queue
        self.refresh = refresh
        self._stop = threading.Event()
        self.rounds = 0

    def stop(self) -> None:
        self._stop.set()

    def run(self, max_rounds: int | None = None) -> None:
        next_refresh = 0.0
        while not self._stop.is_set():
            refresh = time.monotonic() >= next_refresh
            if refresh:
                next_refresh = time.monotonic() + self.refresh
            try:
                report = self.firer.fire_due(refresh=refresh)
            except QoError as exc:
                log.warning("scheduler round failed: %s", exc)
                report = FireReport()
            for name, slot, task_id in report.fired:
                log.info("schedule %s fired slot %s as task %s", name, slot, task_id,
                         extra={"event": "schedule_fired", "schedule": name, "task_id": task_id})
            self.rounds += 1
            if max_rounds is not None and self.rounds >= max_rounds:
                return
            wait = next_refresh - time.monotonic()
            if report.next_slot is not None:
                wait = min(wait, report.next_slot - self.queue.store.now())
            self._stop.wait(max(0.05, wait))


__all__ = [
    "Firer", "Schedule", "ScheduleExists", "ScheduleNotFound", "SchedulerDaemon", "add",
    "fire_due", "list_schedules", "load", "pause", "remove", "resume",
    "slots_to_fire", "trigger",
]
