"""Misbehaving stores for tests, each like a real S3-compatible service.

Each wraps any Store and breaks exactly one thing; none is trusted by the
capability check (they do not declare ``CONFORMING``), so they are probed:

- ``RefusesConditionalDelete``: DELETE with ``If-Match`` answers 501
  (stock LocalStack); qo selects the unconditional mode.
- ``IgnoresConditions``: ``If-None-Match`` and ``If-Match`` are ignored
  (s3rver); qo refuses it at start.
- ``RepeatsPage``: pagination hands out the same page again (LocalStack
  across some keys); listing raises ``ListingStalled``.
- ``DeniesDeletes``: every DELETE answers 403 (a policy without
  ``s3:DeleteObject``); refused at start, loud at run time (``active`` may
  be switched on after the check, to model a policy changed later).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from qo.errors import AccessDenied, NotSupported
from qo.store.base import LIST_PAGE_SIZE, ObjectInfo, Page, Store, paginate
from qo.store.wrapper import Delegating

_Wrapper = Delegating


class RefusesConditionalDelete(_Wrapper):
    """DELETE with ``If-Match`` answers 501 NotImplemented, like stock LocalStack."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.refused = 0

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        if if_match is not None:
            self.refused += 1
            raise NotSupported(f"{self.url} does not support this request (delete {key!r}): "
                               "NotImplemented: A header you provided implies functionality "
                               "that is not implemented (HTTP 501)")
        self.inner.delete(key)


class IgnoresConditions(_Wrapper):
    """Every precondition is ignored, like s3rver: writes always win."""

    def put(self, key: str, body: bytes, *, if_match: str | None = None,
            if_none_match: bool = False) -> str:
        return self.inner.put(key, body)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        self.inner.delete(key)


class RepeatsPage(_Wrapper):
    """Paginates the inner store, but page ``page`` (1-based) is handed out twice.

    The repeated page comes with a fresh continuation token, so only the
    progress of the keys shows the fault.
    """

    def __init__(self, inner: Store, page: int = 2) -> None:
        super().__init__(inner)
        self.page = page
        self.requests = 0

    def list(self, prefix: str, *, start_after: str | None = None, limit: int | None = None,
             page_size: int = LIST_PAGE_SIZE) -> Iterator[ObjectInfo]:
        pages: list[list[ObjectInfo]] = []

        def fetch(token: str | None, max_keys: int) -> Page:
            self.requests += 1
            if len(pages) + 1 == self.page and pages:  # the bug: the previous page again
                after = pages[-2][-1].key if len(pages) >= 2 else start_after
            else:
                after = pages[-1][-1].key if pages else start_after
            items = list(self.inner.list(prefix, start_after=after, limit=max_keys + 1))
            more = len(items) > max_keys
            pages.append(items[:max_keys])
            return pages[-1], (f"token-{len(pages)}" if more else None)

        return paginate(fetch, where=f"listing {prefix!r} in {self.url}",
                        start_after=start_after, limit=limit, page_size=max(1, page_size))


class DeniesDeletes(_Wrapper):
    """Every DELETE answers 403 AccessDenied while ``active`` (default: always)."""

    def __init__(self, inner: Store, active: bool = True) -> None:
        super().__init__(inner)
        self.active = active
        self.denied = 0
        self._lock = threading.Lock()

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        if self.active:
            with self._lock:
                self.denied += 1
            raise AccessDenied(f"access denied to {self.url} (delete {key!r}): AccessDenied: "
                               "not authorized to perform s3:DeleteObject")
        self.inner.delete(key, if_match=if_match)
