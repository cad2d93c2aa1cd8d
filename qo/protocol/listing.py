"""One page of a queue's ready index, as a claimer sees it, and which keys it may try.

``read_page`` is the claimer's LIST (its only listing request); ``triable``
applies the fleet's ranking (``qo.protocol.ownership``) to a page: keys this
worker ranks first, or others' keys that have waited long enough.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from qo.protocol import keys
from qo.protocol.keys import Marker, parse_ready_key
from qo.protocol.ownership import STALLED_AFTER, Fleet
from qo.store.base import ObjectInfo, Store

Candidate = tuple[ObjectInfo, Marker]


@dataclass
class Listing:
    items: list[Candidate]
    paused: bool
    fetched: float
    last_key: str | None  # the last key listed when the page was full, else None
    waits: dict[str, tuple[float, str, int]] = field(default_factory=dict)  # key -> Fleet.rank
    fleet_view: int = -1  # which Fleet.refreshes the cached waits are of
    more: Listing | None = None  # the next page, once a pick had to look past this one


def read_page(
    store: Store, queue: str, *, task_types: set[str] | None, start_after: str | None,
    limit: int, paused: bool, labels: frozenset[str] | None = None,
) -> tuple[Listing, set[tuple[str, str]]]:
    """LIST one page of ``ready/{queue}/``: the page, and the (queue, type) pairs skipped
    for want of a handler. ``paused``: what is known, for a page that starts after
    ``!paused`` (which sorts first). ``labels``: the worker's, which must include every
    label a marker requires (None: not checked)."""
    items: list[Candidate] = []
    skipped: set[tuple[str, str]] = set()
    infos = list(store.list(keys.ready_prefix(queue), start_after=start_after, limit=limit))
    for info in infos:
        if info.key == keys.paused_key(queue):
            paused = True
            continue
        marker = parse_ready_key(info.key)
        if marker is None or marker.queue != queue:
            continue
        if task_types is not None and marker.handler not in task_types:  # type and version
            skipped.add((queue, marker.handler))
            continue
        if not marker.runnable_with(labels):  # needs a label this worker lacks: not ours
            continue
        items.append((info, marker))
    full = len(infos) >= limit
    return Listing(items, paused, time.monotonic(), infos[-1].key if full else None), skipped


def triable(
    fleet: Fleet, listing: Listing, usable: list[Candidate], store_now: float,
    held_back: dict[str, float] | None = None,
) -> tuple[list[Candidate], bool, float | None]:
    """The keys this worker may try now, whether they are others' keys, and in how many
    seconds the next of the others' keys becomes triable (None: none left to wait for).

    Keys it ranks first come first, best priority first. Only with none of those at
    the best priority does it take others' keys there: those that have waited
    long enough for its rank, and whose first-ranked worker still has
    ``STEAL_MARGIN`` keys of that priority ahead of them, so that the two rarely
    meet on one key. A key held back that way is taken anyway once it has been
    held back for ``STALLED_AFTER`` (store time, from when this worker first saw it
    so, kept in ``held_back``): its first-ranked worker is alive but not working.
    How long a key has been *ready* says nothing of that, since a deep backlog is
    old and healthy.
    """
    held_back = {} if held_back is None else held_back
    if listing.fleet_view != fleet.refreshes:
        listing.waits, listing.fleet_view = {}, fleet.refreshes
    own: list[Candidate] = []
    others: list[Candidate] = []
    soonest = None
    ahead_of: dict[tuple[str, int], int] = {}  # (first-ranked worker, priority) -> keys seen
    margin: dict[str, int] = {}  # key -> keys of its first-ranked worker ahead, less its margin
    for info, marker in usable:
        ranked = listing.waits.get(info.key)
        if ranked is None:
            ranked = listing.waits[info.key] = fleet.rank(info.key, marker)
        wait, first, needed = ranked
        slot = (first, marker.priority)
        seen = ahead_of.get(slot, 0)
        ahead_of[slot] = seen + 1
        margin[info.key] = seen - needed
        early = info.last_modified + wait - store_now
        if wait == 0:
            own.append((info, marker))
        elif early <= 0:
            others.append((info, marker))
        elif soonest is None or early < soonest:
            soonest = early
    if own and (not others or own[0][1].priority >= others[0][1].priority):
        return own, False, soonest
    if others:
        # Others' keys of the best priority: those this worker ranks best first (each
        # thief has its own second-ranked keys), each rank from the back (where the
        # first-ranked worker, going front to back, comes last).
        best = others[0][1].priority
        level = []
        for c in others:
            if c[1].priority != best:
                continue
            if (margin[c[0].key] >= 0  # the owner has enough ahead of it, or is stalled
                    or store_now - held_back.setdefault(c[0].key, store_now) >= STALLED_AFTER):
                level.append(c)
        order = sorted(range(len(level)), key=lambda i: (listing.waits[level[i][0].key][0], -i))
        if level or not own:
            return [level[i] for i in order], True, soonest
        return own, False, soonest
    return [], False, soonest
