"""The graph around a task or a workflow, with each node's status, as Mermaid or DOT.

``collect`` reads: for a workflow id, its manifest and every node's record
(1 GET + 1 HEAD + 1 GET per node); for a task of a workflow, the same for its
workflow; for another task, its dependencies (1 GET each, following
``depends_on`` upwards) and its dependents (1 LIST per task, following edges
downwards), at most ``MAX_NODES`` tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qo.errors import QoError
from qo.names import check_task_id
from qo.protocol import deps, records, workflow
from qo.protocol.admin import TaskNotFound
from qo.store.base import Store

MAX_NODES = 500
FORMATS = ("mermaid", "dot")

#: Fill colours by status (both formats).
COLOURS = {
    "succeeded": "#d4edda", "dead": "#f8d7da", "cancelled": "#e2e3e5", "skipped": "#fff3cd",
    "blocked": "#e7f1ff", "pending": "#ffffff", "scheduled": "#ffffff", "failed": "#fde2c8",
    "running": "#cce5ff", "unwritten": "#f5f5f5", "missing": "#f5f5f5",
}


@dataclass
class Graph:
    title: str
    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (label, status)
    edges: list[tuple[str, str]] = field(default_factory=list)  # (dependency, dependent)
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "truncated": self.truncated,
                "nodes": [{"id": i, "label": label, "status": status}
                          for i, (label, status) in self.nodes.items()],
                "edges": [{"from": a, "to": b} for a, b in self.edges]}


def collect(store: Store, some_id: str) -> Graph:
    """The graph of a workflow id, or around a task id (``TaskNotFound`` if neither)."""
    check_task_id(some_id)
    try:
        return _of_workflow(store, some_id)
    except workflow.WorkflowNotFound:
        pass
    current = records.read(store, some_id)
    if current is None:
        raise TaskNotFound(f"no task or workflow with id {some_id}")
    if current.value.workflow is not None:
        try:
            return _of_workflow(store, current.value.workflow)
        except workflow.WorkflowNotFound:
            pass
    return _around(store, some_id)


def _of_workflow(store: Store, workflow_id: str) -> Graph:
    view = workflow.view(store, workflow_id)
    m = view.manifest
    graph = Graph(f"workflow {m.name or m.id} ({view.status})")
    for spec in m.nodes:
        rec = view.records[spec.name]
        graph.nodes[spec.task_id] = (spec.name, "unwritten" if rec is None else rec.status.value)
    for spec in m.nodes:
        graph.edges += [(m.node(p).task_id, spec.task_id) for p in spec.after]
    return graph


def _around(store: Store, task_id: str) -> Graph:
    graph = Graph(f"task {task_id}")
    todo, seen = [task_id], {task_id}
    while todo:
        tid = todo.pop()
        cur = records.read(store, tid)
        if cur is None:
            graph.nodes[tid] = (tid, "missing")
            continue
        rec = cur.value
        graph.nodes[tid] = (rec.tags.get(deps.NODE_TAG) or f"{rec.type} {tid}", rec.status.value)
        linked = [(p, tid) for p in rec.depends_on]
        if rec.has_dependents:
            linked += [(tid, c) for c in deps.dependents_of(store, tid)]
        for edge in linked:
            if edge not in graph.edges:
                graph.edges.append(edge)
            for other in edge:
                if other not in seen:
                    if len(seen) >= MAX_NODES:
                        graph.truncated = True
                        continue
                    seen.add(other)
                    todo.append(other)
    graph.edges = [e for e in graph.edges if e[0] in graph.nodes and e[1] in graph.nodes]
    return graph


def render(graph: Graph, fmt: str = "mermaid") -> str:
    if fmt == "mermaid":
        return mermaid(graph)
    if fmt == "dot":
        return dot(graph)
    raise QoError(f"unknown graph format {fmt!r}: one of {', '.join(FORMATS)}")


def mermaid(graph: Graph) -> str:
    names = {task_id: f"n{i}" for i, task_id in enumerate(graph.nodes)}
    lines = ["flowchart TD", f"  %% {graph.title}"]
    for task_id, (label, status) in graph.nodes.items():
        text = f"{label}<br/>{status}".replace('"', "#quot;")
        lines.append(f'  {names[task_id]}["{text}"]:::{status}')
    lines += [f"  {names[a]} --> {names[b]}" for a, b in graph.edges
              if a in names and b in names]
    for status in sorted({s for _, s in graph.nodes.values()}):
        lines.append(f"  classDef {status} fill:{COLOURS.get(status, '#ffffff')},stroke:#555")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _quote(text: str) -> str:
    return f'"{_escape(text)}"'


def dot(graph: Graph) -> str:
    lines = ["digraph qo {", f"  label={_quote(graph.title)};",
             '  node [shape=box, style="rounded,filled"];']
    for task_id, (label, status) in graph.nodes.items():
        lines.append(f'  {_quote(task_id)} [label="{_escape(label)}\\n{status}", '
                     f"fillcolor={_quote(COLOURS.get(status, '#ffffff'))}];")
    lines += [f"  {_quote(a)} -> {_quote(b)};" for a, b in graph.edges
              if a in graph.nodes and b in graph.nodes]
    lines.append("}")
    return "\n".join(lines) + "\n"
