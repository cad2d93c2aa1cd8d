"""A store wrapper that tells an observer about every request: its kind, outcome and time.

``Observed(store, observer)`` passes every call through and then calls
``observer(operation, outcome, seconds)`` once per request: ``operation`` is
``get``, ``head``, ``put``, ``delete`` or ``list`` (one per page of a
listing, as the store fetches them), ``outcome`` one of ``OUTCOMES``. It
adds no request and changes no answer; an observer that raises is ignored.
Worker metrics (``qo.metrics``) are its observer.

What it sees are the store's calls: retries made inside the S3 client (its
``standard`` retry mode) are part of one call, so a 503 that a retry got
past counts as ``ok``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from qo.errors import PreconditionFailed, StoreUnavailable
from qo.store.base import LIST_PAGE_SIZE, ObjectInfo, Store, StoredObject
from qo.store.wrapper import Delegating

T = TypeVar("T")
Observer = Callable[[str, str, float], None]

OK = "ok"
MISSING = "missing"  # a GET or HEAD of a key that does not exist (404)
PRECONDITION_FAILED = "precondition_failed"  # a conditional write or delete lost (412, 409)
UNAVAILABLE = "unavailable"  # 5xx, throttling, timeouts, network errors
ERROR = "error"  # anything else the store refused (403, 400...)
OUTCOMES = (OK, MISSING, PRECONDITION_FAILED, UNAVAILABLE, ERROR)


def outcome_of(exc: BaseException) -> str:
    if isinstance(exc, PreconditionFailed):
        return PRECONDITION_FAILED
    if isinstance(exc, StoreUnavailable):
        return UNAVAILABLE
    return ERROR


class Observed(Delegating):
    def __init__(self, inner: Store, observer: Observer) -> None:
        super().__init__(inner)
        self.observer = observer

    def capability_source(self) -> Store:
        """Observing changes nothing: the capabilities are those of the wrapped store."""
        return self.inner

    def _tell(self, operation: str, outcome: str, started: float) -> None:
        try:
            self.observer(operation, outcome, time.perf_counter() - started)
        except Exception:  # noqa: BLE001, S110 - an observer never changes an answer
            pass

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:
            self._tell(operation, outcome_of(exc), started)
            raise
        self._tell(operation, MISSING if result is None and operation in ("get", "head") else OK,
                   started)
        return result

    def get(self, key: str) -> StoredObject | None:
        return self._call("get", lambda: self.inner.get(key))

    def head(self, key: str) -> ObjectInfo | None:
        return self._call("head", lambda: self.inner.head(key))

    def put(self, key: str, body: bytes, *, if_match: str | None = None,
            if_none_match: bool = False) -> str:
        return self._call("put", lambda: self.inner.put(
            key, body, if_match=if_match, if_none_match=if_none_match))

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        self._call("delete", lambda: self.inner.delete(key, if_match=if_match))

    def list(self, prefix: str, *, start_after: str | None = None, limit: int | None = None,
             page_size: int = LIST_PAGE_SIZE) -> Iterator[ObjectInfo]:
        """The wrapped listing, lazily; one ``list`` per page of up to ``page_size`` keys
        (the first when the first key is asked for, the next when the key after a full
        page is), and one for a listing with no key."""
        started = time.perf_counter()
        try:
            items = self.inner.list(prefix, start_after=start_after, limit=limit,
                                    page_size=page_size)
        except Exception as exc:
            self._tell("list", outcome_of(exc), started)
            raise
        return self._pages(items, page_size, started)

    def _pages(self, items: Iterator[ObjectInfo], page_size: int, started: float
               ) -> Iterator[ObjectInfo]:
        n = 0
        while True:
            try:
                info = next(items)
            except StopIteration:
                if n == 0:
                    self._tell("list", OK, started)
                return
            except Exception as exc:
                self._tell("list", outcome_of(exc), started)
                raise
            if n % page_size == 0:
                self._tell("list", OK, started)
            n += 1
            yield info
            started = time.perf_counter()
