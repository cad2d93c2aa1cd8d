"""Task identity: an idempotency key derived from the input (``@app.task(identity=...)``).

Beside an explicit ``key=``, a task type may say how its tasks are
identified, so that submitting the same work twice gives one task (within
the type's uniqueness window, the key's ``retention``):

* ``"input"``: the hash of the whole input;
* a list of field names: the hash of those fields of an object input (a
  missing field counts as ``null``);
* a callable ``fn(input) -> str``: the key itself (in-process only: the
  registry publishes the first two forms, not a callable).

The default stays a random id. The key is ``id:`` + sha256 of the canonical
JSON (sorted keys) of what is hashed, in the type's key scope, so the task id
is derived from it like any idempotent id (section 4, Submit).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from qo.errors import ErrorKind, QoError

#: What ``identity=`` may be.
Identity = str | Sequence[str] | Callable[[Any], str]
WHOLE_INPUT = "input"


class InvalidIdentity(QoError):
    """A task's identity cannot be derived from its input (wrong form, or not JSON)."""

    kind = ErrorKind.INVALID


def check(identity: Any) -> None:
    """Refuse an identity spec that is none of the three forms (at registration)."""
    if identity is None or callable(identity) or identity == WHOLE_INPUT:
        return
    if (isinstance(identity, (list, tuple)) and identity
            and all(isinstance(f, str) and f for f in identity)):
        return
    raise InvalidIdentity(f"invalid identity {identity!r}: \"input\", a list of field names, "
                          "or a function of the input")


def derive_key(identity: Identity, payload: Any, task_type: str) -> str:
    """The idempotency key of a task with this input."""
    if callable(identity):
        key = identity(payload)
        if not isinstance(key, str) or not key:
            raise InvalidIdentity(f"the identity function of task type {task_type!r} returned "
                                  f"{type(key).__name__}, not a non-empty string")
        return key
    if identity == WHOLE_INPUT:
        hashed = payload
    else:
        if not isinstance(payload, dict):
            raise InvalidIdentity(f"task type {task_type!r} is identified by the fields "
                                  f"{list(identity)}; its input must be a JSON object")
        hashed = {name: payload.get(name) for name in identity}
    try:
        canonical = orjson.dumps(hashed, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise InvalidIdentity(f"the identity of a task of type {task_type!r} cannot be "
                              f"derived: {exc}") from None
    return "id:" + hashlib.sha256(canonical).hexdigest()


def published(identity: Identity | None) -> str | list[str] | None:
    """The form the registry can carry (None for a callable: in-process only)."""
    if identity is None or callable(identity):
        return None
    return WHOLE_INPUT if identity == WHOLE_INPUT else list(identity)
