"""A worker process's side of the limits (docs/protocol.md §11): the gate and the
admission check.

The claimer asks the *gate* before it takes a task's lease: ``check`` (no
request, no side effect) tells whether a task of this type and key could be
admitted now, so that tasks of a limit that is spent are passed over for free
and other types and keys keep flowing; ``enter``, asked of the one task the
claimer is about to lease, sets a token aside for it (asking the bucket if
this process holds none: 1 GET + 1 PUT per grant) and lets it try a
concurrency limit's slots (a limit last found full is looked at first: 1
LIST); ``leave`` undoes that if the claim came to nothing.
Under the lease, ``admit`` (a ``qo.protocol.admission.Admission``) uses the
token and takes the slots (``qo.protocol.slots``: 1 LIST + 1 PUT); without
them it refuses until the computed time, so the task stays queued and
consumes no attempt. For a task type without a limit every call returns at
once (no request). Grants and what the process knows of concurrency limits
are in ``qo.grants``.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import zlib
from collections.abc import Callable, Mapping

from qo.errors import QoError, RateLimited
from qo.grants import RECHECK, WINDOW, Grant, Room
from qo.hooks import Event, Hooks, Kind
from qo.protocol import keys, limits, slots
from qo.protocol.admission import Refusal
from qo.protocol.keys import Marker
from qo.protocol.leases import HeldLease
from qo.protocol.limits import LimitSpec
from qo.store.base import Store

log = logging.getLogger("qo.limiter")

#: The events that end an attempt (the slots it held go back).
OVER = (Kind.SUCCEEDED, Kind.RETRYING, Kind.DEAD, Kind.FENCED, Kind.RELEASED, Kind.CANCELLED)
#: How often a busy limiter reads the bucket's limit settings again (``qo limit set``).
REFRESH = 60.0


class Limiter:
    """The limits one worker process applies; thread-safe. See the module docstring.

    ``specs``: the limits the app declares (``App.limits``); the bucket's
    ``limits/{name}.json`` override their numbers and may add task types, and
    limits that exist only in the bucket apply to the types they name
    (read at the first ``enter`` or ``admit`` and every ``REFRESH`` seconds after).
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
        self._rooms: dict[tuple[str, str], Room] = {}
        self._by_type: dict[str, list[LimitSpec]] = {}
        self._etags: dict[str, str] = {}
        self._bucket_specs: dict[str, LimitSpec] = {}
        self._read_at: float | None = None  # store time of the last read of limits/
        #: Tasks the gate let through, not yet admitted: the tokens and rooms, by limit.
        self._entered: dict[str, tuple[dict[str, Grant], dict[str, Room]]] = {}
        #: Admitted tasks of limited types: their marker, slots and rooms, until their end.
        self._running: dict[str, tuple[Marker, list[slots.HeldSlot], list[Room]]] = {}
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

    def _refresh_if_due(self, now: float) -> None:
        """Read ``limits/`` again if it is time: one caller per period does."""
        if not self.read_bucket:
            return
        with self._lock:
            if self._read_at is not None and now - self._read_at < REFRESH:
                return
            self._read_at = now
        self.refresh(now)

    def applies(self, task_type: str) -> list[LimitSpec]:
        with self._lock:
            return self._by_type.get(task_type, [])

    # -- the gate: before the lease ----------------------------------------------------

    def check(self, marker: Marker, now: float) -> float | None:
        """Could a task of ``marker``'s type and key be admitted now? None, or the store
        time before which it would not be. No request, no side effect."""
        latest: float | None = None
        for spec in self.applies(marker.task_type):
            for at in self._open_at(spec, marker, now):
                if at is not None and (latest is None or at > latest):
                    latest = at
        return latest

    def _open_at(self, spec: LimitSpec, marker: Marker, now: float) -> list[float | None]:
        out: list[float | None] = []
        if spec.rate is not None:
            lkey = self._lkey(marker, spec.per_key)
            ats = [self.grant(spec, lkey, shard).open_at(now) for shard in self._shards(spec)]
            out.append(None if None in ats else min(a for a in ats if a is not None))
        if spec.concurrency is not None:
            out.append(self.room(spec, marker).open_at(now))
        return out

    def enter(self, marker: Marker, now: float) -> float | None:
        """Let the task the claimer is about to lease through: a token of each rate
        limit set aside for it, each concurrency limit's room entered. None, or when to
        look again (store time): then nothing is held. See the module docstring."""
        self._refresh_if_due(now)
        specs = self.applies(marker.task_type)
        if not specs:
            return None
        promised: dict[str, Grant] = {}
        rooms: dict[str, Room] = {}
        for spec in specs:
            at: float | None = None
            if spec.rate is not None:
                grant, at = self._promise(spec, marker, now)
                if grant is not None:
                    promised[spec.name] = grant
            if at is None and spec.concurrency is not None:
                room = self.room(spec, marker)
                at = room.enter(now)
                if at is None and room.full_until is not None:  # probing a full limit:
                    lkey = self._lkey(marker, spec.concurrency_per_key)  # look, no lease
                    if slots.looks_full(self.store, spec.name, lkey, spec.concurrency, now):
                        room.tried(now, got=False)
                        at = room.full_until
                if at is None:
                    rooms[spec.name] = room
            if at is not None:
                self._undo(promised, rooms)
                return at
        with self._lock:
            if len(self._entered) > 10_000:  # entries whose claim never came back: their
                self._entered.clear()  # promises lapse with their grants anyway
            self._entered[marker.task_id] = (promised, rooms)
        return None

    def leave(self, marker: Marker) -> None:
        """The claim of a task ``enter`` let through, or ``admit`` admitted, came to
        nothing (its lease was lost, its record was stale): give back what it held.
        Free of requests, but for its slots' DELETEs (free)."""
        with self._lock:
            entered = self._entered.pop(marker.task_id, None)
            running = self._running.pop(marker.task_id, None)
        if entered is not None:
            self._undo(*entered)
        if running is not None:
            self._end(running)

    def _undo(self, promised: dict[str, Grant], rooms: dict[str, Room]) -> None:
        for grant in promised.values():
            grant.unpromise()
        for room in rooms.values():
            room.left()

    def _promise(self, spec: LimitSpec, marker: Marker, now: float
                 ) -> tuple[Grant | None, float | None]:
        """A token of ``spec`` set aside: from the shard this process uses first, else one
        more (``Grant.promise``); else None and when to look again."""
        lkey = self._lkey(marker, spec.per_key)
        soonest = math.inf
        for shard in self._shards(spec):
            grant = self.grant(spec, lkey, shard)
            at = grant.promise(self.store, now, self._rng, self.window)
            if at is None:
                return grant, None
            soonest = min(soonest, at)
        return None, soonest

    # -- the admission check: under the lease ------------------------------------------

    def admit(self, marker: Marker, held: HeldLease, now: float) -> Refusal | None:
        """The ``Admission`` (see the module docstring); no request for unlimited types."""
        self._refresh_if_due(now)
        specs = self.applies(marker.task_type)
        if not specs:
            return None
        with self._lock:
            promised, rooms = self._entered.pop(marker.task_id, ({}, {}))
        used: list[Grant] = []
        held_slots: list[slots.HeldSlot] = []
        got_rooms: list[Room] = []
        refusal: Refusal | None = None
        for spec in specs:
            if spec.rate is not None:
                grant = promised.pop(spec.name, None)
                if grant is None or not grant.use(promised=True):
                    grant, at = self._promise(spec, marker, now)  # not let through by the gate
                    if grant is None or not grant.use(promised=True):
                        refusal = Refusal(at or now + RECHECK, f"rate limit {spec.name!r}")
                        break
                used.append(grant)
            if spec.concurrency is not None:
                room = rooms.pop(spec.name, None) or self.room(spec, marker)
                lkey = self._lkey(marker, spec.concurrency_per_key)
                slot = slots.acquire(self.store, spec.name, lkey, spec.concurrency, held=held,
                                     now=now, rng=self._rng)
                room.tried(now, got=slot is not None, last=slot is not None and slot.last)
                if slot is None:
                    refusal = Refusal(now + RECHECK, f"concurrency limit {spec.name!r}")
                    break
                held_slots.append(slot)
                got_rooms.append(room)
        self._undo(promised, rooms)  # what the gate set aside for limits not reached
        if refusal is not None:
            for grant in used:
                grant.give_back()
            self._end((marker, held_slots, got_rooms))
            return refusal
        with self._lock:
            if len(self._running) > 10_000:  # claims that ended without an event: their
                self._running.clear()  # slots are stale anyway (qo.protocol.slots), and
                for room in self._rooms.values():  # what the rooms count of them goes
                    room.mine = 0
            self._running[marker.task_id] = (marker, held_slots, got_rooms)
        return None

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
        self._end(running)
        if event.kind is Kind.RETRYING and event.detail.get("error") == RateLimited.__name__:
            self.block(running[0], float(event.detail.get("retry_in") or 0.0))

    def _end(self, running: tuple[Marker, list[slots.HeldSlot], list[Room]]) -> None:
        _marker, held_slots, rooms = running
        for slot in held_slots:
            slots.release(self.store, slot)
        for room in rooms:
            room.freed()

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
                grant.drop(until)
                try:
                    limits.block(self.store, grant.key, until=until, capacity=grant.capacity,
                                 now=now)
                except QoError as exc:
                    log.warning("blocking %s after RateLimited failed: %s", grant.key, exc)

    # -- the process's grants and rooms ---------------------------------------------------

    def grant(self, spec: LimitSpec, lkey: str, shard: int) -> Grant:
        assert spec.rate is not None
        ident = (spec.name, lkey, shard)
        with self._lock:
            grant = self._grants.get(ident)
            rate, capacity = spec.rate / spec.shards, max(1.0, spec.capacity / spec.shards)
            if grant is None or grant.rate != rate or grant.capacity != capacity:
                if len(self._grants) > 10_000:
                    self._grants.clear()
                grant = self._grants[ident] = Grant(keys.bucket_key(spec.name, lkey, shard),
                                                    rate, capacity)
            return grant

    def room(self, spec: LimitSpec, marker: Marker) -> Room:
        assert spec.concurrency is not None
        ident = (spec.name, self._lkey(marker, spec.concurrency_per_key))
        with self._lock:
            room = self._rooms.get(ident)
            if room is None or room.limit != spec.concurrency:
                if len(self._rooms) > 10_000:
                    self._rooms.clear()
                room = self._rooms[ident] = Room(spec.concurrency)
            return room

    def _shards(self, spec: LimitSpec) -> list[int]:
        """The shards this process takes from: its own, then one more."""
        first = zlib.crc32(self.owner.encode()) % spec.shards
        return list(dict.fromkeys([first, (first + 1) % spec.shards]))

    def _lkey(self, marker: Marker, per_key: bool) -> str:
        return marker.limit_key if per_key and marker.limit_key else keys.NO_LIMIT_KEY

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
