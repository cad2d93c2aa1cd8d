"""Index markers: empty objects whose keys make LIST return work in order.

Markers are hints; the record decides. Writing one is create-only and
idempotent, deleting one is free on S3. Every fact a claimer needs before
touching the record is in the key; the body is only a fresh token that is
never read, so that two writes of one marker key never have the same bytes
and ``cas.put_checked`` can tell its own landed write from someone else's.
"""

from __future__ import annotations

import logging

import orjson

from qo.ids import new_token
from qo.models import WAITING, Status, TaskRecord
from qo.protocol import keys
from qo.protocol.cas import delete_quietly, put_if_absent
from qo.protocol.keys import Marker
from qo.store.base import Store

log = logging.getLogger("qo.protocol.index")


def marker_body() -> bytes:
    """A unique body for a marker write (see the module docstring)."""
    return new_token().encode()


def marker_of(record: TaskRecord) -> Marker:
    return Marker(record.queue, record.priority, record.available_at, record.id, record.type,
                  record.version, tuple(record.labels), record.aging or 0)


def index_key(record: TaskRecord, now: float) -> str | None:
    """The one index key a record in this state should have, if any."""
    if record.status in WAITING:
        m = marker_of(record)
        return m.ready_key if record.available_at <= now else m.delayed_key
    if record.status == Status.DEAD:
        return keys.dead_key(record.queue, record.id)
    return None


def ensure_indexed(store: Store, record: TaskRecord, now: float) -> str | None:
    """Write the marker this record needs; used by every repair path."""
    key = index_key(record, now)
    if key is not None:
        put_if_absent(store, key, marker_body())
    return key


def quarantine(store: Store, queue: str, task_id: str, reason: str, **detail: str) -> None:
    """Park an unreadable task where ``qo doctor`` reports it; the record stays as it is."""
    log.error("quarantined task %s: %s", task_id, reason,
              extra={"event": "task_quarantined", "task_id": task_id})
    body = orjson.dumps({"task_id": task_id, "reason": reason, "at": store.now(), **detail})
    put_if_absent(store, keys.quarantine_key(queue, task_id), body)


def drop_markers(store: Store, record: TaskRecord) -> None:
    """Delete the ready and delayed markers derived from the record (free on S3)."""
    m = marker_of(record)
    delete_quietly(store, m.ready_key)
    delete_quietly(store, m.delayed_key)
