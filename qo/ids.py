"""Task identifiers.

Fresh ids sort newest first (inverted milliseconds, then randomness), so a
LIST of ``tasks/`` pages from the most recent task backwards. Idempotent ids
are derived from the idempotency key, so the create-only PUT of the record is
itself the duplicate check.
"""

from __future__ import annotations

import hashlib
import secrets
import time

_MS_SPAN = 1 << 48  # milliseconds until the year 10889


def new_task_id(now: float | None = None) -> str:
    ms = int((time.time() if now is None else now) * 1000)
    return f"{_MS_SPAN - 1 - ms:012x}{secrets.token_hex(5)}"


def idempotent_task_id(scope: str, key: str) -> str:
    digest = hashlib.sha256(f"{scope}\x00{key}".encode()).hexdigest()
    return "k" + digest[:23]


def new_token() -> str:
    return secrets.token_hex(8)
