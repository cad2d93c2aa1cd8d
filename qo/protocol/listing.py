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
from qo.protocol.ownership import Fleet
from qo.store.base import ObjectInfo, Store

Candidate = tuple[ObjectInfo, Marker]


@dataclass
class Listing:
    items: list[Candidate]
    paused: bool
    fetched: float
    last_key: str | None  # the last key listed when the page was full, else None
    waits: dict[str, float] = field(default_factory=dict)  # key -> Fleet.wait, cached
    fleet_view: int = -1  # which Fleet.refreshes the cached waits are of


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
) -> tuple[list[Candidate], bool, float | None]:
    """The keys this worker may try now, whether they are others' keys, and in how many
    seconds the next of the others' keys becomes triable (None: none left to wait for).

    Keys it ranks first come first, best priority first; only with none of those at
    the best priority does it take others' keys that have waited long enough.
    """
    if listing.fleet_view != fleet.refreshes:
        listing.waits, listing.fleet_view = {}, fleet.refreshes
    own: list[Candidate] = []
    others: list[Candidate] = []
    soonest = None
    for info, marker in usable:
        wait = listing.waits.get(info.key)
        if wait is None:
            wait = listing.waits[info.key] = fleet.wait(info.key, marker)
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
        best = others[0][1].priority
        return [c for c in others if c[1].priority == best], True, soonest
    return [], False, soonest
