"""The task-type registry (issue 16): workers publish definitions, submitters without the app
use them. Memory store and the moto server; request counts on the counting memory store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from qo import scheduler, serverless
from qo.app import App
from qo.models import RetryPolicy, Status
from qo.protocol import keys, registry
from qo.protocol.registry import InvalidInput, Registry, UnregisteredType
from qo.queue import Queue
from qo.settings import Settings
from qo.store.base import Store
from qo.store.memory import MemoryStore
from qo.store.metrics import diff
from qo.worker import Worker, WorkerOptions

from .helpers import api_call
from .test_cli import qo as run_qo

pytestmark = pytest.mark.timeout(120)


class Point(BaseModel):
    x: int
    y: int = 0


def make_app(queue: Queue) -> App:
    app = App(queue)

    @app.task(queue="emails", priority=200, max_attempts=7, timeout=30,
              retry=RetryPolicy(base=2, cap=10))
    def send(to: str, times: int = 1) -> str:
        """Send one email.

        Retried on SMTP errors."""
        return to * times

    @app.task
    def plot(p: Point, label: str | None = None) -> int:
        return p.x

    return app


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def published(store: Store) -> tuple[Queue, Clock]:
    """A store whose registry holds ``make_app``'s types, and a Queue without the app."""
    make_app(Queue(store)).publish(store, owner="w1")
    clock = Clock()
    queue = Queue(store)
    queue.registry = Registry(store, ttl=30, clock=clock)
    return queue, clock



# -- publishing ----------------------------------------------------------------------


def test_a_worker_publishes_each_type_once_and_again_only_when_it_changes() -> None:
    store = MemoryStore()
    app = make_app(Queue(store))
    before = store.counts.snapshot()
    report = app.publish(store, owner="w1")
    assert sorted(report.written) == ["types/plot/1.json", "types/send/1.json"]
    assert diff(store.counts.snapshot(), before) == {"GET": 2, "PUT": 2}

    before = store.counts.snapshot()  # another start, or another worker: nothing changed
    report = make_app(Queue(store)).publish(store, owner="w2")
    assert report.written == [] and report.unchanged == 2
    assert diff(store.counts.snapshot(), before) == {"GET": 2}

    changed = App(Queue(store))
    changed.task(name="send", queue="emails", priority=10)(lambda to: to)
    before = store.counts.snapshot()
    assert changed.publish(store, owner="w3").written == ["types/send/1.json"]
    assert diff(store.counts.snapshot(), before) == {"GET": 1, "PUT": 1}
    stored = registry.read_definition(store, "send", 1)
    assert stored is not None and stored.priority == 10 and stored.published_by == "w3"


def test_the_definition_holds_what_a_submitter_needs() -> None:
    store = MemoryStore()
    make_app(Queue(store)).publish(store, owner="w1")
    send = registry.read_definition(store, "send", 1)
    assert send is not None
    assert (send.queue, send.priority, send.max_attempts, send.timeout) == ("emails", 200, 7, 30)
    assert send.retry == RetryPolicy(base=2, cap=10) and send.version == 1
    assert send.doc == "Send one email.\n\nRetried on SMTP errors."
    assert send.input_schema is not None
    assert send.input_schema["required"] == ["to"]
    assert set(send.input_schema["properties"]) == {"to", "times"}
    plot = registry.read_definition(store, "plot", 1)
    assert plot is not None and plot.queue == "default"  # the app's default queue


def test_a_worker_publishes_at_start() -> None:
    store = MemoryStore()
    queue = Queue(store)
    app = make_app(queue)
    Worker(app, queue, WorkerOptions(burst=True, concurrency=1, sweep_interval=3600)).run()
    assert sorted(registry.list_types(store)) == [("plot", 1), ("send", 1)]


def test_a_lost_race_with_the_same_definition_is_not_a_conflict() -> None:
    store = MemoryStore()
    app = make_app(Queue(store))
    definition = next(d for d in app.type_definitions() if d.name == "send")
    # another worker writes the same definition between our GET and our PUT
    real_get = store.get
    raced = {"done": False}

    def get(key: str) -> Any:
        found = real_get(key)
        if key == definition.key and not raced["done"]:
            raced["done"] = True
            registry.publish(store, [definition], owner="other")
        return found

    store.get = get  # type: ignore[method-assign]
    report = registry.publish(store, [definition], owner="me")
    assert report.written == [] and report.unchanged == 1 and report.contested == []


# -- submitting without the app ----------------------------------------------------


def test_declared_options_apply_to_a_submit_without_the_app(any_store: Store) -> None:
    queue, _ = published(any_store)
    record = queue.get(queue.submit("send", {"to": "a@b"}).id).record
    assert (record.queue, record.priority, record.max_attempts, record.timeout) == \
        ("emails", 200, 7, 30)
    assert record.retry == RetryPolicy(base=2, cap=10)
    given = queue.get(queue.submit("send", {"to": "a@b"}, priority=1, queue="q2").id).record
    assert (given.queue, given.priority, given.max_attempts) == ("q2", 1, 7)  # the caller wins


@pytest.mark.parametrize(("payload", "reason"), [
    ({}, "to: field required"),
    ({"to": "a", "times": "many"}, "times: expected integer, got string"),
    ({"to": "a", "cc": "b"}, "cc: unexpected field"),
    (["a"], "the input must be a JSON object of the arguments ['times', 'to'], got array"),
])
def test_an_input_the_handler_would_refuse_is_refused_at_submit(
    any_store: Store, payload: Any, reason: str,
) -> None:
    queue, _ = published(any_store)
    before = sorted(i.key for i in any_store.list(keys.READY))
    with pytest.raises(InvalidInput) as caught:
        queue.submit("send", payload)
    assert str(caught.value) == f"invalid input for task type 'send' (version 1): {reason}"
    assert sorted(i.key for i in any_store.list(keys.READY)) == before == []
    assert list(any_store.list(keys.TASKS)) == []


def test_inputs_the_handler_accepts_are_accepted() -> None:
    queue, _ = published(MemoryStore())
    queue.submit("send", {"to": "a", "times": "3"})  # pydantic's lax mode takes "3"
    queue.submit("plot", {"p": {"x": 1}})
    with pytest.raises(InvalidInput, match=r"p\.x: expected integer, got string"):
        queue.submit("plot", {"p": {"x": "one"}})


def test_an_unknown_type_is_refused_with_the_known_ones_unless_allowed(any_store: Store) -> None:
    queue, _ = published(any_store)
    with pytest.raises(UnregisteredType) as caught:
        queue.submit("sned", {"to": "a"})
    assert "unknown task type 'sned': no worker published it; registered: plot, send" \
        in str(caught.value)
    assert list(any_store.list(keys.TASKS)) == []
    handle = queue.submit("sned", {"anything": 1}, allow_unregistered=True)
    assert queue.get(handle.id).record.queue == "default"  # no definition, no options


def test_a_bucket_without_a_registry_accepts_every_type() -> None:
    queue = Queue(MemoryStore())
    queue.submit("anything", [1, 2])
    queue.submit_many([{"type": "other", "input": "x"}])
    assert queue.stats()["default"]["pending"] == 2


def test_submit_many_resolves_each_item_and_writes_nothing_if_one_is_refused() -> None:
    store = MemoryStore()
    queue, _ = published(store)
    from qo.protocol.submit import InvalidBatchItem

    with pytest.raises(InvalidBatchItem, match=r"item 1: invalid input .*to: field required"):
        queue.submit_many([{"type": "send", "input": {"to": "a"}},
                           {"type": "send", "input": {}}])
    assert list(store.list(keys.TASKS)) == []
    handles = queue.submit_many([{"type": "send", "input": {"to": "a"}}])
    assert queue.get(handles[0].id).record.queue == "emails"


def test_app_submit_uses_the_app_not_the_registry() -> None:
    store = MemoryStore()
    queue, _ = published(store)
    app = App(queue)
    app.task(name="local_only")(lambda: None)
    before = store.counts.snapshot()  # no GET of a definition: only the queues' settings
    app.submit("local_only")
    assert diff(store.counts.snapshot(), before) == {"LIST": 1, "PUT": 2}
    before = store.counts.snapshot()
    app.submit("local_only")
    assert diff(store.counts.snapshot(), before) == {"PUT": 2}


# -- the request cost of a lookup ------------------------------------------------------


def test_the_registry_costs_one_list_per_ttl_and_one_get_per_definition_change() -> None:
    store = MemoryStore()
    queue, clock = published(store)

    before = store.counts.snapshot()  # first submit of the process: LIST + GET of its type
    queue.submit("send", {"to": "a"})
    assert diff(store.counts.snapshot(), before) == {"LIST": 1, "GET": 1, "PUT": 2}

    before = store.counts.snapshot()  # steady state: no extra request at all
    for _ in range(5):
        queue.submit("send", {"to": "a"})
    queue.submit("send", {"to": "a"}, priority=3)
    assert diff(store.counts.snapshot(), before) == {"PUT": 12}

    before = store.counts.snapshot()  # an unknown type is refused from the cached listing
    with pytest.raises(UnregisteredType):
        queue.submit("nosuch")
    assert diff(store.counts.snapshot(), before) == {}

    clock.t = 30.0  # the listing is stale: one LIST, and the unchanged etag needs no GET
    before = store.counts.snapshot()
    queue.submit("send", {"to": "a"})
    queue.submit("send", {"to": "a"})
    assert diff(store.counts.snapshot(), before) == {"LIST": 1, "PUT": 4}

    changed = App(Queue(store))
    changed.task(name="send", priority=9)(lambda to: to)
    changed.publish(store, owner="w2")
    clock.t = 60.0  # a changed definition: one LIST and one GET, then nothing again
    before = store.counts.snapshot()
    handle = queue.submit("send", {"to": "a"})
    queue.submit("send", {"to": "a"})
    assert diff(store.counts.snapshot(), before) == {"LIST": 1, "GET": 1, "PUT": 4}
    assert queue.get(handle.id).record.priority == 9


def test_an_empty_registry_costs_one_list_per_ttl() -> None:
    store = MemoryStore()
    queue = Queue(store)
    clock = Clock()
    queue.registry = Registry(store, ttl=30, clock=clock)
    before = store.counts.snapshot()
    for _ in range(3):
        queue.submit("t")
    assert diff(store.counts.snapshot(), before) == {"LIST": 1, "PUT": 6}


# -- the CLI, the API and schedules -----------------------------------------------------


def test_cli_submit_without_the_app_uses_the_registry(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    queue = Queue.from_url(url)
    make_app(queue).publish(queue.store, owner="w1")

    done = run_qo("-q", url, "submit", "send", "-i", '{"to": "a"}', "--json")
    assert done.exit_code == 0, done.output
    record = queue.get(orjson.loads(done.stdout)["id"]).record
    assert (record.queue, record.priority, record.max_attempts) == ("emails", 200, 7)

    bad = run_qo("-q", url, "submit", "send", "-i", '{"to": "a", "times": []}')
    assert bad.exit_code == 2
    assert bad.stderr.strip().splitlines() == [
        ("error: invalid input for task type 'send' (version 1): times: expected integer, "
         "got array")]

    unknown = run_qo("-q", url, "submit", "snd", "-i", "{}")
    assert unknown.exit_code == 2 and len(unknown.stderr.strip().splitlines()) == 1
    assert "registered: plot, send" in unknown.stderr and "--unregistered" in unknown.stderr
    forced = run_qo("-q", url, "submit", "snd", "-i", "{}", "--unregistered")
    assert forced.exit_code == 0, forced.output

    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"type": "send", "input": {"to": "x"}}\n{"type": "send", "input": {}}\n')
    refused = run_qo("-q", url, "submit", "--batch", str(batch))
    assert refused.exit_code == 2 and "batch item 2: invalid input" in refused.stderr
    assert queue.stats().get("emails", {}).get("pending") == 1  # only the first submit


def test_cli_help_input_shows_the_schema(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    queue = Queue.from_url(url)
    make_app(queue).publish(queue.store, owner="w1")
    shown = run_qo("-q", url, "submit", "send", "--help-input")
    assert shown.exit_code == 0, shown.output
    assert "send (version 1, queue emails)" in shown.stdout
    assert "Send one email." in shown.stdout
    assert "to: string (required)" in shown.stdout and "times: integer (default 1)" in shown.stdout
    data = orjson.loads(run_qo("-q", url, "submit", "plot", "--help-input", "--json").stdout)
    assert data["type"] == "plot" and data["input_schema"]["required"] == ["p"]
    missing = run_qo("-q", url, "submit", "nope", "--help-input")
    assert missing.exit_code == 2 and "registered: plot, send" in missing.stderr
    assert list(queue.store.list(keys.TASKS)) == []


@pytest.fixture
def api_queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[Queue]:
    name = f"registry-api-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("QO_QUEUE", f"memory://{name}")
    monkeypatch.delenv("QO_APP", raising=False)
    serverless.reset()
    queue = Queue.from_url(f"memory://{name}")
    make_app(queue).publish(queue.store, owner="w1")
    yield queue
    serverless.reset()


def test_the_api_without_an_app_uses_the_registry(api_queue: Queue) -> None:
    status, body = api_call("POST", "/tasks", {"type": "send", "input": {"to": "a"}})
    assert status == 201, body
    assert api_queue.get(body["id"]).record.queue == "emails"

    status, body = api_call("POST", "/tasks", {"type": "send", "input": {"times": 2}})
    assert status == 400 and body["error"] == "bad_request"
    assert body["message"] == "invalid input for task type 'send' (version 1): to: field required"

    status, body = api_call("POST", "/tasks", {"type": "snd"})
    assert status == 400 and "registered: plot, send" in body["message"]
    status, body = api_call("POST", "/tasks", {"type": "snd", "allow_unregistered": True})
    assert status == 201, body

    status, body = api_call("POST", "/tasks/batch", {"tasks": [
        {"type": "send", "input": {"to": "a"}}, {"type": "nope"}]})
    assert status == 400 and body["message"].startswith("tasks[1]: unknown task type 'nope'")


def test_schedule_add_without_the_app_uses_the_registry() -> None:
    queue, _ = published(MemoryStore())
    sched = scheduler.add(queue, "nightly", "send", every=3600, input={"to": "a"})
    assert (sched.queue, sched.priority, sched.max_attempts) == ("emails", 200, 7)
    with pytest.raises(InvalidInput):
        scheduler.add(queue, "broken", "send", every=3600, input={})
    with pytest.raises(UnregisteredType):
        scheduler.add(queue, "typo", "sned", every=3600)
    scheduler.add(queue, "later", "sned", every=3600, allow_unregistered=True)
    assert sorted(s.name for s in scheduler.list_schedules(queue)) == ["later", "nightly"]


def test_settings_give_the_ttl() -> None:
    queue = Queue(MemoryStore(), Settings(registry_ttl=5))
    assert queue.registry.ttl == 5
    assert Status.PENDING  # the module's imports are used


def test_the_lambda_worker_publishes_once_per_container_at_its_first_work() -> None:
    from qo.serverless import Config
    from qo.serverless import worker as lambda_worker

    store = MemoryStore()
    queue = Queue(store)
    app = make_app(queue)
    serverless.reset()
    try:
        serverless.configure(queue=queue, app=app, config=Config(queues=["emails", "default"]))
        lambda_worker.handler({"qo": "kick"})
        assert sorted(registry.list_types(store)) == [("plot", 1), ("send", 1)]
        before = store.counts.snapshot()
        lambda_worker.handler({"qo": "kick"})  # warm: no GET of the definitions again
        assert diff(store.counts.snapshot(), before).get("GET", 0) == 0
    finally:
        serverless.reset()


def test_a_definition_of_a_newer_qo_is_not_a_reason_to_refuse() -> None:
    store = MemoryStore()
    store.put(keys.type_key("future", 1), orjson.dumps({"v": 99, "name": "future"}))
    store.put(keys.type_key("other", 1), b"not json")
    queue = Queue(store)
    assert queue.get(queue.submit("future", {"x": 1}).id).record.type == "future"
    assert queue.get(queue.submit("other").id).record.type == "other"  # listed, unreadable
    with pytest.raises(UnregisteredType, match="registered: future, other"):
        queue.submit("nosuch")
    # a worker replaces the unreadable one, and leaves the newer one alone
    app = App(Queue(store))
    app.task(name="other")(lambda: None)
    app.task(name="future")(lambda: None)
    assert app.publish(store, owner="w").written == ["types/other/1.json"]
