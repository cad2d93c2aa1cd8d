"""A store in a local directory (``file:///path``), with S3 semantics.

Each object is one file holding a header line and the body::

    qo1 "<etag>" <last_modified>\\n<body>

so a reader always gets a body and ETag from the same version: writers replace
whole files with ``os.replace``, which is atomic, and readers take no lock.
Conditional writes run under ``flock`` on one of 64 striped lock files in
``<root>/.qo-locks/``, which makes compare-and-swap atomic across threads and
processes alike.

Key → path: every key segment is percent-encoded (only ``[A-Za-z0-9._-]`` is
kept, and a leading ``.`` is escaped, so encoded names never start with ``.``:
those are ours, for temp and lock files). Directories get a suffix the encoding
always escapes, so key ``a`` (file ``a``) and key ``a/b`` (file ``a~/b``)
coexist. A segment too long for one file name is split into chunks stored as
nested ``<chunk>+`` directories; decoding concatenates them.
"""

from __future__ import annotations

import builtins
import fcntl
import os
import re
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

from qo.errors import ConfigError, InvalidName, PreconditionFailed, StoreError
from qo.store.base import LIST_PAGE_SIZE, ObjectInfo, StoredObject, check_key, check_prefix

_MAGIC = b"qo1 "
_HEADER_MAX = 128  # the header is ~60 bytes; HEAD and LIST read no more than this
_DIR = "~"  # suffix of the directory holding keys under a complete segment
_MORE = "+"  # suffix of the directory holding the rest of an over-long segment
_CHUNK = 200  # max encoded chars per file name: below NAME_MAX (255) with room to spare
_STRIPES = 64
_LOCK_DIR = ".qo-locks"
_TOKEN = re.compile(r"%[0-9A-F]{2}|[^%]")


def _encode_segment(segment: str) -> list[str]:
    """File names for one key segment: usually one, more if it would exceed _CHUNK.

    ``quote`` keeps ``[A-Za-z0-9._~-]``; ``~`` is escaped too because it is a
    directory suffix (as is ``+``, which ``quote`` always escapes).
    """
    encoded = quote(segment, safe="").replace("~", "%7E")
    if len(encoded) <= _CHUNK and not encoded.startswith("."):
        return [encoded]
    names, name = [], ""
    for token in _TOKEN.findall(encoded):  # never split an escape across names
        if len(name) + len(token) > _CHUNK:
            names.append(name)
            name = ""
        name += "%2E" if token == "." and not name else token
    names.append(name)
    return names


def _names(key: str, *, directory: bool = False) -> list[str]:
    """The path components of ``key`` below the root (of its directory if asked)."""
    segments = key.split("/")
    out: list[str] = []
    for i, segment in enumerate(segments):
        chunks = _encode_segment(segment)
        out += [chunk + _MORE for chunk in chunks[:-1]]
        last_is_dir = directory or i < len(segments) - 1
        out.append(chunks[-1] + _DIR if last_is_dir else chunks[-1])
    return out


def _fsync_dir(path: str) -> None:
    """Make a rename, unlink or mkdir inside ``path`` survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_header(data: bytes, path: str) -> tuple[str, float, int]:
    """(etag, last_modified, header length) from the start of an object file."""
    end = data.find(b"\n", 0, _HEADER_MAX)
    try:
        if not data.startswith(_MAGIC) or end < 0:
            raise ValueError
        etag, stamp = data[len(_MAGIC) : end].decode("ascii").split(" ")
        return etag, float(stamp), end + 1
    except ValueError:
        raise StoreError(f"{path} is not a qo object file (corrupt or foreign)") from None


class LocalStore:
    """Linearizable per key across threads and processes sharing one directory.

    Holds no open files between calls, so it is safe to share between threads
    and to use after ``fork``. Empty directories are never removed: removing
    them would race with a concurrent put creating a file inside.
    """

    #: Implements the whole store contract itself: the capability check trusts it.
    CONFORMING = True

    def __init__(self, root: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        path = Path(os.path.abspath(os.fspath(root)))
        self.url = f"file://{path}"
        self.clock = clock
        self._root = str(path)
        self._locks = os.path.join(self._root, _LOCK_DIR)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(f"queue directory {path} is not a directory") from None
        except OSError as exc:
            raise ConfigError(f"cannot create queue directory {path}: {exc.strerror}") from None
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise ConfigError(f"queue directory {path} is not writable")
        try:
            os.makedirs(self._locks, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {self._locks}: {exc.strerror}") from None

    # -- paths, locks, files ------------------------------------------------

    def _path(self, key: str) -> str:
        return os.path.join(self._root, *_names(key))

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        """Exclusive lock on the key's stripe.

        Each call opens its own descriptor: ``flock`` locks belong to an open
        file description, so a shared one would not exclude other threads.
        """
        stripe = zlib.crc32(key.encode()) % _STRIPES
        lock_path = os.path.join(self._locks, f"{stripe:02d}")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self, path: str, *, whole: bool) -> tuple[bytes, int] | None:
        """The file's first bytes (or all of it) and its size; None if missing."""
        try:
            with open(path, "rb") as f:
                data = f.read() if whole else f.read(_HEADER_MAX)
                return data, os.fstat(f.fileno()).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _info(self, key: str, path: str) -> ObjectInfo | None:
        found = self._read(path, whole=False)
        if found is None:
            return None
        data, size = found
        etag, stamp, header = _parse_header(data, path)
        return ObjectInfo(key, etag, size - header, stamp)

    def _makedirs(self, names: list[str]) -> None:
        """Create the parent directories of an object, durably."""
        path = self._root
        for name in names:
            child = os.path.join(path, name)
            try:
                os.mkdir(child)
            except FileExistsError:
                pass  # possibly made by a racing writer that has not fsynced yet
            _fsync_dir(path)
            path = child

    def _write(self, names: list[str], path: str, data: bytes) -> None:
        """Temp file, fsync, rename over the final name, fsync the directory."""
        parent = os.path.dirname(path)
        tmp = os.path.join(parent, f".qo-tmp-{uuid.uuid4().hex}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileNotFoundError:
            self._makedirs(names[:-1])
            fd = os.open(tmp, flags, 0o644)
        try:
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(parent)

    # -- the Store contract -------------------------------------------------

    def get(self, key: str) -> StoredObject | None:
        check_key(key)
        path = self._path(key)
        found = self._read(path, whole=True)
        if found is None:
            return None
        data, _ = found
        etag, stamp, header = _parse_header(data, path)
        return StoredObject(key, data[header:], etag, stamp)

    def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        return self._info(key, self._path(key))

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        check_key(key)
        body = bytes(body)
        names = _names(key)
        path = os.path.join(self._root, *names)
        with self._locked(key):
            current = self._info(key, path)
            if (if_none_match and current is not None) or (
                if_match is not None and (current is None or current.etag != if_match)
            ):
                raise PreconditionFailed.first_try(f"conditional put on {key!r} lost")
            etag = f'"{uuid.uuid4().hex}"'
            header = b"%s%s %r\n" % (_MAGIC, etag.encode(), float(self.clock()))
            self._write(names, path, header + body)
            return etag

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        check_key(key)
        path = self._path(key)
        with self._locked(key):
            current = self._info(key, path)
            if current is None:
                return
            if if_match is not None and current.etag != if_match:
                raise PreconditionFailed(f"conditional delete of {key!r} lost")
            os.unlink(path)
            _fsync_dir(os.path.dirname(path))

    def list(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        limit: int | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> Iterator[ObjectInfo]:
        """Keys under ``prefix`` in byte order (``page_size`` is moot locally).

        Walks only the directory of the prefix's complete segments, pruning
        subtrees that cannot match, then sorts: directory order is not key
        order (``a/b`` sorts after ``a-c``). Headers are read lazily, so a
        small ``limit`` reads few files.
        """
        check_prefix(prefix)
        base = prefix[: prefix.rfind("/") + 1]  # complete segments, with their "/"
        start = os.path.join(self._root, *_names(base[:-1], directory=True)) if base else self._root
        found: list[tuple[bytes, str]] = []
        self._scan(start, base.encode(), prefix.encode(), found)
        found.sort()
        after = start_after.encode() if start_after is not None else None
        remaining = limit
        for raw, path in found:
            if remaining is not None and remaining <= 0:
                return
            if after is not None and raw <= after:
                continue
            key = self._key_at(raw, path)
            info = self._info(key, path) if key is not None else None
            if info is None:  # foreign file, or deleted since the walk
                continue
            yield info
            if remaining is not None:
                remaining -= 1

    def _scan(self, dirpath: str, key: bytes, prefix: bytes, out: builtins.list[tuple[bytes, str]]) -> None:
        """Collect (key bytes, path) of the files below ``dirpath`` whose key has ``prefix``."""
        try:
            entries = list(os.scandir(dirpath))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            name = entry.name
            if name.startswith("."):  # temp and lock files
                continue
            if name[-1] in (_DIR, _MORE):
                sub = key + unquote_to_bytes(name[:-1]) + (b"/" if name[-1] == _DIR else b"")
                if (sub.startswith(prefix) or prefix.startswith(sub)) and entry.is_dir(
                    follow_symlinks=False
                ):
                    self._scan(entry.path, sub, prefix, out)
            else:
                full = key + unquote_to_bytes(name)
                if full.startswith(prefix) and entry.is_file(follow_symlinks=False):
                    out.append((full, entry.path))

    def _key_at(self, raw: bytes, path: str) -> str | None:
        """The key stored at ``path``, or None if the file is not one we wrote."""
        try:
            key = check_key(raw.decode("utf-8"))
        except (UnicodeDecodeError, InvalidName):
            return None
        return key if self._path(key) == path else None

    def now(self) -> float:
        return self.clock()

    def close(self) -> None:
        pass
