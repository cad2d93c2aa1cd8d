"""Backpressure: a queue's settings (``max_depth``, priority ``aging``) and the depth check.

Settings. One object per queue that has any, ``types/!queues/{queue}/settings.json``
(``QueueSettings``), written by ``qo queue set``. It lives under ``types/``
on purpose: every submitter lists ``types/`` once per TTL for the registry
(qo/protocol/registry.py), and that same LIST shows which queues have
settings and their etags, so a queue without settings costs a submit nothing
and one with settings 1 GET per process per change. **Linearization point** of
a change: its conditional PUT (create-only, or ``If-Match`` the etag read);
a 412 reads again and retries (``SET_TRIES``). Submitters see it within the
registry TTL.

Depth. ``DepthGauge.admit`` refuses a submit of ``n`` tasks to a queue with
``max_depth`` when the ready markers it counts plus ``n`` exceed it
(``QueueFull``). Counting is 1 LIST of ``ready/{queue}/`` per 1,000 markers,
stopped after ``max_depth`` + 1 keys, and a count is trusted for ``ttl``
seconds (``Settings.depth_ttl``) with this process's own submits added, so a
busy submitter pays ⌈(max_depth + 1) / 1000⌉ LISTs per ``ttl`` at most, and a
full queue refuses for ``ttl`` without any request. How exact the bound is:
docs/protocol.md section 12.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qo.errors import ErrorKind, PreconditionFailed, QoError, StoreError
from qo.ids import new_token
from qo.models import dumps, loads
from qo.names import check_name
from qo.protocol import keys
from qo.protocol.cas import delete_quietly, get_retrying, put_checked
from qo.store.base import Store

#: The largest ``max_depth`` (a count of 100 LISTs at most).
MAX_DEPTH = 100_000
#: The largest ``aging``: a day of waiting per priority level.
MAX_AGING = 86_400
SET_TRIES = 5


class QueueFull(QoError):
    """The queue holds ``max_depth`` ready tasks: nothing was written; try again later."""

    kind = ErrorKind.FULL

    def __init__(self, message: str, *, queue: str, max_depth: int, retry_after: float) -> None:
        super().__init__(message)
        self.queue = queue
        self.max_depth = max_depth
        self.retry_after = retry_after  # seconds after which a new count is taken


class QueueSettings(BaseModel):
    """Body of ``types/!queues/{queue}/settings.json``."""

    model_config = ConfigDict(extra="forbid")

    v: int = 1
    queue: str
    #: Submits beyond this many ready tasks raise ``QueueFull`` (None: unbounded).
    max_depth: int | None = Field(None, ge=1, le=MAX_DEPTH)
    #: Seconds of waiting worth one priority level (None: strict priority).
    aging: int | None = Field(None, ge=1, le=MAX_AGING)
    rev: str | None = None  # a fresh token: no two writes have the same bytes

    @property
    def empty(self) -> bool:
        return self.max_depth is None and self.aging is None

    def as_dict(self) -> dict[str, int | None]:
        return {"max_depth": self.max_depth, "aging": self.aging}


def read_settings(store: Store, queue: str) -> tuple[QueueSettings | None, str | None]:
    """A queue's settings and their etag (1 GET); (None, None) when it has none."""
    key = keys.queue_settings_key(check_name(queue, "queue name"))
    obj = get_retrying(store, key)
    if obj is None:
        return None, None
    return loads(QueueSettings, obj.body, f"settings of queue {queue!r}"), obj.etag


UNSET = object()


def set_settings(store: Store, queue: str, *, max_depth: int | None | object = UNSET,
                 aging: int | None | object = UNSET) -> QueueSettings | None:
    """Change the given settings of ``queue`` (None clears one); returns what is stored.

    Read, then one conditional PUT (or DELETE once nothing is set); a lost race
    reads again. Cost: 1 GET + 1 PUT.
    """
    check_name(queue, "queue name")
    key = keys.queue_settings_key(queue)
    for _ in range(SET_TRIES):
        current, etag = read_settings(store, queue)
        base = current or QueueSettings(queue=queue)
        update: dict[str, object] = {"rev": new_token()}
        if max_depth is not UNSET:
            update["max_depth"] = max_depth
        if aging is not UNSET:
            update["aging"] = aging
        try:
            new = QueueSettings.model_validate(base.model_dump() | update)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise QoError(f"invalid setting {where} of queue {queue!r}: {first.get('msg')}"
                          ) from None
        if new.empty:
            if etag is not None:
                delete_quietly(store, key, if_match=etag)
            return None
        try:
            put_checked(store, key, dumps(new), if_match=etag, if_none_match=etag is None)
        except PreconditionFailed:
            continue
        return new
    raise StoreError(f"the settings of queue {queue!r} kept changing; try again")


def list_settings(store: Store) -> dict[str, QueueSettings]:
    """Every queue's settings: 1 LIST of ``types/!queues/`` and 1 GET per queue that has any."""
    found: dict[str, QueueSettings] = {}
    for info in store.list(keys.QUEUE_SETTINGS):
        queue = keys.queue_of_settings_key(info.key)
        if queue is not None:
            settings, _ = read_settings(store, queue)
            if settings is not None:
                found[queue] = settings
    return found


def count_ready(store: Store, queue: str, stop_after: int) -> int:
    """Ready markers of ``queue``, counting at most ``stop_after`` (``!paused`` is none)."""
    count = 0
    for info in store.list(keys.ready_prefix(queue), limit=stop_after + 1):
        if keys.parse_ready_key(info.key) is not None:
            count += 1
            if count >= stop_after:
                break
    return count


@dataclass
class _Count:
    counted: int  # ready markers seen by the last count (at most max_depth)
    at: float  # monotonic time of that count
    added: int = 0  # tasks this process admitted since


class DepthGauge:
    """One process's view of its bounded queues' depths (thread-safe).

    ``admit`` holds a lock per queue while it counts, so concurrent submits of
    one process share one count instead of listing side by side.
    """

    def __init__(self, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._lock = threading.Lock()
        self._counts: dict[str, _Count] = {}
        self._queue_locks: dict[str, threading.Lock] = {}
        self.lists = 0  # counts taken (each ⌈(max_depth + 1) / 1000⌉ LISTs)

    def admit(self, store: Store, queue: str, n: int, max_depth: int) -> None:
        """Let ``n`` more tasks into ``queue``, or raise ``QueueFull`` (nothing counted)."""
        with self._lock:
            lock = self._queue_locks.setdefault(queue, threading.Lock())
        with lock:
            now = self.clock()
            count = self._counts.get(queue)
            fresh = count is not None and now - count.at < self.ttl
            if count is None or not fresh or (
                    count.counted + count.added + n > max_depth and count.added > 0):
                # none, stale, or too full only because of our own submits (which
                # claims may have taken since): count again
                count = _Count(count_ready(store, queue, max_depth), now)
                self.lists += 1
                self._counts[queue] = count
            if count.counted + count.added + n > max_depth:
                depth = min(count.counted + count.added, max_depth)
                retry_after = max(0.0, count.at + self.ttl - now)
                raise QueueFull(
                    f"queue {queue!r} is full: {depth} of at most {max_depth} tasks wait"
                    + (f", {n} more would not fit" if n > 1 else "")
                    + "; try again later", queue=queue, max_depth=max_depth,
                    retry_after=retry_after or self.ttl)
            count.added += n

    def forget(self, queue: str | None = None) -> None:
        with self._lock:
            if queue is None:
                self._counts.clear()
            else:
                self._counts.pop(queue, None)


__all__ = ["DepthGauge", "QueueFull", "QueueSettings", "list_settings", "read_settings",
           "set_settings"]
