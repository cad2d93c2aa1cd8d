"""Rough edges of the CLI a new user trips over (issue 13): each test failed before its fix."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import typer

from qo.cli import app
from qo.errors import ConfigError, shorten, shorten_values
from qo.queue import Queue
from tests.test_cli import _repo_cwd, as_json, assert_one_line_error, ok, qo, submit, url, work

__all__ = ["_repo_cwd", "url"]  # fixtures, used by name

pytestmark = pytest.mark.timeout(120)


def test_next_page_only_when_there_is_more(url: str) -> None:
    ids = [submit(url, "add", "-i", f'{{"x": {i}, "y": 0}}') for i in range(2)]
    exact = ok(qo("-q", url, "ls", "--limit", "2"))
    assert "next page" not in exact.output and all(i in exact.stdout for i in ids)
    assert as_json(qo("-q", url, "ls", "--limit", "2", "--json"))["next_after"] is None
    third = submit(url, "add", "-i", '{"x": 9, "y": 0}')
    page = ok(qo("-q", url, "ls", "--limit", "2"))
    assert f"next page: --after {ids[1]}" in page.stdout
    rest = ok(qo("-q", url, "ls", "--limit", "2", "--after", ids[1]))
    assert ids[0] in rest.stdout and third not in rest.stdout and "next page" not in rest.output


def test_every_listing_has_one_json_shape(url: str) -> None:
    for i in range(3):
        submit(url, "fail", "-i", f'{{"message": "m{i}"}}', "--max-attempts", "1")
    assert "3 failed" in work(url)
    listing = as_json(qo("-q", url, "ls", "--json", "--limit", "2"))
    dead = as_json(qo("-q", url, "dlq", "ls", "--json", "--limit", "2"))
    assert set(dead) == set(listing) == {"tasks", "more", "next_after"}
    assert listing["more"] is True and listing["next_after"] == listing["tasks"][-1]["id"]
    assert dead["more"] is True and dead["next_after"] is None  # dlq ls does not page by id
    assert [t["status"] for t in dead["tasks"]] == ["dead", "dead"]
    everything = as_json(qo("-q", url, "dlq", "ls", "--json"))
    assert len(everything["tasks"]) == 3 and everything["more"] is False
    human = ok(qo("-q", url, "dlq", "ls", "--limit", "2"))
    assert "raise --limit" in human.stderr


def test_retry_help_matches_what_retry_accepts(url: str) -> None:
    text = " ".join(ok(qo("retry", "--help")).stdout.split())
    assert "waiting" not in text
    for accepted in ("dead", "failed", "scheduled", "cancelled"):
        assert accepted in text
    assert "Pending and running tasks are refused" in text
    task_id = submit(url, "add", "-i", '{"x": 1, "y": 1}')
    assert_one_line_error(qo("-q", url, "retry", task_id), code=3, contains="pending")
    delayed = submit(url, "add", "-i", '{"x": 1, "y": 1}', "--delay", "1h")
    assert as_json(qo("-q", url, "retry", delayed, "--json"))["status"] == "pending"


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        paths += _command_paths(sub, (*path, name))
    return paths


def test_flags_look_like_flags_in_every_help() -> None:
    paths = _command_paths(typer.main.get_command(app))
    assert ("worker",) in paths and ("schedule", "add") in paths and ("dlq", "purge") in paths
    for path in paths:
        text = ok(qo(*path, "--help")).stdout
        assert "--help" in text
        assert "<bool>" not in text, f"qo {' '.join(path)} --help:\n{text}"
    assert "--json" in ok(qo("ls", "--help")).stdout
    line = assert_one_line_error(qo("ls", "--json", "true"), code=2)
    assert "take no value" in line
    assert "take no value" not in assert_one_line_error(qo("ls", "extra"), code=2)


def test_version() -> None:
    result = ok(qo("--version"))
    assert result.stdout.strip() == f"qo {metadata.version('qo-queue')}"
    assert "--version" in ok(qo("--help")).stdout


LONG = "k" * 5000


@pytest.mark.parametrize("args", [
    ("submit", "add", "--key", LONG),  # checked by qo.protocol.submit
    ("submit", "add", "--tag", LONG),  # checked by the CLI
    ("submit", "add", "--tag", f"{LONG}=x"),
    ("submit", LONG),  # a task type: qo.names
    ("submit", "add", "--at", LONG),  # a CLI parser, through click
    ("show", LONG),
    ("-q", f"s3://{LONG}/x", "stats"),  # the queue URL
    ("-q", f"file://{LONG}", "stats"),
])
def test_errors_cut_long_values(url: str, args: tuple[str, ...]) -> None:
    full = args if args[0] == "-q" else ("-q", url, *args)
    line = assert_one_line_error(qo(*full))
    assert len(line) < 400, line
    assert "characters)" in line, line


def test_shorten() -> None:
    assert shorten("abc") == "'abc'"
    cut = shorten(LONG)
    assert cut.startswith("'kkk") and cut.endswith("kkk' (5000 characters)") and len(cut) < 90
    message = shorten_values(f"invalid key {LONG!r}: use 1-128 letters")
    assert message.endswith("(5000 characters): use 1-128 letters") and len(message) < 120
    prose = "a sentence of many ordinary words, " * 5
    assert shorten_values(prose) == prose
    assert len(shorten_values("a " * 5000)) < 1100


def test_relative_file_url_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    line = assert_one_line_error(qo("-q", "file://relative/dir", "stats"), code=2)
    assert "must be absolute" in line and f"file://{tmp_path}/relative/dir" in line
    assert not (tmp_path / "relative").exists()  # nothing created
    with pytest.raises(ConfigError, match="must be absolute"):
        Queue.from_url("file://./here")
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    assert Queue.from_url("file://~/q").store.url == f"file://{home}/q"  # ~ is absolute
    ok(qo("-q", f"file://{tmp_path}/abs", "stats"))
