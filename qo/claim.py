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
import threading
import time
from dataclasses import dataclass
from typing import Any

from qo import index, keys, leases, records
from qo.cas import delete_quietly
from qo.keys import Marker, parse_ready_key
from qo.leases import HeldLease
from qo.models import CorruptRecord, TaskRecord
from qo.settings import Settings
from qo.store.base import ObjectInfo, Store

log = logging.getLogger("qo.claim")

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


@dataclass
class _Listing:
    items: list[tuple[ObjectInfo, Marker]]
    paused: bool
    fetched: float


@dataclass
class ClaimStats:
    lists: int = 0
    lease_conflicts: int = 0
    stale: int = 0
    claims: int = 0


class Claimer:
    """Claims tasks for one worker process; safe to share between its threads.

    One LIST serves many claims: its result is cached for ``listing_ttl``
    seconds and each thread takes a different key out of it; a lease conflict
    or a stale marker shows that others claim from the same keys, so the next
    pick lists again. To keep workers of other processes from fighting over
    the head of the queue, a claim picks at random among the first ``spread``
    keys of the best priority. The spread adapts: it doubles on every lease
    conflict and shrinks back slowly on clean claims, so an uncontended worker
    claims in exact FIFO order (its threads take distinct keys from their
    shared listing) and a crowd spreads over the listing.
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
    ) -> None:
        self.store = store
        self.settings = settings
        self.queues = queues
        self.task_types = task_types
        self.owner = owner
        self.min_spread = max(1, spread)
        self.shrink = 0.99  # per clean claim; a conflict doubles the spread
        self.spread = float(self.min_spread)
        self.listing_size = listing_size
        self.listing_ttl = listing_ttl
        self.rng = rng or random.Random()
        self.stats = ClaimStats()
        #: Seen by the listings, for the worker to report: task types of ready
        #: markers it skipped (no handler), and the queues found paused.
        self.unknown_types: set[tuple[str, str]] = set()  # (queue, task type)
        self.paused: set[str] = set()
        self._lock = threading.Lock()
        self._listings: dict[str, _Listing] = {}
        self._skip: dict[str, float] = {}  # key -> monotonic time until which to skip it

    def claim(self) -> Claim | None:
        """Claim the best available task, or None if there is none right now."""
        for queue in self.queues:
            for _ in range(16):
                picked = self._pick(queue)
                if picked is None:
                    break
                claim = self._try(*picked)
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
        if marker is None or marker.queue not in self.queues:
            return None
        if self.task_types is not None and marker.task_type not in self.task_types:
            return None
        seen = self.store.now() if last_modified is None else last_modified
        return self._try(ObjectInfo(key, "", 0, seen), marker)

    def seen(self) -> tuple[set[tuple[str, str]], set[str]]:
        """Copies of ``unknown_types`` and ``paused``, for the worker's log."""
        with self._lock:
            return set(self.unknown_types), set(self.paused)

    def forget(self) -> None:
        """Drop cached listings, e.g. after an idle sleep."""
        with self._lock:
            self._listings.clear()

    # -- choosing a candidate -------------------------------------------------

    def _pick(self, queue: str) -> tuple[ObjectInfo, Marker] | None:
        with self._lock:
            listing = self._listings.get(queue)
            fresh = listing and time.monotonic() - listing.fetched < self.listing_ttl
        if not fresh or listing is None:
            listing = self._list(queue)
        with self._lock:
            now = time.monotonic()
            self._skip = {k: t for k, t in self._skip.items() if t > now} if len(
                self._skip) > 1000 else self._skip
            usable = [
                (info, m) for info, m in listing.items if self._skip.get(info.key, 0) <= now
            ]
            if listing.paused or not usable:
                return None
            best = usable[0][1].priority
            same = [c for c in usable[: int(self.spread)] if c[1].priority == best]
            choice = self.rng.choice(same)
            listing.items.remove(choice)
            if not listing.items:
                listing.fetched = 0.0  # used up, not empty: list again next time
            self._skip[choice[0].key] = now + 2.0
            return choice

    def _list(self, queue: str) -> _Listing:
        items: list[tuple[ObjectInfo, Marker]] = []
        skipped: set[tuple[str, str]] = set()
        paused = False
        infos = list(self.store.list(keys.ready_prefix(queue), limit=self.listing_size))
        with self._lock:
            self.stats.lists += 1
        for info in infos:
            if info.key == keys.paused_key(queue):
                paused = True
                continue
            marker = parse_ready_key(info.key)
            if marker is None or marker.queue != queue:
                continue
            if self.task_types is not None and marker.task_type not in self.task_types:
                skipped.add((queue, marker.task_type))
                continue
            items.append((info, marker))
        listing = _Listing(items, paused, time.monotonic())
        with self._lock:
            self._listings[queue] = listing
            self.unknown_types |= skipped
            if paused:
                self.paused.add(queue)
            else:
                self.paused.discard(queue)
        return listing

    def _skip_for(self, key: str, seconds: float) -> None:
        with self._lock:
            self._skip[key] = time.monotonic() + seconds

    def _listing_is_stale(self, queue: str) -> None:
        """Someone else is claiming from this listing: list again before the next pick."""
        with self._lock:
            listing = self._listings.get(queue)
            if listing is not None:
                listing.fetched = 0.0

    # -- the claim itself -----------------------------------------------------

    def _try(self, info: ObjectInfo, marker: Marker) -> Claim | None:
        now = self.store.now()
        held = leases.acquire(
            self.store, marker.queue, marker.task_id, owner=self.owner, kind="run",
            seconds=self.settings.lease_seconds, now=now,
        )
        if held is None:
            with self._lock:
                self.stats.lease_conflicts += 1
                self.spread = min(self.listing_size, self.spread * 2)
            self._listing_is_stale(marker.queue)
            self._skip_for(info.key, min(30.0, self.settings.lease_seconds / 2))
            return None
        try:
            current = records.read(self.store, marker.task_id)
        except CorruptRecord as exc:
            self._quarantine(info, marker, str(exc))
            held.release(self.store)
            return None
        except Exception:
            held.release(self.store)
            raise
        if current is None:
            if now - info.last_modified > self.settings.orphan_grace:
                delete_quietly(self.store, info.key, if_match=info.etag or None)  # submitter died
            else:
                self._skip_for(info.key, 1.0)  # submit in flight: record comes next
            held.release(self.store)
            self._count_stale(marker.queue)
            return None
        record = current.record
        if not record.claimable(now + CLOCK_TOLERANCE):
            self._tidy(info, record, now)
            held.release(self.store)
            self._count_stale(marker.queue)
            return None
        delete_quietly(self.store, info.key, if_match=info.etag or None)
        own = index.marker_of(record).ready_key
        if own != info.key:
            delete_quietly(self.store, own)
        try:
            return Claim(record, current.etag, held, records.load_input(self.store, record), marker)
        except CorruptRecord as exc:
            log.error("task %s: %s", record.id, exc)  # the worker fails it without running it
            return Claim(record, current.etag, held, None, marker, input_error=str(exc))

    def _quarantine(self, info: ObjectInfo, marker: Marker, why: str) -> None:
        """Under the lease: park an unreadable record where ``qo doctor`` reports it.

        The record itself is left untouched for a person to inspect or repair;
        its marker goes, so no worker pays for it again.
        """
        index.quarantine(self.store, marker.queue, marker.task_id, why, marker=info.key)
        delete_quietly(self.store, info.key, if_match=info.etag or None)
        self._count_stale(marker.queue)

    def _tidy(self, info: ObjectInfo, record: TaskRecord, now: float) -> None:
        """Under the lease: drop a marker the record no longer justifies."""
        if not record.terminal:
            index.ensure_indexed(self.store, record, now)  # e.g. the delayed marker
        if index.index_key(record, now) != info.key:
            delete_quietly(self.store, info.key, if_match=info.etag or None)

    def _count_stale(self, queue: str) -> None:
        """A marker someone else already consumed: others work this head too."""
        self._listing_is_stale(queue)
        with self._lock:
            self.stats.stale += 1
            self.spread = min(self.listing_size, self.spread * 2)
