"""``qo schedule run``: a process that fires schedules until it is stopped."""

from __future__ import annotations

import select
import socket
import time

from qo.cron import iso_in_zone
from qo.errors import QoError
from qo.protocol.firing import Firer, FireReport, log
from qo.queue import Queue


class SchedulerDaemon:
    """Sleeps until the next slot, fires, repeats.

    It re-lists schedules every ``refresh`` seconds (to see new or edited
    ones) and otherwise sleeps until the soonest slot: an idle daemon costs
    one LIST per ``refresh`` interval, whatever the number of schedules.
    Whether a slot is due is always decided on the store's clock (read by
    the firer right before its decide CAS); the local clock only paces the
    sleeps, through ``time.monotonic``.
    """

    def __init__(self, queue: Queue, refresh: float = 60.0) -> None:
        queue.check_store()  # refuse a store that cannot keep qo's guarantees
        self.firer = Firer(queue.store, queue.settings, queue.hooks)
        self.queue = queue
        self.refresh = refresh
        self.rounds = 0
        self.stop_signal: int | None = None  # the signal that stopped it, if any
        self._stopping = False
        self._wake: socket.socket | None = None

    def stop(self, signum: int | None = None) -> None:
        """Make ``run`` return after its current round.

        Safe in a signal handler and from any thread: it takes no lock (a
        handler runs in the main thread, maybe while that thread holds the
        very lock a ``threading.Event`` would need). It sets a flag and
        writes one byte to a socket that the sleeping loop selects on.
        """
        if signum is not None:
            self.stop_signal = signum
        self._stopping = True
        wake = self._wake
        if wake is not None:
            try:
                wake.send(b"\0")
            except OSError:  # buffer full (already woken) or closed (already stopped)
                pass

    def run(self, max_rounds: int | None = None) -> None:
        reader, self._wake = socket.socketpair()
        self._wake.setblocking(False)
        try:
            self._loop(reader, max_rounds)
        finally:
            wake, self._wake = self._wake, None
            wake.close()
            reader.close()

    def _loop(self, reader: socket.socket, max_rounds: int | None) -> None:
        next_refresh = 0.0
        while not self._stopping:
            refresh = time.monotonic() >= next_refresh
            if refresh:
                next_refresh = time.monotonic() + self.refresh
            try:
                report = self.firer.fire_due(refresh=refresh)
            except QoError as exc:
                log.warning("scheduler round failed: %s", exc)
                report = FireReport()
            for name, slot, task_id in report.fired:
                when = iso_in_zone(slot, self.firer.zone_of(name))
                log.info("schedule %s fired slot %s as task %s", name, when, task_id,
                         extra={"event": "schedule_fired", "schedule": name, "task_id": task_id,
                                "slot": when})
            self.rounds += 1
            if max_rounds is not None and self.rounds >= max_rounds:
                return
            wait = next_refresh - time.monotonic()
            if report.next_slot is not None:
                try:
                    wait = min(wait, report.next_slot - self.queue.store.now())
                except QoError as exc:
                    log.warning("reading the store clock failed: %s", exc)
            if not self._stopping:
                select.select([reader], [], [], max(0.05, wait))


__all__ = ["SchedulerDaemon"]
