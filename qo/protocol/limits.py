"""Rate limits as token buckets in the store, changed only by CAS (docs/protocol.md §11).

A limit's settings are ``limits/{name}.json`` (``LimitSpec``: written by
``qo limit set``; the code declares the same with ``@app.task(rate=...)`` and
``App.limit``). Its state is one token bucket per limit key and shard,
``buckets/{name}/{lkey}/{shard}.json`` (``Bucket``): ``tokens`` as of ``at``
(store time), refilled at ``rate / shards`` per second up to ``burst / shards``,
and ``blocked_until`` (a handler's ``RateLimited`` feedback).

``take`` is the only way tokens leave a bucket. Linearization point: its
``If-Match`` (or create-only) PUT of the bucket; tokens are admitted by that
write, whoever uses them later, so the admitted count over any run is at most
``rate * duration + burst``. A worker takes tokens in batches (``qo.limiter``)
and never returns them: what it does not use before its grant expires is lost
(under-use, never over-admission). Cost: 1 GET, + 1 PUT when tokens are granted
(a refusal writes nothing), + 1 GET per lost race (412), at most ``RACES`` races.

Clocks: ``at`` only moves forward (``max(at, now)``), so a taker whose store
clock runs behind refills nothing until it catches up; one running ahead by
``s`` seconds grants at most ``rate * s`` tokens early, once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qo.errors import ErrorKind, PreconditionFailed, QoError
from qo.ids import new_token
from qo.models import CorruptRecord, dumps, loads
from qo.names import check_name
from qo.protocol import keys
from qo.protocol.cas import Lost, delete_quietly, get_retrying, put_or_current
from qo.store.base import Store, StoredObject

#: How many lost races (412) one ``take`` tries again before it gives up for now.
RACES = 3

_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hr|hour)s?\s*")
_UNIT = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
         "h": 3600.0, "hr": 3600.0, "hour": 3600.0}
#: Rates qo accepts, per second: from one an hour... to what S3 could ever admit.
MIN_RATE, MAX_RATE = 1 / 86_400, 100_000.0


class InvalidLimit(QoError):
    """A rate, burst or limit setting that does not parse or is out of range."""

    kind = ErrorKind.INVALID


class LimitNotFound(QoError):
    """No limit of that name: no settings, buckets or slots in the bucket."""

    kind = ErrorKind.NOT_FOUND


def parse_rate(text: object) -> float:
    """``"10/s"``, ``"600/m"``, ``"1000/h"`` (also ``/sec``, ``/min``, ``/hour``, ``/5m``)
    as tasks per second; a one-line ``InvalidLimit`` for anything else."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        rate = float(text)
    else:
        match = _RATE.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise InvalidLimit(f"invalid rate {text!r}: use COUNT/UNIT, e.g. 10/s, 600/m or 1000/h")
        count, per, unit = match.groups()
        rate = float(count) / (_UNIT[unit] * (int(per) if per else 1) or 1.0)
    if not (math.isfinite(rate) and MIN_RATE <= rate <= MAX_RATE):
        raise InvalidLimit(f"invalid rate {text!r}: between 1/d and {MAX_RATE:g}/s")
    return rate


def format_rate(rate: float) -> str:
    """A rate per second as people write it (``10/s``, ``600/m``)."""
    for unit, seconds in (("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        count = rate * seconds
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}/{unit}"
    return f"{rate:g}/s"


class LimitSpec(BaseModel):
    """A limit: a rate (token bucket), a concurrency bound, or both, and what it governs.

    ``types``: the task types it applies to (a limit the code declares adds its own).
    ``per_key`` (rate) and ``concurrency_per_key``: one bucket / one set of slots per
    limit key (the hashed ``rate_key`` / ``concurrency_key`` of each task), else one
    for all. ``shards``: the bucket split over this many objects (each ``rate/shards``).
    """

    model_config = ConfigDict(extra="forbid")

    v: int = 1
    name: str
    rate: float | None = Field(None, ge=MIN_RATE, le=MAX_RATE)  # tokens per second
    burst: int | None = Field(None, ge=1, le=1_000_000)  # bucket size; default max(1, rate)
    per_key: bool = False
    concurrency: int | None = Field(None, ge=1, le=1000)
    concurrency_per_key: bool = False
    shards: int = Field(1, ge=1, le=64)
    types: list[str] = Field(default_factory=list)

    @property
    def capacity(self) -> float:
        """The bucket's size: ``burst``, or one second of the rate (at least 1)."""
        assert self.rate is not None
        return float(self.burst) if self.burst is not None else max(1.0, self.rate)

    def check(self) -> LimitSpec:
        check_name(self.name, "limit name")
        for t in self.types:
            check_name(t, "task type")
        if self.rate is None and self.concurrency is None:
            raise InvalidLimit(f"limit {self.name!r} sets neither a rate nor a concurrency")
        if self.burst is not None and self.rate is None:
            raise InvalidLimit(f"limit {self.name!r}: a burst needs a rate")
        return self


def make_spec(name: str, **fields: object) -> LimitSpec:
    """A checked ``LimitSpec``; ``rate`` may be a string (``parse_rate``). One-line errors."""
    if fields.get("rate") is not None:
        fields["rate"] = parse_rate(fields["rate"])
    try:
        spec = LimitSpec(name=name, **fields)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidLimit(f"invalid limit {name!r}: {where}: {first.get('msg')}") from None
    return spec.check()


# -- settings objects: limits/{name}.json ---------------------------------------


def write_spec(store: Store, spec: LimitSpec) -> None:
    """PUT ``limits/{name}.json`` (last writer wins: settings, not state). 1 PUT."""
    store.put(keys.limit_key(spec.check().name), dumps(spec))


def read_spec(store: Store, name: str) -> LimitSpec | None:
    """1 GET; None if the bucket has no settings for ``name``."""
    obj = get_retrying(store, keys.limit_key(check_name(name, "limit name")))
    return None if obj is None else _spec(obj)


def list_specs(store: Store) -> list[LimitSpec]:
    """Every limit's settings: 1 LIST + 1 GET each (unreadable ones are skipped)."""
    found = []
    for info in store.list(keys.LIMITS):
        if keys.limit_name_of(info.key) is None:
            continue
        obj = get_retrying(store, info.key)
        if obj is not None:
            try:
                found.append(_spec(obj))
            except CorruptRecord:
                continue
    return found


def delete_spec(store: Store, name: str) -> int:
    """Delete a limit's settings, buckets and slots (free DELETEs, 1 LIST per prefix);
    returns how many objects went."""
    name = check_name(name, "limit name")
    gone = 0
    for prefix in (f"{keys.BUCKETS}{name}/", f"{keys.SLOTS}{name}/"):
        for info in list(store.list(prefix)):
            gone += delete_quietly(store, info.key)
    if store.head(keys.limit_key(name)) is not None:
        gone += delete_quietly(store, keys.limit_key(name))
    return gone


def _spec(obj: StoredObject) -> LimitSpec:
    return loads(LimitSpec, obj.body, f"limit {obj.key}")


# -- token buckets: buckets/{name}/{lkey}/{shard}.json ------------------------------


class Bucket(BaseModel):
    """A token bucket's state: ``tokens`` as of ``at`` (store time)."""

    model_config = ConfigDict(extra="forbid")

    v: int = 1
    tokens: float
    at: float
    blocked_until: float = 0.0
    taken: int = 0  # tokens granted since the bucket was created (for qo limit show)
    #: A fresh token on every write: two takers computing the same state never write the
    #: same bytes, so ``cas.put_or_current`` cannot mistake another's write for its own.
    rev: str = ""


@dataclass(frozen=True, slots=True)
class Take:
    """What ``take`` got: ``granted`` tokens, or none and when asking again may pay off
    (``retry_at``, store time: when ``want`` tokens will have refilled, or the block ends)."""

    granted: int
    retry_at: float
    tokens_left: float = 0.0


def refill(state: Bucket, rate: float, capacity: float, now: float) -> tuple[float, float]:
    """(tokens, at) of ``state`` refilled up to ``now``; ``at`` never moves back."""
    at = max(state.at, now)
    start = max(state.at, state.blocked_until)
    tokens = min(capacity, state.tokens + rate * max(0.0, at - start))
    return tokens, at


def take(store: Store, key: str, *, rate: float, capacity: float, want: int,
         now: float, least: int = 1) -> Take:
    """Take up to ``want`` tokens, and at least ``least``, from the bucket at ``key``.

    A taker asking for a whole batch (``least == want``) leaves smaller amounts to
    accumulate in the bucket (nothing is lost below its capacity) rather than
    spending a CAS on a few tokens.

    See the module docstring for the linearization point and the cost.
    """
    obj = get_retrying(store, key)
    for _ in range(RACES):
        state = _bucket(obj, capacity, now)
        if state.blocked_until > now:
            return Take(0, state.blocked_until)
        tokens, at = refill(state, rate, capacity, now)
        granted = min(want, math.floor(tokens + 1e-9))
        least = max(1, min(least, want, math.floor(capacity)))
        if granted < least:
            need = least - tokens
            return Take(0, at + max(need, 0.0) / rate, tokens)
        new = Bucket(tokens=tokens - granted, at=at, blocked_until=state.blocked_until,
                     taken=state.taken + granted, rev=new_token())
        result = put_or_current(store, key, dumps(new), if_match=obj.etag if obj else None,
                                if_none_match=obj is None)
        if not isinstance(result, Lost):
            return Take(granted, at, new.tokens)
        obj = result.current
    return Take(0, now + 1.0 / rate)


def block(store: Store, key: str, *, until: float, capacity: float, now: float) -> bool:
    """Admit nothing from this bucket before ``until`` (a ``RateLimited`` from the remote
    API): ``blocked_until`` moves forward and the bucket empties, refilling from then.
    1 GET + 1 PUT (+ 1 GET per lost race); False if it kept losing or was blocked longer."""
    obj = get_retrying(store, key)
    for _ in range(RACES):
        state = _bucket(obj, capacity, now)
        if state.blocked_until >= until:
            return False
        new = state.model_copy(update={"tokens": 0.0, "at": max(state.at, now),
                                       "blocked_until": until, "rev": new_token()})
        try:
            result = put_or_current(store, key, dumps(new), if_match=obj.etag if obj else None,
                                    if_none_match=obj is None)
        except PreconditionFailed:
            return False
        if not isinstance(result, Lost):
            return True
        obj = result.current
    return False


def read_buckets(store: Store, name: str) -> list[tuple[str, int, Bucket]]:
    """(limit key, shard, state) of every bucket of a limit: 1 LIST + 1 GET each."""
    found = []
    for info in store.list(f"{keys.BUCKETS}{name}/"):
        parts = info.key.split("/")
        obj = get_retrying(store, info.key)
        if obj is None or len(parts) != 4 or not parts[3].removesuffix(".json").isdigit():
            continue
        try:
            found.append((parts[2], int(parts[3].removesuffix(".json")),
                          loads(Bucket, obj.body, info.key)))
        except CorruptRecord:
            continue
    return found


def _bucket(obj: StoredObject | None, capacity: float, now: float) -> Bucket:
    """The stored state; a full bucket for a missing one, an empty one for an unreadable
    one (rewritten by the next CAS: a bucket is state anyone may reset)."""
    if obj is None:
        return Bucket(tokens=capacity, at=now)
    try:
        return loads(Bucket, obj.body, f"bucket {obj.key}")
    except CorruptRecord:
        return Bucket(tokens=0.0, at=now)
