"""The storage contract every backend implements, and nothing more.

Everything above this module is pure logic over keys, bodies and ETags. The
contract is deliberately S3's own: create-only and compare-and-swap puts,
conditional deletes, lexicographic listing and the store's clock. See
docs/protocol.md ("Store contract") for the exact semantics.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from qo.errors import InvalidName, ListingStalled

#: S3 lists at most this many keys per LIST request.
LIST_PAGE_SIZE = 1000

#: S3's own limit on key length, in UTF-8 bytes.
MAX_KEY_BYTES = 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a LIST or HEAD tells about an object, without its body."""

    key: str
    etag: str
    size: int
    last_modified: float  # seconds since the epoch, store clock


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object read with GET: body plus the version it was read at."""

    key: str
    body: bytes
    etag: str
    last_modified: float

    @property
    def info(self) -> ObjectInfo:
        return ObjectInfo(self.key, self.etag, len(self.body), self.last_modified)


@runtime_checkable
class Store(Protocol):
    """A flat key space with conditional writes (S3 semantics).

    - ``put`` with ``if_none_match=True`` creates only; with ``if_match`` it
      replaces only that version. Either precondition failing raises
      ``PreconditionFailed`` (also when ``if_match`` names a missing key).
    - ``delete`` of a missing key is a no-op, conditional or not; with
      ``if_match`` it raises ``PreconditionFailed`` if the key holds another
      version.
    - ``list`` yields keys under ``prefix`` in byte order, strictly after
      ``start_after``, at most ``limit`` of them, fetching pages lazily
      (one LIST request per page of up to 1,000 keys).
    - ``now`` is the store's clock in epoch seconds; leases and schedules use
      it so that a skewed worker clock cannot fire early or expire a lease.
    """

    url: str

    def get(self, key: str) -> StoredObject | None: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str: ...

    def delete(self, key: str, *, if_match: str | None = None) -> None: ...

    def list(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        limit: int | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> Iterator[ObjectInfo]: ...

    def now(self) -> float: ...

    def close(self) -> None: ...


def check_key(key: str) -> str:
    """Refuse keys that could escape a prefix or confuse a file system.

    Applied by every backend so that a bad key fails the same way everywhere:
    no empty, ``.`` or ``..`` segment, no leading ``/``, no control
    characters, at most 1,024 UTF-8 bytes.
    """
    if not isinstance(key, str) or not key:
        raise InvalidName("store key must be a non-empty string")
    if _CONTROL.search(key):
        raise InvalidName(f"store key {key!r} contains a control character")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidName(f"store key is longer than {MAX_KEY_BYTES} bytes")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(f"store key {key!r} is not valid UTF-8") from None
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidName(f"store key {key!r} has an empty, '.' or '..' segment")
    return key


def check_prefix(prefix: str) -> str:
    """A list prefix is a key, possibly ending with ``/``, or empty."""
    if prefix == "":
        return prefix
    check_key(prefix[:-1] if prefix.endswith("/") and len(prefix) > 1 else prefix)
    return prefix


#: One page of a listing: the keys, and the token of the next page (None: last).
Page = tuple[list[ObjectInfo], str | None]

#: A truncated page may be empty (some stores do that); this many in a row is a stall.
MAX_EMPTY_PAGES = 8


def paginate(
    fetch: Callable[[str | None, int], Page],
    *,
    where: str,
    start_after: str | None = None,
    limit: int | None = None,
    page_size: int = LIST_PAGE_SIZE,
) -> Iterator[ObjectInfo]:
    """Yield the keys of a paginated listing, lazily, refusing a stalled one.

    ``fetch(token, max_keys)`` makes one request: the first page has token
    ``None``. Every key must sort strictly after the one before it (and after
    ``start_after``); a page that does not advance, a repeated continuation
    token or ``MAX_EMPTY_PAGES`` empty truncated pages in a row raise
    ``ListingStalled`` naming ``where``, instead of looping forever or
    skipping keys. Costs nothing beyond the requests it makes.
    """
    last = start_after
    remaining = limit
    token: str | None = None
    seen_tokens: set[str] = set()
    page_no = empty = 0
    while remaining is None or remaining > 0:
        page_no += 1
        items, token = fetch(token, page_size if remaining is None else min(page_size, remaining))
        for info in items:
            if last is not None and info.key.encode() <= last.encode():
                raise ListingStalled(
                    f"{where}: page {page_no} returned {info.key!r}, which does not sort after "
                    f"{last!r}: the store's pagination is broken (stopped instead of looping)"
                )
            last = info.key
            yield info
        if remaining is not None:
            remaining -= len(items)
        if token is None:
            return
        empty = 0 if items else empty + 1
        if token in seen_tokens or empty >= MAX_EMPTY_PAGES:
            raise ListingStalled(
                f"{where}: page {page_no} repeated a continuation token or returned no key "
                f"{empty} times in a row: the store's pagination is broken"
            )
        seen_tokens.add(token)
