"""Task dependencies (docs/protocol.md section 10): blocked tasks, trigger rules, repairs."""

from __future__ import annotations

from typing import Any

import pytest

from qo.app import App
from qo.errors import DependencyError
from qo.models import Status
from qo.protocol import deps, keys, outcome
from qo.protocol.claim import Claimer
from qo.queue import Queue
from qo.settings import Settings
from qo.store.memory import MemoryStore
from qo.store.metrics import diff
from qo.testing.drain import drain


def setup() -> tuple[MemoryStore, Queue, App, dict[str, Any]]:
    store = MemoryStore()
    queue = Queue(store, Settings())
    app = App(queue)
    seen: dict[str, Any] = {"ran": [], "fail": True}

    @app.task
    def ok(ctx, n: int = 0) -> int:
        seen["ran"].append(ctx.task_id)
        return n

    @app.task(max_attempts=1)
    def boom(ctx) -> None:
        seen["ran"].append(ctx.task_id)
        if seen["fail"]:
            raise RuntimeError("boom")

    @app.task
    def join(ctx) -> dict[str, Any]:
        seen["ran"].append(ctx.task_id)
        outs = ctx.dependencies
        seen["join"] = outs
        return {"sum": sum(o.result or 0 for o in outs if o.succeeded),
                "statuses": sorted(o.status for o in outs)}

    return store, queue, app, seen


def status(queue: Queue, task_id: str) -> Status:
    return queue.get(task_id).record.status


def test_a_dependent_is_blocked_then_runs_after_its_dependency() -> None:
    store, queue, app, seen = setup()
    a = queue.submit("ok", {"n": 1})
    b = queue.submit("join", None, depends_on=[a])
    assert status(queue, b.id) == Status.BLOCKED
    assert [i.key for i in store.list(keys.READY)] and all(b.id not in i.key
                                                           for i in store.list(keys.READY))
    drain(queue, app, [a.id, b.id])
    assert status(queue, b.id) == Status.SUCCEEDED
    assert seen["ran"] == [a.id, b.id]
    assert b.result() == {"sum": 1, "statuses": ["succeeded"]}


def test_a_dependency_that_already_ended_readies_the_dependent_at_submit() -> None:
    _, queue, app, _ = setup()
    a = queue.submit("ok", {"n": 2})
    drain(queue, app, [a.id])
    b = queue.submit("join", None, depends_on=[a.id])
    assert status(queue, b.id) == Status.PENDING
    drain(queue, app, [b.id])
    assert b.result()["sum"] == 2


def test_unknown_dependency_is_refused_before_any_write() -> None:
    store, queue, _, _ = setup()
    before = {i.key for i in store.list("")}
    with pytest.raises(DependencyError, match="unknown dependency"):
        queue.submit("ok", None, depends_on=["0123456789abcdef"])
    assert {i.key for i in store.list("")} == before


def test_diamond() -> None:
    _, queue, app, seen = setup()
    a = queue.submit("ok", {"n": 1})
    b = queue.submit("ok", {"n": 2}, depends_on=[a])
    c = queue.submit("ok", {"n": 3}, depends_on=[a])
    d = queue.submit("join", None, depends_on=[b, c])
    drain(queue, app, [d.id])
    assert d.result() == {"sum": 5, "statuses": ["succeeded", "succeeded"]}
    assert seen["ran"][0] == a.id and seen["ran"][-1] == d.id


def test_a_failed_dependency_fails_the_chain_naming_the_first_failure() -> None:
    _, queue, app, seen = setup()
    a = queue.submit("boom")
    chain = [a]
    for _ in range(5):
        chain.append(queue.submit("ok", None, depends_on=[chain[-1]]))
    drain(queue, app, [t.id for t in chain])
    assert seen["ran"] == [a.id]
    last = queue.get(chain[-1].id).record
    assert last.status == Status.DEAD and last.error is not None
    assert last.error.type == deps.UPSTREAM_FAILED
    assert last.error.message == (f"dependency {chain[-2].id} is dead; first failure: "
                                  f"{a.id} is dead")


@pytest.mark.parametrize(("trigger", "expected"), [
    ("all_success", Status.DEAD), ("all_done", Status.SUCCEEDED),
    ("none_failed", Status.DEAD), ("always", Status.SUCCEEDED)])
def test_trigger_rules_with_one_failed_dependency(trigger: str, expected: Status) -> None:
    _, queue, app, _ = setup()
    good, bad = queue.submit("ok", {"n": 4}), queue.submit("boom")
    j = queue.submit("join", None, depends_on=[good, bad], trigger=trigger)
    drain(queue, app, [good.id, bad.id, j.id])
    assert status(queue, j.id) == expected
    if expected == Status.SUCCEEDED:
        assert j.result() == {"sum": 4, "statuses": ["dead", "succeeded"]}


def test_cancel_applies_the_trigger_rules() -> None:
    _, queue, app, _ = setup()
    a = queue.submit("ok")
    strict = queue.submit("ok", None, depends_on=[a])
    lenient = queue.submit("join", None, depends_on=[a], trigger="all_done")
    queue.cancel(a.id)
    assert status(queue, strict.id) == Status.DEAD
    assert status(queue, lenient.id) == Status.PENDING
    drain(queue, app, [lenient.id])
    assert lenient.result()["statuses"] == ["cancelled"]


def test_retry_of_a_failed_dependency_rearms_its_dependents() -> None:
    _, queue, app, seen = setup()
    a = queue.submit("boom")
    b = queue.submit("ok", None, depends_on=[a])
    c = queue.submit("ok", None, depends_on=[b])
    drain(queue, app, [a.id, b.id, c.id])
    assert status(queue, c.id) == Status.DEAD

    seen["fail"] = False
    queue.retry(a.id)
    assert status(queue, b.id) == Status.BLOCKED and status(queue, c.id) == Status.BLOCKED
    drain(queue, app, [a.id, b.id, c.id])
    assert [status(queue, t) for t in (a.id, b.id, c.id)] == [Status.SUCCEEDED] * 3


def test_requests_per_edge_are_exact() -> None:
    """docs/protocol.md section 10, "Cost": a child's submit, and its parent's end."""
    store = MemoryStore()
    queue = Queue(store, Settings())
    queue.registry.listing()
    claimer = Claimer(store, queue.settings, queues=["default"], task_types={"t"}, owner="w")
    a = queue.submit("t")
    before = store.counts.snapshot()
    b = queue.submit("t", depends_on=[a])  # validate a, edge, record, flag a (the first child)
    assert diff(store.counts.snapshot(), before) == {"GET": 1, "PUT": 3}
    before = store.counts.snapshot()
    c = queue.submit("t", depends_on=[a])  # a is flagged: read again after the record
    assert diff(store.counts.snapshot(), before) == {"GET": 2, "PUT": 2}

    claim = claimer.claim()
    assert claim is not None and claim.task_id == a.id
    before = store.counts.snapshot()
    outcome.succeed(store, claim, 1, queue.settings)
    # the outcome CAS; 1 LIST of a's edges; per child: done marker, GET, CAS, ready marker
    assert diff(store.counts.snapshot(), before) == {"PUT": 7, "LIST": 1, "GET": 2, "DELETE": 1}
    assert {status(queue, b.id), status(queue, c.id)} == {Status.PENDING}

    # a join of two: the first to end lists one arrival and stops; the second decides
    p1, p2 = queue.submit("t"), queue.submit("t")
    j = queue.submit("t", depends_on=[p1, p2])
    for n, parent in enumerate((p1, p2)):
        claimer.forget()
        claim = claimer.claim()
        while claim is not None and claim.task_id != parent.id:
            outcome.succeed(store, claim, 0, queue.settings)
            claim = claimer.claim()
        assert claim is not None
        before = store.counts.snapshot()
        outcome.succeed(store, claim, 0, queue.settings)
        extra = {"GET": 1, "PUT": 2} if n == 1 else {}
        want = {"PUT": 2, "LIST": 2, "DELETE": 1}
        assert diff(store.counts.snapshot(), before) == {
            k: want.get(k, 0) + extra.get(k, 0) for k in {*want, *extra}}
    assert status(queue, j.id) == Status.PENDING


def test_fan_in_of_100() -> None:
    _, queue, app, _ = setup()
    parents = [queue.submit("ok", {"n": i}) for i in range(100)]
    j = queue.submit("join", None, depends_on=parents)
    drain(queue, app, [j.id])
    assert j.result() == {"sum": sum(range(100)), "statuses": ["succeeded"] * 100}


@pytest.mark.slow  # seconds: 2,002 tasks and 2,000 edges through the real worker path
def test_fan_out_of_1000_then_a_join() -> None:
    _, queue, app, seen = setup()
    root = queue.submit("ok", {"n": 1})
    kids = queue.submit_many([{"type": "ok", "input": {"n": i}, "depends_on": [root.id]}
                              for i in range(1000)])
    assert {status(queue, k.id) for k in kids[:5]} == {Status.BLOCKED}
    j = queue.submit("join", None, depends_on=kids)
    drain(queue, app, [j.id])
    assert len(seen["ran"]) == 1002 and seen["ran"][0] == root.id and seen["ran"][-1] == j.id
    assert j.result() == {"sum": sum(range(1000)), "statuses": ["succeeded"] * 1000}


def test_chain_of_100() -> None:
    _, queue, app, seen = setup()
    chain = [queue.submit("ok", {"n": 0})]
    for i in range(1, 100):
        chain.append(queue.submit("ok", {"n": i}, depends_on=[chain[-1]]))
    drain(queue, app, [chain[-1].id])
    assert seen["ran"] == [t.id for t in chain]


def test_the_audit_arms_a_blocked_task_whose_submit_died_before_arming() -> None:
    from qo.protocol import records, submit
    from qo.testing.clock import FakeClock

    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue = Queue(store, Settings())
    app = App(queue)

    @app.task
    def ok(ctx) -> int:
        return 1

    a = queue.submit("ok")
    req = submit.SubmitRequest(type="ok", depends_on=[a.id])
    prepared = submit.prepare(req, queue.settings, store.now())
    deps.write_edges(store, prepared.record)
    records.create(store, prepared.record, prepared.body)  # ... and died: a is not flagged
    drain(queue, app, [a.id])
    child = prepared.record.id
    assert status(queue, child) == Status.BLOCKED
    clock.advance(600)  # older than the audit's grace
    assert queue.sweep().repaired == 1
    assert status(queue, child) == Status.PENDING
    drain(queue, app, [child])
    assert status(queue, child) == Status.SUCCEEDED


def test_retention_deletes_the_edges_and_arrivals_of_the_tasks_it_deletes() -> None:
    from qo.protocol import retention
    from qo.testing.clock import FakeClock

    clock = FakeClock()
    store = MemoryStore(clock=clock)
    queue = Queue(store, Settings())
    app = App(queue)

    @app.task
    def ok(ctx) -> int:
        return 1

    a = queue.submit("ok")
    b = queue.submit("ok", depends_on=[a])
    drain(queue, app, [a.id, b.id])
    assert len(list(store.list("deps/"))) == 2  # the edge and its arrival
    clock.advance(10 * 86_400)
    assert retention.run_retention(store, 86_400).deleted == 2
    assert list(store.list("deps/")) == []


def test_a_handler_that_skips_and_the_rules_that_see_it() -> None:
    _, queue, app, seen = setup()

    @app.task
    def branch(ctx, take: bool) -> str:
        if not take:
            ctx.skip("not this branch")
        return "taken"

    @app.task(name="decide")
    def decide_task(ctx) -> list[str]:  # the handler-decides mode
        return [f"{d.node or d.id}:{d.status}" for d in ctx.dependencies]

    no = queue.submit("branch", {"take": False})
    yes = queue.submit("branch", {"take": True})
    strict = queue.submit("ok", None, depends_on=[no, yes])  # all_success: skipped
    lenient = queue.submit("ok", None, depends_on=[no, yes], trigger="none_failed")
    after_strict = queue.submit("ok", None, depends_on=[strict], trigger="none_failed")
    decider = queue.submit("decide", None, depends_on=[no, yes], trigger="always")
    ids = [no.id, yes.id, strict.id, lenient.id, after_strict.id, decider.id]
    drain(queue, app, ids)
    rec = queue.get(no.id).record
    assert rec.status == Status.SKIPPED and rec.error is not None
    assert (rec.error.type, rec.error.message, rec.attempt) == ("Skipped", "not this branch", 1)
    assert status(queue, strict.id) == Status.SKIPPED
    assert queue.get(strict.id).record.error.type == deps.UPSTREAM_SKIPPED  # type: ignore[union-attr]
    assert status(queue, lenient.id) == Status.SUCCEEDED
    assert status(queue, after_strict.id) == Status.SUCCEEDED  # skipped counts as done
    assert decider.result() == [f"{no.id}:skipped", f"{yes.id}:succeeded"]
    assert strict.id not in seen["ran"]


def test_retry_of_a_dependent_that_failed_upstream_waits_again_and_ls_lists_blocked() -> None:
    _, queue, app, seen = setup()
    a = queue.submit("boom")
    b = queue.submit("ok", None, depends_on=[a])
    assert [v.record.id for v in queue.ls(status=Status.BLOCKED)] == [b.id]
    drain(queue, app, [a.id, b.id])
    assert status(queue, b.id) == Status.DEAD
    view = queue.retry(b.id)  # its dependency is still dead: decided again, at once
    assert view.status == Status.DEAD and b.id not in seen["ran"]
    seen["fail"] = False
    queue.retry(a.id)
    assert status(queue, b.id) == Status.BLOCKED
    drain(queue, app, [a.id, b.id])
    assert status(queue, b.id) == Status.SUCCEEDED


def test_a_batch_with_an_unknown_dependency_writes_nothing() -> None:
    from qo.protocol.submit import InvalidBatchItem

    store, queue, app, _ = setup()
    root = queue.submit("ok", {"n": 5})
    before = {i.key for i in store.list("")}
    reqs: list[dict[str, Any]] = [{"type": "ok", "input": {"n": i}, "depends_on": [root.id]}
                                  for i in range(3)]
    reqs.append({"type": "ok", "depends_on": ["0123456789abcdef"]})
    with pytest.raises(InvalidBatchItem, match="item 3: unknown dependency"):
        queue.submit_many(reqs)
    assert {i.key for i in store.list("")} == before
    kids = queue.submit_many(reqs[:3])
    drain(queue, app, [k.id for k in kids])
    assert [k.result() for k in kids] == [0, 1, 2]


def test_a_finisher_whose_clock_is_behind_the_child_still_makes_it_ready() -> None:
    """The follow-up's ``now`` is taken when the parent's outcome starts; the child may be
    submitted after that (the race test found a child left 'scheduled' without a sweep)."""
    from qo.protocol import index

    store, queue, _, _ = setup()
    a = queue.submit("ok")
    b = queue.submit("ok", depends_on=[a])
    store.put(keys.done_key(b.id, a.id, "succeeded"), b"t", if_none_match=True)
    behind = queue.get(b.id).record.created_at - 5.0
    decided = deps.settle(store, b.id, behind)
    assert decided is not None and decided.status == Status.PENDING
    assert store.head(index.marker_of(decided).ready_key) is not None
    assert list(store.list(keys.DELAYED)) == []


def test_only_records_with_dependency_fields_are_schema_4() -> None:
    import orjson

    store, queue, _, _ = setup()
    a = queue.submit("ok")
    assert orjson.loads(store.get(keys.task_key(a.id)).body)["v"] == 1  # type: ignore[union-attr]
    b = queue.submit("ok", depends_on=[a])
    assert orjson.loads(store.get(keys.task_key(b.id)).body)["v"] == 4  # type: ignore[union-attr]
    flagged = orjson.loads(store.get(keys.task_key(a.id)).body)  # type: ignore[union-attr]
    assert flagged["v"] == 4 and flagged["has_dependents"] is True
