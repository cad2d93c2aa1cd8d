"""Where a benchmark runs, and how its requests are counted.

- ``moto``: ``python -m qo.testing.s3server`` in a separate process, with
  latency added per request by the server. Requests are counted on the wire
  by the server (retries, 412s and 404s included), read over its
  ``/_qo/counts`` endpoint. Every run starts from an empty bucket.
- ``memory``: one ``MemoryStore`` shared by threads of this process.
- ``local``: a ``LocalStore`` in a fresh temporary directory per run; works
  across processes.
- ``s3``: a real bucket, ``QO_BENCH_S3=s3://bucket/prefix``; each run uses a
  fresh sub-prefix and deletes its objects afterwards.

The last three are counted on the client side by ``CountingStore``, which
sees what qo asks for but not botocore's retries. ``BackendSpec`` is plain
data so that worker processes can open their own stores from it.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from qo.errors import PreconditionFailed
from qo.store.base import LIST_PAGE_SIZE, ObjectInfo, Store, StoredObject
from qo.store.metrics import RequestCounter

BUCKET = "qo-bench"
_FAILED = re.compile(r"^(PUT|DELETE)_(412|409|404)$")


def family(key: str) -> str:
    """The first segment of a key or prefix: ``tasks``, ``ready``, ``leases``..."""
    return key.split("/", 1)[0]


class CountingStore:
    """Counts requests by kind and by ``"KIND family"``, as the test server does.

    Failed preconditions count once more as ``PUT_412`` / ``DELETE_412``; a
    GET or HEAD of a missing key as ``GET_404`` / ``HEAD_404``. A LIST counts
    one request per page of up to 1,000 keys, when that page is fetched.
    """

    def __init__(
        self, inner: Store, counts: RequestCounter | None = None,
        by_family: RequestCounter | None = None,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.counts = counts if counts is not None else RequestCounter()
        self.by_family = by_family if by_family is not None else RequestCounter()

    def capability_source(self) -> Store:
        """Counting changes nothing qo.store.capabilities checks: check the inner store."""
        return self.inner

    def _add(self, kind: str, key: str) -> None:
        self.counts.add(kind)
        self.by_family.add(f"{kind} {family(key)}")

    def get(self, key: str) -> StoredObject | None:
        self._add("GET", key)
        obj = self.inner.get(key)
        if obj is None:
            self._add("GET_404", key)
        return obj

    def head(self, key: str) -> ObjectInfo | None:
        self._add("HEAD", key)
        info = self.inner.head(key)
        if info is None:
            self._add("HEAD_404", key)
        return info

    def put(
        self, key: str, body: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        self._add("PUT", key)
        try:
            return self.inner.put(key, body, if_match=if_match, if_none_match=if_none_match)
        except PreconditionFailed:
            self._add("PUT_412", key)
            raise

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        self._add("DELETE", key)
        try:
            self.inner.delete(key, if_match=if_match)
        except PreconditionFailed:
            self._add("DELETE_412", key)
            raise

    def list(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> Iterator[ObjectInfo]:
        page_size = max(1, min(page_size, LIST_PAGE_SIZE))

        def pages() -> Iterator[ObjectInfo]:
            self._add("LIST", prefix)
            for n, info in enumerate(
                self.inner.list(prefix, start_after=start_after, limit=limit,
                                page_size=page_size)
            ):
                if n and n % page_size == 0:
                    self._add("LIST", prefix)
                yield info

        return pages()

    def now(self) -> float:
        return self.inner.now()

    def close(self) -> None:
        self.inner.close()


@dataclass
class BackendSpec:
    """Plain data a worker process needs to open its own store."""

    kind: str  # moto | memory | local | s3
    endpoint: str = ""  # moto
    bucket: str = ""  # moto, s3
    prefix: str = ""  # s3 (per run), local (the directory)
    latency: float = 0.0  # memory: added by the store itself

    @property
    def counted_on_wire(self) -> bool:
        return self.kind == "moto"


def moto_client(endpoint: str) -> Any:
    """A boto3 client for the bench server: dummy credentials, path style."""
    import boto3
    from botocore.config import Config

    from qo.testing.s3server import DUMMY_CREDENTIALS

    session = boto3.session.Session(
        aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=DUMMY_CREDENTIALS["AWS_DEFAULT_REGION"],
    )
    config = Config(
        s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=64, connect_timeout=5, read_timeout=30,
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


_MEMORY: dict[str, Any] = {}  # one MemoryStore per run id, shared by this process's threads


def open_raw_store(spec: BackendSpec) -> Store:
    """A new store (with its own HTTP client where there is one), uncounted."""
    if spec.kind == "moto":
        from qo.store.s3 import S3Store

        return S3Store(spec.bucket, client=moto_client(spec.endpoint))
    if spec.kind == "s3":
        from qo.store.s3 import S3Store

        return S3Store(spec.bucket, spec.prefix)
    if spec.kind == "local":
        from qo.store.local import LocalStore

        return LocalStore(spec.prefix)
    if spec.kind == "memory":
        return _MEMORY[spec.prefix]
    raise ValueError(f"unknown backend {spec.kind!r}")


@dataclass
class Counts:
    """Requests made during one phase: by kind, and by "KIND family"."""

    kinds: dict[str, int] = field(default_factory=dict)
    families: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: Counts) -> Counts:
        return Counts(_add(self.kinds, other.kinds), _add(self.families, other.families))

    def __sub__(self, other: Counts) -> Counts:
        return Counts(_sub(self.kinds, other.kinds), _sub(self.families, other.families))

    def get(self, kind: str) -> int:
        return self.kinds.get(kind, 0)

    def failed_writes(self) -> int:
        return sum(v for k, v in self.kinds.items() if _FAILED.match(k))

    def to_json(self) -> dict[str, Any]:
        return {"by_kind": dict(sorted(self.kinds.items())),
                "by_family": dict(sorted(self.families.items()))}


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return {k: v for k, v in out.items() if v}


def _sub(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return _add(a, {k: -v for k, v in b.items()})


class Backend:
    """One backend for a whole bench run: fresh state per scenario run, counts."""

    def __init__(self, kind: str, *, latency: float, s3_url: str | None = None) -> None:
        self.kind = kind
        self.latency = latency
        self.s3_url = s3_url
        self.server: MotoServer | None = None
        self.spec = BackendSpec(kind)
        self._dirs: list[str] = []
        # client-side counts of this process (the wire counts come from the server)
        self.client_counts = RequestCounter()
        self.client_families = RequestCounter()
        self._store_counter = 0

    @property
    def in_process(self) -> bool:
        """Workers must run as threads of this process (the memory store)."""
        return self.kind == "memory"

    @property
    def counting(self) -> str:
        return "server (on the wire)" if self.kind == "moto" else "client (CountingStore)"

    def start(self) -> None:
        if self.kind == "moto":
            self.server = MotoServer(latency=self.latency).start()
            self.spec = BackendSpec("moto", endpoint=self.server.endpoint, bucket=BUCKET)
        elif self.kind == "s3":
            if not self.s3_url or not self.s3_url.startswith("s3://"):
                raise SystemExit("--backend s3 needs QO_BENCH_S3=s3://bucket/prefix")
            bucket, _, prefix = self.s3_url[len("s3://"):].partition("/")
            self.spec = BackendSpec("s3", bucket=bucket, prefix=prefix.strip("/"))
            self._s3_base = prefix.strip("/")
        self.fresh()

    def fresh(self) -> BackendSpec:
        """Empty state for the next scenario run; returns the spec to open it."""
        run = uuid.uuid4().hex[:10]
        if self.kind == "moto":
            assert self.server is not None
            self.server.reset_moto()
            store = self.store(counted=False)
            store.create_bucket()  # type: ignore[attr-defined]
            store.close()
        elif self.kind == "memory":
            from qo.store.memory import MemoryStore

            _MEMORY.clear()
            _MEMORY[run] = MemoryStore(name=f"bench-{run}", latency=self.latency)
            self.spec = BackendSpec("memory", prefix=run, latency=self.latency)
        elif self.kind == "local":
            self.cleanup_dirs()
            path = tempfile.mkdtemp(prefix="qo-bench-")
            self._dirs.append(path)
            self.spec = BackendSpec("local", prefix=path)
        elif self.kind == "s3":
            self.cleanup_s3()
            sub = f"{self._s3_base}/bench-{run}" if self._s3_base else f"bench-{run}"
            self.spec = BackendSpec("s3", bucket=self.spec.bucket, prefix=sub)
        self.reset_counts()
        return self.spec

    def store(self, counted: bool = True) -> Store:
        """A store of this process; counted client-side unless the wire counts."""
        raw = open_raw_store(self.spec)
        if not counted or self.spec.counted_on_wire:
            return raw
        return CountingStore(raw, self.client_counts, self.client_families)

    def snapshot(self) -> Counts:
        if self.server is not None:
            data = self.server.counts()
            return Counts(data["counts"], data["by_family"])
        return Counts(self.client_counts.snapshot(), self.client_families.snapshot())

    def absorb(self, counts: Counts) -> None:
        """Add the client-side counts a worker process sent back."""
        if self.spec.counted_on_wire or self.in_process:
            return
        for k, v in counts.kinds.items():
            self.client_counts.add(k, v)
        for k, v in counts.families.items():
            self.client_families.add(k, v)

    def server_cpu(self) -> float | None:
        """CPU seconds used so far by the server process (Linux), if there is one."""
        return self.server.cpu_seconds() if self.server is not None else None

    def reset_counts(self) -> None:
        if self.server is not None:
            self.server.reset_counts()
        self.client_counts.reset()
        self.client_families.reset()

    def set_latency(self, seconds: float) -> None:
        """Latency for bulk population (0) and for measuring (the configured one)."""
        if self.server is not None:
            self.server.set_latency(seconds)
        elif self.kind == "memory":
            for store in _MEMORY.values():
                store.latency = seconds

    def cleanup_dirs(self) -> None:
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)
        self._dirs.clear()

    def cleanup_s3(self) -> None:
        if self.kind != "s3" or not self.spec.prefix or self.spec.prefix == self._s3_base:
            return
        store = open_raw_store(self.spec)
        try:
            for info in store.list(""):
                store.delete(info.key)  # DELETE is free
        finally:
            store.close()

    def close(self) -> None:
        self.cleanup_dirs()
        if self.kind == "s3":
            self.cleanup_s3()
        if self.server is not None:
            self.server.stop()
            self.server = None
        _MEMORY.clear()


class MotoServer:
    """``python -m qo.testing.s3server`` in a child process, on 127.0.0.1."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.endpoint = ""
        self.proc: subprocess.Popen[str] | None = None
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives with the server

    def start(self, timeout: float = 60.0) -> MotoServer:
        cmd = [sys.executable, "-m", "qo.testing.s3server", "--host", "127.0.0.1",
               "--port", "0", "--latency", str(self.latency)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while not self.endpoint:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    self.stop()
                    self._stderr.seek(0)
                    raise RuntimeError("bench S3 server did not start: "
                                       + self._stderr.read()[-2000:])
                if not sel.select(min(left, 0.5)):
                    continue
                line = self.proc.stdout.readline()
                if not line:
                    continue  # EOF: poll() above notices the exit
                if line.startswith("export AWS_ENDPOINT_URL="):
                    self.endpoint = line.strip().split("=", 1)[1]
        finally:
            sel.close()
        while True:  # the server answers its ping before printing, but be sure
            try:
                self._call("GET", "/_qo/ping")
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)
        return self

    def _call(self, method: str, path: str) -> bytes:
        req = urllib.request.Request(self.endpoint + path, method=method, data=None)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read()

    def counts(self) -> dict[str, Any]:
        return json.loads(self._call("GET", "/_qo/counts"))

    def reset_counts(self) -> None:
        self._call("POST", "/_qo/reset-counts")

    def set_latency(self, seconds: float) -> None:
        self._call("POST", f"/_qo/latency?seconds={seconds}")

    def cpu_seconds(self) -> float | None:
        if self.proc is None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def reset_moto(self) -> None:
        """Wipe every bucket (moto's own API; not counted)."""
        self._call("POST", "/moto-api/reset")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        self._stderr.close()
