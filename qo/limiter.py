"""A worker process's side of the limits (docs/protocol.md §11): the admission check.

``Limiter.admit`` is a ``qo.protocol.admission.Admission``: the claimer calls it
under a task's lease, before reading the record. For a task type without a
limit it returns at once (no request). Otherwise, for each rate limit it takes
one token from the process's *grant* for that bucket, and for each concurrency
limit one slot (``qo.protocol.slots``); without them it refuses until the
computed time, so the task stays queued, consumes no attempt and other types
and keys keep flowing.

A grant is a batch of tokens taken from the bucket object by one CAS
(``qo.protocol.limits.take``), shared by the process's threads and valid for
``window`` seconds (store time); what is not used by then is dropped, never
returned. The batch adapts: it doubles when a grant is used up within its
window and shrinks to what was used when one expires, up to one window of
the bucket's rate. A refused grant is not asked again before the bucket can
have refilled a batch (``Take.retry_at``): no polling of the limiter.
Requests per admitted task: ``2 / batch`` (1 GET + 1 PUT per grant) for the
bucket, plus the refused claims' leases (1 PUT each, see the docs).
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from qo.errors import QoError, RateLimited
from qo.hooks import Event, Hooks, Kind
from qo.protocol import keys, limits, slots
from qo.protocol.admission import Refusal
from qo.protocol.keys import Marker
from qo.protocol.leases import HeldLease
from qo.protocol.limits import LimitSpec
from qo.store.base import Store

log = logging.getLogger("qo.limiter")

#: How long a grant's tokens stay usable (store seconds); also the most one batch covers.
WINDOW = 1.0
#: The events that end an attempt (the slots it held go back).
OVER = (Kind.SUCCEEDED, Kind.RETRYING, Kind.DEAD, Kind.FENCED, Kind.RELEASED, Kind.CANCELLED)
#: How often a busy limiter reads the bucket's limit settings again (``qo limit set``).
REFRESH = 60.0


@dataclass
class Line:
    """Tasks one limit (and key) refused, told to come back one by one in the order
    they were refused, as fast as this process has been admitting them: so that a
    refused task is not tried (a lease each time) again and again before its turn,
    and a page of them is skipped and the claimer lists on to other work."""

    default: float  # seconds between two turns until this process has admitted some
    next_slot: float = 0.0  # store time of the next free turn
    admitted: float = 0.0  # tasks admitted since ``since`` (halved every HALF_LIFE)
    since: float | None = None

    def admit(self, now: float) -> None:
        if self.since is None:
            self.since = now
        elif now - self.since > 2 * LINE_HALF_LIFE:
            self.since, self.admitted = now - LINE_HALF_LIFE, self.admitted / 2
        self.admitted += 1

    def spacing(self, now: float) -> float:
        if self.since is None or self.admitted < 3:
            return self.default
        rate = self.admitted / max(1e-3, now - self.since)
        return min(10.0, max(0.01, 1.0 / rate))

    def place(self, now: float, earliest: float) -> float:
        """The turn of the next refused task: not before ``earliest`` (store time)."""
        slot = max(earliest, self.next_slot, now)
        self.next_slot = slot + self.spacing(now)
        return slot


#: How far back a line's admission rate looks (seconds, halved past twice this).
LINE_HALF_LIFE = 15.0


@dataclass
class Grant:
    """The tokens this process holds from one bucket (one shard of one limit key)."""

    key: str  # the bucket object
    rate: float  # this shard's rate, per second
    capacity: float  # this shard's size
    tokens: int = 0
    granted: int = 0  # the size of the current grant
    expires: float = 0.0  # store time
    batch: int = 1
    retry_at: float = 0.0  # store time before which asking the bucket cannot pay off
    stats: dict[str, int] = field(default_factory=lambda: {"takes": 0, "refused": 0,
                                                           "granted": 0, "expired": 0,
                                                           "writes": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def max_batch(self) -> int:
        # At most half the bucket: waiting for a batch never lets the bucket overflow.
        return max(1, min(math.floor(self.rate * WINDOW), math.floor(self.capacity / 2)))


class Limiter:
    """The limits one worker process applies; thread-safe. See the module docstring.

    ``specs``: the limits the app declares (``App.limits``); the bucket's
    ``limits/{name}.json`` override their numbers and may add task types, and
    limits that exist only in the bucket apply to the types they name
    (read at the first check and every ``REFRESH`` seconds of checks after).
    """

    def __init__(self, store: Store, specs: Mapping[str, LimitSpec], *, owner: str,
                 read_bucket: bool = True, window: float = WINDOW) -> None:
        self.store = store
        self.owner = owner
        self.window = window
        self.code_specs = dict(specs)
        self.read_bucket = read_bucket
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._grants: dict[tuple[str, str, int], Grant] = {}
        self._by_type: dict[str, list[LimitSpec]] = {}
        self._etags: dict[str, str] = {}
        self._bucket_specs: dict[str, LimitSpec] = {}
        self._read_at: float | None = None  # store time of the last read of limits/
        self._lines: dict[tuple[str, str], Line] = {}  # refused tasks' turns, per limit and key
        #: Admitted tasks of limited types: their marker and slots, until their outcome.
        self._running: dict[str, tuple[Marker, list[slots.HeldSlot]]] = {}
        self._turns: list[float] = []  # a heap of the refused tasks' turns (store time)
        self._index()

    # -- which limits apply ----------------------------------------------------------

    def specs(self) -> dict[str, LimitSpec]:
        """The limits in force: the code's, overridden by the bucket's settings."""
        with self._lock:
            merged = dict(self.code_specs)
            for name, spec in self._bucket_specs.items():
                code = merged.get(name)
                types = sorted(set(spec.types) | set(code.types if code else ()))
                merged[name] = spec.model_copy(update={"types": types})
            return merged

    def _index(self) -> None:
        by_type: dict[str, list[LimitSpec]] = {}
        for spec in self.specs().values():
            for t in spec.types:
                by_type.setdefault(t, []).append(spec)
        with self._lock:
            self._by_type = by_type

    def refresh(self, now: float) -> None:
        """Read ``limits/`` again: 1 LIST, + 1 GET per object that changed."""
        with self._lock:
            self._read_at = now
        found: dict[str, LimitSpec] = {}
        etags: dict[str, str] = {}
        try:
            for info in self.store.list(keys.LIMITS):
                name = keys.limit_name_of(info.key)
                if name is None:
                    continue
                etags[name] = info.etag
                old = self._bucket_specs.get(name)
                if old is not None and self._etags.get(name) == info.etag:
                    found[name] = old
                    continue
                spec = limits.read_spec(self.store, name)
                if spec is not None:
                    found[name] = spec
        except QoError as exc:
            log.warning("reading the limits' settings failed (the last ones stay): %s", exc)
            return
        with self._lock:
            self._bucket_specs, self._etags = found, etags
        self._index()

    def _refresh_due(self, now: float) -> bool:
        """Is it time to read ``limits/`` again? True for one caller per period."""
        with self._lock:
            if self._read_at is not None and now - self._read_at < REFRESH:
                return False
            self._read_at = now
            return True

    def applies(self, task_type: str) -> list[LimitSpec]:
        with self._lock:
            return self._by_type.get(task_type, [])

    # -- the admission check ---------------------------------------------------------

    def admit(self, marker: Marker, held: HeldLease, now: float) -> Refusal | None:
        """The ``Admission`` (see the module docstring); no request for unlimited types."""
        if self.read_bucket and self._refresh_due(now):
            self.refresh(now)
        specs = self.applies(marker.task_type)
        if not specs:
            return None
        taken: list[Grant] = []
        lines: list[Line] = []  # of the limits that admitted it
        for spec in specs:
            if spec.rate is None:
                continue
            grant, retry_at = self._take_token(spec, marker, now)
            line = self._line(spec.name, self._lkey(marker, spec.per_key), 1.0 / spec.rate)
            if grant is None:
                self._give_back(taken)
                with self._lock:
                    turn = line.place(now, retry_at)
                return self._refuse(turn, f"rate limit {spec.name!r}", now)
            taken.append(grant)
            lines.append(line)
        held_slots: list[slots.HeldSlot] = []
        for spec in specs:
            if spec.concurrency is None:
                continue
            lkey = self._lkey(marker, spec.concurrency_per_key)
            slot = slots.acquire(self.store, spec.name, lkey, spec.concurrency, held=held,
                                 now=now, rng=self._rng)
            line = self._line(f"{spec.name}#c", lkey, 0.5)
            if slot is None:
                self._give_back(taken)
                for got in held_slots:
                    slots.release(self.store, got)
                with self._lock:
                    turn = line.place(now, now + 0.25)
                return self._refuse(turn, f"concurrency limit {spec.name!r}", now)
            held_slots.append(slot)
            lines.append(line)
        with self._lock:
            for line in lines:
                line.admit(now)
            if len(self._running) > 10_000:  # claims that ended without an event: their
                self._running.clear()  # slots are stale anyway (qo.protocol.slots)
            self._running[marker.task_id] = (marker, held_slots)
        return None

    def _line(self, name: str, lkey: str, default: float) -> Line:
        with self._lock:
            line = self._lines.get((name, lkey))
            if line is None:
                if len(self._lines) > 10_000:
                    self._lines.clear()
                line = self._lines[(name, lkey)] = Line(default)
            return line

    # -- outcomes: slots back, RateLimited feedback ------------------------------------

    def connect(self, hooks: Hooks) -> Callable[[], None]:
        """Release a task's slots when its attempt is over, and block its buckets when
        its handler raised ``RateLimited`` (the outcome events, ``qo.hooks``)."""
        return hooks.connect(self._on_outcome, *OVER)

    def _on_outcome(self, event: Event) -> None:
        if event.task_id is None:
            return
        with self._lock:
            running = self._running.pop(event.task_id, None)
        if running is None:
            return
        marker, held_slots = running
        for slot in held_slots:
            slots.release(self.store, slot)
        if event.kind is Kind.RETRYING and event.detail.get("error") == RateLimited.__name__:
            self.block(marker, float(event.detail.get("retry_in") or 0.0))

    def block(self, marker: Marker, seconds: float) -> None:
        """Admit no task of ``marker``'s rate limits and key for ``seconds`` (store time),
        here and, through the buckets, in every process. 1 GET + 1 PUT per bucket."""
        now = self.store.now()
        until = now + seconds
        for spec in self.applies(marker.task_type):
            if spec.rate is None:
                continue
            lkey = self._lkey(marker, spec.per_key)
            for shard in range(spec.shards):
                grant = self.grant(spec, lkey, shard)
                with grant.lock:
                    grant.stats["expired"] += grant.tokens
                    grant.tokens, grant.granted = 0, 0
                    grant.retry_at = max(grant.retry_at, until)
                try:
                    limits.block(self.store, grant.key, until=until, capacity=grant.capacity,
                                 now=now)
                except QoError as exc:
                    log.warning("blocking %s after RateLimited failed: %s", grant.key, exc)

    def _refuse(self, retry_at: float, reason: str, now: float) -> Refusal:
        with self._lock:
            if len(self._turns) < 100_000:
                heapq.heappush(self._turns, retry_at)
        return Refusal(retry_at, reason)

    def next_turn(self, now: float) -> float | None:
        """The soonest turn (store time) of a task this limiter refused that is still to
        come, or None: when an idle worker should claim again (``Worker``)."""
        with self._lock:
            while self._turns and self._turns[0] <= now:
                heapq.heappop(self._turns)
            return self._turns[0] if self._turns else None

    def _give_back(self, grants: list[Grant]) -> None:
        """Tokens taken for a task another limit refused go back to their grants (free)."""
        for grant in grants:
            with grant.lock:
                grant.tokens += 1

    def grant(self, spec: LimitSpec, lkey: str, shard: int) -> Grant:
        assert spec.rate is not None
        ident = (spec.name, lkey, shard)
        with self._lock:
            grant = self._grants.get(ident)
            rate, capacity = spec.rate / spec.shards, max(1.0, spec.capacity / spec.shards)
            if grant is None or grant.rate != rate or grant.capacity != capacity:
                grant = self._grants[ident] = Grant(keys.bucket_key(spec.name, lkey, shard),
                                                    rate, capacity)
            return grant

    def _lkey(self, marker: Marker, per_key: bool) -> str:
        return marker.limit_key if per_key and marker.limit_key else keys.NO_LIMIT_KEY

    def _take_token(self, spec: LimitSpec, marker: Marker, now: float
                    ) -> tuple[Grant | None, float]:
        """One token of ``spec`` for this task, or None and when to come back (store time)."""
        lkey = self._lkey(marker, spec.per_key)
        first = zlib.crc32(self.owner.encode()) % spec.shards
        soonest = math.inf
        for shard in dict.fromkeys([first, (first + 1) % spec.shards]):  # own shard, then one more
            grant = self.grant(spec, lkey, shard)
            retry_at = self._take_from(grant, now)
            if retry_at is None:
                return grant, now
            soonest = min(soonest, retry_at)
        return None, soonest

    def _take_from(self, grant: Grant, now: float) -> float | None:
        """Take one token from ``grant``, refilling it from the bucket when it is empty or
        expired; None on success, else when the refused task is told to come back."""
        with grant.lock:
            if grant.tokens > 0 and now < grant.expires:
                grant.tokens -= 1
                return None
            if grant.tokens > 0:  # expired with tokens left: the batch was too big
                grant.stats["expired"] += grant.tokens
                grant.batch = max(1, grant.granted - grant.tokens)
                grant.tokens = 0
            elif grant.granted and now < grant.expires:  # used up within its window
                grant.batch = min(grant.max_batch, grant.batch * 2)
            grant.granted = 0  # adapted once per grant
            if now >= grant.retry_at:
                want = min(grant.batch, grant.max_batch)
                got = limits.take(self.store, grant.key, rate=grant.rate,
                                  capacity=grant.capacity, want=want, least=(want + 1) // 2,
                                  now=now)
                grant.stats["takes"] += 1
                if got.granted:
                    grant.granted, grant.tokens = got.granted, got.granted - 1
                    grant.expires = now + self.window
                    grant.stats["granted"] += got.granted
                    grant.stats["writes"] += 1
                    grant.retry_at = 0.0
                    return None
                # Jitter, so that the processes waiting for one bucket do not all read it
                # at the instant it refills (the tokens wait in the bucket meanwhile).
                grant.retry_at = got.retry_at + self._rng.uniform(0, 0.5 * want / grant.rate)
            grant.stats["refused"] += 1
            return grant.retry_at

    def stats(self) -> dict[str, int]:
        """Counters summed over every grant: takes (bucket reads), writes (grants: the
        bucket's CAS), granted and expired tokens, refused tasks."""
        total = {"takes": 0, "refused": 0, "granted": 0, "expired": 0, "writes": 0}
        with self._lock:
            grants = list(self._grants.values())
        for grant in grants:
            with grant.lock:
                for k, v in grant.stats.items():
                    total[k] += v
        return total
