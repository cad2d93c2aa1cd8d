"""Firing schedules: which slots are due, the decide/submit/confirm writes, repair.

Firing a slot takes three writes:

1. CAS the schedule object from ``next_slot = S`` to the slot after now, with
   the fired slots appended to its history as *unconfirmed*. **That write
   decides the slots**: of any number of concurrent firers, exactly one wins.
2. Submit each slot's task with an idempotency key derived from schedule and
   slot, so its id is deterministic.
3. CAS the history entries to *submitted* (confirmed).

A firer that dies between 1 and 3 leaves unconfirmed entries; the history
keeps them (``qo.protocol.schedule_model.trim_history``) and whoever reads the
schedule ``SETTLE`` seconds later submits them again (idempotent: same id,
never a duplicate) and confirms them. Every decision is taken on the store's
clock, read right before the decide CAS.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from qo.errors import ErrorKind, QoError
from qo.hooks import NO_HOOKS, Hooks, Kind
from qo.models import CorruptRecord
from qo.protocol.cas import Lost
from qo.protocol.registry import Registry
from qo.protocol.schedule_model import (
    MAX_DECIDE,
    MAX_UNCONFIRMED,
    PREFIX,
    SETTLE,
    HistoryEntry,
    Schedule,
    load_input,
    name_from_key,
    slot_request,
    slot_task_id,
    trim_history,
    write,
)
from qo.protocol.submit import (
    IdempotencyConflict,
    Prepared,
    SubmitRequest,
    prepare,
    submit_prepared,
)
from qo.protocol.versioned import Versioned, parse
from qo.settings import Settings
from qo.store.base import Store, StoredObject

log = logging.getLogger("qo.scheduler")

#: Due slots of a cron schedule counted one by one, at most (for ``skipped``).
COUNT_CAP = 10_000


class SlotNotFired(QoError):
    """A due slot could not be decided or submitted; a later round tries again."""

    kind = ErrorKind.UNAVAILABLE


# -- which slots fire ---------------------------------------------------------


def newest_slots(sched: Schedule, first: float, lo: float, hi: float, count: int,
                 *, include_hi: bool = True) -> list[float]:
    """The newest ``count`` due slots in [lo, hi] (or [lo, hi)), oldest first.

    Due slots are ``first`` (the schedule's ``next_slot``, ``first <= lo``)
    and every timetable slot after it. The search goes backwards from ``hi``
    in windows that grow fourfold, so it enumerates about ``4 * count``
    slots however far back ``lo`` is.
    """
    if count <= 0 or lo > hi:
        return []
    span = max(60.0, (sched.every or 60.0)) * count
    while True:
        start = max(lo, hi - span)
        found: deque[float] = deque(maxlen=count)
        slot = first if start <= first else sched.at_or_after(start)
        while slot is not None and (slot < hi or (include_hi and slot == hi)):
            found.append(slot)
            slot = sched.following(slot)
        if len(found) >= count or start <= lo:
            return list(found)
        span *= 4


def count_slots(sched: Schedule, first: float, hi: float) -> int:
    """How many due slots lie in [first, hi]: ``first`` and the timetable's after it.

    Exact for intervals (arithmetic); cron slots are counted one by one, up
    to COUNT_CAP.
    """
    if first > hi:
        return 0
    if sched.end_at is not None:
        hi = min(hi, sched.end_at)
    if sched.every is not None and sched.cron is None:
        anchor, every = sched.start_at or 0.0, sched.every
        after = (first - anchor) // every + 1  # index of the first slot after ``first``
        last = (hi - anchor) // every
        return 1 + max(0, int(last - after) + 1)
    n = 0
    slot_or_none: float | None = first
    while slot_or_none is not None and slot_or_none <= hi and n < COUNT_CAP:
        n += 1
        slot_or_none = sched.following(slot_or_none)
    return n


def slots_to_fire(sched: Schedule, now: float) -> tuple[list[tuple[float, str]], float | None, int]:
    """Which due slots fire now under the catch-up policy, the new next_slot, and skips.

    Due slots are ``next_slot`` and every later slot up to ``now``. One at most
    ``misfire_grace`` late is on time and fires; an older one is missed:
    ``none`` drops it, ``latest`` fires the newest missed slot (only when no
    slot is on time), ``all`` the newest ``catchup_limit`` missed slots. At
    most ``MAX_DECIDE`` slots are decided at once (the newest ones).
    """
    first = sched.next_slot
    if first is None or first > now:
        return [], first, 0
    grace_start = now - sched.misfire_grace
    on_time = newest_slots(sched, first, max(first, grace_start), now, MAX_DECIDE)
    if sched.catchup == "all":
        wanted = sched.catchup_limit
    elif sched.catchup == "latest" and not on_time:
        wanted = 1
    else:
        wanted = 0
    missed = newest_slots(sched, first, first, grace_start, wanted, include_hi=False)
    chosen = [(s, "catchup") for s in missed] + [(s, "slot") for s in on_time]
    chosen = chosen[-MAX_DECIDE:]
    skipped = max(0, count_slots(sched, first, now) - len(chosen))
    return chosen, sched.following(now), skipped


# -- the firer ----------------------------------------------------------------


@dataclass
class FireReport:
    fired: list[tuple[str, float, str]] = field(default_factory=list)  # (schedule, slot, task id)
    repaired: list[str] = field(default_factory=list)
    skipped: int = 0
    next_slot: float | None = None  # soonest next slot over all active schedules
    errors: list[str] = field(default_factory=list)  # schedules that could not fire a due slot


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"invalid {where}: {first.get('msg')}" if where else str(first.get("msg"))
    return " ".join(str(exc).split())


def _note(report: FireReport, name: str, exc: Exception) -> None:
    message = f"schedule {name}: {_one_line(exc)}"
    log.warning("%s", message)
    report.errors.append(message)


class Firer:
    """Fires due schedules; one per scheduler process.

    It remembers the etag of each schedule it read (LIST returns etags, so an
    unchanged schedule is not read again), and large inputs by their key.
    """

    def __init__(self, store: Store, settings: Settings, hooks: Hooks = NO_HOOKS,
                 registry: Registry | None = None) -> None:
        self.store = store
        self.settings = settings
        self.hooks = hooks
        #: The task-type registry: a slot's task is submitted for its type's current
        #: handler version, with its labels (None: version 1, no labels).
        self.registry = registry
        self._docs: dict[str, Versioned[Schedule]] = {}
        self._inputs: dict[str, Any] = {}
        self._unreadable: list[str] = []

    def refresh(self) -> None:
        """LIST schedules; GET only those whose etag changed."""
        seen: dict[str, Versioned[Schedule]] = {}
        self._unreadable = []
        for info in self.store.list(PREFIX):
            name = name_from_key(info.key)
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
                seen[name] = parse(Schedule, obj, info.key)
            except CorruptRecord as exc:
                log.error("%s", exc)
                self._unreadable.append(str(exc))
        self._docs = seen

    def zone_of(self, name: str) -> str:
        doc = self._docs.get(name)
        return doc.value.tz if doc is not None else "UTC"

    def soonest(self) -> float | None:
        slots = [d.value.next_slot for d in self._docs.values()
                 if not d.value.paused and d.value.next_slot is not None]
        return min(slots) if slots else None

    def fire_due(self, refresh: bool = True) -> FireReport:
        if refresh:
            self.refresh()
        report = FireReport(errors=list(self._unreadable))
        for name in sorted(self._docs):
            try:
                self._repair(name, report)
            except (QoError, ValidationError) as exc:  # a failed repair never blocks new slots
                _note(report, name, exc)
            try:
                self._fire_one(name, report)
            except (QoError, ValidationError) as exc:  # one bad schedule never blocks others
                _note(report, name, exc)
        report.next_slot = self.soonest()
        return report

    def _prepare(self, sched: Schedule, slot: float, kind: str, now: float) -> Prepared:
        """The slot's task, validated and built (everything that can refuse it)."""
        value = load_input(self.store, sched, self._inputs)
        req = slot_request(sched, slot, kind, value)
        definition = None if self.registry is None else self.registry.definition(sched.task_type)
        if definition is not None:
            req = SubmitRequest(**(req.model_dump(exclude_unset=True)
                                   | {"version": definition.version,
                                      "labels": definition.labels}))
        found = None if self.registry is None else self.registry.queue_settings(
            req.queue or self.settings.default_queue)  # free: the listing just read
        return prepare(req, self.settings, now, aging=found.aging if found else None)

    def _fire_one(self, name: str, report: FireReport) -> None:
        for _ in range(5):
            doc = self._docs.get(name)
            if doc is None:
                return
            sched = doc.value
            now = self.store.now()  # the store's clock, right before deciding
            if sched.paused or sched.next_slot is None or sched.next_slot > now:
                return
            chosen, next_slot, skipped = slots_to_fire(sched, now)
            pending = len(sched.unconfirmed())
            if chosen and pending + len(chosen) > MAX_UNCONFIRMED:
                raise SlotNotFired(f"{pending} decided slots are not submitted yet; "
                                   "no new slot is decided until they are")
            # Refuse before deciding: a slot whose task cannot be built is not decided.
            prepared = [self._prepare(sched, s, k, now) for s, k in chosen]
            entries = [HistoryEntry(slot=s, task_id=p.record.id, fired_at=now, kind=k,
                                    submitted=False) for (s, k), p in zip(chosen, prepared, strict=True)]
            new = sched.model_copy(update={
                "next_slot": next_slot, "skipped": sched.skipped + skipped,
                "history": trim_history(sched.history + entries)})
            written = write(self.store, new, doc.etag)  # the linearization point: it decides
            if isinstance(written, Lost):
                self._seen(name, written.current)
                continue
            self._docs[name] = Versioned(new, written)
            report.skipped += skipped
            self._submit_and_confirm(name, entries, prepared, now, report, kind="fired")
            return

    def _submit_and_confirm(self, name: str, entries: list[HistoryEntry], prepared: list[Prepared],
                            now: float, report: FireReport, *, kind: str) -> None:
        """Submit in slot order; the first failure stops the round (the store is
        likely down): the rest stay unconfirmed, repaired SETTLE seconds later."""
        done: set[str] = set()
        failure: str | None = None
        for entry, p in zip(entries, prepared, strict=True):
            try:
                submit_prepared(self.store, p, self.settings, now, hooks=self.hooks)
            except IdempotencyConflict:
                pass  # the slot's task exists, submitted under an earlier definition
            except QoError as exc:
                failure = _one_line(exc)
                break
            done.add(entry.task_id)
            self.hooks.emit(Kind.SLOT_FIRED, entry.task_id, queue=p.record.queue,
                                  task_type=p.record.type, schedule=name, slot=entry.slot,
                                  repaired=kind != "fired")
            if kind == "fired":
                report.fired.append((name, entry.slot, entry.task_id))
            else:
                report.repaired.append(entry.task_id)
                log.info("schedule %s: repaired slot %s", name, entry.slot)
        self._confirm(name, done)
        if failure is not None:
            raise SlotNotFired(f"{len(entries) - len(done)} slot(s) decided but not submitted "
                               f"(retried in {SETTLE:g} s): {failure}")

    def _repair(self, name: str, report: FireReport) -> None:
        """Submit slots that were decided but never confirmed (their firer died).

        Only entries older than ``SETTLE`` seconds: a younger one may still be
        being submitted by the scheduler that won it. Cost: 2 PUT per slot
        (its submit) and 1 PUT (the confirm CAS).
        """
        doc = self._docs.get(name)
        if doc is None:
            return
        now = self.store.now()
        stale = [e for e in doc.value.unconfirmed() if now - e.fired_at >= SETTLE]
        if not stale:
            return
        prepared = [self._prepare(doc.value, e.slot, e.kind, now) for e in stale]
        self._submit_and_confirm(name, stale, prepared, now, report, kind="repaired")

    def _confirm(self, name: str, task_ids: set[str]) -> None:
        """Mark submitted slots as such, so nobody ever submits them again."""
        if not task_ids:
            return
        for _ in range(5):
            doc = self._docs.get(name)
            if doc is None:
                return
            history = [e.model_copy(update={"submitted": True}) if e.task_id in task_ids else e
                       for e in doc.value.history]
            if history == doc.value.history:
                return
            new = doc.value.model_copy(update={"history": trim_history(history)})
            written = write(self.store, new, doc.etag)
            if isinstance(written, Lost):
                self._seen(name, written.current)
                continue
            self._docs[name] = Versioned(new, written)
            return

    def _seen(self, name: str, obj: StoredObject | None) -> None:
        """Cache the schedule a lost CAS read back (no request: ``cas`` read it)."""
        if obj is None:
            self._docs.pop(name, None)
        else:
            self._docs[name] = parse(Schedule, obj, name)


__all__ = ["FireReport", "Firer", "SlotNotFired", "count_slots", "newest_slots",
           "slot_task_id", "slots_to_fire"]
