"""Cron and interval schedules, fired exactly once per slot without a leader.

A schedule is one object, ``schedules/{name}.json``: its definition and its
state (``next_slot``, recent history); see ``qo.protocol.schedule_model``. This module
manages schedules (add or replace, list, pause, resume, trigger, remove);
``qo.protocol.firing`` fires them and ``qo.schedule_daemon`` is ``qo schedule run``.
Everything public is re-exported here. Time is always the store's clock.

A definition is checked exactly as a submit of its slot task would be
(``qo.protocol.submit.prepare``), so a schedule that is stored can also fire. An input
over ``Settings.inline_limit`` is stored in its own object
(``keys.SCHEDULE_INPUTS``), like a task's input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from qo.cron import InvalidSchedule, parse_duration, zone
from qo.errors import ErrorKind, PreconditionFailed, QoError, StoreError
from qo.models import CorruptRecord, FutureSchema, loads
from qo.names import check_name
from qo.protocol.cas import Lost
from qo.protocol.firing import Firer, FireReport, SlotNotFired, slots_to_fire
from qo.protocol.schedule_model import (
    HISTORY,
    KEY_SCOPE,
    MAX_UNCONFIRMED,
    PREFIX,
    SETTLE,
    SLOT_KEY_RETENTION,
    CatchUp,
    HistoryEntry,
    Schedule,
    input_key,
    name_from_key,
    schedule_key,
    slot_request,
    slot_task_id,
    slot_task_key,
    trim_history,
    write,
)
from qo.protocol.submit import prepare, submit_prepared
from qo.protocol.versioned import Versioned, parse
from qo.queue import Queue
from qo.schedule_daemon import SchedulerDaemon

log = logging.getLogger("qo.scheduler")


class ScheduleNotFound(QoError):
    kind = ErrorKind.NOT_FOUND


class ScheduleExists(QoError):
    kind = ErrorKind.CONFLICT


@dataclass(frozen=True)
class Saved:
    """What ``save`` wrote, and whether it replaced an existing schedule."""

    schedule: Schedule
    replaced: bool


@dataclass(frozen=True)
class Unreadable:
    """A schedule object that ``list`` could not use, and why."""

    name: str
    key: str
    error: str


def load(queue: Queue, name: str) -> Versioned[Schedule]:
    """The schedule and its etag (1 GET); ``ScheduleNotFound`` if there is none."""
    obj = queue.store.get(schedule_key(name))
    if obj is None:
        raise ScheduleNotFound(f"no schedule named {name!r}")
    return parse(Schedule, obj, f"schedule {name}")


def check(sched: Schedule) -> None:
    """Refuse a schedule whose timetable cannot be evaluated (InvalidSchedule)."""
    sched.spec()  # validates cron and time zone
    zone(sched.tz)  # an interval ignores it, but it is shown in it


def add(queue: Queue, name: str, task_type: str, /, **kwargs: Any) -> Schedule:
    """Create (or with ``replace=True`` edit, keeping history) a schedule; see ``save``."""
    return save(queue, name, task_type, **kwargs).schedule


def save(
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
    allow_unregistered: bool = False,
    **options: Any,
) -> Saved:
    """Create, or with ``replace`` edit, a schedule. A new one fires at its next slot.

    Everything is checked before the first write: names, timetable, zone, and
    the slot task itself, as a submit would check it (size limit included).
    A timetable with no slot ahead (a cron that never matches, or an
    ``end_at`` already past) is refused. Cost: 1 GET + 1 PUT (+1 PUT for an
    input over the inline limit; a replace that changes it DELETEs the old one),
    plus the registry lookup of a submit (``Queue.resolve``: the type's declared
    options, its input checked, an unknown type refused unless ``allow_unregistered``).
    **Linearization point:** the PUT of the schedule object.
    """
    check_name(name, "schedule name")
    check_name(task_type, "task type")
    if (cron is None) == (every is None):
        raise InvalidSchedule("give exactly one of a cron expression or an interval")
    # The registry's declared options and input check, as for any submit without the app.
    task_options = ("queue", "priority", "max_attempts", "retry", "timeout")
    resolved = queue.resolve({"type": task_type, "input": input,
                              **{k: options[k] for k in task_options if k in options}},
                             allow_unregistered=allow_unregistered)
    options |= {k: resolved[k] for k in task_options if resolved.get(k) is not None}
    queue_name = options.pop("queue", None)
    if queue_name is not None:
        check_name(queue_name, "queue name")
    store, settings = queue.store, queue.settings
    now = store.now()
    interval = None if every is None else parse_duration(every, "interval")
    sched = Schedule(
        name=name, task_type=task_type, input=input, queue=queue_name, cron=cron, tz=tz,
        every=interval, created_at=now, updated_at=now, **options,
    )
    check(sched)
    if sched.start_at is not None and sched.end_at is not None and sched.end_at <= sched.start_at:
        raise InvalidSchedule("the end time must be after the start time")
    first = sched.following(now)
    if first is None:
        if sched.end_at is not None and sched.end_at <= now:
            raise InvalidSchedule(f"schedule {name!r} would never fire: its end time is past")
        raise InvalidSchedule(f"schedule {name!r} would never fire ({sched.describe()})")
    # The slot task exactly as it will be submitted: every check of a submit, before any write.
    prepared = prepare(slot_request(sched, first, "slot", input), settings, now)
    encoded = prepared.encoded_input
    ref = input_key(name, encoded) if len(encoded) > settings.inline_limit else None
    sched = sched.model_copy(update={
        "input": None if ref else input, "input_ref": ref, "next_slot": first})
    saved, old_ref = _write(queue, sched, replace, encoded)
    if old_ref and old_ref != ref:
        store.delete(old_ref)
    return saved


def _write(queue: Queue, sched: Schedule, replace: bool, encoded: bytes) -> tuple[Saved, str | None]:
    """Create or replace the object; returns what was written and the old input's key."""
    key, store = schedule_key(sched.name), queue.store
    wrote_input = False
    existing = store.get(key)
    for _ in range(10):
        if existing is not None and not replace:
            raise ScheduleExists(f"schedule {sched.name!r} exists; use replace to change it")
        if sched.input_ref and not wrote_input:  # content-addressed: rewriting it is harmless
            store.put(sched.input_ref, encoded)
            wrote_input = True
        if existing is None:
            created = write(store, sched, None)
            if isinstance(created, Lost):
                existing = created.current
                continue
            return Saved(sched, replaced=False), None
        try:
            old: Schedule | None = loads(Schedule, existing.body, f"schedule {sched.name}")
        except FutureSchema:
            raise  # a newer qo's schedule: replacing it here would drop what this qo cannot read
        except CorruptRecord as exc:  # an unreadable schedule can be replaced, not kept
            log.warning("%s: replacing it without its history", exc)
            old = None
        new = sched if old is None else _keep_state(sched, old)
        replaced = write(store, new, existing.etag)
        if isinstance(replaced, Lost):
            existing = replaced.current
            continue
        return Saved(new, replaced=True), (old.input_ref if old else None)
    raise StoreError(f"schedule {sched.name!r} kept changing; try again")


def _keep_state(sched: Schedule, old: Schedule) -> Schedule:
    """A replacement keeps history, skips and pause, and never refires a decided slot."""
    fired = [e.slot for e in old.history if e.kind != "trigger"]
    nxt = sched.next_slot
    if fired and nxt is not None and nxt <= max(fired):
        nxt = sched.following(max(fired))
    return sched.model_copy(update={
        "created_at": old.created_at, "history": old.history, "skipped": old.skipped,
        "paused": old.paused, "next_slot": nxt})


def scan(queue: Queue) -> tuple[list[Schedule], list[Unreadable]]:
    """Every schedule, and every schedule object that cannot be used (never raises for one).

    Cost: 1 LIST + 1 GET per schedule.
    """
    good: list[Schedule] = []
    bad: list[Unreadable] = []
    for info in queue.store.list(PREFIX):
        name = name_from_key(info.key) or info.key[len(PREFIX):]
        obj = queue.store.get(info.key)
        if obj is None:
            continue
        try:
            if name_from_key(info.key) is None:
                raise CorruptRecord(f"{info.key} is not a schedule key (schedules/NAME.json)")
            sched = loads(Schedule, obj.body, f"schedule {name}")
            check(sched)
        except (CorruptRecord, InvalidSchedule) as exc:
            bad.append(Unreadable(name, info.key, str(exc)))
            continue
        good.append(sched)
    return good, bad


def list_schedules(queue: Queue) -> list[Schedule]:
    """Every usable schedule; unusable objects are logged and left out (see ``scan``)."""
    good, bad = scan(queue)
    for item in bad:
        log.error("%s", item.error)
    return good


def _update(queue: Queue, name: str, change) -> Schedule:
    """Read, change and CAS the schedule (1 GET + 1 PUT; + 1 GET + 1 PUT per lost race)."""
    current = load(queue, name)
    for _ in range(10):
        new = change(current.value, queue.store.now())
        written = write(queue.store, new, current.etag)
        if not isinstance(written, Lost):
            return new
        if written.current is None:
            raise ScheduleNotFound(f"no schedule named {name!r}")
        current = parse(Schedule, written.current, f"schedule {name}")
    raise StoreError(f"schedule {name!r} kept changing; try again")


def pause(queue: Queue, name: str) -> Schedule:
    return _update(queue, name, lambda s, now: s.model_copy(
        update={"paused": True, "updated_at": now}))


def resume(queue: Queue, name: str) -> Schedule:
    """Resume at the next slot from now: slots missed while paused are skipped."""
    return _update(queue, name, lambda s, now: s.model_copy(
        update={"paused": False, "updated_at": now, "next_slot": s.following(now)}))


def exists(queue: Queue, name: str) -> bool:
    """Whether a schedule object of that name exists, readable or not (1 HEAD)."""
    return queue.store.head(schedule_key(name)) is not None


def remove(queue: Queue, name: str) -> None:
    """Delete a schedule, even an unreadable one, and its stored input (GET + DELETE)."""
    key = schedule_key(name)
    obj = queue.store.get(key)
    if obj is None:
        raise ScheduleNotFound(f"no schedule named {name!r}")
    try:
        ref = loads(Schedule, obj.body, f"schedule {name}").input_ref
    except FutureSchema:
        raise  # a newer qo's schedule: this qo cannot tell which input object it owns
    except CorruptRecord:
        ref = None
    try:
        queue.store.delete(key, if_match=obj.etag)
    except PreconditionFailed:
        raise StoreError(f"schedule {name!r} changed while removing it; try again") from None
    if ref:
        queue.store.delete(ref)


def trigger(queue: Queue, name: str) -> str:
    """Submit one run now; the schedule's slots are left as they are."""
    from qo.protocol.schedule_model import load_input

    now = queue.store.now()
    sched = load(queue, name).value
    req = slot_request(sched, now, "trigger", load_input(queue.store, sched))
    aging = queue.aging_of()(req.queue or queue.settings.default_queue)
    task_id = submit_prepared(queue.store, prepare(req, queue.settings, now, aging=aging),
                              queue.settings, now).id
    entry = HistoryEntry(slot=now, task_id=task_id, fired_at=now, kind="trigger")
    _update(queue, name, lambda s, _now: s.model_copy(
        update={"history": trim_history(s.history + [entry])}))
    return task_id


def firer(queue: Queue) -> Firer:
    """A new Firer for this queue's store, settings and hooks (its own etag cache)."""
    return Firer(queue.store, queue.settings, queue.hooks)


def fire_due(queue: Queue) -> FireReport:
    """Fire every due schedule once, with the Firer the queue keeps (``Queue.fire_schedules``)."""
    return queue.fire_schedules()


__all__ = [
    "HISTORY", "KEY_SCOPE", "MAX_UNCONFIRMED", "SETTLE", "SLOT_KEY_RETENTION", "CatchUp",
    "FireReport", "Firer", "HistoryEntry", "InvalidSchedule", "Saved", "Schedule",
    "ScheduleExists", "ScheduleNotFound", "SchedulerDaemon", "SlotNotFired", "Unreadable", "add",
    "check", "exists", "fire_due", "firer", "list_schedules", "load", "pause", "remove", "resume", "save",
    "scan", "schedule_key", "slot_task_id", "slot_task_key", "slots_to_fire", "trigger",
]
