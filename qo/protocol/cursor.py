"""A small JSON object that a resumable sweep step keeps its position in.

The body is the step's own fields plus ``v`` (the cursor's schema version,
``VERSION``) and ``rev`` (a fresh token, so that no two writes carry the same
bytes and ``cas.put_checked`` can recognise its own landed write). Readers
ignore keys they do not know, so older qo reads these bodies as before.

A cursor is only a position: one that cannot be read, or that a newer qo
wrote (``v`` above ``VERSION``), reads as ``{}``, a fresh start, which every
step copes with (it repeats work, never skips it).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from qo.errors import PreconditionFailed
from qo.ids import new_token
from qo.protocol.cas import put_checked
from qo.store.base import Store

log = logging.getLogger("qo.protocol.cursor")

#: The cursor schema version this qo writes, and the highest it reads.
VERSION = 1
#: Keys of the body that belong to the cursor itself, not to its step.
_OWN = ("v", "rev")


def read(store: Store, key: str) -> tuple[dict[str, Any], str | None]:
    """The cursor and its etag; an unreadable, newer or missing cursor reads as ``{}`` (1 GET)."""
    obj = store.get(key)
    if obj is None:
        return {}, None
    try:
        data = orjson.loads(obj.body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return {}, obj.etag
    version = data.get("v", 1)
    if type(version) is not int:
        return {}, obj.etag
    if version > VERSION:
        log.warning("cursor %s has schema version %r, newer than this qo reads (%d): "
                    "starting over", key, version, VERSION)
        return {}, obj.etag
    return {k: v for k, v in data.items() if k not in _OWN}, obj.etag


def write(store: Store, key: str, value: dict[str, Any], etag: str | None) -> None:
    """Move the cursor by CAS (1 PUT); losing to another sweeper is fine: its cursor is as good."""
    body = orjson.dumps({**value, "v": VERSION, "rev": new_token()})
    try:
        if etag is None:
            put_checked(store, key, body, if_none_match=True)
        else:
            put_checked(store, key, body, if_match=etag)
    except PreconditionFailed:
        pass
