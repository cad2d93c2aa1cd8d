"""The README's commands, checked the way a new user (and ``.ci/run``) runs them."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

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
