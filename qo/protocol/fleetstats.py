"""Fleet statistics: one snapshot of the whole queue in ``stats/fleet.json``.

Whoever sweeps computes it, leaderless as schedules are fired: a worker
whose turn it is to sweep, or the Lambda sweeper, calls ``refresh``, which
reads the snapshot (1 GET) and, if it is older than ``0.9 * interval`` on
the store's clock, computes a new one and writes it by a conditional PUT on
the etag it read (create-only if there was none). That PUT is the
linearization point: of sweepers racing on the same stale snapshot one
writes, the others drop theirs (they computed the same thing). A sweeper
that dies before it leaves the old snapshot, which the next one replaces;
the object is derived data, so no crash window needs a repair.

What it holds (``FleetStats``): per queue the ready tasks by priority, the
age of the oldest ready task (from its marker's ``available_at``), the
running (leases), delayed and dead tasks and whether it is paused; the live
workers (``qo.protocol.fleet``) and what they serve; and the throughput
since the previous snapshot.

**Bounded cost.** Only the indexes are read, never ``tasks/``: one LIST
stream each of ``ready/``, ``delayed/``, ``leases/`` and ``dead/``, each
stopped at ``scan_limit`` keys (10,000 by default, i.e. at most 10 LIST
pages). An index that reached the limit is named in ``truncated`` and its
counts are lower bounds (shown as "≥N"). Then 1 LIST of ``workers/`` and
1 GET per fresh worker record. A refresh that computes costs
``4..4*scan_limit/1000`` LIST + 1 LIST + W GET + 1 GET + 1 PUT: 7 + W
while each index fits in one page (8 for a small queue with one worker).
A refresh that finds the snapshot fresh costs its 1 GET. ``requests`` in the snapshot says what it cost.

**Throughput** comes from the worker records, which already carry each
worker's cumulative ``processed`` and ``failed`` attempt counts: the snapshot
keeps them per worker, and the next one adds up the increase of each worker
seen in both (a worker started since the previous snapshot counts whole).
It is as fresh as the workers' heartbeats (``heartbeat_interval``, 300 s),
misses the last interval of a worker that stopped, and does not see Lambda
workers, which publish no record.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from qo.errors import PreconditionFailed
from qo.models import CorruptRecord, FutureSchema, dumps, loads
from qo.protocol import fleet, keys
from qo.protocol.cas import put_checked
from qo.protocol.keys import parse_delayed_key, parse_ready_key
from qo.store.base import LIST_PAGE_SIZE, Store

log = logging.getLogger("qo.protocol.fleetstats")

#: Keys read per index (``ready/``, ``delayed/``, ``leases/``, ``dead/``) at most.
SCAN_LIMIT = 10_000
#: A snapshot younger than 0.9 of this is fresh (``Settings.stats_interval``).
DEFAULT_INTERVAL = 300.0
#: The indexes a snapshot counts, as its ``truncated`` names them.
INDEXES = ("ready", "delayed", "leases", "dead")


class QueueStats(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ready: int = 0
    #: Ready tasks by priority (0-255, higher runs first).
    by_priority: dict[int, int] = Field(default_factory=dict)
    #: Seconds since the oldest ready task became claimable (None: none ready).
    oldest_ready_age: float | None = None
    running: int = 0  # leases held (a run, or briefly an admin or a reaper)
    delayed: int = 0  # scheduled for later, or waiting for a retry
    dead: int = 0
    paused: bool = False


class WorkerStats(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    host: str
    queues: list[str]
    task_types: list[str] | None = None
    labels: list[str] = Field(default_factory=list)
    concurrency: int
    running: int  # tasks it ran at its last heartbeat
    started_at: float
    seen_at: float
    processed: int = 0  # attempts finished since it started
    failed: int = 0


class Throughput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    seconds: float  # since the previous snapshot
    processed: int  # attempts finished meanwhile (live worker records)
    failed: int  # of them, failed (retried or dead)


class FleetStats(BaseModel):
    """The body of ``stats/fleet.json``."""

    model_config = ConfigDict(extra="ignore")

    v: int = 1
    at: float  # store clock
    by: str  # who computed it
    scan_limit: int = SCAN_LIMIT
    #: Indexes that had ``scan_limit`` keys or more: their counts are lower bounds.
    truncated: list[str] = Field(default_factory=list)
    #: What computing it cost, by request kind.
    requests: dict[str, int] = Field(default_factory=dict)
    queues: dict[str, QueueStats] = Field(default_factory=dict)
    workers: list[WorkerStats] = Field(default_factory=list)
    #: Since the previous snapshot; None for the first one.
    throughput: Throughput | None = None

    def total(self, field: str) -> int:
        return sum(int(getattr(q, field)) for q in self.queues.values())

    def oldest_ready_age(self) -> float | None:
        ages = [q.oldest_ready_age for q in self.queues.values() if q.oldest_ready_age is not None]
        return max(ages) if ages else None

    def bound(self, index: str, value: int) -> str:
        """``value`` for people: "≥N" when ``index`` was truncated."""
        return f"≥{value}" if index in self.truncated else str(value)


def _pages(n: int) -> int:
    return max(1, math.ceil(n / LIST_PAGE_SIZE))


def compute(store: Store, owner: str, *, now: float | None = None,
            previous: FleetStats | None = None, scan_limit: int = SCAN_LIMIT) -> FleetStats:
    """A new snapshot from the indexes and the worker records (see the module's cost)."""
    now = store.now() if now is None else now
    queues: dict[str, QueueStats] = {}

    def of(name: str) -> QueueStats:
        return queues.setdefault(name, QueueStats())

    seen: dict[str, int] = {}
    oldest: dict[str, float] = {}
    n = 0
    for n, info in enumerate(store.list(keys.READY, limit=scan_limit), 1):
        marker = parse_ready_key(info.key)
        if marker is None:
            if info.key.endswith("/" + keys.PAUSED_MARK):
                of(info.key.split("/")[1]).paused = True
            continue
        q = of(marker.queue)
        q.ready += 1
        q.by_priority[marker.priority] = q.by_priority.get(marker.priority, 0) + 1
        oldest[marker.queue] = min(oldest.get(marker.queue, marker.available_at),
                                   marker.available_at)
    seen["ready"] = n
    for name, at in oldest.items():
        queues[name].oldest_ready_age = round(max(0.0, now - at), 3)
    n = 0
    for n, info in enumerate(store.list(keys.DELAYED, limit=scan_limit), 1):
        delayed = parse_delayed_key(info.key)
        if delayed is not None:
            of(delayed.queue).delayed += 1
    seen["delayed"] = n
    for prefix, field in ((keys.LEASES, "leases"), (keys.DEAD, "dead")):
        n = 0
        for n, info in enumerate(store.list(prefix, limit=scan_limit), 1):
            parts = info.key.split("/")
            if len(parts) == 3:
                q = of(parts[1])
                if field == "leases":
                    q.running += 1
                else:
                    q.dead += 1
        seen[field] = n
    live = fleet.live_workers(store)
    workers = [WorkerStats(id=w.id, host=w.host, queues=w.queues, task_types=w.task_types,
                           labels=w.labels, concurrency=w.concurrency, running=len(w.running),
                           started_at=w.started_at, seen_at=w.seen_at,
                           processed=w.processed, failed=w.failed) for w in live]
    lists = sum(_pages(count) for count in seen.values()) + 1
    return FleetStats(
        at=now, by=owner, scan_limit=scan_limit,
        truncated=[name for name in INDEXES if seen[name] >= scan_limit],
        requests={"LIST": lists, "GET": len(live)},
        queues=dict(sorted(queues.items())), workers=workers,
        throughput=None if previous is None else throughput(previous, workers, now),
    )


def throughput(previous: FleetStats, workers: list[WorkerStats], now: float) -> Throughput:
    """Attempts finished since ``previous``, from the increase of each worker's counters."""
    before = {w.id: w for w in previous.workers}
    processed = failed = 0
    for w in workers:
        old = before.get(w.id)
        if old is not None and w.processed >= old.processed and w.failed >= old.failed:
            processed += w.processed - old.processed
            failed += w.failed - old.failed
        elif old is None and w.started_at >= previous.at:  # started since: all of it is new
            processed += w.processed
            failed += w.failed
    return Throughput(seconds=round(max(0.0, now - previous.at), 3), processed=processed,
                      failed=failed)


def read(store: Store) -> tuple[FleetStats | None, str | None, float | None]:
    """The stored snapshot, its etag and LastModified (1 GET); an unreadable one reads as
    None with its etag (it is replaced), a newer qo's raises ``FutureSchema``."""
    obj = store.get(keys.STATS)
    if obj is None:
        return None, None, None
    try:
        return loads(FleetStats, obj.body, "the fleet statistics"), obj.etag, obj.last_modified
    except FutureSchema:
        raise
    except CorruptRecord as exc:
        log.warning("%s: computing a new one", exc)
        return None, obj.etag, obj.last_modified


def refresh(store: Store, owner: str, *, interval: float = DEFAULT_INTERVAL,
            scan_limit: int = SCAN_LIMIT) -> FleetStats | None:
    """Write a new snapshot if the stored one is older than ``0.9 * interval``.

    The new snapshot, or None when the stored one was fresh, another sweeper's
    write won, or a newer qo wrote it (left alone). 1 GET, plus the cost of
    ``compute`` and 1 PUT when it is stale.
    """
    try:
        previous, etag, written = read(store)
    except FutureSchema as exc:
        log.info("%s; left to it", exc)
        return None
    now = store.now()
    if written is not None and now - written < 0.9 * interval:
        return None
    snapshot = compute(store, owner, now=now, previous=previous, scan_limit=scan_limit)
    snapshot.requests["GET"] = snapshot.requests.get("GET", 0) + 1
    snapshot.requests["PUT"] = 1
    try:
        if etag is None:
            put_checked(store, keys.STATS, dumps(snapshot), if_none_match=True)
        else:
            put_checked(store, keys.STATS, dumps(snapshot), if_match=etag)
    except PreconditionFailed:
        return None  # another sweeper wrote one meanwhile: as good as ours
    return snapshot


def as_dict(snapshot: FleetStats) -> dict[str, Any]:
    """The snapshot as JSON-ready data, plus totals (for ``qo stats --json`` and the API)."""
    data = snapshot.model_dump(mode="json")
    data["totals"] = {name: snapshot.total(name)
                      for name in ("ready", "running", "delayed", "dead")}
    data["oldest_ready_age"] = snapshot.oldest_ready_age()
    return data
