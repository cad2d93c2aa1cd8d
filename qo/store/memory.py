"""An in-process store with S3 semantics, used by tests to count requests."""

from __future__ import annotations

import threading
import time
import uuid
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterator

from qo.errors import PreconditionFailed
from qo.store.base import LIST_PAGE_SIZE, ObjectInfo, StoredObject, check_key, check_prefix
from qo.store.metrics import RequestCounter

_SHARED: dict[str, MemoryStore] = {}
_SHARED_LOCK = threading.Lock()


class MemoryStore:
    """Thread-safe and linearizable: every request holds one lock.

    ``counts`` records requests by kind (``PUT``, ``GET``, ``HEAD``, ``LIST``,
    ``DELETE``) and failed preconditions (``PUT_412``, ``DELETE_412``). One
    LIST request is counted per page, as S3 would bill it. ``latency`` is
    slept outside the lock, so concurrent callers overlap as on a network.
    """

    #: Implements the whole store contract itself: the capability check trusts it.
    CONFORMING = True

    def __init__(
        self,
        *,
        name: str = "",
        clock: Callable[[], float] = time.time,
        latency: float = 0.0,
    ) -> None:
        self.url = f"memory://{name}"
        self.counts = RequestCounter()
        self.clock = clock
        self.latency = latency
        self._lock = threading.Lock()
        self._objects: dict[str, StoredObject] = {}
        self._keys: list[str] = []  # code point order == UTF-8 byte order == S3's

    @classmethod
    def named(cls, name: str) -> MemoryStore:
        """One shared instance per name, so ``memory://x`` URLs meet in-process."""
        with _SHARED_LOCK:
            if name not in _SHARED:
                _SHARED[name] = cls(name=name)
            return _SHARED[name]

    def _request(self, kind: str) -> None:
        self.counts.add(kind)
        if self.latency:
            time.sleep(self.latency)

    def get(self, key: str) -> StoredObject | None:
        check_key(key)
        self._request("GET")
        with self._lock:
            return self._objects.get(key)

    def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        self._request("HEAD")
        with self._lock:
            obj = self._objects.get(key)
            return obj.info if obj else None

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        check_key(key)
        body = bytes(body)
        self._request("PUT")
        with self._lock:
            current = self._objects.get(key)
            if (if_none_match and current is not None) or (
                if_match is not None and (current is None or current.etag != if_match)
            ):
                self.counts.add("PUT_412")
                raise PreconditionFailed.first_try(f"conditional put on {key!r} lost")
            etag = f'"{uuid.uuid4().hex}"'
            self._objects[key] = StoredObject(key, body, etag, self.clock())
            if current is None:
                insort(self._keys, key)
            return etag

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        check_key(key)
        self._request("DELETE")
        with self._lock:
            current = self._objects.get(key)
            if current is None:
                return
            if if_match is not None and current.etag != if_match:
                self.counts.add("DELETE_412")
                raise PreconditionFailed(f"conditional delete of {key!r} lost")
            del self._objects[key]
            del self._keys[bisect_left(self._keys, key)]

    def list(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        limit: int | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        page_size = max(1, min(page_size, LIST_PAGE_SIZE))
        remaining = limit
        after = start_after if start_after is not None and start_after >= prefix else None
        while remaining is None or remaining > 0:
            want = page_size if remaining is None else min(page_size, remaining)
            self._request("LIST")
            with self._lock:
                if after is None:
                    i = bisect_left(self._keys, prefix)
                else:
                    i = bisect_right(self._keys, after)
                page = []
                for key in self._keys[i : i + want + 1]:
                    if not key.startswith(prefix):
                        break
                    page.append(self._objects[key].info)
            truncated = len(page) > want
            page = page[:want]
            yield from page
            if remaining is not None:
                remaining -= len(page)
            if not truncated or not page:
                return
            after = page[-1].key

    def now(self) -> float:
        return self.clock()

    def close(self) -> None:
        pass

