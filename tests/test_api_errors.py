"""The API's answers to a broken deployment and to overlong values (issue 13).

A missing bucket is a configuration error: 500 ``misconfigured`` with the
reason, since retrying cannot help. An unreachable endpoint is 503
``unavailable``: a retry may succeed. Neither carries a stack trace.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from qo import serverless
from qo.queue import Queue
from qo.store.memory import MemoryStore
from qo.store.s3 import S3Store

from .helpers import api_call as call

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _fresh_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("QO_APP", raising=False)
    serverless.reset()
    yield
    serverless.reset()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_missing_bucket_and_unreachable_endpoint_are_distinct_and_clear(s3_server: Any) -> None:
    missing = S3Store("qo-no-such-bucket", "qo", endpoint_url=s3_server.endpoint_url,
                      max_attempts=1)
    serverless.configure(queue=Queue(missing))
    status, error = call("GET", "/stats")
    assert status == 500 and error["error"] == "misconfigured", error
    assert "'qo-no-such-bucket' does not exist" in error["message"]
    assert "QO_QUEUE" in error["message"]

    unreachable = S3Store("qo-bucket", "qo", endpoint_url=f"http://127.0.0.1:{_closed_port()}",
                          max_attempts=1)
    serverless.configure(queue=Queue(unreachable))
    status, error = call("GET", "/stats")
    assert status == 503 and error["error"] == "unavailable", error
    assert "unreachable" in error["message"] and "try again" in error["message"]


def test_api_errors_cut_long_values() -> None:
    serverless.configure(queue=Queue(MemoryStore()))
    status, error = call("POST", "/tasks", {"type": "k" * 5000, "input": {}})
    assert status == 400 and error["error"] == "bad_request"
    assert "(5000 characters)" in error["message"] and len(error["message"]) < 400, error
    status, error = call("POST", "/tasks", {"type": "add", "key": "q" * 5000})
    assert status == 400 and len(error["message"]) < 400, error