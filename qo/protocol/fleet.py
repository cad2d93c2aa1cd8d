"""Which task types the running workers serve, read from their heartbeat records.

Every ``qo worker`` PUTs ``workers/{id}.json`` (``WorkerInfo``) when it
starts and every ``heartbeat_interval`` (300 s) after, with the queues it
serves and the task types it has handlers for, and deletes it when it stops.
A record whose ``LastModified`` is older than ``STALE_AFTER`` on the store's
clock is a worker that died without cleaning up: it serves nothing.

A ready task whose (queue, type) no live worker serves waits forever, e.g. a
mistyped ``qo submit nosuch``: ``unserved`` finds those, for ``qo stats`` and
``qo doctor``. Workers started by the Lambda deployment publish no record.

Cost: 1 LIST of ``workers/`` + 1 GET per worker record, and 1 LIST per 1,000
ready markers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from qo.models import CorruptRecord, WorkerInfo, loads
from qo.protocol import keys
from qo.protocol.cas import get_retrying
from qo.protocol.keys import parse_ready_key
from qo.store.base import Store

#: Three missed heartbeats (at the default 300 s interval): the worker is gone.
STALE_AFTER = 900.0


@dataclass(frozen=True)
class Unserved:
    """Ready tasks of one type in one queue that no live worker has a handler for."""

    queue: str
    task_type: str
    ready: int

    def describe(self) -> str:
        return f"{self.task_type!r} in queue {self.queue} ({self.ready} ready)"


def live_workers(store: Store, *, stale_after: float = STALE_AFTER) -> list[WorkerInfo]:
    """Workers whose heartbeat record is fresh and says ``running``."""
    now = store.now()
    found = []
    for info in store.list(keys.WORKERS):
        if info.last_modified + stale_after < now:
            continue
        worker = read_running(store, info.key)
        if worker is not None:
            found.append(worker)
    return found


def read_running(store: Store, key: str) -> WorkerInfo | None:
    """The worker record at ``key`` if it says ``running`` (1 GET); None when it is gone
    (stopped meanwhile), unreadable or of a newer schema version (``FutureSchema``)."""
    obj = get_retrying(store, key)
    if obj is None:
        return None
    try:
        worker = loads(WorkerInfo, obj.body, f"worker record {key}")
    except CorruptRecord:
        return None
    return worker if worker.state == "running" else None


def serves(worker: WorkerInfo, queue: str, task_type: str) -> bool:
    """A worker too old to publish its task types is assumed to serve them all.

    ``task_type`` is a marker's ``needs``: ``type[@version][~label...]``; the worker
    must serve that handler and have every label.
    """
    handler, *labels = task_type.split(keys.LABEL_SEP)
    return (queue in worker.queues and set(labels).issubset(worker.labels)
            and (worker.task_types is None or handler in worker.task_types))


def ready_counts(store: Store, limit: int | None = None) -> Counter[tuple[str, str]]:
    """Ready markers per (queue, task type), from their keys alone."""
    counts: Counter[tuple[str, str]] = Counter()
    for info in store.list(keys.READY, limit=limit):
        marker = parse_ready_key(info.key)
        if marker is not None:
            counts[(marker.queue, marker.needs)] += 1  # type[@version][~label...]
    return counts


@dataclass(frozen=True)
class Coverage:
    """The live workers, and the ready (queue, type) pairs none of them serves."""

    workers: list[WorkerInfo]
    unserved: list[Unserved]

    def describe(self) -> str | None:
        """One line for people, or None when every ready task has a worker."""
        if not self.unserved:
            return None
        shown = "; ".join(u.describe() for u in self.unserved[:5])
        more = f" and {len(self.unserved) - 5} more" if len(self.unserved) > 5 else ""
        if not self.workers:
            return (f"no worker is running (no fresh record under {keys.WORKERS}; Lambda "
                    f"workers publish none) for: {shown}{more}")
        return f"no running worker serves: {shown}{more}"


def coverage(
    store: Store, *, stale_after: float = STALE_AFTER, limit: int | None = None
) -> Coverage:
    """Which ready (queue, type) pairs no live worker serves, most ready first."""
    counts = ready_counts(store, limit)
    workers = live_workers(store, stale_after=stale_after) if counts else []
    missing = [Unserved(q, t, n) for (q, t), n in counts.items()
               if not any(serves(w, q, t) for w in workers)]
    return Coverage(workers, sorted(missing, key=lambda u: (-u.ready, u.queue, u.task_type)))
