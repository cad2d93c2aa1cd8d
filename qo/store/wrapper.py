"""A store that passes every call to another one: the base of store wrappers.

Subclasses override only what they change (a delete mode, injected
misbehaviour for tests); anything else, including backend-specific
attributes such as ``counts`` or ``client``, reaches the wrapped store.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from qo.store.base import LIST_PAGE_SIZE, ObjectInfo, Store, StoredObject


class Delegating:
    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url

    def __getattr__(self, name: str) -> Any:  # counts, clock, client, create_bucket...
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def get(self, key: str) -> StoredObject | None:
        return self.inner.get(key)

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(key)

    def put(self, key: str, body: bytes, *, if_match: str | None = None,
            if_none_match: bool = False) -> str:
        return self.inner.put(key, body, if_match=if_match, if_none_match=if_none_match)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        self.inner.delete(key, if_match=if_match)

    def list(self, prefix: str, *, start_after: str | None = None, limit: int | None = None,
             page_size: int = LIST_PAGE_SIZE) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix, start_after=start_after, limit=limit,
                               page_size=page_size)

    def now(self) -> float:
        return self.inner.now()

    def close(self) -> None:
        self.inner.close()
