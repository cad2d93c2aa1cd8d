"""`qo worker` on an async app, in-process: --concurrency with --threads."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from qo.cli import app as cli
from qo.queue import Queue

pytestmark = pytest.mark.timeout(120)


def test_an_async_app_drains_with_a_thread_cap(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    gate = tmp_path / "gate"
    gate.touch()
    queue = Queue.from_url(url)
    handles = [queue.submit("gated", {"gate": str(gate)}) for _ in range(3)]
    result = CliRunner().invoke(cli, ["-q", url, "worker", "--app", "tests.apps.aio_app:app",
                                      "--burst", "--poll-max", "0.1", "--concurrency", "50",
                                      "--threads", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "processed 3: 3 succeeded" in result.stdout
    assert [h.result(timeout=5) for h in handles] == ["opened"] * 3


def test_zero_threads_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["-q", f"file://{tmp_path}", "worker", "--app",
                                      "tests.apps.aio_app:app", "--threads", "0"],
                                catch_exceptions=False)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--threads" in lines[0]
