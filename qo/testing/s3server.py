"""A local S3 server (moto) for tests, benchmarks and development.

moto's WSGI app served by werkzeug on 127.0.0.1, behind a small middleware:

- ``latency`` seconds are slept per request *outside* the lock, so concurrent
  clients overlap as they would on a network;
- with ``serialize=True`` one lock is held around moto, including draining the
  response body, which makes conditional writes linearizable (moto checks a
  precondition and then writes, without a lock of its own);
- every S3 request is counted in ``counts`` (see ``request_kind``), and every
  non-2xx answer once more as ``f"{kind}_{status}"`` (e.g. ``PUT_412``);
- ``clock_skew`` seconds are added to the ``Date`` header (not to moto's
  LastModified), to prove that clients follow the store's clock;
- ``counts_by_family`` counts the same requests once more by the first
  segment of the key (or LIST prefix), e.g. ``"PUT leases"``, so that a
  benchmark can tell task requests from worker heartbeats.

A benchmark in another process reads and resets the counts over HTTP (these
paths are answered by the middleware and never counted): ``GET /_qo/counts``
returns ``{"counts": {...}, "by_family": {...}, "latency": s}`` as JSON,
``POST /_qo/reset-counts`` zeroes both counters and
``POST /_qo/latency?seconds=0.02`` changes the added latency.

moto keeps its state in process-global backends: every server in a process
(and ``moto.mock_aws``) sees the same buckets, and ``reset`` wipes them all.

Run ``python -m qo.testing.s3server --bucket NAME`` to serve in the foreground.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qs, unquote

from qo.store.metrics import RequestCounter

if TYPE_CHECKING:
    from qo.store.s3 import S3Store

#: Answered by the middleware itself: start() polls it to know we serve.
PING_PATH = "/_qo/ping"
#: Admin paths for benchmarks in another process (answered here, never counted).
COUNTS_PATH = "/_qo/counts"
RESET_COUNTS_PATH = "/_qo/reset-counts"
LATENCY_PATH = "/_qo/latency"

#: Credentials moto accepts; it checks no signature by default.
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

StartResponse = Callable[..., Any]


def request_kind(environ: dict[str, Any]) -> str | None:
    """How a request is counted; ``None`` for moto's own API (not S3).

    Object requests count as S3 bills them: ``PUT`` (PutObject, CopyObject,
    and any POST), ``GET``, ``HEAD``, ``DELETE``; a GET on a bucket is a
    ``LIST``. Other bucket-level calls (CreateBucket, HeadBucket, ...) count as
    ``BUCKET_<METHOD>``, so that fixtures and the clock probe of
    ``S3Store.now`` never disturb assertions on object-level counts.
    """
    path = environ.get("PATH_INFO", "") or "/"
    if path.startswith("/moto-api"):
        return None
    method = environ.get("REQUEST_METHOD", "GET").upper()
    if method == "POST":
        return "PUT"
    if _virtual_host(environ.get("HTTP_HOST", "")):
        has_key = path.strip("/") != ""
    else:
        _, _, key = path.lstrip("/").partition("/")
        has_key = key != ""
    if has_key:
        return method
    if method == "GET":
        return "LIST"
    return f"BUCKET_{method}"


def _virtual_host(host: str) -> bool:
    """``bucket.localhost:4566`` style: the bucket is the first label."""
    if host.startswith("["):  # an IPv6 literal
        return False
    name = host.split(":", 1)[0]
    if not name or name == "localhost" or "." not in name:
        return False
    try:
        ipaddress.ip_address(name)
        return False
    except ValueError:
        return not name.startswith(("s3.", "s3-"))


def key_family(environ: dict[str, Any]) -> str:
    """The first segment of the object key (or of a LIST's prefix), ``""`` if none."""
    path = environ.get("PATH_INFO", "") or "/"
    if _virtual_host(environ.get("HTTP_HOST", "")):
        key = path.lstrip("/")
    else:
        _, _, key = path.lstrip("/").partition("/")
    if not key:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        key = (query.get("prefix") or [""])[0]
    return unquote(key).split("/", 1)[0]


class S3TestServer:
    """moto S3 on a background thread; see the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        serialize: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.latency = latency
        self.serialize = serialize
        self.clock_skew = 0.0
        self.counts = RequestCounter()
        self.counts_by_family = RequestCounter()
        self.endpoint_url = ""
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._moto: Any = None

    # -- lifecycle --------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        """Serve on a daemon thread; return once a request is answered."""
        if self._server is not None:
            raise RuntimeError("S3TestServer already started")
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        self._moto = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            self.host, self.port, self, threaded=True, request_handler=_handler_for(self)
        )
        self.port = self._server.server_port
        self.endpoint_url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how fast stop() is noticed
            name=f"s3server:{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
            try:
                conn.request("GET", PING_PATH)
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"S3 test server on {self.endpoint_url} did not start")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and join the thread (bounded: handler threads are daemons)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start() if self._server is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state --------------------------------------------------------------------

    def reset(self) -> None:
        """Wipe every bucket and object (of every moto backend) and the counts."""
        from moto.moto_api._internal.models import moto_api_backend

        with self._lock:
            moto_api_backend.reset()
            self.counts.reset()
            self.counts_by_family.reset()

    def create_bucket(self, name: str) -> None:
        """Create a bucket over HTTP (counted as ``BUCKET_PUT``); idempotent."""
        store = self.store(name)
        try:
            store.create_bucket()
        finally:
            store.close()
            store.client.close()

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server with dummy credentials of its own."""
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=DUMMY_CREDENTIALS["AWS_DEFAULT_REGION"],
        )
        options: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "retries": {"mode": "standard", "max_attempts": 5},
            "max_pool_connections": 64,
        }
        options.update(config)
        return session.client("s3", endpoint_url=self.endpoint_url, config=Config(**options))

    def store(self, bucket: str, prefix: str = "") -> S3Store:
        """An ``S3Store`` on this server that needs no AWS environment at all."""
        from qo.store.s3 import S3Store

        return S3Store(bucket, prefix, client=self.client())

    # -- the WSGI middleware ------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == PING_PATH:
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
            return [b"ok"]
        if path in (COUNTS_PATH, RESET_COUNTS_PATH, LATENCY_PATH):
            return self._admin(path, environ, start_response)
        kind = request_kind(environ)
        if self.latency > 0:
            time.sleep(self.latency)
        status = [500]  # if moto raises, werkzeug answers 500

        def capture(code: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = int(code.split(None, 1)[0])
            headers = [(k, v) for k, v in headers if k.lower() != "date"]
            return start_response(code, headers, exc_info)

        try:
            if self.serialize:
                with self._lock:
                    return self._call_moto(environ, capture)
            return self._call_moto(environ, capture)
        finally:
            if kind is not None:
                family = key_family(environ)
                self.counts.add(kind)
                self.counts_by_family.add(f"{kind} {family}")
                if not 200 <= status[0] < 300:
                    self.counts.add(f"{kind}_{status[0]}")
                    self.counts_by_family.add(f"{kind}_{status[0]} {family}")

    def _admin(
        self, path: str, environ: dict[str, Any], start_response: StartResponse
    ) -> list[bytes]:
        """The benchmark endpoints: read or zero the counts, change the latency."""
        method = environ.get("REQUEST_METHOD", "GET").upper()
        code, body = "200 OK", b""
        if path == COUNTS_PATH and method == "GET":
            body = json.dumps({
                "counts": self.counts.snapshot(),
                "by_family": self.counts_by_family.snapshot(),
                "latency": self.latency,
            }).encode()
        elif path == RESET_COUNTS_PATH and method == "POST":
            self.counts.reset()
            self.counts_by_family.reset()
        elif path == LATENCY_PATH and method == "POST":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            try:
                self.latency = max(0.0, float(query["seconds"][0]))
            except (KeyError, ValueError):
                code, body = "400 Bad Request", b"want ?seconds=<float>"
        else:
            code, body = "405 Method Not Allowed", b""
        start_response(code, [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
        return [body]

    def _call_moto(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        """Run moto to completion, body included, so the lock covers all of it."""
        result = self._moto(environ, start_response)
        try:
            return list(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


def _handler_for(owner: S3TestServer) -> type:
    """moto's request handler, quiet, stamping ``Date`` with the owner's skew.

    werkzeug always sends its own ``Date`` (``date_time_string``), so that is
    where the skew goes; the middleware drops any ``Date`` moto adds itself.
    """
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    class Handler(MotoRequestHandler):
        def date_time_string(self, timestamp: float | None = None) -> str:
            if timestamp is None:
                timestamp = time.time() + owner.clock_skew
            return formatdate(timestamp, usegmt=True)

        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qo.testing.s3server",
        description="Serve a local S3 (moto) for qo until SIGINT/SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--bucket", help="create this bucket and print its QO_QUEUE")
    parser.add_argument(
        "--no-serialize", action="store_true", help="let moto run requests concurrently"
    )
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = S3TestServer(
        host=args.host, port=args.port, latency=args.latency, serialize=not args.no_serialize
    ).start()
    try:
        if args.bucket:
            server.create_bucket(args.bucket)
        creds = " ".join(f"{k}={v}" for k, v in DUMMY_CREDENTIALS.items())
        print(f"export AWS_ENDPOINT_URL={server.endpoint_url}")
        print(f"export {creds}")
        if args.bucket:
            print(f"export QO_QUEUE=s3://{args.bucket}")
        sys.stdout.flush()
        print(f"serving S3 on {server.endpoint_url}; Ctrl-C to stop", file=sys.stderr)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        print(f"stopped; requests: {server.counts.snapshot()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
