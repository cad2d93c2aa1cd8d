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
from qo.protocol.listing import Listing, read_page, triable
from qo.protocol.ownership import Fleet
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
#: How many pages of a queue one pick may list while every key it sees is skipped.
MAX_PAGES = 5
#: How long a pick starts listing after keys it found unusable, before the head again.
FLOOR_TTL = 5.0
#: How old a page may be when it is used to take another worker's key.
STEAL_FRESH = 0.5
#: How many keys a page lists when a pick looks past a page of tasks the gate holds
#: back (one LIST either way; S3 returns at most 1,000 keys per LIST).
MORE_PAGE = 1000
#: How many tasks one pick lets the gate turn away before it gives up for now.
MAX_GATED = 8


@dataclass
class ClaimStats:
    lists: int = 0
    lease_conflicts: int = 0
    stale: int = 0
    claims: int = 0
    refused: int = 0  # tasks an admission check turned away (see Admission)


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
        hooks: Hooks = NO_HOOKS,
        admission: Sequence[Admission] = (),
        gate: Gate | None = None,
        fleet: Fleet | None = None,
        labels: frozenset[str] | None = None,
    ) -> None:
        self.store = store
        self.labels = labels  # capability labels; markers needing others are skipped (None: any)
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
        self.hooks = hooks
        self.admission = tuple(admission)
        #: Asked before a lease (``qo.protocol.admission.Gate``): tasks it holds back are
        #: passed over for free, and ``next_try`` is set to when it lets them through.
        self.gate = gate
        #: With a fleet, keys other workers rank first are left to them for a while
        #: (``qo.protocol.ownership``); ``next_try`` is when one becomes ours to try.
        self.fleet = fleet
        self.next_try: float | None = None
        self.stats = ClaimStats()
        #: Seen by the listings, for the worker to report: task types of ready
        #: markers it skipped (no handler), and the queues found paused.
        self.unknown_types: set[tuple[str, str]] = set()  # (queue, task type)
        self.paused: set[str] = set()
        self._lock = threading.Lock()
        self._listings: dict[str, Listing] = {}
        self._list_locks: dict[str, threading.Lock] = {}  # queue -> held while listing it
        self._skip: dict[str, float] = {}  # key -> monotonic time until which to skip it
        self._inflight: set[str] = set()  # keys a thread of this process is claiming now
        self._misses: dict[str, int] = {}  # key -> times in a row it was unusable
        self._floor: dict[str, tuple[str, float]] = {}  # queue -> (list after, until)
        self._held_back: dict[str, float] = {}  # key -> store time first held back (fleet)

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
        """The next candidate of ``queue``, paging past keys it cannot use.

        Keys being skipped (held by others, orphaned, of types this worker
        does not serve) can fill a whole page; then the next page is listed,
        starting after that one, so that healthy tasks further down keep
        flowing. Such a *floor* is remembered for ``FLOOR_TTL`` seconds, after
        which the head of the queue is listed again (it may have new work).
        Keys the gate holds back (a spent rate limit) are passed over without a
        request; a page with nothing else for this worker is followed by the
        next one (``Listing.more``, ``MORE_PAGE`` keys), kept with it until the
        listing is renewed, so that the held-back keys are seen again the moment
        the gate lets them through.
        """
        head: Listing | None = None
        page: Listing | None = None
        gated_tries = pages = 0
        while pages <= MAX_PAGES and gated_tries <= MAX_GATED:
            if page is None:
                head = self._fresh_listing(queue)
                if head is None:
                    with self._list_lock(queue):  # one LIST at a time per queue: the others wait
                        head = self._fresh_listing(queue) or self._list(queue,
                                                                       self._floor_of(queue))
                page = head
                pages += 1
            assert head is not None
            if self.fleet is not None and page.items:
                self.fleet.refresh_if_due()
            store_now = self.store.now() if self.fleet is not None or self.gate else 0.0
            chosen = None
            more = False  # look at the next page
            with self._lock:
                now = time.monotonic()
                if len(self._skip) > 1000:
                    self._skip = {k: t for k, t in self._skip.items() if t > now}
                    self._misses = {k: n for k, n in self._misses.items() if k in self._skip}
                if len(self._held_back) > 1000:
                    self._held_back.clear()  # only delays a steal from a stalled worker
                if page.paused:
                    return None
                usable = [
                    (info, m) for info, m in page.items
                    if self._skip.get(info.key, 0) <= now and info.key not in self._inflight
                ]
                gated = False
                if self.gate is not None and usable:
                    usable, reopen = self._ungated(usable, store_now)
                    if reopen is not None:
                        gated = True
                        self._try_at(now + max(0.0, reopen - store_now))
                if self.fleet is not None and usable:
                    usable, stealing, soonest = triable(self.fleet, page, usable, store_now,
                                                       self._held_back)
                    if soonest is not None:
                        self._try_at(now + soonest)
                    if not usable and not gated:
                        return None  # others' keys, not yet ours to try: see next_try
                    if stealing and now - page.fetched > STEAL_FRESH:
                        head.fetched = 0.0  # judge others' progress on a fresh page
                        page = None
                        continue
                if usable:
                    best = usable[0][1].priority
                    same = [c for c in usable[: int(self.spread)] if c[1].priority == best]
                    chosen = self.rng.choice(same)
                    self._inflight.add(chosen[0].key)  # no other thread of ours tries it
                elif page.last_key is None:
                    return None  # the rest of the queue is empty
                elif gated or page is not head:
                    more = True
                else:
                    self._floor[queue] = (page.last_key, now + FLOOR_TTL)
                    self._listings.pop(queue, None)
                    page = None
                    continue
            if chosen is not None:
                if self.gate is not None:
                    at = self.gate.enter(chosen[1], store_now)
                    if at is not None:  # spent after all: its siblings are passed over now
                        with self._lock:
                            self._inflight.discard(chosen[0].key)
                            self._try_at(time.monotonic() + max(0.0, at - store_now))
                        gated_tries += 1
                        continue
                with self._lock:
                    if chosen in page.items:
                        page.items.remove(chosen)
                    if not head.items:
                        head.fetched = 0.0  # used up, not empty: list again next time
                return chosen
            if more:
                assert page.last_key is not None
                with self._list_lock(queue):
                    if page.more is None:
                        page.more = self._list(queue, page.last_key, limit=MORE_PAGE,
                                               cache=False)
                page = page.more
                pages += 1
        return None

    def _ungated(self, usable: list[tuple[ObjectInfo, Marker]], store_now: float
                 ) -> tuple[list[tuple[ObjectInfo, Marker]], float | None]:
        """The candidates the gate does not hold back, and the soonest store time it
        lets one of the others through (None: it held none back). No request."""
        assert self.gate is not None
        verdict: dict[tuple[str, str | None], float | None] = {}
        open_: list[tuple[ObjectInfo, Marker]] = []
        soonest: float | None = None
        for info, m in usable:
            group = (m.task_type, m.limit_key)
            if group not in verdict:
                verdict[group] = self.gate.check(m, store_now)
            at = verdict[group]
            if at is None:
                open_.append((info, m))
            elif soonest is None or at < soonest:
                soonest = at
        return open_, soonest

    def _try_at(self, at: float) -> None:
        """Note that some key becomes triable at ``at`` (monotonic): the idle slots poll
        then (``qo.idle``) rather than backing off. Called with ``_lock`` held."""
        if self.next_try is None or self.next_try <= time.monotonic() or at < self.next_try:
            self.next_try = at

    def _fresh_listing(self, queue: str) -> Listing | None:
        with self._lock:
            listing = self._listings.get(queue)
            if listing is not None and time.monotonic() - listing.fetched < self.listing_ttl:
                return listing
            return None

    def _list_lock(self, queue: str) -> threading.Lock:
        with self._lock:
            return self._list_locks.setdefault(queue, threading.Lock())

    def _floor_of(self, queue: str) -> str | None:
        with self._lock:
            floor = self._floor.get(queue)
            if floor is None or floor[1] <= time.monotonic():
                self._floor.pop(queue, None)
                return None
            return floor[0]

    def _list(self, queue: str, start_after: str | None = None, *, limit: int | None = None,
              cache: bool = True) -> Listing:
        """LIST a page; ``cache``: as the queue's listing (its head, or a floor's page)."""
        with self._lock:
            known_paused = start_after is not None and queue in self.paused
        listing, skipped = read_page(self.store, queue, task_types=self.task_types,
                                     start_after=start_after, limit=limit or self.listing_size,
                                     paused=known_paused, labels=self.labels)
        with self._lock:
            self.stats.lists += 1
            if cache:
                self._listings[queue] = listing
            if len(self.unknown_types) < 1000:
                self.unknown_types |= skipped
            if start_after is None:  # only the head listing can see `!paused`
                if listing.paused:
                    self.paused.add(queue)
                else:
                    self.paused.discard(queue)
        return listing

    def _drop(self, info: ObjectInfo) -> None:
        """Delete a marker this claim consumed or found stale; one the store will not
        delete is skipped for ``STUCK_SKIP`` seconds, so that it never stalls the queue
        (``qo stats`` and ``qo doctor`` report such deletes)."""
        if delete_outcome(self.store, info.key, if_match=info.etag or None) == "failed":
            self._skip_for(info.key, STUCK_SKIP)

    def _backoff(self, key: str) -> float:
        """Skip a key that keeps being unusable for longer each time (1 s doubling to 60 s)."""
        with self._lock:
            misses = self._misses.get(key, 0)
            self._misses[key] = misses + 1
        return min(60.0, 2.0**misses)

    def _skip_for(self, key: str, seconds: float) -> None:
        """Skip ``key`` for at least ``seconds`` (a longer skip already set stays)."""
        with self._lock:
            self._skip[key] = max(self._skip.get(key, 0.0), time.monotonic() + seconds)

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
