"""Choosing the next ready key to try: the claimer's half that makes no write.

A ``Picker`` keeps, per queue, a listing of ``ready/{queue}/`` shared by the
process's threads (one LIST serves many claims: cached for ``listing_ttl``
seconds, each thread takes a different key out of it), the keys to skip for a
while (tried, held by others, orphaned), and the *spread*: to keep workers of
other processes from fighting over the head of the queue, a pick chooses at
random among the first ``spread`` keys of the best priority. The spread
adapts: it doubles on every lease conflict and shrinks back slowly on clean
claims, so an uncontended worker claims in exact FIFO order and a crowd
spreads over the listing. With a fleet, keys other workers rank first are
left to them for a while (``qo.protocol.listing.triable``); with a gate
(``qo.protocol.admission.Gate``), keys it would refuse are passed over.
Requests: LISTs only (docs/protocol.md, sections 4 and 11).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from qo.protocol.admission import Gate
from qo.protocol.keys import Marker
from qo.protocol.listing import Listing, read_page, triable
from qo.protocol.ownership import Fleet
from qo.store.base import ObjectInfo, Store

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


class Picker:
    """The picking state and steps of a ``qo.protocol.claim.Claimer`` (see the module
    docstring); safe to share between threads."""

    def __init__(self, store: Store, *, queues: list[str], task_types: set[str] | None,
                 spread: int = 1, listing_size: int = 200, listing_ttl: float = 2.0,
                 rng: random.Random | None = None, gate: Gate | None = None,
                 fleet: Fleet | None = None, labels: frozenset[str] | None = None) -> None:
        self.store = store
        self.labels = labels  # capability labels; markers needing others are skipped (None: any)
        self.queues = queues
        self.task_types = task_types
        self.min_spread = max(1, spread)
        self.shrink = 0.99  # per clean claim; a conflict doubles the spread
        self.spread = float(self.min_spread)
        self.listing_size = listing_size
        self.listing_ttl = listing_ttl
        self.rng = rng or random.Random()
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

    def seen(self) -> tuple[set[tuple[str, str]], set[str]]:
        """Copies of ``unknown_types`` and ``paused``, for the worker's log."""
        with self._lock:
            return set(self.unknown_types), set(self.paused)

    def forget(self) -> None:
        """Drop cached listings, e.g. after an idle sleep."""
        with self._lock:
            self._listings.clear()

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
                if pages >= MAX_PAGES:
                    break  # (a page listed now would not be looked at)
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
