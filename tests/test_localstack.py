"""Stock LocalStack S3: a real second S3 implementation, with its known defects.

LocalStack 2026.3 answers 501 to DELETE with If-Match, and its pagination
compares URL-encoded keys (':' sorts before digits), which repeats or skips
pages. qo detects both at start, runs in the unconditional delete mode, and
raises instead of looping. The conformance and queue suites also run here
(the ``localstack`` backend of ``tests/conftest.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from qo.cli import app as cli_app
from qo.errors import NotSupported
from qo.models import Status
from qo.protocol.cas import delete_outcome
from qo.queue import Queue
from qo.store import capabilities
from qo.store.modes import UnconditionalDeletes
from qo.store.s3 import S3Store

from .conftest import HAVE_LOCALSTACK, new_bucket_name

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not HAVE_LOCALSTACK, reason="no .venv-localstack (CI builds it)")]


@pytest.fixture
def bucket(localstack_server, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", localstack_server.endpoint_url)
    name = new_bucket_name()
    S3Store(name).create_bucket()
    return name


def test_stock_localstack_is_detected_and_gets_the_unconditional_mode(bucket: str) -> None:
    store = S3Store(bucket, "caps")
    with pytest.raises(NotSupported, match="NotImplemented"):
        store.delete("k", if_match='"0"')
    sent: list[str] = []
    store.client.meta.events.register("before-send.s3.DeleteObject",
                                      lambda **_: sent.append("DELETE"))
    store.put("k", b"1")
    assert delete_outcome(store, "k", if_match='"0"') == "failed"
    assert sent == ["DELETE"]  # a refusal, not an outage: asked once, not retried
    caps = capabilities.check(store)
    assert caps.missing == [capabilities.CONDITIONAL_DELETE, capabilities.COLON_LISTING]
    assert "NotImplemented" in caps.details[capabilities.CONDITIONAL_DELETE]
    assert isinstance(capabilities.require(store), UnconditionalDeletes)
    other = S3Store(bucket, "caps")  # another process: reads the cached result
    assert capabilities.check(other).source == "cache"


def test_a_listing_that_repeats_a_page_is_an_error_not_a_hang(bucket: str) -> None:
    store = S3Store(bucket, "colon")
    keys = [f"ready/q1/128/{i:016d}-t{i}-add" for i in range(1000)]
    keys.append("ready/q:hi/128/0000000000000001-x-add")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, b""), keys))
    result = CliRunner().invoke(cli_app, ["--queue", f"s3://{bucket}/colon", "stats"],
                                catch_exceptions=False)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "pagination is broken" in lines[0]


def test_500_tasks_4_worker_processes_each_task_once_nothing_left(
        bucket: str, tmp_path: Path) -> None:
    url = f"s3://{bucket}/work"
    queue = Queue.from_url(url)
    handles = queue.submit_many([{"type": "work", "input": {"n": i}} for i in range(500)])
    assert isinstance(queue.store, UnconditionalDeletes)  # chosen by the check, automatically
    runs = tmp_path / "runs"
    runs.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QO_CHAOS_RUNS": str(runs)}
    cmd = [sys.executable, "-m", "qo", "--queue", url, "worker", "--app",
           "tests.apps.chaos_app:app", "--burst", "--concurrency", "4", "--poll-max", "1"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=600))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in procs] == [0] * 4, outputs
    per_task = Counter(name.split(".")[0] for name in os.listdir(runs))
    assert sorted(per_task) == sorted(h.id for h in handles)
    assert set(per_task.values()) == {1}  # every task ran exactly once
    assert sum(int(out.split("processed ")[1].split(":")[0]) for out, _ in outputs) == 500
    views = queue.ls(limit=1000)
    assert len(views) == 500 and {v.status for v in views} == {Status.SUCCEEDED}
    raw = S3Store(bucket, "work")
    for prefix in ("ready/", "delayed/", "leases/"):
        assert list(raw.list(prefix)) == [], prefix
    assert "could not delete" not in "".join(err for _, err in outputs)
    assert orjson.loads(raw.get(capabilities.CACHE_KEY).body)["features"][  # type: ignore[union-attr]
        capabilities.CONDITIONAL_DELETE] is False


def test_admin_commands_leave_no_lease_behind(bucket: str) -> None:
    url = f"s3://{bucket}/admin"
    task = Queue.from_url(url).submit("add", {"x": 1, "y": 2})
    runner = CliRunner()
    for args in (["cancel", task.id], ["retry", task.id]):
        result = runner.invoke(cli_app, ["--queue", url, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "could not delete" not in result.output
    raw = S3Store(bucket, "admin")
    assert list(raw.list("leases/")) == []  # the admin lease went, by its tombstone
    assert Queue.from_url(url).get(task.id).status == Status.PENDING
