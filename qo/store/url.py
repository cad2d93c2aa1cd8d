"""Queue URLs: one string names a queue's store everywhere.

``s3://bucket/prefix``, ``file:///path/to/dir`` and ``memory://name``. With no
URL, ``QO_QUEUE`` is used, then the embedded default: a local directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from qo.errors import ConfigError, InvalidName
from qo.store.base import Store, check_key

ENV_VAR = "QO_QUEUE"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def default_url() -> str:
    """The embedded default store, so qo works with no AWS account at all."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return "file://" + str(Path(data_home) / "qo")


def resolve_url(url: str | None = None) -> str:
    return url or os.environ.get(ENV_VAR) or default_url()


def _delete_mode(url: str, query: str) -> str:
    """The ``?delete=auto|conditional|unconditional`` option (see qo/store/modes.py)."""
    mode = "auto"
    for item in query.split("&") if query else []:
        name, _, value = item.partition("=")
        if name != "delete" or value not in ("auto", "conditional", "unconditional"):
            raise ConfigError(
                f"invalid option {item!r} in queue URL {url!r}: the only option is "
                "delete=auto, delete=conditional or delete=unconditional")
        mode = value
    return mode


def open_store(url: str | None = None) -> Store:
    """Open the store a queue URL names; a bad URL is a one-line ConfigError.

    ``?delete=unconditional`` wraps the store in ``UnconditionalDeletes`` (for
    stores without conditional DELETE); ``?delete=conditional`` refuses such a
    store at the capability check instead of switching to that mode; the
    default, ``auto``, lets the check decide.
    """
    url = resolve_url(url)
    base, _, query = url.partition("?")
    mode = _delete_mode(url, query)
    store = _open(base)
    if mode == "unconditional":
        from qo.store.modes import UnconditionalDeletes

        return UnconditionalDeletes(store)
    if mode == "conditional":
        store.delete_mode = "conditional"  # type: ignore[attr-defined]
    return store


def _open(url: str) -> Store:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(
            f"invalid queue URL {url!r}: expected s3://bucket/prefix, "
            "file:///path or memory://name"
        )
    scheme = scheme.lower()
    if scheme == "memory":
        from qo.store.memory import MemoryStore

        if rest and not re.fullmatch(r"[A-Za-z0-9_.-]+", rest):
            raise ConfigError(f"invalid memory queue name in {url!r}")
        return MemoryStore.named(rest)
    if scheme == "file":
        if not rest:
            raise ConfigError(f"invalid queue URL {url!r}: file:// needs a directory path")
        from qo.store.local import LocalStore

        return LocalStore(Path(rest).expanduser())
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ConfigError(f"invalid S3 bucket name {bucket!r} in queue URL {url!r}")
        prefix = prefix.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except InvalidName as exc:
                raise ConfigError(f"invalid prefix in queue URL {url!r}: {exc}") from None
        from qo.store.s3 import S3Store

        return S3Store(bucket, prefix)
    raise ConfigError(f"unsupported queue URL scheme {scheme!r} in {url!r} (use s3, file or memory)")
