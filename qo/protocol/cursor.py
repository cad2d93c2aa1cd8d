"""A small JSON object that a resumable sweep step keeps its position in."""

from __future__ import annotations

from typing import Any

import orjson

from qo.errors import PreconditionFailed
from qo.store.base import Store


def read(store: Store, key: str) -> tuple[dict[str, Any], str | None]:
    """The cursor and its etag; an unreadable or missing cursor reads as ``{}`` (1 GET)."""
    obj = store.get(key)
    if obj is None:
        return {}, None
    try:
        data = orjson.loads(obj.body)
    except orjson.JSONDecodeError:
        data = None
    return (data if isinstance(data, dict) else {}), obj.etag


def write(store: Store, key: str, value: dict[str, Any], etag: str | None) -> None:
    """Move the cursor by CAS (1 PUT); losing to another sweeper is fine: its cursor is as good."""
    body = orjson.dumps(value)
    try:
        if etag is None:
            store.put(key, body, if_none_match=True)
        else:
            store.put(key, body, if_match=etag)
    except PreconditionFailed:
        pass
