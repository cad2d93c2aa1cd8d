"""Which worker claims a ready key first: rendezvous hashing over the live fleet.

Workers of one fleet list the same ready keys. If each took the best key,
they would race for it: one wins the create-only lease PUT, the others pay a
412, a read-back and a fresh LIST. Instead each worker ranks the fleet for
every key by a hash of (worker id, key), highest first (rendezvous hashing:
every worker computes the same ranking, with no coordination), and
``Fleet.wait`` says how long the key must have been ready before this worker
may try it: 0 for the worker ranked first, ``STEP`` seconds for the second,
and so on. A stable fleet therefore almost never collides, and a key whose
first-ranked worker is busy, slow or dead is taken by the next one a second
later, so no task waits on one worker.

The fleet is what ``workers/`` says (``qo.protocol.fleet``): every fresh
record of a worker that serves the key's queue and task type, plus this
worker. It is read only while there is work (the first listing with ready
keys, then at most every ``FLEET_TTL`` seconds, or after a lost race every
``CONFLICT_TTL`` seconds): an idle worker pays nothing for it.

Cost: 1 LIST of ``workers/`` per refresh, and 1 GET per worker record the
first time its id is seen (queues and task types do not change while a
worker runs), except for ids that end with this worker's own signature
(``.s`` + 8 hex digits of what it serves): those serve the same, so a
homogeneous fleet reads no record at all. No write; correctness never
depends on it: the lease decides.
"""

from __future__ import annotations

import hashlib
import threading
import time

from qo.models import WorkerInfo
from qo.protocol import keys
from qo.protocol.fleet import STALE_AFTER, read_running, serves
from qo.protocol.keys import Marker
from qo.store.base import Store

#: How much longer each lower-ranked worker waits before trying a key.
STEP = 1.0
#: How often a busy worker reads ``workers/`` again.
FLEET_TTL = 30.0
#: A worker takes another's key only while that worker has at least this many keys of the
#: same priority ahead of it per slot (and per rank of the taker after it), so that the
#: two do not meet on the last ones ...
STEAL_MARGIN = 2
#: ... unless the key has been held back this long (its worker is alive but hung).
STALLED_AFTER = 30.0
#: How soon after a lost lease race it reads ``workers/`` again (a worker it does not know).
CONFLICT_TTL = 5.0
#: ... and after losing a key it ranked first (a worker started after its last read).
MINE_TTL = 0.25
#: The first reads come sooner: workers started at the same time write their records
#: at the same time, so the first view may miss some (the first read is at once).
STARTUP_TTLS = (0.0, 1.0)


def signature(queues: list[str], task_types: set[str] | list[str] | None) -> str:
    """What a worker serves, as 8 hex digits; ``qo worker`` ends its id with ``.s`` and
    this, so that workers serving the same as this one need no GET of their record."""
    served = ",".join(sorted(queues)) + "|" + ",".join(sorted(task_types or ["*"]))
    return hashlib.blake2b(served.encode(), digest_size=4).hexdigest()


def signature_of(worker_id: str) -> str | None:
    head, sep, sig = worker_id.rpartition(".s")
    return sig if sep and head and len(sig) == 8 and all(c in "0123456789abcdef" for c in sig) \
        else None


def score(worker: str, key: str) -> int:
    """The rendezvous score of ``worker`` for ``key``: the same in every process."""
    digest = hashlib.blake2b(f"{worker}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Fleet:
    """This worker's view of the fleet, for ranking ready keys; thread-safe."""

    def __init__(self, store: Store, me: str, *, stale_after: float = STALE_AFTER,
                 serves_like_me: WorkerInfo | None = None) -> None:
        self.store = store
        self.me = me
        #: This worker's own record: any worker whose id carries the same signature
        #: serves the same queues and types, so its record need not be read.
        self.serves_like_me = serves_like_me
        self.stale_after = stale_after
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._known: dict[str, WorkerInfo | None] = {}  # id -> its record (None: unreadable)
        self._live: tuple[WorkerInfo, ...] = ()
        self._fetched = float("-inf")  # monotonic time of the last refresh
        self.refreshes = 0

    def wait(self, key: str, marker: Marker) -> float:
        """Seconds ``key`` must have been ready before this worker tries it."""
        return self.rank(key, marker)[0]

    def rank(self, key: str, marker: Marker) -> tuple[float, str, int]:
        """``wait`` for ``key``, the worker ranked first for it, and how many of that
        worker's keys must be ahead of it before this one takes it: ``STEAL_MARGIN``
        per slot of that worker, times this worker's rank after it (the second-ranked
        steals first, the third only from a longer backlog, so two thieves rarely
        meet on the last keys)."""
        with self._lock:
            live = self._live
        mine = best = score(self.me, key)
        ahead, first, slots = 0, self.me, 1
        for w in live:
            if w.id == self.me or not serves(w, marker.queue, marker.task_type):
                continue
            theirs = score(w.id, key)
            if theirs > mine:
                ahead += 1
            if theirs > best:
                best, first, slots = theirs, w.id, w.concurrency
        return ahead * STEP, first, STEAL_MARGIN * max(1, slots) * max(1, ahead)

    def refresh_if_due(self, *, conflict: bool = False, mine: bool = False) -> None:
        """Read ``workers/`` again if the view is older than its TTL (``MINE_TTL`` after
        losing a key this worker ranked first: the view surely misses a worker)."""
        ttl = MINE_TTL if mine else CONFLICT_TTL if conflict else FLEET_TTL
        before = self.refreshes
        if before < len(STARTUP_TTLS):  # workers started with it may not show yet
            ttl = min(ttl, STARTUP_TTLS[before])
        if time.monotonic() - self._fetched < ttl:
            return
        # The first read is waited for by every thread (an empty view would make them
        # take every key as their own); later ones by none (the old view serves meanwhile).
        if not self._refreshing.acquire(blocking=before == 0):
            return
        if self.refreshes != before:
            self._refreshing.release()  # another thread read it while this one waited
            return
        try:
            self._refresh()
        finally:
            self._refreshing.release()

    def _refresh(self) -> None:
        now = self.store.now()
        live: list[WorkerInfo] = []
        seen: set[str] = set()
        for info in self.store.list(keys.WORKERS):
            worker_id = keys.worker_id_of(info.key)
            if worker_id is None or info.last_modified + self.stale_after < now:
                continue
            seen.add(worker_id)
            if worker_id not in self._known:
                self._known[worker_id] = self._like_me(worker_id) or read_running(self.store, info.key)
            record = self._known[worker_id]
            if record is not None:
                live.append(record)
        self._known = {k: v for k, v in self._known.items() if k in seen}
        with self._lock:
            self._live = tuple(live)
            self._fetched = time.monotonic()
            self.refreshes += 1

    def _like_me(self, worker_id: str) -> WorkerInfo | None:
        mine = self.serves_like_me
        sig = signature_of(worker_id)
        if mine is None or sig is None or sig != signature_of(self.me):
            return None
        return mine.model_copy(update={"id": worker_id})
