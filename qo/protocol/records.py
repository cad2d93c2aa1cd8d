"""Reading and writing task records and their large payloads."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import orjson

from qo.errors import ErrorKind, QoError
from qo.ids import new_token
from qo.models import CorruptRecord, TaskRecord, dumps
from qo.protocol import keys
from qo.protocol.cas import get_retrying, put_checked
from qo.protocol.versioned import Versioned, parse
from qo.settings import Settings
from qo.store.base import Store


class PayloadTooLarge(QoError):
    kind = ErrorKind.TOO_LARGE


class InvalidPayload(QoError):
    kind = ErrorKind.INVALID


def read(store: Store, task_id: str) -> Versioned[TaskRecord] | None:
    """The record stored at ``tasks/{task_id}.json``, or None (1 GET).

    A record whose ``id`` is not the one its key names (an object copied over
    another task's key) is corrupt: trusting it would let the holder of one
    task's lease change another task.
    """
    obj = get_retrying(store, keys.task_key(task_id))
    if obj is None:
        return None
    current = parse(TaskRecord, obj, f"task record {task_id}")
    if current.value.id != task_id:
        raise CorruptRecord(f"task record {task_id} holds the record of task {current.value.id!r}")
    return current


def body(record: TaskRecord) -> bytes:
    """The bytes of one write of ``record``: a fresh ``rev`` makes them unique."""
    return dumps(record.model_copy(update={"rev": new_token()}))


def create(store: Store, record: TaskRecord, encoded: bytes | None = None) -> str:
    """Create-only PUT of the record; ``encoded``: its ``body`` if already built."""
    return put_checked(store, keys.task_key(record.id), encoded or body(record),
                       if_none_match=True)


def replace(store: Store, record: TaskRecord, etag: str) -> str:
    """The compare-and-swap every transition of a record goes through."""
    return put_checked(store, keys.task_key(record.id), body(record), if_match=etag)


def encode_json(value: Any, what: str) -> bytes:
    """Canonical JSON (sorted keys); a non-JSON value is a clear error.

    orjson also encodes datetimes, UUIDs and dataclasses (as JSON values), but
    it silently turns NaN and infinities into null: those are refused here.
    """
    try:
        encoded = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise InvalidPayload(f"{what} is not JSON-serializable: {exc}") from None
    if b"null" in encoded and _has_non_finite(value):
        raise InvalidPayload(f"{what} contains NaN or Infinity, which JSON cannot represent")
    return encoded


def _has_non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def input_hash(task_type: str, encoded_input: bytes) -> str:
    return hashlib.sha256(task_type.encode() + b"\x00" + encoded_input).hexdigest()[:32]


def check_size(encoded: bytes, what: str, settings: Settings) -> None:
    if len(encoded) > settings.max_payload:
        raise PayloadTooLarge(
            f"{what} is {len(encoded):,} bytes, over the limit of {settings.max_payload:,} bytes"
        )


def offload(
    store: Store, key: str, encoded: bytes, value: Any, settings: Settings
) -> tuple[Any, str | None]:
    """Keep small values inline; store large ones at ``key`` and return a reference."""
    if len(encoded) <= settings.inline_limit:
        return value, None
    store.put(key, encoded)
    return None, key


def load_input(store: Store, record: TaskRecord) -> Any:
    return _load_ref(store, record.input_ref, record.input, "input", record.id)


def load_result(store: Store, record: TaskRecord) -> Any:
    return _load_ref(store, record.result_ref, record.result, "result", record.id)


def _load_ref(store: Store, ref: str | None, inline: Any, what: str, task_id: str) -> Any:
    if ref is None:
        return inline
    obj = get_retrying(store, ref)
    if obj is None:
        raise CorruptRecord(f"{what} payload of task {task_id} is missing ({ref})")
    try:
        return orjson.loads(obj.body)
    except orjson.JSONDecodeError as exc:
        raise CorruptRecord(f"{what} payload of task {task_id} is not valid JSON: {exc}") from None
