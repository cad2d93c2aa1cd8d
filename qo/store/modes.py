"""The mode for stores without conditional DELETE (``?delete=unconditional``).

Stock LocalStack, and S3-compatible services that lag AWS, answer 501 to a
DELETE carrying ``If-Match``. ``UnconditionalDeletes`` wraps such a store and
gives ``delete(key, if_match=etag)`` a weaker but safe meaning: HEAD the key,
refuse with ``PreconditionFailed`` if it holds another version, else DELETE it
without a condition. The residual race: a write landing between the HEAD and
the DELETE is deleted too. docs/protocol.md ("Stores without conditional
DELETE") says, for each key qo deletes conditionally, why that is harmless or
what it can cost. Leases never take this path: ``HeldLease.release`` first
overwrites a lease with an ``If-Match`` PUT that marks it released, then
deletes it unconditionally (see qo/protocol/leases.py).

Cost: one extra HEAD per conditional delete; unconditional deletes and every
other request pass through unchanged.
"""

from __future__ import annotations

from typing import Literal

from qo.errors import PreconditionFailed
from qo.store.base import Store
from qo.store.wrapper import Delegating

DeleteMode = Literal["auto", "conditional", "unconditional"]
DELETE_MODES: tuple[DeleteMode, ...] = ("auto", "conditional", "unconditional")
UNCONDITIONAL_QUERY = "delete=unconditional"


def delete_mode(store: Store) -> DeleteMode:
    """How ``store`` deletes with ``If-Match``: ``auto`` unless it says otherwise."""
    mode = getattr(store, "delete_mode", "auto")
    return mode if mode in DELETE_MODES else "auto"


def releases_by_tombstone(store: Store) -> bool:
    """True when leases must be released by the released-lease tombstone."""
    return delete_mode(store) == "unconditional"


class UnconditionalDeletes(Delegating):
    """Wraps a store whose DELETE cannot carry ``If-Match``; see the module docstring."""

    delete_mode: DeleteMode = "unconditional"

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        base, _, query = inner.url.partition("?")
        extra = [q for q in query.split("&") if q and not q.startswith("delete=")]
        self.url = base + "?" + "&".join([*extra, UNCONDITIONAL_QUERY])

    def __repr__(self) -> str:
        return f"UnconditionalDeletes({self.inner!r})"

    def capability_source(self) -> Store:
        """What the capability check probes: the wrapped store itself."""
        return self.inner

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """HEAD, compare, then DELETE without a condition (1 HEAD + 1 DELETE)."""
        if if_match is None:
            self.inner.delete(key)
            return
        info = self.inner.head(key)
        if info is None:
            return  # missing: a no-op, as for any conditional delete
        if info.etag != if_match:
            raise PreconditionFailed(f"conditional delete of {key!r} lost")
        self.inner.delete(key)
