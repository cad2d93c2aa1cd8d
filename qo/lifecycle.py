"""Lifecycle hooks on an app and per task type: receivers of ``qo.hooks`` events.

::

    @app.on("success")
    def done(event: Event) -> None: ...          # every task type of the app

    @resize.on("dead")                            # one task type
    def alert(event: Event) -> None: ...

A hook is called with the ``qo.hooks.Event`` of a transition, once per
transition that a worker (or Lambda invocation) running this app recorded:
the event is emitted only after the conditional write that decided it
succeeded, by the process that made it, and this receiver is connected for
as long as the worker runs and filtered on the event's ``worker`` (or, for a
lease its housekeeper reaped, ``reaper``) detail, like ``qo.eventlog``. A late
outcome that was fenced (the lease was lost) calls no hook; the worker that
took over calls them for its own attempt. A hook that raises is logged and
changes nothing: not the outcome, not the hooks after it.

========== ==================================================================
``start``   the run lease was taken and the record was claimable (``CLAIMED``)
``success`` the outcome CAS recorded a result (``SUCCEEDED``)
``retry``   a failed attempt was recorded with a retry due (``RETRYING``), or
            a reaper counted a lost run and the task waits again (``REAPED``)
``dead``    the last failure was recorded (``DEAD``), by the outcome or a reaper
``failure`` every failed attempt: each ``retry`` and each ``dead``
``cancel``  the task was cancelled while this worker ran it; its outcome was
            dropped (``FENCED`` with ``cancelled``). A task cancelled before any
            worker ran it never reaches one: watch ``Kind.CANCELLED`` on the
            queue's hooks in the process that cancels.
========== ==================================================================

Hooks run in the thread that recorded the transition (a worker slot),
after the write: keep them fast, or hand the work to a thread of your own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection

from qo.hooks import Event, Hooks, Kind
from qo.models import WAITING

log = logging.getLogger("qo.lifecycle")

Hook = Callable[[Event], None]
WHEN = ("start", "success", "failure", "retry", "dead", "cancel")
_KINDS = (Kind.CLAIMED, Kind.SUCCEEDED, Kind.RETRYING, Kind.DEAD, Kind.FENCED, Kind.REAPED)


def hook_names(event: Event) -> tuple[str, ...]:
    """Which hooks an event calls, in order."""
    kind, d = event.kind, event.detail
    if kind is Kind.CLAIMED:
        return ("start",)
    if kind is Kind.SUCCEEDED:
        return ("success",)
    if kind is Kind.RETRYING:
        return ("failure", "retry")
    if kind is Kind.DEAD:
        return ("failure", "dead")
    if kind is Kind.FENCED and d.get("cancelled"):
        return ("cancel",)
    if kind is Kind.REAPED and d.get("counted") and d.get("status") in WAITING:
        return ("failure", "retry")  # a lost run counted; its DEAD event covers the last one
    return ()


class LifecycleHooks:
    """The hooks of one app (``App.on``); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: tuple[tuple[str, str | None, Hook], ...] = ()

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def add(self, when: str, fn: Hook, task_type: str | None = None) -> None:
        if when not in WHEN:
            raise ValueError(f"unknown hook {when!r}: one of {', '.join(WHEN)}")
        with self._lock:
            self._hooks = (*self._hooks, (when, task_type, fn))

    def call(self, event: Event) -> None:
        """Call every hook this event triggers; a hook's error is only logged."""
        for name in hook_names(event):
            for when, task_type, fn in self._hooks:
                if when != name or (task_type is not None and task_type != event.task_type):
                    continue
                try:
                    fn(event)
                except Exception:
                    log.exception("%s hook %r failed on task %s", name, fn, event.task_id)


def connect(lifecycle: LifecycleHooks, hooks: Hooks, worker: str,
            task_types: Collection[str] | None = None) -> Callable[[], None]:
    """Call ``lifecycle``'s hooks for the transitions ``worker`` records (of ``task_types``,
    the app's, when given: a reaper repairs any type); returns the disconnect function."""
    types = None if task_types is None else frozenset(task_types)

    def receive(event: Event) -> None:
        if worker not in (event.detail.get("worker"), event.detail.get("reaper")):
            return
        if types is None or event.task_type in types:
            lifecycle.call(event)

    return hooks.connect(receive, *_KINDS)
