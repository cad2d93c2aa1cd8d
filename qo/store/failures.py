"""Failed deletes are loud: logged (rate-limited), counted, and reported.

A delete that keeps failing (a 403 from a policy without ``s3:DeleteObject``,
a 501, an outage that outlasts the retries) leaves a marker or a lease
behind. That is never silent: ``record`` logs a warning at most once a
minute per store and kind of key (saying how many were suppressed), counts it in this
process, and writes a small report ``meta/delete-failures/{host}-{pid}.json``
into the store (1 PUT on the first failure, then at most one a minute while
failures go on, and one at exit), so that ``qo stats`` and ``qo doctor`` in
any other process can show it. ``summary`` reads those reports: 1 LIST plus
1 GET per report; it deletes reports older than a week.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field

import orjson

from qo.errors import QoError
from qo.protocol import keys
from qo.store.base import Store

log = logging.getLogger("qo.store")

PREFIX = f"{keys.META}delete-failures/"
LOG_EVERY = 60.0  # seconds between two warnings for one kind of key
FLUSH_EVERY = 60.0  # seconds between two reports written to the store
RECENT = 86_400.0  # reports older than this are ignored by summary()
EXPIRE = 7 * 86_400.0  # reports older than this are deleted by summary() (best effort)


def _family(key: str) -> str:
    return key.split("/", 1)[0]


@dataclass
class _StoreFailures:
    counts: Counter[str] = field(default_factory=Counter)  # by key family
    last_error: str = ""
    last_key: str = ""
    flushed_at: float = 0.0
    dirty: bool = False
    logged: dict[str, tuple[float, int]] = field(default_factory=dict)  # family: (when, quiet)


class DeleteFailures:
    """Thread-safe per-process record of failed deletes, by store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_store: weakref.WeakKeyDictionary[object, _StoreFailures] = (
            weakref.WeakKeyDictionary())
        self.total = 0

    def record(self, store: Store, key: str, error: BaseException) -> None:
        """One delete of ``key`` failed for good: log, count, maybe report."""
        family = _family(key)
        message = " ".join(str(error).split())
        now = time.monotonic()
        with self._lock:
            self.total += 1
            state = self._for(store)
            state.counts[family] += 1
            state.last_error, state.last_key, state.dirty = message, key, True
            when, suppressed = state.logged.get(family, (-LOG_EVERY, 0))
            speak = now - when >= LOG_EVERY
            state.logged[family] = (now, 0) if speak else (when, suppressed + 1)
            flush = now - state.flushed_at >= FLUSH_EVERY or state.flushed_at == 0.0
        if speak:
            more = f" ({suppressed} more since the last warning)" if suppressed else ""
            log.warning("could not delete %s from %s: %s; it stays behind%s",
                        key, store.url, message, more,
                        extra={"event": "delete_failed", "key": key})
        if flush:
            self.flush(store)

    def count(self, store: Store | None = None) -> int:
        with self._lock:
            if store is None:
                return self.total
            state = self._by_store.get(store)
            return sum(state.counts.values()) if state else 0

    def flush(self, store: Store) -> None:
        """Write this process's report into ``store`` (1 PUT); never raises."""
        with self._lock:
            state = self._by_store.get(store)
            if state is None or not state.dirty:
                return
            body = orjson.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "count": sum(state.counts.values()),
                                 "by_kind": dict(state.counts), "last_key": state.last_key,
                                 "last_error": state.last_error, "at": time.time()})
            state.dirty, state.flushed_at = False, time.monotonic()
        try:
            store.put(report_key(), body)
        except QoError as exc:  # the store may refuse writes too: the log line remains
            log.debug("could not write the delete-failure report: %s", exc)

    def flush_all(self) -> None:
        with self._lock:
            stores = list(self._by_store.keys())
        for store in stores:
            self.flush(store)  # type: ignore[arg-type]

    def _for(self, store: Store) -> _StoreFailures:
        try:
            return self._by_store.setdefault(store, _StoreFailures())
        except TypeError:  # not weak-referenceable: count it under a shared entry
            return self._by_store.setdefault(_UNREFERENCEABLE, _StoreFailures())


class _Anon:
    url = "?"

    def put(self, *a: object, **k: object) -> str:
        return ""


_UNREFERENCEABLE = _Anon()
delete_failures = DeleteFailures()
atexit.register(delete_failures.flush_all)


def report_key() -> str:
    return f"{PREFIX}{socket.gethostname()}-{os.getpid()}.json"


@dataclass(frozen=True)
class Summary:
    """Delete failures reported into a store by every process, recently."""

    count: int = 0
    processes: int = 0
    last_error: str = ""
    last_key: str = ""

    def line(self) -> str:
        if not self.count:
            return ""
        return (f"{self.count} failed delete(s) reported by {self.processes} process(es) in "
                f"the last 24 h (markers or leases left behind); last: {self.last_key}: "
                f"{self.last_error}")


def summary(store: Store, now: float | None = None) -> Summary:
    """Sum the recent reports under ``meta/delete-failures/`` (1 LIST + 1 GET each).

    Reports older than ``EXPIRE`` are deleted on the way (1 DELETE each).
    """
    now = time.time() if now is None else now
    count = processes = 0
    latest: tuple[float, str, str] = (0.0, "", "")
    for info in store.list(PREFIX, limit=1000):
        obj = store.get(info.key)
        if obj is None:
            continue
        try:
            data = orjson.loads(obj.body)
            at, n = float(data["at"]), int(data["count"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if now - at > EXPIRE:
            try:  # a process long gone: its report goes (quietly: it is housekeeping)
                store.delete(info.key, if_match=obj.etag)
            except QoError:
                pass
        if now - at > RECENT or n <= 0:
            continue
        count += n
        processes += 1
        if at > latest[0]:
            latest = (at, str(data.get("last_key", "")), str(data.get("last_error", "")))
    return Summary(count, processes, latest[2], latest[1])
