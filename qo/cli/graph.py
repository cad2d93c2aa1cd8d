"""``qo graph ID`` and ``qo workflow status|cancel ID``: dependencies and workflows.

``qo graph`` prints a task's or a workflow's graph with each node's status, as
Mermaid (default) or Graphviz DOT (``--format dot``), or as JSON (``--json``).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from qo.cli import common
from qo.cli.common import CliError, JsonOption, QueueOption, cell, emit_json, say
from qo.protocol import graph as graphs
from qo.workflow import Workflow


def register(app: typer.Typer) -> None:
    app.command("graph")(graph)
    common.add_group(app, "workflow", "Workflows: graphs of tasks submitted as one.",
                     {"submit": workflow_submit, "status": workflow_status,
                      "cancel": workflow_cancel})


def workflow_submit(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(
        metavar="FILE|-", help='JSON: {"name": ..., "nodes": [{"name", "type", "input", '
                               '"after": [names], "trigger", ...}]}')],
    unregistered: Annotated[bool, typer.Option(
        "--unregistered", help="Allow task types no worker has published yet.")] = False,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Submit a workflow: checked whole (unknown nodes, cycles) before anything is written."""
    from qo.cli.submit import read_json_arg

    spec = read_json_arg(source if source == "-" else f"@{source}", "workflow")
    if not isinstance(spec, dict) or not isinstance(spec.get("nodes"), list):
        raise CliError('a workflow is a JSON object with "nodes": [...]')
    unknown = sorted(set(spec) - {"name", "nodes"})
    if unknown:
        raise CliError(f"unknown workflow field(s) {', '.join(unknown)}: name and nodes only")
    wf = Workflow(spec.get("name") if isinstance(spec.get("name"), str) else None)
    for n, node in enumerate(spec["nodes"]):
        if not isinstance(node, dict) or not isinstance(node.get("name"), str) \
                or not isinstance(node.get("type"), str):
            raise CliError(f"nodes[{n}]: an object with string fields name and type")
        fields = dict(node)
        after = fields.pop("after", [])
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            raise CliError(f"nodes[{n}]: after must be an array of node names")
        wf.add(fields.pop("name"), fields.pop("type"), fields.pop("input", None), after=after,
               **fields)
    run = wf.submit(common.open_queue(ctx, queue), allow_unregistered=unregistered)
    data = {"id": run.id, "tasks": {name: h.id for name, h in run.tasks.items()}}
    common.answer(data, run.id, json=json)


def graph(
    ctx: typer.Context,
    some_id: Annotated[str, typer.Argument(metavar="ID", help="A task id or a workflow id.")],
    fmt: Annotated[str, typer.Option(
        "--format", metavar="mermaid|dot", help="Mermaid (default) or Graphviz DOT.")
    ] = "mermaid",
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Print the graph of a workflow, or around a task, with each node's status."""
    if fmt not in graphs.FORMATS:
        raise CliError(f"unknown --format {fmt!r}: one of {', '.join(graphs.FORMATS)}")
    q = common.open_queue(ctx, queue)
    found = graphs.collect(q.store, some_id)
    if json:
        emit_json(found.as_dict())
        return
    typer.echo(graphs.render(found, fmt), nl=False)
    if found.truncated:
        common.note(f"warning: only the first {graphs.MAX_NODES} tasks are shown")


def workflow_status(
    ctx: typer.Context,
    workflow_id: Annotated[str, typer.Argument(metavar="ID")],
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """A workflow's status and each node's."""
    q = common.open_queue(ctx, queue)
    view = Workflow.run(q, workflow_id).view()
    nodes = [{"node": n.name, "id": n.task_id, "after": n.after,
              "status": (r.status.value if (r := view.records[n.name]) is not None
                         else "unwritten")} for n in view.manifest.nodes]
    if json:
        emit_json({"id": workflow_id, "name": view.manifest.name, "status": view.status,
                   "counts": view.counts(), "nodes": nodes})
        return
    say(f"workflow {view.manifest.name or workflow_id} {workflow_id}: {view.status}")
    table = Table()
    for name in ("node", "id", "status", "after"):
        table.add_column(name)
    for n in nodes:
        table.add_row(cell(n["node"]), cell(n["id"]), cell(n["status"]),
                      cell(", ".join(n["after"])))  # type: ignore[arg-type]
    common.console().print(table)


def workflow_cancel(
    ctx: typer.Context,
    workflow_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option(help="Recorded on each task.")] = "workflow cancelled",
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Cancel every task of a workflow that has not ended."""
    q = common.open_queue(ctx, queue)
    count = Workflow.run(q, workflow_id).cancel(reason)
    common.answer({"id": workflow_id, "cancelled": count},
                  f"cancelled {count} task(s) of workflow {workflow_id}", json=json)
