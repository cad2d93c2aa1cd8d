"""A stored value together with the etag it was read or written at.

Every read-modify-write in qo (a task record, a lease, a schedule) keeps the
parsed value beside the etag of the version it came from: that etag is the
``If-Match`` token of the compare-and-swap that changes it. ``parse`` is the
one way a GET becomes such a pair; ``leases.HeldLease`` adds the key and
what a lease holder does with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from qo.models import loads
from qo.store.base import StoredObject

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass
class Versioned(Generic[T]):
    """A value and the etag of the stored version it is (the CAS token)."""

    value: T
    etag: str


def parse(model: type[M], obj: StoredObject, what: str) -> Versioned[M]:
    """The stored object parsed as ``model`` (``CorruptRecord`` if it cannot be), with its etag."""
    return Versioned(loads(model, obj.body, what), obj.etag)
