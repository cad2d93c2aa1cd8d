"""Queue URLs: one string names a queue's store everywhere.

``s3://bucket/prefix``, ``file:///path/to/dir`` and ``memory://name``. With no
URL, ``QO_QUEUE`` is used, then the embedded default: a local directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from qo.errors import LONGEST_RUN, ConfigError, InvalidName, shorten
from qo.store.base import Store, check_key

ENV_VAR = "QO_QUEUE"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def default_url() -> str:
    """The embedded default store, so qo works with no AWS account at all."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return "file://" + str(Path(data_home) / "qo")


def resolve_url(url: str | None = None) -> str:
    return url or os.environ.get(ENV_VAR) or default_url()


def _absolute_dir(url: str, path: str) -> Path:
    """The directory of a ``file://`` URL, which must be absolute (``~`` counts).

    ``file://relative/dir`` is refused rather than resolved: the same URL
    would name another directory for a worker started elsewhere (a service
    manager, a cron job), and the two would silently never meet.
    """
    where = Path(path).expanduser()
    if not where.is_absolute():
        fixed = "file://" + str(Path.cwd() / where)
        shown = repr(fixed) if len(fixed) <= LONGEST_RUN else shorten(fixed)  # whole to copy
        raise ConfigError(
            f"invalid queue URL {shorten(url)}: a file:// path must be absolute "
            f"(three slashes), e.g. {shown} for that path from here"
        )
    return where


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
            f"invalid queue URL {shorten(url)}: expected s3://bucket/prefix, "
            "file:///path or memory://name"
        )
    scheme = scheme.lower()
    if scheme == "memory":
        from qo.store.memory import MemoryStore

        if rest and not re.fullmatch(r"[A-Za-z0-9_.-]+", rest):
            raise ConfigError(f"invalid memory queue name in {shorten(url)}")
        return MemoryStore.named(rest)
    if scheme == "file":
        if not rest:
            raise ConfigError(f"invalid queue URL {shorten(url)}: file:// needs a directory path")
        from qo.store.local import LocalStore

        return LocalStore(_absolute_dir(url, rest))
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ConfigError(f"invalid S3 bucket name {shorten(bucket)} in queue URL {shorten(url)}")
        prefix = prefix.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except InvalidName as exc:
                raise ConfigError(f"invalid prefix in queue URL {shorten(url)}: {exc}") from None
        from qo.store.s3 import S3Store

        return S3Store(bucket, prefix)
    raise ConfigError(f"unsupported queue URL scheme {shorten(scheme)} in {shorten(url)} (use s3, file or memory)")
