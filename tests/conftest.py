"""Fixtures: one `store` fixture parametrized over every backend.

Backends: memory, local directory, moto in-process (``mock_aws``), a moto
server on 127.0.0.1 started once per session, and LocalStack's S3 (a second,
independent S3 implementation) started once per session from
``.venv-localstack`` and used in the mode it needs (``delete=unconditional``,
chosen by the capability check). That virtualenv is built by ``.ci/run``;
with ``QO_LOCALSTACK=required`` (set by ``.ci/run``) a missing one is an
error, never a silently smaller matrix. moto's in-process conditional
writes are not atomic under threads, so the in-process fixture serializes
calls at the store boundary (``SerializedStore``); the server fixture proves
the real S3 code path under concurrency, serialized only inside the server
around the call into moto.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Iterator

import pytest

from qo.store import capabilities
from qo.store.base import Store
from qo.store.memory import MemoryStore
from qo.testing import localstack

HAVE_LOCALSTACK = localstack.python() is not None
if not HAVE_LOCALSTACK and os.environ.get("QO_LOCALSTACK") == "required":
    raise RuntimeError("QO_LOCALSTACK=required but .venv-localstack is missing: "
                       "run infra/localstack/setup")
BACKENDS = ["memory", "local", "moto", "moto_server"] + (["localstack"] if HAVE_LOCALSTACK
                                                         else [])
#: Backends the fast development loop (``pytest -m "not slow"``) leaves to CI: the moto
#: server stands for S3 there, memory and the local directory for the rest.
SLOW_BACKENDS = {"localstack", "moto"}
#: Suites that keep the moto server in the fast loop. Elsewhere the queue behaviour on
#: S3 is left to the full run (it costs a few ms of CPU per request); memory and the
#: local directory still run it, and the S3 code path keeps its own fast tests.
MOTO_SERVER_FAST_SUITES = {"test_store_conformance.py"}
_bucket_ids = itertools.count()
_moto_capabilities: dict[str, capabilities.Capabilities] = {}


@pytest.fixture(autouse=True, scope="session")
def _one_botocore_loader() -> Iterator[None]:
    """Parse botocore's service models once per test session, not once per S3 client.

    ``make_client`` gives every S3Store a fresh boto3 Session, and a fresh Session
    reads and parses the S3 model files again (about 0.1 s of CPU); tests create
    hundreds of stores. Every client is still built by ``make_client`` from its own
    Session; only the read-only model data is shared, as clients of one Session share it.
    """
    import botocore.loaders
    import botocore.session

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.session, "create_loader",
                      functools.cache(botocore.loaders.create_loader))
        yield


@pytest.fixture(autouse=True, scope="session")
def _one_click_command_per_cli_app() -> Iterator[None]:
    """Build the click command of a typer app once per test session, not once per invoke.

    typer's ``CliRunner.invoke`` rebuilds the whole command tree of the app (every
    command's signature and annotations) on each call, tens of milliseconds for
    ``qo``; ``qo.cli.main`` builds it once per process too. Commands register on
    import, so a tree counted as complete is reused.
    """
    import typer.testing

    build = typer.testing._get_command
    built: dict[tuple[int, int, int], tuple[object, object]] = {}

    def get_command(app):  # type: ignore[no-untyped-def]
        key = (id(app), len(app.registered_commands), len(app.registered_groups))
        if key not in built:
            built[key] = (app, build(app))  # holds the app, so its id is never reused
        return built[key][1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(typer.testing, "_get_command", get_command)
        yield


@pytest.fixture
def no_backoff_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """No real sleep between the retries of a failed store call (``qo.protocol.cas``).

    For tests on a fake clock with nothing running concurrently, where that
    randomized backoff changes nothing but the wall time; every retry still happens.
    """
    monkeypatch.setattr("qo.protocol.cas._pause", lambda attempt: None)


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


@pytest.fixture(scope="session")
def localstack_server() -> Iterator[localstack.LocalStack]:
    server = localstack.LocalStack().start()
    try:
        yield server
    finally:
        server.stop()


def new_bucket_name() -> str:
    return f"qo-test-{next(_bucket_ids)}"


def _known_capabilities(kind: str, store: Store) -> None:
    """Probe moto once per session and kind, then tell each new store the result.

    Keeps the capability cache object out of tests that assert an empty
    store; ``tests/test_capabilities.py`` proves the probe on every backend.
    """
    if kind not in _moto_capabilities:
        _moto_capabilities[kind] = capabilities.probe(store)
    capabilities.remember(store, _moto_capabilities[kind])


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
        serialized = SerializedStore(store)
        _known_capabilities(kind, serialized)  # type: ignore[arg-type]
        return serialized  # type: ignore[return-value]
    if kind == "moto_server":
        server = request.getfixturevalue("s3_server")
        store = S3Store(new_bucket_name(), "pfx", endpoint_url=server.endpoint_url)
        store.create_bucket()
        request.addfinalizer(store.close)
        _known_capabilities(kind, store)
        return store
    if kind == "localstack":
        ls = request.getfixturevalue("localstack_server")
        store = S3Store(new_bucket_name(), "pfx", endpoint_url=ls.endpoint_url)
        store.create_bucket()
        request.addfinalizer(store.close)
        _known_capabilities(kind, store)
        return capabilities.require(store)  # the mode it needs: unconditional deletes
    raise ValueError(kind)


@pytest.fixture(params=["memory", "moto_server"])
def any_store(request: pytest.FixtureRequest, tmp_path) -> Store:
    """The memory store and a moto server: for suites that need one real S3 case."""
    return make_store(request.param, request, tmp_path)


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` the moto server cases of ``store`` outside MOTO_SERVER_FAST_SUITES."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if (callspec is not None and callspec.params.get("store") == "moto_server"
                and item.path.name not in MOTO_SERVER_FAST_SUITES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(params=[pytest.param(b, marks=pytest.mark.slow) if b in SLOW_BACKENDS else b
                        for b in BACKENDS])
def store(request: pytest.FixtureRequest, tmp_path) -> Store:
    return make_store(request.param, request, tmp_path)
