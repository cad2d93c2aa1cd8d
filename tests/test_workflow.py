"""Workflows (docs/protocol.md section 10): checked whole, written sinks first, completed
by the audit after a crash, cancelled as one, drawn as Mermaid or DOT."""

from __future__ import annotations

from typing import Any

import pytest

from qo import Workflow
from qo.app import App
from qo.errors import DependencyCycle, DependencyError, StoreUnavailable
from qo.models import Status
from qo.protocol import graph, keys, workflow
from qo.queue import Queue
from qo.settings import Settings
from qo.store.faulty import FaultyStore
from qo.store.memory import MemoryStore
from qo.testing.clock import FakeClock
from qo.testing.drain import drain


def setup(store: Any = None) -> tuple[Any, Queue, App]:
    store = store or MemoryStore()
    queue = Queue(store, Settings())
    app = App(queue)

    @app.task
    def extract(ctx, src: str) -> int:
        return len(src)

    @app.task
    def merge(ctx) -> dict[str, Any]:
        return ctx.parent_results()

    return store, queue, app


def etl() -> Workflow:
    wf = Workflow("etl")
    a = wf.add("extract_a", "extract", {"src": "a"})
    b = wf.add("extract_b", "extract", {"src": "bbb"})
    wf.add("merge", "merge", after=[a, b])
    return wf


def test_a_workflow_runs_and_results_flow_by_node_name() -> None:
    _, queue, app = setup()
    run = etl().submit(queue)
    assert run.status() == "running"
    assert run.tasks["merge"].status() == Status.BLOCKED
    drain(queue, app, [h.id for h in run.tasks.values()])
    assert run.tasks["merge"].result() == {"extract_a": 1, "extract_b": 3}
    assert run.status() == "succeeded"
    assert Workflow.run(queue, run.id).tasks.keys() == run.tasks.keys()


def test_cycles_and_unknown_nodes_are_refused_before_any_write() -> None:
    store, queue, _ = setup()
    wf = Workflow()
    wf.add("a", "extract", {"src": ""}, after=["c"])
    wf.add("b", "extract", {"src": ""}, after=["a"])
    wf.add("c", "extract", {"src": ""}, after=["b"])
    with pytest.raises(DependencyCycle) as caught:
        wf.submit(queue)
    assert str(caught.value) == "workflow has a cycle: a -> b -> c -> a"
    unknown = Workflow()
    unknown.add("a", "extract", {"src": ""}, after=["nope"])
    with pytest.raises(DependencyError, match="depends on unknown node 'nope'"):
        unknown.submit(queue)
    assert list(store.list("")) == []


def test_find_cycle_names_a_self_loop_and_finds_none_in_a_dag() -> None:
    assert workflow.find_cycle({"a": ["a"]}) == ["a", "a"]
    assert workflow.find_cycle({"a": [], "b": ["a"], "c": ["a", "b"]}) is None


def test_cancel_cancels_every_node() -> None:
    _, queue, _ = setup()
    run = etl().submit(queue)
    assert run.cancel() == 3
    assert {h.status() for h in run.tasks.values()} == {Status.CANCELLED}
    assert run.status() == "cancelled"


def test_a_crash_midway_leaves_a_graph_the_audit_completes() -> None:
    clock = FakeClock()
    store = FaultyStore(MemoryStore(clock=clock))
    _, queue, app = setup(store)
    # the submitter dies at its third task write: the sink and one root are written
    store.inject("put", "before", key_prefix=keys.TASKS, times=100,
                 when=lambda _k: len(list(store.inner.list(keys.TASKS))) >= 2)
    with pytest.raises(StoreUnavailable):
        etl().submit(queue)
    store.clear()
    [pending] = [i.key for i in store.list(keys.WORKFLOWS_PENDING)]
    workflow_id = pending.rsplit("/", 1)[1]
    run = Workflow.run(queue, workflow_id)
    assert run.tasks["merge"].status() == Status.BLOCKED  # sinks first: nothing ran early
    clock.advance(workflow.GRACE + 1)
    queue.sweep()  # the audit's pass completes it
    assert list(store.list(keys.WORKFLOWS_PENDING)) == []
    drain(queue, app, [h.id for h in run.tasks.values()])
    assert run.status() == "succeeded"


def test_graph_as_mermaid_and_dot() -> None:
    _, queue, _ = setup()
    run = etl().submit(queue)
    queue.cancel(run.tasks["extract_b"].id)
    text = run.graph()
    assert text.startswith("flowchart TD\n")
    assert 'n0["extract_a<br/>pending"]:::pending' in text
    assert 'n1["extract_b<br/>cancelled"]:::cancelled' in text
    assert "n0 --> n2" in text and "n1 --> n2" in text
    assert '"merge<br/>dead"' in text  # all_success: a cancelled dependency fails it
    dot = run.graph("dot")
    assert dot.startswith("digraph qo {")
    a, m = run.tasks["extract_a"].id, run.tasks["merge"].id
    assert f'"{a}" -> "{m}";' in dot and 'label="extract_a\\npending"' in dot
    # a task of the workflow shows its whole workflow
    assert graph.collect(queue.store, m).nodes.keys() == {h.id for h in run.tasks.values()}


def test_graph_around_a_plain_task() -> None:
    _, queue, _ = setup()
    a = queue.submit("extract", {"src": "x"})
    b = queue.submit("merge", None, depends_on=[a])
    c = queue.submit("merge", None, depends_on=[b])
    g = graph.collect(queue.store, b.id)
    assert set(g.nodes) == {a.id, b.id, c.id}
    assert sorted(g.edges) == sorted([(a.id, b.id), (b.id, c.id)])


def test_retention_deletes_a_workflows_manifest_with_its_last_task() -> None:
    from qo.protocol import retention

    clock = FakeClock()
    store, queue, app = setup(MemoryStore(clock=clock))
    done = etl().submit(queue)
    drain(queue, app, [h.id for h in done.tasks.values()])
    waiting = etl().submit(queue)  # not run: its tasks are not finished, so they stay
    clock.advance(10 * 86_400)
    report = retention.run_retention(store, 86_400, budget=2)  # 2 keys a run: resumable
    while not report.pass_done:
        report = retention.run_retention(store, 86_400, budget=2)
    manifests = [i.key for i in store.list(keys.WORKFLOWS)]
    assert manifests == [keys.workflow_key(waiting.id)]
    assert Workflow.run(queue, waiting.id).status() == "running"
    with pytest.raises(workflow.WorkflowNotFound):
        Workflow.run(queue, done.id)


def test_a_workflow_follows_its_queues_settings() -> None:
    from qo.protocol import backpressure
    from qo.protocol.backpressure import QueueFull

    store, queue, _app = setup()
    backpressure.set_settings(store, "default", max_depth=2, aging=60)
    with pytest.raises(QueueFull, match="3 more would not fit"):
        etl().submit(queue)  # three nodes, room for two: none is written
    assert list(store.list(keys.WORKFLOWS)) == [] and list(store.list(keys.TASKS)) == []
    backpressure.set_settings(store, "default", max_depth=10, aging=60)
    fresh = Queue(store, Settings())  # (the first one trusts its listing for registry_ttl)
    run = etl().submit(fresh)
    assert {fresh.get(h.id).record.aging for h in run.tasks.values()} == {60}
