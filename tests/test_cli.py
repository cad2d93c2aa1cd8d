"""The ``qo`` command line, end to end through typer's CliRunner.

Every command runs in-process against a local directory store (or the moto
server for S3), with the demo app of ``tests/apps/demo_app.py``. Workers run
with ``--burst``, so they exit on their own once nothing is ready: no sleeps.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner, Result

from qo.cli import app, common
from qo.doctor import NOT_ENFORCED, Level, diagnose
from qo.store.memory import MemoryStore

from .helpers import sigterm_when_ready

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
APP = "tests.apps.demo_app:app"
runner = CliRunner()


def qo(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    """Run the CLI; an exception escaping it fails the test (that would be a traceback)."""
    return runner.invoke(app, list(args), input=input, env=env, catch_exceptions=False)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}"
    assert "Traceback" not in result.stderr  # stdout may show a task's own traceback
    return result


def as_json(result: Result) -> Any:
    ok(result)
    return orjson.loads(result.stdout)


def assert_one_line_error(result: Result, code: int | None = None, contains: str = "") -> str:
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert contains in lines[0]
    return lines[0]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--app tests.apps...`` imports from the current directory, as users' apps do."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # never the real default store
    for name in ("QO_DEBUG", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'queue'}"


def submit(url: str, *args: str) -> str:
    return ok(qo("-q", url, "submit", *args)).stdout.strip()


def work(url: str, *args: str) -> str:
    """A burst worker: runs what is ready, then exits; returns its summary line."""
    result = ok(qo("-q", url, "worker", "--app", APP, "--burst", "--poll-max", "0.1",
                   "--concurrency", "2", *args))
    return result.stdout.strip()


def show(url: str, task_id: str) -> dict[str, Any]:
    return as_json(qo("-q", url, "show", task_id, "--json"))


# -- the happy path -----------------------------------------------------------------


def test_submit_work_show_ls_stats(url: str) -> None:
    task_id = submit(url, "add", "--input", '{"x": 1, "y": 2}')
    assert show(url, task_id)["status"] == "pending"
    stats = as_json(qo("-q", url, "stats", "--json"))
    assert stats["queues"]["default"]["pending"] == 1

    assert "1 succeeded" in work(url)

    data = show(url, task_id)
    assert data["status"] == "succeeded" and data["result"] == 3 and data["attempt"] == 1
    human = ok(qo("-q", url, "show", task_id)).stdout
    assert task_id in human and "succeeded" in human and "result" in human
    assert "\x1b[" not in human  # no colours off a terminal

    listing = as_json(qo("-q", url, "ls", "--json"))
    assert [t["id"] for t in listing["tasks"]] == [task_id]
    assert listing["tasks"][0]["status"] == "succeeded" and listing["next_after"] is None
    table = ok(qo("-q", url, "ls")).stdout
    assert task_id in table and "succeeded" in table and "1/3" in table
    assert as_json(qo("-q", url, "stats", "--json"))["queues"] == {}
    assert ok(qo("-q", url, "ls", "--status", "succeeded")).stdout.count(task_id) == 1


def test_queue_option_env_and_precedence(url: str, tmp_path: Path) -> None:
    other = f"file://{tmp_path / 'other'}"
    task_id = ok(qo("submit", "add", "-i", '{"x": 1, "y": 1}', env={"QO_QUEUE": url})).stdout
    task_id = task_id.strip()
    assert show(url, task_id)["type"] == "add"
    # the command's own --queue beats the one before it, which beats QO_QUEUE
    assert qo("-q", url, "show", task_id, "-q", other).exit_code == 4
    assert qo("-q", other, "show", task_id, env={"QO_QUEUE": url}).exit_code == 4
    ok(qo("-q", other, "show", task_id, "-q", url))


def test_default_store_is_local_directory(tmp_path: Path) -> None:
    task_id = ok(qo("submit", "add", "-i", '{"x": 2, "y": 2}')).stdout.strip()
    assert (tmp_path / "xdg" / "qo").is_dir()
    assert ok(qo("show", task_id, "--json")).stdout


def test_submit_options_are_recorded(url: str) -> None:
    task_id = submit(url, "add", "-i", '{"x": 1, "y": 2}', "--priority", "200", "--delay", "1h",
                     "--queue-name", "bulk", "--max-attempts", "5", "--timeout", "90",
                     "--tag", "team=data", "--tag", "env=test")
    data = show(url, task_id)
    assert data["priority"] == 200 and data["queue"] == "bulk" and data["max_attempts"] == 5
    assert data["timeout"] == 90 and data["tags"] == {"team": "data", "env": "test"}
    assert data["status"] == "scheduled"
    assert 3590 < data["available_at"] - data["created_at"] <= 3600
    assert as_json(qo("-q", url, "stats", "--json"))["queues"]["bulk"]["scheduled"] == 1
    report = as_json(qo("-q", url, "sweep", "--json"))
    assert report["promoted"] == 0 and report["next_due"] == pytest.approx(data["available_at"])

    at_id = submit(url, "add", "--at", "2000-01-01T00:00:00Z", "--key", "past")
    assert show(url, at_id)["status"] == "pending"


def test_input_from_file_and_stdin(url: str, tmp_path: Path) -> None:
    path = tmp_path / "in.json"
    path.write_text('{"x": 20, "y": 22}')
    from_file = submit(url, "add", "--input", f"@{path}")
    from_stdin = ok(qo("-q", url, "submit", "add", "--input", "-", input='{"x": 1, "y": 1}'))
    assert show(url, from_file)["input"] == {"x": 20, "y": 22}
    assert show(url, from_stdin.stdout.strip())["input"] == {"x": 1, "y": 1}
    work(url)
    assert show(url, from_file)["result"] == 42


def test_submit_json_and_idempotency(url: str) -> None:
    args = ("-q", url, "submit", "add", "-i", '{"x": 1, "y": 2}', "--key", "order-7", "--json")
    first = as_json(qo(*args))
    assert first["created"] is True
    second_result = ok(qo(*args[:-1]))
    assert second_result.stdout.strip() == first["id"]
    assert "existing task" in second_result.stderr
    second = as_json(qo(*args))
    assert second == {"id": first["id"], "created": False, "status": "pending"}

    conflict = qo("-q", url, "submit", "add", "-i", '{"x": 9, "y": 9}', "--key", "order-7")
    assert_one_line_error(conflict, code=3, contains="order-7")
    assert conflict.stdout == ""


def test_submit_with_app_uses_task_defaults(url: str) -> None:
    task_id = submit(url, "other_queue_task", "-i", '{"n": 4}', "--app", APP)
    assert show(url, task_id)["queue"] == "other"
    fail_id = submit(url, "fail", "-i", '{"message": "x"}', "--app", APP)
    assert show(url, fail_id)["max_attempts"] == 1
    assert "2 succeeded" not in work(url)  # one succeeds, one dies
    assert show(url, task_id)["result"] == 8


def test_batch_submit(url: str, tmp_path: Path) -> None:
    batch = tmp_path / "batch.json"
    batch.write_text(orjson.dumps([
        {"type": "add", "input": {"x": 1, "y": 1}},
        {"type": "add", "input": {"x": 2, "y": 2}, "priority": 9, "key": "b"},
    ]).decode())
    ids = as_json(qo("-q", url, "submit", "--batch", str(batch), "--json"))
    assert [r["created"] for r in ids] == [True, True]
    again = ok(qo("-q", url, "submit", "--batch", str(batch)))
    assert ids[1]["id"] in again.stdout.split() and "1 existing" in again.stderr

    lines = '{"type": "add", "input": {"x": 5, "y": 5}}\n\n{"type": "fail", "input": {"message": "m"}}\n'
    out = as_json(qo("-q", url, "--queue", url, "submit", "--batch", "-", "--app", APP, "--json",
                     input=lines))
    assert show(url, out[1]["id"])["max_attempts"] == 1  # the app's default for fail
    work(url)
    assert show(url, out[0]["id"])["result"] == 10

    bad = tmp_path / "bad.json"
    bad.write_text('[{"type": "add", "input": {"x": 1, "y": 1}}, {"type": "../x"}]')
    assert_one_line_error(qo("-q", url, "submit", "--batch", str(bad)), code=2,
                          contains="batch item 2")
    bad.write_text('[{"type": "add", "priority": 999}]')
    assert_one_line_error(qo("-q", url, "submit", "--batch", str(bad)), code=2,
                          contains="priority")
    assert_one_line_error(qo("-q", url, "submit", "--batch", "-", input="{nope\n"), code=2,
                          contains="line 1")
    assert_one_line_error(qo("-q", url, "submit", "add", "--batch", str(batch)), code=2)
    before = len(as_json(qo("-q", url, "ls", "--json", "--limit", "100"))["tasks"])
    bad.write_text('[{"type": "add", "input": {"x": 1, "y": 1}}, '
                   '{"type": "add", "input": {"x": 1, "y": 1}, "delay": 5, "at": 1}]')
    assert_one_line_error(qo("-q", url, "submit", "--batch", str(bad)), code=2)
    after = len(as_json(qo("-q", url, "ls", "--json", "--limit", "100"))["tasks"])
    assert after == before  # nothing written when any item is invalid


def test_ls_pages_with_after(url: str) -> None:
    ids = [submit(url, "add", "-i", f'{{"x": {i}, "y": 0}}') for i in range(3)]
    page = ok(qo("-q", url, "ls", "--limit", "2"))
    newest_first = list(reversed(ids))
    assert f"next page: --after {newest_first[1]}" in page.stdout
    rest = as_json(qo("-q", url, "ls", "--limit", "2", "--after", newest_first[1], "--json"))
    assert [t["id"] for t in rest["tasks"]] == [newest_first[2]]
    assert rest["next_after"] is None
    pending = as_json(qo("-q", url, "ls", "--status", "pending", "--json"))
    assert {t["id"] for t in pending["tasks"]} == set(ids)
    assert_one_line_error(qo("-q", url, "ls", "--status", "pending", "--after", ids[0]), code=2)


# -- operations ---------------------------------------------------------------------


def test_dead_letters_ls_retry_purge(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    task_id = submit(url, "fail", "-i", '{"message": "always"}', "--max-attempts", "1")
    assert "1 failed" in work(url)
    data = show(url, task_id)
    assert data["status"] == "dead" and data["error"]["message"] == "always"
    assert "RuntimeError" in (data["error"]["traceback"] or "")
    human = ok(qo("-q", url, "show", task_id)).stdout
    assert "RuntimeError: always" in human and "traceback" in human
    dead = as_json(qo("-q", url, "dlq", "ls", "--json"))
    assert [t["id"] for t in dead["tasks"]] == [task_id]
    assert task_id in ok(qo("-q", url, "dlq", "ls", "--queue-name", "default")).stdout
    assert as_json(qo("-q", url, "stats", "--json"))["queues"]["default"]["dead"] == 1

    assert "retried 1" in ok(qo("-q", url, "dlq", "retry", task_id)).stdout
    assert show(url, task_id)["status"] == "pending"
    work(url)
    assert "retried 1" in ok(qo("-q", url, "dlq", "retry", "--all")).stdout
    work(url)
    assert_one_line_error(qo("-q", url, "dlq", "retry"), code=2)
    assert_one_line_error(qo("-q", url, "dlq", "retry", task_id, "--all"), code=2)

    assert_one_line_error(qo("-q", url, "dlq", "purge"), code=2, contains="--yes")
    monkeypatch.setattr(common, "is_interactive", lambda: True)
    refused = qo("-q", url, "dlq", "purge", input="n\n")
    assert refused.exit_code == 2 and "purge cancelled" in refused.stderr
    assert show(url, task_id)["status"] == "dead"
    ok(qo("-q", url, "dlq", "purge", input="y\n"))
    assert qo("-q", url, "show", task_id).exit_code == 4
    assert "purged 0" in ok(qo("-q", url, "dlq", "purge", "--yes")).stdout


def test_retry_and_cancel_refusals(url: str) -> None:
    task_id = submit(url, "add", "-i", '{"x": 1, "y": 1}')
    assert_one_line_error(qo("-q", url, "retry", task_id), code=3, contains="pending")
    work(url)
    assert_one_line_error(qo("-q", url, "cancel", task_id), code=3, contains="succeeded")


def test_pause_and_resume(url: str) -> None:
    task_id = submit(url, "add", "-i", '{"x": 2, "y": 3}')
    assert "paused queue default" in ok(qo("-q", url, "pause", "default")).stdout
    assert as_json(qo("-q", url, "stats", "--json"))["paused"] == ["default"]
    assert "yes" in ok(qo("-q", url, "stats")).stdout
    assert work(url).startswith("processed 0")
    assert show(url, task_id)["status"] == "pending"
    ok(qo("-q", url, "resume", "default"))
    assert "1 succeeded" in work(url)
    assert show(url, task_id)["result"] == 5
    assert as_json(qo("-q", url, "stats", "--json"))["paused"] == []


def test_cancel_pending_task(url: str) -> None:
    task_id = submit(url, "add", "-i", '{"x": 1, "y": 1}')
    assert f"cancelled {task_id}" in ok(qo("-q", url, "cancel", task_id, "--reason", "oops")).stdout
    assert work(url).startswith("processed 0")
    data = show(url, task_id)
    assert data["status"] == "cancelled" and data["cancel_reason"] == "oops"
    assert "cancelled" in ok(qo("-q", url, "show", task_id)).stdout
    assert as_json(qo("-q", url, "retry", task_id, "--json"))["status"] == "pending"
    assert "1 succeeded" in work(url)


def test_worker_serves_only_given_queues(url: str) -> None:
    default_id = submit(url, "add", "-i", '{"x": 1, "y": 1}')
    other_id = submit(url, "other_queue_task", "-i", '{"n": 1}', "--queue-name", "other")
    assert "1 succeeded" in work(url, "--queues", "other", "--log-format", "json")
    assert show(url, default_id)["status"] == "pending"
    assert show(url, other_id)["status"] == "succeeded"


# -- errors -------------------------------------------------------------------------

BAD_INPUTS = [
    (["submit", "../x"], 2, "task type"),
    (["submit", "a/b"], 2, "task type"),
    (["submit", "a\x01b"], 2, "task type"),
    (["submit", "add", "--input", "{bad json"], 2, "malformed JSON"),
    (["submit", "add", "--input", "@/nonexistent/in.json"], 2, "cannot read"),
    (["submit", "add", "--tag", "novalue"], 2, "tag"),
    (["submit", "add", "--key", "bad\nkey"], 2, "idempotency key"),
    (["submit", "add", "--priority", "300"], 2, "--priority"),
    (["submit", "add", "--delay", "5 parsecs"], 2, "--delay"),
    (["submit", "add", "--at", "tomorrow"], 2, "--at"),
    (["submit", "add", "--at", "2030-01-01T00:00:00"], 2, "time zone"),
    (["submit", "add", "--delay", "5", "--at", "2030-01-01T00:00:00Z"], 2, "not both"),
    (["submit"], 2, "TYPE"),
    (["submit", "nope", "--app", APP], 2, "unknown task type 'nope'"),
    (["submit", "add", "--app", "tests.apps.no_such_module:app"], 2, "no_such_module"),
    (["submit", "add", "--app", "tests.apps.demo_app:missing"], 2, "no attribute 'missing'"),
    (["submit", "add", "--app", "tests.apps.demo_app:not_an_app"], 2, "not a qo.app.App"),
    (["submit", "add", "--app", "not a spec"], 2, "invalid app"),
    (["show", "k" + "0" * 23], 4, "no task"),
    (["show", "NOT-AN-ID"], 2, "invalid task id"),
    (["cancel", "../../etc"], 2, "invalid task id"),
    (["ls", "--status", "bogus"], 2, "--status"),
    (["ls", "--after", "x"], 2, "invalid task id"),
    (["ls", "--queue-name", "a/b"], 2, "queue name"),
    (["pause", "a/b"], 2, "queue name"),
    (["worker", "--app", APP, "--queues", "a/b", "--burst"], 2, "queue name"),
    (["worker", "--app", "tests.apps.no_such_module:app", "--burst"], 2, "no_such_module"),
    (["worker", "--burst"], 2, "--app"),
    (["--bogus-flag", "ls"], 2, "--bogus-flag"),
]


@pytest.mark.parametrize("args,code,contains", BAD_INPUTS, ids=lambda v: repr(v)[:40])
def test_bad_input_is_one_line_error(url: str, args: list[str], code: int, contains: str) -> None:
    result = qo("-q", url, *args)
    assert_one_line_error(result, code=code, contains=contains)
    assert result.stdout == ""


@pytest.mark.parametrize("bad_url,contains", [
    ("ftp://x", "unsupported queue URL scheme"),
    ("s3://Bad_Bucket", "Bad_Bucket"),
    ("no-scheme", "invalid queue URL"),
    ("memory://a/b", "invalid memory queue name"),
])
def test_bad_queue_url(bad_url: str, contains: str) -> None:
    assert_one_line_error(qo("--queue", bad_url, "stats"), code=2, contains=contains)
    assert_one_line_error(qo("submit", "add", "--queue", bad_url), code=2, contains=contains)


def test_unexpected_error_is_one_line_unless_debug(url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from qo.queue import Queue

    def explode(self: Queue) -> None:
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr(Queue, "stats", explode)
    line = assert_one_line_error(qo("-q", url, "stats"), code=1, contains="kaboom second line")
    assert "--debug" in line
    debug = qo("--debug", "-q", url, "stats")
    assert debug.exit_code == 1 and "Traceback" in debug.stderr and "kaboom" in debug.stderr
    env_debug = qo("-q", url, "stats", env={"QO_DEBUG": "1"})
    assert env_debug.exit_code == 1 and "Traceback" in env_debug.stderr


def test_no_command_shows_help() -> None:
    result = qo()
    assert result.exit_code == 2 and "submit" in result.output and "Traceback" not in result.output


# -- parsers ------------------------------------------------------------------------


@pytest.mark.parametrize("text,seconds", [
    ("90", 90), ("1.5", 1.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172_800),
    ("1h30m", 5400), ("250ms", 0.25), ("1w", 604_800), (" 2 m ", 120), ("1H", 3600),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert common.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "-5", "5x", "1h 2", "1.2.3", "m5", "nan", "inf"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(common.CliError, match="invalid duration"):
        common.parse_duration(text)


# -- doctor -------------------------------------------------------------------------


def test_doctor_passes_on_local_directory(url: str) -> None:
    report = as_json(qo("-q", url, "doctor", "--json"))
    assert report["ok"] is True
    assert [c["status"] for c in report["checks"]] == ["ok"] * 14
    human = ok(qo("-q", url, "doctor")).stdout
    assert "conditional writes" in human and "fail" not in human
    assert not (Path(url.removeprefix("file://")) / "doctor~").exists() or not any(
        p.is_file() for p in (Path(url.removeprefix("file://")) / "doctor~").iterdir())


class NaiveStore(MemoryStore):
    """A store that ignores every precondition, like a broken S3 clone."""

    def put(self, key: str, body: bytes, *, if_match: str | None = None,
            if_none_match: bool = False) -> str:
        return super().put(key, body)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        super().delete(key)


def test_doctor_fails_when_conditional_writes_are_ignored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = NaiveStore()
    report = diagnose(store=store)
    check = next(c for c in report.checks if c.name == "conditional writes")
    assert check.level == Level.FAIL and NOT_ENFORCED in check.detail
    assert "stale If-Match" in check.detail and not report.ok
    assert list(store.list("")) == []  # cleaned up all the same

    monkeypatch.setattr("qo.doctor.open_store", lambda url: NaiveStore())
    result = qo("-q", "memory://naive", "doctor")
    assert_one_line_error(result, code=1, contains="NOT enforced")
    assert "fail" in result.stdout


def test_doctor_clock_checks() -> None:
    store = MemoryStore()
    assert diagnose(store=store, clock=lambda: store.now() + 5).checks[4].level == Level.WARN
    late = diagnose(store=store, clock=lambda: store.now() - 60)
    assert late.checks[4].level == Level.FAIL and "over 30 s" in late.checks[4].detail
    assert diagnose(store=store).checks[4].level == Level.OK


@pytest.fixture
def s3_queue(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    from qo.store.s3 import S3Store

    bucket = f"qo-cli-{os.urandom(4).hex()}"
    store = S3Store(bucket, endpoint_url=s3_server.endpoint_url)
    store.create_bucket()
    store.close()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    return f"s3://{bucket}/cli"


def test_doctor_passes_on_s3(s3_queue: str, s3_server: Any) -> None:
    report = as_json(qo("--queue", s3_queue, "doctor", "--json"))
    assert report["ok"] is True, report
    assert all(c["status"] == "ok" for c in report["checks"]), report
    s3_server.clock_skew = 10.0
    try:
        skewed = ok(qo("--queue", s3_queue, "doctor"))
        assert "warn" in skewed.stdout and "warning" in skewed.stderr
        s3_server.clock_skew = 120.0
        assert_one_line_error(qo("--queue", s3_queue, "doctor"), code=1, contains="clock")
    finally:
        s3_server.clock_skew = 0.0


def test_doctor_names_a_missing_bucket(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    result = qo("--queue", "s3://qo-cli-no-such-bucket/x", "doctor")
    assert_one_line_error(result, code=1, contains="'qo-cli-no-such-bucket' does not exist")
    assert "skip" in result.stdout
    report = orjson.loads(qo("--queue", "s3://qo-cli-no-such-bucket", "doctor", "--json").stdout)
    assert report["ok"] is False and report["checks"][1]["status"] == "fail"


@pytest.mark.slow  # real time: botocore's retry backoff
def test_doctor_reports_an_unreachable_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    result = qo("--queue", "s3://qo-cli-unreachable", "doctor")
    assert_one_line_error(result, code=1, contains="unreachable")


def test_round_trip_on_s3(s3_queue: str) -> None:
    task_id = submit(s3_queue, "add", "-i", '{"x": 4, "y": 5}')
    assert "1 succeeded" in work(s3_queue)
    assert show(s3_queue, task_id)["result"] == 9


@pytest.mark.slow  # real processes
def test_python_dash_m_qo(tmp_path: Path) -> None:
    env = {**os.environ, "QO_QUEUE": f"file://{tmp_path / 'q'}"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "qo", *args], capture_output=True,
                              text=True, env=env, timeout=60, cwd=ROOT, check=False)

    done = run("stats", "--json")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == {"queues": {}, "paused": [], "unserved": []}
    bad = run("show", "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stdout == ""


@pytest.mark.slow  # a real process
def test_worker_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "QO_QUEUE": f"file://{tmp_path / 'q'}"}
    code, out, err = sigterm_when_ready(
        [sys.executable, "-m", "qo", "worker", "--app", APP, "--poll-max", "0.2"],
        env, "started", ROOT)
    assert code == 0, err
    assert out.startswith("processed 0") and "Traceback" not in err
