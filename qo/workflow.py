"""``qo.Workflow``: a graph of tasks named by node, checked whole and submitted as one.

::

    wf = qo.Workflow("nightly")
    a = wf.add("extract_a", "extract", {"src": "a"})
    b = wf.add("extract_b", "extract", {"src": "b"})
    wf.add("merge", "merge", after=[a, b], trigger="all_success")
    run = wf.submit(queue)          # or queue-less: Workflow.run(queue, id)
    run.tasks["merge"].result(timeout=60)

Nothing is written until every node is known, every ``after`` names a node and
the graph has no cycle (``DependencyCycle`` names it). The protocol is
``qo/protocol/workflow.py`` (docs/protocol.md section 10, "Workflows").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qo.errors import DependencyError, QoError
from qo.ids import new_task_id
from qo.protocol import admin, graph, workflow
from qo.protocol.submit import SubmitRequest
from qo.protocol.workflow import WorkflowView

if TYPE_CHECKING:
    from qo.app import App
    from qo.queue import Queue, TaskHandle


class Workflow:
    """Nodes (name -> a task to submit) and their dependencies, by name."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self._nodes: list[tuple[str, dict[str, Any], list[str]]] = []

    def add(self, name: str, task_type: str, input: Any = None, *, after: list[str] = (),  # type: ignore[assignment]
            **options: Any) -> str:
        """A node running ``task_type``; ``after``: the names of the nodes it waits for;
        ``options``: those of ``Queue.submit`` (``trigger``, ``priority``, ...). Returns
        ``name``, to pass in another node's ``after``."""
        if "depends_on" in options or "key" in options:
            raise DependencyError("a workflow node names its dependencies with after=[names], "
                                  "and its id comes from the workflow: no depends_on or key")
        self._nodes.append((name, {"type": task_type, "input": input, **options}, list(after)))
        return name

    def __len__(self) -> int:
        return len(self._nodes)

    def submit(self, queue: Queue, *, app: App | None = None,
               allow_unregistered: bool = False) -> WorkflowRun:
        """Check the graph and every request, then write it (see the module docstring).
        With ``app``, node options come from the app's handlers, else from the registry."""
        requests = []
        for name, fields, after in self._nodes:
            try:
                if app is not None:
                    fields = app.submit_defaults(app.definition(fields["type"])) | fields
                else:
                    fields = queue.resolve(fields, allow_unregistered=allow_unregistered)
                requests.append((name, SubmitRequest(**fields), after))
            except QoError as exc:
                exc.args = (f"workflow node {name!r}: {exc}",)
                raise
        store = queue.store
        now = store.now()
        workflow_id = new_task_id(now)
        manifest, prepared = workflow.plan(workflow_id, self.name, requests, queue.settings, now,
                                           aging=queue.aging_of())
        queue.check_store()
        queue.admit(list(prepared.values()))  # QueueFull past max_depth: nothing is written
        workflow.submit(queue.store, manifest, prepared, queue.settings, now)
        return WorkflowRun(queue, workflow_id, {n.name: n.task_id for n in manifest.nodes})

    @staticmethod
    def run(queue: Queue, workflow_id: str) -> WorkflowRun:
        """A handle on a submitted workflow (1 GET of its manifest)."""
        manifest = workflow.read(queue.store, workflow_id)
        return WorkflowRun(queue, workflow_id, {n.name: n.task_id for n in manifest.nodes})


class WorkflowRun:
    """A submitted workflow: its id, a handle per node, its status, cancel, graph."""

    def __init__(self, queue: Queue, workflow_id: str, ids: dict[str, str]) -> None:
        self.queue, self.id = queue, workflow_id
        self.tasks: dict[str, TaskHandle] = {name: queue.handle(i) for name, i in ids.items()}

    def __repr__(self) -> str:
        return f"WorkflowRun({self.id!r}, {len(self.tasks)} nodes)"

    def view(self) -> WorkflowView:
        return workflow.view(self.queue.store, self.id)

    def status(self) -> str:
        """``running``, ``succeeded``, ``failed`` or ``cancelled`` (reads every node)."""
        return self.view().status

    def cancel(self, reason: str = "workflow cancelled") -> int:
        """Cancel every node that has not ended; how many were cancelled."""
        q = self.queue
        return workflow.cancel(q.store, q.settings, self.id, reason,
                               lambda task_id, why: admin.cancel(q.store, task_id, why,
                                                                 hooks=q.hooks))

    def graph(self, fmt: str = "mermaid") -> str:
        """The graph with each node's status, as Mermaid (default) or Graphviz DOT."""
        return graph.render(graph.collect(self.queue.store, self.id), fmt)
