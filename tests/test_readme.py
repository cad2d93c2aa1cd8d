"""The README's commands, checked the way a new user (and ``.ci/run``) runs them."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    """The line ``.ci/run`` executes, extracted by ``.ci/run``'s own awk program."""
    script = (ROOT / ".ci" / "run").read_text()
    line = next(ln for ln in script.splitlines() if ln.startswith("cmd=$(awk"))
    program = line.removeprefix("cmd=$(").removesuffix(")")
    out = subprocess.run(["bash", "-c", program], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=30)
    command = out.stdout.strip()
    assert command, "no test command after <!-- test-command --> in README.md"
    return command


@pytest.mark.slow  # a real pytest process
def test_readme_test_command_prints_pytests_summary_line(tmp_path: Path) -> None:
    """``-q`` in the command plus ``-q`` in addopts would be ``-qq``: no "N passed" line."""
    command = readme_test_command()
    pytest_step = next(step for step in command.split("&&") if "-m pytest" in step)
    args = shlex.split(pytest_step.split("-m pytest", 1)[1])
    (tmp_path / "test_two.py").write_text("def test_a():\n    pass\n\n\ndef test_b():\n    pass\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "-c", str(ROOT / "pyproject.toml"),
         "-p", "no:cacheprovider", str(tmp_path / "test_two.py")],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^2 passed\b", run.stdout, re.MULTILINE), run.stdout


def _text(path: str) -> str:
    return " ".join((ROOT / path).read_text().split())


def test_idle_cost_figures_agree_across_the_docs() -> None:
    """README, protocol §5 and the benchmarks give the same idle figures, from the defaults."""
    from qo.worker import WorkerOptions

    d = WorkerOptions()
    polls = round(3600 / (0.75 * d.poll_max))  # a wait drawn from U(poll_max/2, poll_max)
    sweeps, per_sweep = 48, 4  # 1 PUT of the turn + 3 LIST; see docs/benchmarks.md
    fleet_cost = sweeps * per_sweep * 0.005 / 1000
    assert (polls, f"{fleet_cost:.5f}") == (240, "0.00096")
    readme, bench = _text("README.md"), _text("docs/benchmarks.md")
    protocol = _text("docs/protocol.md")
    section5 = protocol[protocol.index("## 5. Request budget"):protocol.index("## 6.")]
    for name, text in (("README", readme), ("protocol §5", section5),
                       ("benchmarks", bench)):
        assert "$0.00096" in text, name
        assert "192 requests" in text, name
        assert "$0.0012" not in text and "180 LIST" not in text, name
        assert "240 × concurrency" not in text, name  # idle slots share one poll
    assert f"{polls} polls an hour" in section5 and f"{polls} polls" in bench
    assert "540" in readme and "540" in bench  # the measured default worker, sweeps included
