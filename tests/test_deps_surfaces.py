"""Dependencies and workflows through the CLI and the HTTP API (docs/protocol.md section 10)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qo import serverless
from qo.queue import Queue
from qo.store.memory import MemoryStore

from .helpers import api_call as call
from .test_cli import ROOT, as_json, assert_one_line_error, ok, qo, show, submit, work


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(ROOT)  # --app tests.apps... imports from here
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'queue'}"


def work_until(url: str, task_id: str, status: str = "succeeded") -> None:
    """One burst worker runs the graph: it does not stop while another slot's outcome
    (and the follow-up that readies dependents) is still being written."""
    work(url)
    assert show(url, task_id)["status"] == status


def test_submit_after_blocks_then_runs_and_show_lists_both_sides(url: str) -> None:
    first = submit(url, "add", "-i", '{"x": 1, "y": 2}')
    second = submit(url, "add", "-i", '{"x": 3, "y": 4}')
    joined = submit(url, "add", "-i", '{"x": 0, "y": 0}', "--after", first, "--after", second,
                    "--trigger", "all_done")
    data = show(url, joined)
    assert data["status"] == "blocked"
    assert data["depends_on"] == [first, second] and data["trigger"] == "all_done"
    assert show(url, first)["dependents"] == [joined]
    text = ok(qo("-q", url, "show", joined)).stdout
    assert "depends on" in text and first in text
    work_until(url, joined)
    graph = ok(qo("-q", url, "graph", joined)).stdout
    assert graph.startswith("flowchart TD") and graph.count("-->") == 2
    dot = ok(qo("-q", url, "graph", joined, "--format", "dot")).stdout
    assert dot.startswith("digraph qo {") and f'"{first}" -> "{joined}";' in dot
    assert len(as_json(qo("-q", url, "graph", joined, "--json"))["nodes"]) == 3


def test_bad_dependencies_are_one_line_errors(url: str) -> None:
    assert_one_line_error(qo("-q", url, "submit", "add", "--after", "0123456789abcdef"),
                          2, "unknown dependency 0123456789abcdef")
    assert_one_line_error(qo("-q", url, "submit", "add", "--trigger", "all_done"), 2,
                          "--trigger needs")
    first = submit(url, "add", "-i", '{"x": 1, "y": 2}')
    assert_one_line_error(qo("-q", url, "submit", "add", "--after", first, "--trigger", "most"),
                          2)
    assert_one_line_error(qo("-q", url, "graph", first, "--format", "png"), 2, "--format")


def test_cancel_and_retry_through_the_cli(url: str) -> None:
    first = submit(url, "add", "-i", '{"x": 1, "y": 2}')
    child = submit(url, "add", "-i", '{"x": 1, "y": 1}', "--after", first)
    ok(qo("-q", url, "cancel", first))
    data = show(url, child)
    assert data["status"] == "dead" and data["error"]["type"] == "UpstreamFailed"
    assert f"dependency {first} is cancelled" in data["error"]["message"]
    ok(qo("-q", url, "retry", first))
    assert show(url, child)["status"] == "blocked"
    work_until(url, child)


@pytest.fixture
def api() -> Iterator[Queue]:
    queue = Queue(MemoryStore())
    serverless.configure(queue=queue)
    yield queue
    serverless.reset()


def test_the_api_takes_depends_on_and_workflows(api: Queue) -> None:
    status, first = call("POST", "/tasks", {"type": "add", "input": {"x": 1, "y": 1},
                                             "allow_unregistered": True})
    assert status == 201
    status, child = call("POST", "/tasks", {"type": "add", "depends_on": [first["id"]],
                                             "trigger": "none_failed",
                                             "allow_unregistered": True})
    assert status == 201 and child["status"] == "blocked"
    status, shown = call("GET", f"/tasks/{first['id']}")
    assert status == 200 and shown["dependents"] == [child["id"]]
    status, error = call("POST", "/tasks", {"type": "add", "depends_on": ["0123456789abcdef"],
                                             "allow_unregistered": True})
    assert status == 400 and "unknown dependency" in error["message"]
    status, graph = call("GET", f"/tasks/{child['id']}/graph")
    assert status == 200 and graph["format"] == "mermaid" and "-->" in graph["text"]

    nodes: list[dict[str, Any]] = [
        {"name": "a", "type": "add", "input": {"x": 1, "y": 2}},
        {"name": "b", "type": "add", "input": {"x": 1, "y": 2}, "after": ["a"]}]
    status, made = call("POST", "/workflows", {"name": "w", "nodes": nodes})
    assert status == 201 and set(made["tasks"]) == {"a", "b"}, made
    status, wf = call("GET", f"/workflows/{made['id']}")
    assert status == 200 and wf["status"] == "running"
    assert [n["status"] for n in wf["nodes"]] == ["pending", "blocked"]
    status, graph = call("GET", f"/workflows/{made['id']}/graph")
    assert status == 200 and graph["nodes"][0]["label"] in ("a", "b")
    status, cancelled = call("POST", f"/workflows/{made['id']}/cancel")
    assert status == 200 and cancelled["cancelled"] == 2
    cycle = [{"name": "a", "type": "add", "after": ["b"]}, {"name": "b", "type": "add",
                                                           "after": ["a"]}]
    status, error = call("POST", "/workflows", {"nodes": cycle})
    assert status == 400 and error["message"] == "workflow has a cycle: a -> b -> a", error


def test_workflow_submit_status_graph_cancel_through_the_cli(url: str, tmp_path: Path) -> None:
    spec = tmp_path / "wf.json"
    spec.write_text('{"name": "w", "nodes": [{"name": "a", "type": "add", "input": {"x": 1, '
                    '"y": 2}}, {"name": "b", "type": "add", "input": {"x": 2, "y": 2}, '
                    '"after": ["a"]}]}')
    made = as_json(qo("-q", url, "workflow", "submit", str(spec), "--unregistered", "--json"))
    status = as_json(qo("-q", url, "workflow", "status", made["id"], "--json"))
    assert status["status"] == "running" and [n["status"] for n in status["nodes"]] == [
        "pending", "blocked"]
    assert "a<br/>pending" in ok(qo("-q", url, "graph", made["id"])).stdout
    work(url)
    assert as_json(qo("-q", url, "workflow", "status", made["id"], "--json"))["status"] == \
        "succeeded"
    assert show(url, made["tasks"]["b"])["result"] == 4
    assert "cancelled 0 task(s)" in ok(qo("-q", url, "workflow", "cancel", made["id"])).stdout
    spec.write_text('{"nodes": [{"name": "a", "type": "add", "input": {"x": 1, "y": 1}, '
                    '"after": ["a"]}]}')
    assert_one_line_error(qo("-q", url, "workflow", "submit", str(spec), "--unregistered"), 2,
                          "workflow has a cycle: a -> a")
