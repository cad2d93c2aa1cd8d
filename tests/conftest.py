"""Fixtures: one `store` fixture parametrized over every backend.

Backends: memory, local directory, moto in-process (``mock_aws``) and a moto
server on 127.0.0.1 started once per session. moto's in-process conditional
writes are not atomic under threads, so the in-process fixture serializes
calls at the store boundary (``SerializedStore``); the server fixture proves
the real S3 code path under concurrency, serialized only inside the server
around the call into moto.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pytest

from qo.store.base import Store
from qo.store.memory import MemoryStore

BACKENDS = ["memory", "local", "moto", "moto_server"]
_bucket_ids = itertools.count()


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials so no test can ever reach a real AWS account."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("QO_QUEUE", raising=False)


class SerializedStore:
    """Holds one lock around every call; makes in-process moto linearizable."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with self._lock:
                result = attr(*args, **kwargs)
                return list(result) if name == "list" else result

        return call

    def list(self, *args, **kwargs):
        with self._lock:
            return iter(list(self.inner.list(*args, **kwargs)))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[object]:
    from qo.testing.s3server import S3TestServer

    server = S3TestServer().start()
    try:
        yield server
    finally:
        server.stop()


def new_bucket_name() -> str:
    return f"qo-test-{next(_bucket_ids)}"


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path) -> Store:
    if kind == "memory":
        return MemoryStore()
    if kind == "local":
        from qo.store.local import LocalStore

        return LocalStore(tmp_path / "store")
    from qo.store.s3 import S3Store

    if kind == "moto":
        from moto import mock_aws

        mock = mock_aws()
        mock.start()
        request.addfinalizer(mock.stop)
        store = S3Store(new_bucket_name(), "pfx")
        store.create_bucket()
        return SerializedStore(store)  # type: ignore[return-value]
    if kind == "moto_server":
        server = request.getfixturevalue("s3_server")
        store = S3Store(new_bucket_name(), "pfx", endpoint_url=server.endpoint_url)
        store.create_bucket()
        request.addfinalizer(store.close)
        return store
    raise ValueError(kind)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path) -> Store:
    return make_store(request.param, request, tmp_path)
