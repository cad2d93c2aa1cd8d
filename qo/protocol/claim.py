"""Claiming: find the best ready marker, take the task's lease, read the record.

Linearization point: the create-only PUT of ``leases/{queue}/{id}``. Reading
the record *after* taking the lease means a claimer with a stale listing can
never run a task that another worker already finished: it sees the record's
current state. Cost on the happy path: one PUT (lease), one GET (record), one
free DELETE (marker), plus a LIST shared by many claims.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qo.hooks import NO_HOOKS, Hooks, Kind
from qo.models import CorruptRecord, FutureSchema, TaskRecord
from qo.protocol import index, leases, records
from qo.protocol.admission import Admission, Gate, first_refusal
from qo.protocol.cas import delete_outcome
from qo.protocol.keys import Marker, parse_ready_key
from qo.protocol.leases import HeldLease
from qo.protocol.ownership import Fleet
from qo.protocol.picking import Picker
from qo.settings import Settings
from qo.store.base import ObjectInfo, Store

log = logging.getLogger("qo.protocol.claim")

#: The S3 Date header has a resolution of one second, so two readers of the
#: store clock may disagree by that much; a marker someone judged due is not
#: refused for being early by less than this.
CLOCK_TOLERANCE = 1.0


@dataclass
class Claim:
    """A task this worker holds: the record as read, its etag, and the lease."""

    record: TaskRecord
    etag: str
    lease: HeldLease
    input: Any
    marker: Marker
    input_error: str | None = None  # the input payload could not be read
    attempt: int = 0  # the attempt this claim runs: fixed at claim time

    def __post_init__(self) -> None:
        self.attempt = self.attempt or self.record.attempt + 1

    @property
    def task_id(self) -> str:
        return self.record.id


#: How long a marker that the store would not delete is skipped.
STUCK_SKIP = 600.0


class Claimer(Picker):
    """Claims tasks for one worker process; safe to share between its threads.

    Which ready key to try next is the ``Picker``'s (``qo.protocol.picking``:
    listings shared by the threads, spread, floors, the fleet's ranking, the
    gate); this class takes the chosen task's lease, asks the admission
    checks and reads the record.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        queues: list[str],
        task_types: set[str] | None,
        owner: str,
        spread: int = 1,
        listing_size: int = 200,
        listing_ttl: float = 2.0,
        rng: random.Random | None = None,
        hooks: Hooks = NO_HOOKS,
        admission: Sequence[Admission] = (),
        gate: Gate | None = None,
        fleet: Fleet | None = None,
        labels: frozenset[str] | None = None,
    ) -> None:
        super().__init__(store, queues=queues, task_types=task_types, spread=spread,
                         listing_size=listing_size, listing_ttl=listing_ttl, rng=rng,
                         gate=gate, fleet=fleet, labels=labels)
        self.settings = settings
        self.owner = owner
        self.hooks = hooks
        self.admission = tuple(admission)

    def claim(self) -> Claim | None:
        """Claim the best available task, or None if there is none right now."""
        self.next_try = None
        for queue in self.queues:
            for _ in range(16):
                picked = self._pick(queue)
                if picked is None:
                    break
                claim = None
                try:
                    claim = self._try(*picked)
                finally:  # then skipped a little longer: its marker's delete may be in flight
                    self._skip_for(picked[0].key, 2.0)
                    with self._lock:
                        self._inflight.discard(picked[0].key)
                    if claim is None and self.gate is not None:
                        self.gate.leave(picked[1])
                if claim is not None:
                    with self._lock:
                        self.spread = max(self.min_spread, self.spread * self.shrink)
                        self.stats.claims += 1
                    return claim
        return None

    def claim_marker(self, key: str, last_modified: float | None = None) -> Claim | None:
        """Claim the task a known ready key names (an S3 event), if still claimable.

        Duplicate or late events are harmless: the lease and the record decide.
        Without ``last_modified`` a marker whose record is missing is left alone.
        """
        marker = parse_ready_key(key)
        if marker is None or marker.queue not in self.queues or not marker.runnable_with(self.labels):
            return None
        if self.task_types is not None and marker.handler not in self.task_types:
            return None
        seen = self.store.now() if last_modified is None else last_modified
        claim = None
        try:
            claim = self._try(ObjectInfo(key, "", 0, seen), marker)
        finally:
            if claim is None and self.gate is not None:
                self.gate.leave(marker)
        return claim

    def _drop(self, info: ObjectInfo) -> None:
        """Delete a marker this claim consumed or found stale; one the store will not
        delete is skipped for ``STUCK_SKIP`` seconds, so that it never stalls the queue
        (``qo stats`` and ``qo doctor`` report such deletes)."""
        if delete_outcome(self.store, info.key, if_match=info.etag or None) == "failed":
            self._skip_for(info.key, STUCK_SKIP)

    # -- the claim itself -----------------------------------------------------

    def _try(self, info: ObjectInfo, marker: Marker) -> Claim | None:
        now = self.store.now()
        held = leases.acquire(
            self.store, marker.queue, marker.task_id, owner=self.owner, kind="run",
            seconds=self.settings.lease_seconds, now=now,
        )
        if held is None:
            self.hooks.emit(Kind.CLAIM_CONFLICT, marker.task_id, queue=marker.queue,
                            task_type=marker.task_type, worker=self.owner)
            if self.fleet is not None:  # lost a key it ranked first: its view misses someone
                self.fleet.refresh_if_due(conflict=True,
                                          mine=self.fleet.wait(info.key, marker) == 0)
            with self._lock:
                self.stats.lease_conflicts += 1
                self.spread = min(self.listing_size, self.spread * 2)
            self._listing_is_stale(marker.queue)
            self._skip_for(info.key, min(30.0, self.settings.lease_seconds / 2))
            return None
        refusal = first_refusal(self.admission, marker, held, now)
        if refusal is not None:
            held.release(self.store)
            with self._lock:
                self.stats.refused += 1
            self._skip_for(info.key, max(0.0, refusal.retry_at - now))
            return None
        try:
            current = records.read(self.store, marker.task_id)
        except FutureSchema as exc:  # a newer qo's record: it and its marker stay for newer workers
            log.error("task %s left for a newer worker: %s", marker.task_id, exc)
            self._skip_for(info.key, STUCK_SKIP)
            held.release(self.store)
            return None
        except CorruptRecord as exc:
            self._quarantine(info, marker, str(exc))
            held.release(self.store)
            return None
        except Exception:
            held.release(self.store)
            raise
        if current is None:
            if now - info.last_modified > self.settings.orphan_grace:
                self._drop(info)  # submitter died
            else:  # submit in flight (the record comes next), or an orphan: back off
                self._skip_for(info.key, self._backoff(info.key))
            held.release(self.store)
            self._count_stale(marker.queue)
            return None
        record = current.value
        if record.queue != marker.queue or record.type != marker.task_type:
            log.error("marker %s names task %s of another queue or type; dropping it",
                      info.key, record.id)
            self._drop(info)
            held.release(self.store)
            self._skip_for(info.key, self._backoff(info.key))
            return None
        if not record.claimable(now + CLOCK_TOLERANCE):
            self._tidy(info, record, now)
            self._skip_for(info.key, self._backoff(info.key))  # its delete may have lost a race
            held.release(self.store)
            self._count_stale(marker.queue)
            return None
        if index.marker_of(record).ready_key != info.key:
            # A leftover marker (e.g. a repeated submit's, written while the task ran):
            # claim only through the record's own key, so that order stays exact.
            self._tidy(info, record, now)
            held.release(self.store)
            self._count_stale(marker.queue)
            return None
        self._drop(info)
        try:
            claim = Claim(record, current.etag, held, records.load_input(self.store, record),
                          marker)
        except CorruptRecord as exc:
            log.error("task %s: %s", record.id, exc)  # the worker fails it without running it
            claim = Claim(record, current.etag, held, None, marker, input_error=str(exc))
        self.hooks.emit(Kind.CLAIMED, record.id, queue=record.queue, task_type=record.type,
                        attempt=claim.attempt, worker=self.owner,
                        waited=round(max(0.0, now - record.available_at), 3))
        return claim

    def _quarantine(self, info: ObjectInfo, marker: Marker, why: str) -> None:
        """Under the lease: park an unreadable record where ``qo doctor`` reports it.

        The record itself is left untouched for a person to inspect or repair;
        its marker goes, so no worker pays for it again.
        """
        index.quarantine(self.store, marker.queue, marker.task_id, why, marker=info.key)
        self.hooks.emit(Kind.QUARANTINED, marker.task_id, queue=marker.queue, reason=why)
        self._drop(info)
        self._count_stale(marker.queue)

    def _tidy(self, info: ObjectInfo, record: TaskRecord, now: float) -> None:
        """Under the lease: drop a marker the record no longer justifies."""
        if not record.terminal:
            index.ensure_indexed(self.store, record, now)  # e.g. the delayed marker
        if index.index_key(record, now) != info.key:
            self._drop(info)

    def _count_stale(self, queue: str) -> None:
        """A marker someone else already consumed: others work this head too."""
        self._listing_is_stale(queue)
        with self._lock:
            self.stats.stale += 1
            self.spread = min(self.listing_size, self.spread * 2)
