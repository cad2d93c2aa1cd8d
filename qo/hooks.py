"""Lifecycle events: one typed event per decided transition, for any number of receivers.

An event is emitted exactly once, by the process whose conditional write
decided the transition, and only *after* that write succeeded: a lost race,
a fenced outcome or a failed write emits nothing (or, for a fenced outcome,
``FENCED``). Receivers run synchronously in the emitting thread; one that
raises is logged and never changes an outcome, nor stops the receivers after
it. Keep receivers fast: they run on the claim and outcome paths.

Logging, metrics, user hooks and dashboards are all receivers::

    queue.hooks.connect(lambda e: print(e.kind, e.task_id), Kind.SUCCEEDED, Kind.DEAD)

The protocol functions take a ``Hooks`` (default: ``NO_HOOKS``, which
emits nothing and costs nothing); a ``Queue`` owns one and passes it on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

log = logging.getLogger("qo.hooks")


class Kind(StrEnum):
    SUBMITTED = "submitted"  # the record's create-only PUT succeeded
    CLAIMED = "claimed"  # the run lease was taken and the record was claimable
    SUCCEEDED = "succeeded"  # the outcome CAS recorded a result
    RETRYING = "retrying"  # the outcome CAS recorded a failure with a retry due later
    DEAD = "dead"  # the outcome CAS (or a reaper) recorded the last failure
    CANCELLED = "cancelled"  # the cancel CAS won
    RELEASED = "released"  # a worker handed a task back (its marker written again)
    FENCED = "fenced"  # a worker's late outcome was dropped (lease lost, or cancelled)
    REAPED = "reaped"  # an expired lease was taken over and its task repaired
    PROMOTED = "promoted"  # a due delayed task got its ready marker
    SLOT_FIRED = "slot_fired"  # a schedule slot was decided and its task submitted
    REPAIRED = "repaired"  # the audit indexed a stranded task again
    QUARANTINED = "quarantined"  # an unreadable record was parked for qo doctor
    CLAIM_CONFLICT = "claim_conflict"  # the run lease's create-only PUT lost (412): claimed by another
    LEASE_RENEWED = "lease_renewed"  # a running task's lease renewal CAS succeeded
    LEASE_LOST = "lease_lost"  # a renewal found the lease taken over (412) or expired by its estimate


@dataclass(frozen=True, slots=True)
class Event:
    kind: Kind
    task_id: str | None = None
    queue: str | None = None
    task_type: str | None = None
    attempt: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


Receiver = Callable[[Event], None]


class Hooks:
    """Receivers of lifecycle events; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._receivers: tuple[tuple[Receiver, frozenset[Kind] | None], ...] = ()

    def connect(self, receiver: Receiver, *kinds: Kind) -> Callable[[], None]:
        """Call ``receiver`` for events of these kinds (all when none given); returns disconnect."""
        entry = (receiver, frozenset(kinds) or None)
        with self._lock:
            self._receivers = (*self._receivers, entry)

        def disconnect() -> None:
            with self._lock:
                self._receivers = tuple(e for e in self._receivers if e is not entry)

        return disconnect

    def __bool__(self) -> bool:
        return bool(self._receivers)

    def emit(self, kind: Kind, task_id: str | None = None, *, queue: str | None = None,
             task_type: str | None = None, attempt: int | None = None,
             **detail: Any) -> None:
        """Deliver one event to every interested receiver; a receiver's error is only logged."""
        receivers = self._receivers
        if not receivers:
            return
        event = Event(kind, task_id, queue, task_type, attempt, detail)
        for receiver, kinds in receivers:
            if kinds is not None and kind not in kinds:
                continue
            try:
                receiver(event)
            except Exception:
                log.exception("hook %r failed on %s of task %s", receiver, kind, task_id)


class _NoHooks(Hooks):
    """The default: connecting to it is a mistake (events would go nowhere)."""

    def connect(self, receiver: Receiver, *kinds: Kind) -> Callable[[], None]:
        raise TypeError("NO_HOOKS is shared and emits nothing; connect to a Queue's hooks")


NO_HOOKS: Hooks = _NoHooks()
