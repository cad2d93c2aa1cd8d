"""What is specific to S3Store and the moto test server.

The cross-backend contract is proven by the conformance suite; here: prefix
scoping, how S3 status codes map onto qo errors, the Date-header clock, and
the server's counting, latency and serialization. Store tests run twice:
against moto in-process (``mock_aws``) and against a live ``S3TestServer``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from botocore.stub import Stubber
from moto import mock_aws

from qo.errors import (
    AccessDenied,
    BucketNotFound,
    ConfigError,
    InvalidName,
    PreconditionFailed,
    StoreError,
    StoreUnavailable,
)
from qo.store.metrics import diff
from qo.store.s3 import S3Store, make_client
from qo.testing.s3server import DUMMY_CREDENTIALS, S3TestServer, request_kind

BUCKET = "qo-test-bucket"
ROOT = Path(__file__).resolve().parents[1]

MakeStore = Callable[..., S3Store]


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials, no endpoint override, no ~/.aws, no metadata service."""
    for var in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_REGION",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    ):
        monkeypatch.delenv(var, raising=False)
    for var, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var, name in (("AWS_CONFIG_FILE", "config"), ("AWS_SHARED_CREDENTIALS_FILE", "creds")):
        empty = tmp_path / f"aws-{name}"
        empty.write_text("")
        monkeypatch.setenv(var, str(empty))


@pytest.fixture(scope="module")
def server() -> Iterator[S3TestServer]:
    with S3TestServer() as srv:
        yield srv


@pytest.fixture
def srv(server: S3TestServer) -> Iterator[S3TestServer]:
    """The module's server, empty, with one bucket and zeroed counts."""
    server.reset()
    server.create_bucket(BUCKET)
    server.counts.reset()
    yield server
    server.latency = 0.0
    server.clock_skew = 0.0


def _closing(factory: Callable[..., S3Store]) -> Iterator[MakeStore]:
    stores: list[S3Store] = []

    def make(prefix: str = "", bucket: str = BUCKET, **kwargs: object) -> S3Store:
        store = factory(bucket, prefix, **kwargs)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture(params=["inprocess", "server"])
def make_store(request: pytest.FixtureRequest, aws_env: None) -> Iterator[MakeStore]:
    """S3Store factory on BUCKET, against moto in-process or the live server."""
    if request.param == "inprocess":
        with mock_aws():
            S3Store(BUCKET).create_bucket()
            yield from _closing(S3Store)
    else:
        server: S3TestServer = request.getfixturevalue("srv")
        yield from _closing(
            lambda bucket, prefix, **kw: S3Store(
                bucket, prefix, endpoint_url=server.endpoint_url, **kw
            )
        )


@pytest.fixture
def server_store(srv: S3TestServer) -> Iterator[S3Store]:
    store = S3Store(BUCKET, endpoint_url=srv.endpoint_url)
    yield store
    store.close()


def keys(store: S3Store, prefix: str = "", **kwargs: object) -> list[str]:
    return [info.key for info in store.list(prefix, **kwargs)]  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- prefix scoping and listing ------------------------------------------------


def test_prefixes_scope_the_key_space(make_store: MakeStore) -> None:
    q, qa, root = make_store("q"), make_store("/qa/"), make_store()
    assert (q.url, qa.url, root.url) == (f"s3://{BUCKET}/q", f"s3://{BUCKET}/qa", f"s3://{BUCKET}")
    q.put("k", b"from q")
    q.put("sub/x", b"x")
    qa.put("k", b"from qa")

    assert keys(q) == ["k", "sub/x"]
    assert keys(q, "sub/") == ["sub/x"]
    assert keys(qa) == ["k"]  # "qa/..." is not under "q/"
    assert keys(root) == ["q/k", "q/sub/x", "qa/k"]
    assert q.get("k").body == b"from q"  # type: ignore[union-attr]
    assert qa.get("sub/x") is None
    assert q.client.head_object(Bucket=BUCKET, Key="q/sub/x")["ContentLength"] == 1

    qa.delete("k")
    assert q.head("k") is not None


def test_list_pages_start_after_and_odd_keys(make_store: MakeStore) -> None:
    store = make_store("jobs")
    names = [f"k{i}" for i in range(7)] + ["odd key+%é/ü"]
    for name in names:
        store.put(name, name.encode())
    assert keys(store) == sorted(names)
    assert keys(store, page_size=2, limit=5) == names[:5]
    assert keys(store, "k", start_after="k4", page_size=2) == ["k5", "k6"]
    assert keys(store, start_after="zzz") == []
    assert keys(store, limit=0) == []
    info = next(iter(store.list("odd")))
    assert (info.key, info.size) == ("odd key+%é/ü", len("odd key+%é/ü".encode()))
    assert isinstance(info.last_modified, float)


def test_list_is_lazy_one_request_per_page(server_store: S3Store, srv: S3TestServer) -> None:
    for i in range(7):
        server_store.put(f"k{i}", b"")
    before = srv.counts.snapshot()
    pages = server_store.list("", page_size=2, limit=5)
    assert diff(srv.counts.snapshot(), before) == {}
    assert len(list(pages)) == 5
    assert diff(srv.counts.snapshot(), before) == {"LIST": 3}


# -- conditional writes ----------------------------------------------------------


def test_conditional_put(make_store: MakeStore) -> None:
    store = make_store("p")
    etag = store.put("k", b"v1", if_none_match=True)
    assert etag.startswith('"') and etag.endswith('"')
    assert store.head("k").etag == etag  # type: ignore[union-attr]
    with pytest.raises(PreconditionFailed):
        store.put("k", b"again", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"v2", if_match='"0123456789abcdef0123456789abcdef"')
    with pytest.raises(PreconditionFailed):  # moto/S3 answer 404 NoSuchKey here
        store.put("missing", b"v", if_match=etag)
    assert store.head("missing") is None

    etag2 = store.put("k", b"v2", if_match=etag)
    obj = store.get("k")
    assert obj is not None and (obj.body, obj.etag) == (b"v2", etag2)
    assert etag2 != etag


def test_conditional_delete(make_store: MakeStore) -> None:
    store = make_store("p")
    store.delete("missing")
    store.delete("missing", if_match='"0123456789abcdef0123456789abcdef"')  # 404: swallowed
    etag = store.put("k", b"v")
    with pytest.raises(PreconditionFailed):
        store.delete("k", if_match='"0123456789abcdef0123456789abcdef"')
    assert store.head("k") is not None
    store.delete("k", if_match=etag)
    assert store.get("k") is None


def test_get_and_head(make_store: MakeStore) -> None:
    store = make_store("p")
    assert store.get("nope") is None
    assert store.head("nope") is None
    etag = store.put("k", b"hello")
    info = store.head("k")
    assert info is not None
    assert (info.key, info.etag, info.size) == ("k", etag, 5)
    assert isinstance(info.last_modified, float)
    assert abs(info.last_modified - time.time()) < 60


def test_create_bucket_is_idempotent_in_any_region(make_store: MakeStore) -> None:
    for region in ("us-east-1", "eu-west-1"):
        store = make_store(bucket=f"qo-extra-{region}", region=region)
        store.create_bucket()
        store.create_bucket()
        store.put("k", b"v")
        assert keys(store) == ["k"]


def test_bad_keys_fail_before_any_request(server_store: S3Store, srv: S3TestServer) -> None:
    for call in (
        lambda: server_store.put("../x", b""),
        lambda: server_store.get("/abs"),
        lambda: server_store.head("a//b"),
        lambda: server_store.delete("a\nb"),
        lambda: server_store.list("a/../"),
        lambda: S3Store(BUCKET, "a/../b", endpoint_url=srv.endpoint_url),
    ):
        with pytest.raises(InvalidName):
            call()
    assert srv.counts.snapshot() == {}


# -- error mapping -----------------------------------------------------------------


def test_missing_bucket_is_bucket_not_found(make_store: MakeStore) -> None:
    store = make_store("p", bucket="qo-no-such-bucket")
    for call in (
        lambda: store.get("k"),
        lambda: store.put("k", b""),
        lambda: store.put("k", b"", if_match='"x"'),
        lambda: store.delete("k"),
        lambda: list(store.list("")),
    ):
        with pytest.raises(BucketNotFound, match="'qo-no-such-bucket'"):
            call()


def test_no_credentials_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3Store(BUCKET, endpoint_url=f"http://127.0.0.1:{closed_port()}", max_attempts=1)
    with pytest.raises(ConfigError, match="no AWS credentials") as err:
        store.get("k")
    assert BUCKET in str(err.value) and "\n" not in str(err.value)


def test_unreachable_endpoint_is_store_unavailable() -> None:
    store = S3Store(BUCKET, endpoint_url=f"http://127.0.0.1:{closed_port()}", max_attempts=1)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=BUCKET):
        store.put("k", b"v")
    with pytest.raises(StoreUnavailable):
        list(store.list(""))
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("code", "status", "expected", "text"),
    [
        ("SlowDown", 503, StoreUnavailable, "SlowDown"),
        ("InternalError", 500, StoreUnavailable, "InternalError"),
        ("AccessDenied", 403, AccessDenied, "AccessDenied"),
        ("InvalidAccessKeyId", 403, AccessDenied, "InvalidAccessKeyId"),
        ("ConditionalRequestConflict", 409, PreconditionFailed, "lost"),
        ("NoSuchBucket", 404, BucketNotFound, BUCKET),
        ("InvalidArgument", 400, StoreError, "InvalidArgument"),
    ],
)
def test_client_errors_map_to_qo_errors(
    code: str, status: int, expected: type[Exception], text: str
) -> None:
    """Statuses moto never produces, injected with botocore's Stubber."""
    client = make_client()
    store = S3Store(BUCKET, "p", client=client)
    with Stubber(client) as stub:
        stub.add_client_error(
            "put_object",
            service_error_code=code,
            service_message="it\nbroke",
            http_status_code=status,
        )
        with pytest.raises(expected, match=text) as err:
            store.put("k", b"v", if_none_match=True)
    assert type(err.value) is expected and "\n" not in str(err.value)


def test_endpoint_from_environment_uses_path_style(
    srv: S3TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", srv.endpoint_url)  # 127.0.0.1 only, never a name
    store = S3Store(BUCKET, "env")
    assert store.client.meta.config.s3 == {"addressing_style": "path"}
    store.put("k", b"v")
    assert srv.counts["PUT"] == 1
    store.close()


# -- the store clock -----------------------------------------------------------------


def test_now_follows_the_date_header(srv: S3TestServer) -> None:
    srv.clock_skew = 3600.0
    store = S3Store(BUCKET, endpoint_url=srv.endpoint_url)
    assert abs(store.now() - time.time() - 3600) < 2
    assert srv.counts.snapshot() == {"BUCKET_HEAD": 1}  # one probe, then free
    store.now()
    assert srv.counts.snapshot() == {"BUCKET_HEAD": 1}

    srv.clock_skew = 7200.0
    store.put("k", b"v")  # any response updates the offset
    assert abs(store.now() - time.time() - 7200) < 2
    assert srv.counts.snapshot() == {"BUCKET_HEAD": 1, "PUT": 1}

    srv.clock_skew = -7200.0  # a clock stepping back is not followed: now() is monotonic
    store.put("k", b"w")
    first = store.now()
    assert store.now() >= first >= time.time() + 7200 - 2
    store.close()


def test_now_is_monotonic_despite_one_second_date_resolution(srv: S3TestServer) -> None:
    srv.clock_skew = 0.0
    store = S3Store(BUCKET, endpoint_url=srv.endpoint_url)
    seen = []
    for i in range(30):
        store.put(f"m/{i}", b"")
        seen.append(store.now())
    assert seen == sorted(seen)
    assert abs(seen[-1] - time.time()) < 2
    store.close()


def test_now_without_date_header_is_the_local_clock() -> None:
    with mock_aws():  # in-process moto sends no Date on HeadBucket
        store = S3Store(BUCKET)
        store.create_bucket()
        assert abs(store.now() - time.time()) < 2


# -- the test server ---------------------------------------------------------------


def test_server_counts_requests_by_kind(server_store: S3Store, srv: S3TestServer) -> None:
    store = server_store

    def counted(call: Callable[[], object]) -> dict[str, int]:
        before = srv.counts.snapshot()
        try:
            call()
        except PreconditionFailed:
            pass
        return diff(srv.counts.snapshot(), before)

    etag = store.put("k", b"v")
    assert counted(lambda: store.put("k2", b"v")) == {"PUT": 1}
    assert counted(lambda: store.put("k", b"v", if_none_match=True)) == {"PUT": 1, "PUT_412": 1}
    assert counted(lambda: store.put("nope", b"v", if_match=etag)) == {"PUT": 1, "PUT_404": 1}
    assert counted(lambda: store.get("k")) == {"GET": 1}
    assert counted(lambda: store.get("nope")) == {"GET": 1, "GET_404": 1}
    assert counted(lambda: store.head("k")) == {"HEAD": 1}
    assert counted(lambda: list(store.list(""))) == {"LIST": 1}
    assert counted(lambda: store.delete("k", if_match='"x"')) == {"DELETE": 1, "DELETE_412": 1}
    assert counted(lambda: store.delete("k")) == {"DELETE": 1}
    assert counted(lambda: srv.create_bucket("qo-other")) == {"BUCKET_PUT": 1}


@pytest.mark.parametrize(
    ("method", "path", "host", "query", "kind"),
    [
        ("PUT", "/b/k", "127.0.0.1:1", "", "PUT"),
        ("POST", "/b", "127.0.0.1:1", "delete", "PUT"),
        ("GET", "/b/a/b", "localhost:1", "", "GET"),
        ("HEAD", "/b/k", "127.0.0.1:1", "", "HEAD"),
        ("DELETE", "/b/k", "127.0.0.1:1", "", "DELETE"),
        ("GET", "/b", "127.0.0.1:1", "list-type=2", "LIST"),
        ("GET", "/b/", "127.0.0.1:1", "", "LIST"),
        ("PUT", "/b", "127.0.0.1:1", "", "BUCKET_PUT"),
        ("HEAD", "/b", "127.0.0.1:1", "", "BUCKET_HEAD"),
        ("GET", "/", "b.localhost:1", "list-type=2", "LIST"),
        ("PUT", "/k", "b.localhost:1", "", "PUT"),
        ("POST", "/moto-api/reset", "127.0.0.1:1", "", None),
    ],
)
def test_request_kinds(method: str, path: str, host: str, query: str, kind: str | None) -> None:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "HTTP_HOST": host,
        "QUERY_STRING": query,
    }
    assert request_kind(environ) == kind


def test_latency_is_added_per_request(server_store: S3Store, srv: S3TestServer) -> None:
    srv.latency = 0.2
    started = time.monotonic()
    server_store.head("k")
    assert time.monotonic() - started >= 0.2


def test_reset_wipes_buckets_and_counts(server_store: S3Store, srv: S3TestServer) -> None:
    server_store.put("k", b"v")
    srv.reset()
    assert srv.counts.snapshot() == {}
    with pytest.raises(BucketNotFound):
        server_store.get("k")


@pytest.mark.slow
def test_concurrent_increments_are_exact(server_store: S3Store, srv: S3TestServer) -> None:
    """16 threads read-modify-write one key; the serialized server loses none."""
    threads, per_thread = 16, 3
    server_store.put("counter", b"0", if_none_match=True)
    deadline = time.monotonic() + 120
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(per_thread):
                while time.monotonic() < deadline:
                    obj = server_store.get("counter")
                    assert obj is not None
                    try:
                        server_store.put(
                            "counter", str(int(obj.body) + 1).encode(), if_match=obj.etag
                        )
                        break
                    except PreconditionFailed:
                        continue
                else:
                    raise TimeoutError("increment did not land before the deadline")
        except (AssertionError, TimeoutError, StoreError) as exc:  # reported below
            errors.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + 5)
    assert not errors, errors
    assert server_store.get("counter").body == str(threads * per_thread).encode()  # type: ignore[union-attr]
    counts = srv.counts
    assert counts["PUT"] - counts["PUT_412"] == 1 + threads * per_thread


@pytest.mark.slow  # a real process
def test_command_line_server(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "qo.testing.s3server", "--port", "0", "--bucket", "qo-cli"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        exports: dict[str, str] = {}
        assert proc.stdout is not None
        while "QO_QUEUE" not in exports:
            line = proc.stdout.readline()
            assert line, "server exited before printing its exports"
            for pair in line.removeprefix("export ").split():
                name, _, value = pair.partition("=")
                exports[name] = value
        assert exports["QO_QUEUE"] == "s3://qo-cli"
        assert exports["AWS_ACCESS_KEY_ID"] == "testing"
        store = S3Store("qo-cli", endpoint_url=exports["AWS_ENDPOINT_URL"])
        store.put("k", b"v")
        assert store.get("k").body == b"v"  # type: ignore[union-attr]
        store.close()
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
