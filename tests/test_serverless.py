"""The Lambda handlers, invoked in-process with real event shapes against a moto server.

Every test gets a fresh bucket on the session's ``s3_server`` and points the
handlers at it through the environment (``QO_QUEUE``, ``AWS_ENDPOINT_URL``),
exactly as the deployed functions are configured. Events are built from the
fixtures in ``tests/events/`` (an S3 notification, an EventBridge scheduled
event, Function URL requests). Time is never waited for: a lease expiring or a
delay passing is simulated by skewing the server's clock.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlencode

import pytest

from qo import serverless
from qo.errors import ConfigError, StoreUnavailable
from qo.models import Status
from qo.protocol import admin, keys
from qo.protocol.claim import Claimer
from qo.protocol.keys import parse_ready_key
from qo.protocol.retention import CURSOR_KEY, run_retention
from qo.queue import Queue
from qo.serverless import Config, api, sweeper
from qo.serverless import worker as lambda_worker
from qo.serverless.events import iso_time, parse_worker_event
from qo.store.s3 import S3Store
from tests.apps import lambda_app

ROOT = Path(__file__).resolve().parent.parent
EVENTS = Path(__file__).resolve().parent / "events"
PREFIX = "jobs"
_ids = itertools.count()


def fixture(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


class Ctx:
    """The Lambda context: a deadline, and a request id."""

    def __init__(self, seconds: float = 120.0) -> None:
        self._deadline = time.monotonic() + seconds
        self.aws_request_id = secrets.token_hex(8)
        self.function_name = "qo-test"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class Env:
    bucket: str
    server: Any
    store: S3Store  # the test's own view of the bucket (its requests are counted too)

    # -- events -------------------------------------------------------------------

    def s3_event(self, store_keys: list[str], *, bucket: str | None = None,
                 prefix: str = PREFIX) -> dict[str, Any]:
        """The S3 notification for these store keys, built from the fixture."""
        template = fixture("s3_object_created.json")["Records"][0]
        records = []
        for key in store_keys:
            record = copy.deepcopy(template)
            name = bucket or self.bucket
            record["s3"]["bucket"]["name"] = name
            record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{name}"
            record["s3"]["object"]["key"] = quote_plus(f"{prefix}/{key}", safe="/")
            record["s3"]["object"]["sequencer"] = f"{time.time_ns():018X}"
            record["eventTime"] = iso_time()
            records.append(record)
        return {"Records": records}

    def ready_keys(self) -> list[str]:
        return [i.key for i in self.store.list(keys.READY) if parse_ready_key(i.key)]

    def all_keys(self) -> list[str]:
        return [i.key for i in self.store.list("")]

    # -- invocations ----------------------------------------------------------------

    def work(self, event: Any, seconds: float = 120.0) -> dict[str, Any]:
        return lambda_worker.handler(event, Ctx(seconds))

    def api(self, method: str, path: str, body: Any = None, *, raw: str | bytes | None = None,
            query: dict[str, str] | None = None, b64: bool = False,
            verbatim: str | None = None) -> tuple[int, Any, dict]:
        event = fixture("function_url_post.json" if method == "POST" else "function_url_get.json")
        event["requestContext"]["http"]["method"] = method
        event["requestContext"]["http"]["path"] = path
        event["rawPath"] = path
        event.pop("queryStringParameters", None)
        event["rawQueryString"] = urlencode(query or {})
        if query:
            event["queryStringParameters"] = query
        payload = raw if raw is not None else (None if body is None else json.dumps(body))
        event.pop("body", None)
        event["isBase64Encoded"] = b64
        if payload is not None:
            data = payload.encode() if isinstance(payload, str) else payload
            event["body"] = base64.b64encode(data).decode() if b64 else data.decode()
        if verbatim is not None:
            event["body"] = verbatim
        response = api.handler(event, Ctx(30))
        assert response["headers"]["content-type"] == "application/json"
        return response["statusCode"], json.loads(response["body"]), response["headers"]

    def submit(self, body: dict[str, Any]) -> str:
        status, data, _ = self.api("POST", "/tasks", body)
        assert status == 201, data
        return data["id"]

    def record(self, task_id: str):
        return admin.show(self.store, task_id).record

    def requests(self, before: dict[str, int]) -> dict[str, int]:
        after = self.server.counts.snapshot()
        return {k: after.get(k, 0) - before.get(k, 0) for k in after
                if after.get(k, 0) != before.get(k, 0) and not k.startswith("BUCKET_")}


@pytest.fixture
def env(s3_server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    bucket = f"qo-sls-{next(_ids)}-{secrets.token_hex(3)}"
    store = S3Store(bucket, PREFIX, endpoint_url=s3_server.endpoint_url)
    store.create_bucket()
    for name in list(os.environ):
        if name.startswith("QO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("QO_QUEUE", f"s3://{bucket}/{PREFIX}")
    monkeypatch.setenv("QO_APP", "tests.apps.lambda_app:app")
    monkeypatch.setenv("QO_SAFETY_MARGIN", "1")
    serverless.reset()
    lambda_app.RUNS.clear()
    s3_server.clock_skew = 0.0
    try:
        yield Env(bucket, s3_server, store)
    finally:
        s3_server.clock_skew = 0.0
        serverless.reset()
        store.close()


@pytest.fixture
def skew(env: Env):
    """Move the store's clock forward (the Date header), as if time had passed.

    The handlers' cached store is dropped, so that the next invocation reads
    the clock afresh (a real clock never jumps between two requests).
    """

    def advance(seconds: float) -> None:
        env.server.clock_skew += seconds
        serverless.reset()

    return advance


# -- end to end -------------------------------------------------------------------------


def test_submit_event_result_end_to_end(env: Env) -> None:
    task_id = env.submit({"type": "add", "input": {"x": 2, "y": 3}})
    [key] = env.ready_keys()
    assert parse_ready_key(key).task_id == task_id

    report = env.work(env.s3_event([key]))
    assert report["claimed"] == 1 and report["succeeded"] == 1
    assert report["stopped"] == "queue empty"

    status, data, _ = env.api("GET", f"/tasks/{task_id}")
    assert status == 200
    assert data["status"] == "succeeded" and data["result"] == 5 and data["attempt"] == 1
    assert lambda_app.RUNS[task_id] == 1
    assert env.ready_keys() == []
    assert not list(env.store.list(keys.LEASES))


def test_url_encoded_key_is_decoded(env: Env) -> None:
    task_id = env.submit({"type": "reports:daily", "input": {"day": "2024-05-01"}})
    [key] = env.ready_keys()
    event = env.s3_event([key])
    assert "%3A" in event["Records"][0]["s3"]["object"]["key"]  # S3 encodes ':'
    report = env.work(event)
    assert report["succeeded"] == 1 and report["stale"] == 0
    assert env.record(task_id).result == "report for 2024-05-01"


def test_duplicate_and_reordered_events_run_each_task_once(env: Env) -> None:
    status, data, _ = env.api("POST", "/tasks/batch", {"tasks": [
        {"type": "add", "input": {"x": 1, "y": 1}, "priority": 10},
        {"type": "add", "input": {"x": 2, "y": 2}, "priority": 200},
        {"type": "add", "input": {"x": 3, "y": 3}},
    ]})
    assert status == 201
    ids = [t["id"] for t in data["tasks"]]
    ready = env.ready_keys()
    by_id = {parse_ready_key(k).task_id: k for k in ready}
    k1, k2, k3 = (by_id[i] for i in ids)

    # The lowest priority's event arrives first: the invocation runs it, then drains the rest.
    first = env.work(env.s3_event([k1]))
    assert first["claimed"] == 3 and first["succeeded"] == 3
    # Duplicates, late and out of order, in one batch and alone.
    again = env.work(env.s3_event([k3, k2, k3, k1]))
    assert again["claimed"] == 0 and again["stale"] == 3
    assert env.work(env.s3_event([k2]))["claimed"] == 0

    assert [lambda_app.RUNS[i] for i in ids] == [1, 1, 1]
    assert [env.record(i).result for i in ids] == [2, 4, 6]


def test_event_for_a_task_running_elsewhere_does_not_run_it(env: Env) -> None:
    task_id = env.submit({"type": "add", "input": {"x": 1, "y": 2}})
    [key] = env.ready_keys()
    queue = Queue.from_url(f"s3://{env.bucket}/{PREFIX}")
    other = Claimer(queue.store, queue.settings, queues=["default"], task_types=None,
                    owner="other-worker")
    held = other.claim()
    assert held is not None and held.task_id == task_id

    report = env.work(env.s3_event([key]))  # a duplicate event while it runs elsewhere
    assert report["claimed"] == 0 and report["stale"] == 1
    assert lambda_app.RUNS[task_id] == 0
    assert admin.show(env.store, task_id).status == Status.RUNNING
    queue.store.close()


def test_little_time_left_releases_the_task_for_the_next_invocation(env: Env) -> None:
    task_id = env.submit({"type": "bounded"})  # timeout 30 s
    [key] = env.ready_keys()

    short = env.work(env.s3_event([key]), seconds=5)  # 4 s usable: 30 s does not fit
    assert short["claimed"] == 1 and short["released"] == 1 and short["succeeded"] == 0
    assert short["stopped"] == "no time left"
    record = env.record(task_id)
    assert record.status == Status.PENDING and record.attempt == 0  # untouched
    assert not list(env.store.list(keys.LEASES))  # not stuck behind a lease
    assert lambda_app.RUNS[task_id] == 0
    [again] = env.ready_keys()  # the marker is back: its event starts the next invocation

    full = env.work(env.s3_event([again]), seconds=120)
    assert full["succeeded"] == 1
    assert env.record(task_id).status == Status.SUCCEEDED
    assert lambda_app.RUNS[task_id] == 1


def test_task_longer_than_the_function_timeout_fails_without_retries(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QO_FUNCTION_TIMEOUT", "60")
    serverless.reset()
    task_id = env.submit({"type": "marathon"})  # timeout 3600 s
    [key] = env.ready_keys()
    report = env.work(env.s3_event([key]), seconds=60)
    assert report["rejected"] == 1
    record = env.record(task_id)
    assert record.status == Status.DEAD and record.error.type == "TaskTooLong"
    assert not record.error.retryable and "3600" in record.error.message
    assert lambda_app.RUNS[task_id] == 0
    assert env.ready_keys() == []  # no bouncing between invocations


def test_the_handlers_declared_timeout_counts_when_the_submitter_set_none(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QO_FUNCTION_TIMEOUT", "600")  # the 60 s default budget would fit
    serverless.reset()
    queue = Queue.from_url(f"s3://{env.bucket}/{PREFIX}")  # without the app: no timeout stored
    task_id = queue.submit("marathon", None).id
    assert env.record(task_id).timeout is None
    [key] = env.ready_keys()
    report = env.work(env.s3_event([key]), seconds=600)
    assert report["rejected"] == 1 and lambda_app.RUNS[task_id] == 0
    assert env.record(task_id).error.type == "TaskTooLong"
    queue.store.close()


@pytest.mark.slow  # real time: waits for the invocation deadline
def test_handler_without_timeout_is_stopped_at_the_invocation_deadline(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QO_TASK_BUDGET", "0.5")
    serverless.reset()
    task_id = env.submit({"type": "open_ended", "input": {"seconds": 30}})
    [key] = env.ready_keys()
    started = time.monotonic()
    report = env.work(env.s3_event([key]), seconds=2.5)  # deadline: 1.5 s from now
    elapsed = time.monotonic() - started
    assert elapsed < 2.5, "must return before the function would time out"
    assert report["failed"] == 1
    record = env.record(task_id)
    assert record.status == Status.FAILED and record.attempt == 1  # retried with backoff
    assert record.error.type == "InvocationDeadline"
    assert not list(env.store.list(keys.LEASES))
    assert list(env.store.list(keys.DELAYED)) or env.ready_keys()  # indexed for the retry


def test_kick_event_drains_the_queue(env: Env) -> None:
    ids = [env.submit({"type": "add", "input": {"x": n, "y": 0}}) for n in range(3)]
    other = env.submit({"type": "elsewhere"})
    report = env.work({"qo": "kick"})
    assert report["kick"] and report["succeeded"] == 4
    assert all(env.record(i).status == Status.SUCCEEDED for i in [*ids, other])


def test_eventbridge_and_sqs_wrapped_events(env: Env) -> None:
    first = env.submit({"type": "add", "input": {"x": 1, "y": 1}})
    [key] = env.ready_keys()
    event = fixture("eventbridge_s3_object_created.json")
    event["detail"]["bucket"]["name"] = env.bucket
    event["detail"]["object"]["key"] = f"{PREFIX}/{key}"
    assert env.work(event)["succeeded"] == 1

    second = env.submit({"type": "add", "input": {"x": 2, "y": 2}})
    [key] = env.ready_keys()
    sqs = {"Records": [{"eventSource": "aws:sqs", "messageId": "1",
                        "body": json.dumps(env.s3_event([key]))}]}
    report = env.work(sqs)
    assert report["succeeded"] == 1 and report["stale"] == 0
    assert lambda_app.RUNS[first] == 1 and lambda_app.RUNS[second] == 1


# -- bad and foreign events ------------------------------------------------------------


def test_malformed_and_foreign_records_are_ignored_at_no_cost(env: Env) -> None:
    task_id = env.submit({"type": "add", "input": {"x": 1, "y": 1}})
    [key] = env.ready_keys()
    good = env.s3_event([key])["Records"][0]
    removed = copy.deepcopy(good)
    removed["eventName"] = "ObjectRemoved:Delete"
    paused = env.s3_event(["ready/default/!paused"])["Records"][0]
    no_s3 = {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}
    event = {"Records": [
        "not a record", 42, None, no_s3, removed, paused,
        env.s3_event([key], bucket="someone-elses-bucket")["Records"][0],
        env.s3_event([key], prefix="other-prefix")["Records"][0],
        env.s3_event(["tasks/abc.json"])["Records"][0],
        env.s3_event(["ready/default/127/notanumber-x-add"])["Records"][0],
        env.s3_event([key.replace("-add", "-unregistered_type")])["Records"][0],
        {"eventSource": "aws:sqs", "body": "{not json"},
        {"eventSource": "aws:dynamodb"},
    ]}
    before = env.server.counts.snapshot()
    report = env.work(event)
    assert report["ignored"] == 13 and report["claimed"] == 0
    assert report["stopped"] == "no ready marker in the event"
    assert env.requests(before) == {}  # not a single request

    for shape in [{}, [], "x", {"Records": "nope"}, fixture("eventbridge_scheduled.json")]:
        assert env.work(shape)["claimed"] == 0
    assert env.requests(before) == {}
    assert lambda_app.RUNS[task_id] == 0


def test_stale_event_on_an_empty_queue_costs_a_bounded_number_of_requests(env: Env) -> None:
    env.submit({"type": "add", "input": {"x": 1, "y": 1}})
    [key] = env.ready_keys()
    env.work(env.s3_event([key]))

    before = env.server.counts.snapshot()
    report = env.work(env.s3_event([key]))  # a duplicate delivery, much later
    assert report["stale"] == 1 and report["stopped"] == "queue empty"
    # The pause check (HEAD), the lease (PUT), the record (GET: done already), then
    # one LIST per served queue says the queue is empty: no polling.
    assert env.requests(before) == {"HEAD": 1, "HEAD_404": 1, "PUT": 1, "GET": 1, "LIST": 2,
                                    "DELETE": 2}


def test_events_of_a_paused_queue_run_nothing(env: Env) -> None:
    task_id = env.submit({"type": "add", "input": {"x": 1, "y": 1}})
    [key] = env.ready_keys()
    admin.pause(env.store, "default")
    report = env.work(env.s3_event([key]))
    assert report["paused"] == 1 and report["claimed"] == 0
    assert lambda_app.RUNS[task_id] == 0 and env.ready_keys() == [key]
    admin.resume(env.store, "default")
    assert env.work(env.s3_event([key]))["succeeded"] == 1


# -- sweeper ----------------------------------------------------------------------------


def test_sweeper_promotes_delayed_tasks(env: Env, skew) -> None:
    task_id = env.submit({"type": "add", "input": {"x": 4, "y": 4}, "delay": 3600})
    assert env.ready_keys() == []
    assert sweeper.handler(fixture("eventbridge_scheduled.json"), Ctx())["promoted"] == 0

    skew(3700)
    report = sweeper.handler(fixture("eventbridge_scheduled.json"), Ctx())
    assert report["promoted"] == 1 and report["errors"] == []
    [key] = env.ready_keys()  # in AWS, this marker's event starts the worker
    assert env.work(env.s3_event([key]))["succeeded"] == 1
    assert env.record(task_id).result == 8


def test_sweeper_reaps_an_expired_lease_and_the_task_runs_again(env: Env, skew) -> None:
    task_id = env.submit({"type": "add", "input": {"x": 5, "y": 5}})
    queue = Queue.from_url(f"s3://{env.bucket}/{PREFIX}")
    crashed = Claimer(queue.store, queue.settings, queues=["default"], task_types=None,
                      owner="crashed-worker")
    assert crashed.claim() is not None  # claimed, then the worker "dies"
    assert env.ready_keys() == []

    assert sweeper.handler(fixture("eventbridge_scheduled.json"), Ctx())["reaped"] == 0
    skew(queue.settings.lease_seconds + 30)
    report = sweeper.handler(fixture("eventbridge_scheduled.json"), Ctx())
    assert report["reaped"] == 1
    record = env.record(task_id)
    assert record.status == Status.PENDING and record.attempt == 1
    assert record.error.type == "LeaseExpired"
    [key] = env.ready_keys()
    assert env.work(env.s3_event([key]))["succeeded"] == 1
    assert env.record(task_id).attempt == 2 and lambda_app.RUNS[task_id] == 1
    queue.store.close()


def test_lease_seconds_from_the_environment(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QO_LEASE_SECONDS", "5")
    serverless.reset()
    assert serverless.runtime().queue.settings.lease_seconds == 5


def test_sweeper_applies_retention(env: Env, skew, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QO_RETENTION_DAYS", "0.001")  # 86.4 s
    monkeypatch.setattr(sweeper, "fire_schedules", lambda queue: {})
    serverless.reset()
    done = env.submit({"type": "add", "input": {"x": 1, "y": 1}})
    dead = env.submit({"type": "boom", "input": {"message": "no"}})
    big = env.submit({"type": "add", "input": {"x": 1, "y": 2, "pad": "p" * 300_000}})
    keyed = env.submit({"type": "add", "input": {"x": 3, "y": 3}, "key": "once"})
    env.work({"qo": "kick"})
    cancelled = env.submit({"type": "add", "input": {"x": 9, "y": 9}})
    assert env.api("POST", f"/tasks/{cancelled}/cancel")[0] == 200
    waiting = env.submit({"type": "add", "input": {"x": 7, "y": 7}, "delay": 86_400})
    assert list(env.store.list(keys.DEAD)) and list(env.store.list(keys.PAYLOADS))

    skew(120)
    report = sweeper.handler(fixture("eventbridge_scheduled.json"), Ctx())
    assert report["retention"]["deleted"] == 4, report
    assert report["retention"]["pass_done"]
    status = {t: env.api("GET", f"/tasks/{t}")[0]
              for t in [done, dead, big, keyed, cancelled, waiting]}
    assert status == {done: 404, dead: 404, big: 404, cancelled: 404,
                      keyed: 200,  # its idempotency key is still live
                      waiting: 200}
    assert list(env.store.list(keys.DEAD)) == []
    assert list(env.store.list(keys.PAYLOADS)) == []
    # The pass is done: until the next one is due, retention and the audit cost one GET each.
    before = env.server.counts.snapshot()
    assert sweeper.handler(fixture("eventbridge_scheduled.json"), Ctx())["retention"]["skipped"]
    assert env.requests(before) == {"LIST": 2, "GET": 2}  # delayed/, leases/; both cursors


def test_retention_is_bounded_resumable_and_conditional(env: Env) -> None:
    queue = Queue.from_url(f"s3://{env.bucket}/{PREFIX}")
    ids = [queue.submit("add", {"x": n, "y": n}).id for n in range(5)]
    big = queue.submit("add", {"x": 1, "y": 1, "pad": "p" * 300_000}).id
    for task_id in [*ids, big]:
        admin.cancel(queue.store, task_id)
    assert list(queue.store.list(f"{keys.PAYLOADS}{big}/"))
    now = queue.store.now() + 3600
    first = run_retention(queue.store, 60, budget=4, now=now)
    assert first.examined == 4 and not first.pass_done
    assert queue.store.get(CURSOR_KEY) is not None
    second = run_retention(queue.store, 60, budget=4, now=now)
    assert second.examined == 2 and second.pass_done
    assert first.deleted + second.deleted == 6
    assert not list(queue.store.list(keys.TASKS))
    assert not list(queue.store.list(keys.PAYLOADS))
    assert run_retention(queue.store, 60, budget=4, now=now + 60).skipped  # within the interval
    # Recent tasks are not even listed: the listing starts at the cutoff.
    fresh = queue.submit("add", {"x": 0, "y": 0}).id
    admin.cancel(queue.store, fresh)
    late = run_retention(queue.store, 86_400, budget=4, now=now + 7200)
    assert late.examined == 0 and late.pass_done
    assert admin.show(queue.store, fresh).status == Status.CANCELLED

    class Racing:
        """Retries the task between the retention's read and its conditional delete."""

        def __init__(self, inner: S3Store) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def delete(self, key: str, *, if_match: str | None = None) -> None:
            if key.startswith(keys.TASKS) and if_match is not None:
                admin.retry(self.inner, queue.settings, keys.task_id_from_key(key))
            self.inner.delete(key, if_match=if_match)

    victim = queue.submit("add", {"x": 8, "y": 8}).id
    admin.cancel(queue.store, victim)
    queue.store.delete(CURSOR_KEY)
    raced = run_retention(Racing(queue.store), 60, budget=10, now=queue.store.now() + 3600)
    assert raced.deleted == 0
    assert admin.show(queue.store, victim).record.status == Status.PENDING
    queue.store.close()


def test_sweeper_kicks_the_worker_when_ready_work_sits_unclaimed(
        env: Env, skew, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(sweeper, "invoke_worker", calls.append)
    env.submit({"type": "add", "input": {"x": 1, "y": 1}})

    assert not sweeper.handler(fixture("eventbridge_scheduled.json"), Ctx())["kicked"]
    assert calls == []  # no worker function configured: no kick

    monkeypatch.setenv("QO_WORKER_FUNCTION", "qo-worker")
    monkeypatch.setenv("QO_KICK_AFTER", "30")
    skew(60)  # the marker has now sat unclaimed for a minute
    admin.pause(env.store, "default")
    assert not sweeper.handler(fixture("eventbridge_scheduled.json"), Ctx())["kicked"]
    admin.resume(env.store, "default")  # deleting !paused sends no event: the kick covers it
    assert sweeper.handler(fixture("eventbridge_scheduled.json"), Ctx())["kicked"]
    assert calls == ["qo-worker"]

    monkeypatch.setenv("QO_KICK_AFTER", "3600")
    serverless.reset()
    assert not sweeper.handler(fixture("eventbridge_scheduled.json"), Ctx())["kicked"]


def test_sweeper_fires_schedules_and_survives_a_failing_step(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    fired: list[Queue] = []

    def fire_due(queue: Queue) -> dict[str, int]:
        fired.append(queue)
        return {"fired": 2}

    monkeypatch.setattr(sweeper, "fire_schedules", fire_due)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("retention store down")

    monkeypatch.setattr(sweeper, "run_retention", broken)
    report = sweeper.handler(fixture("eventbridge_scheduled.json"), Ctx())
    assert report["schedules"] == {"fired": 2} and len(fired) == 1
    assert report["errors"] == ["retention: StoreUnavailable: retention store down"]
    assert report["promoted"] == 0 and report["reaped"] == 0


# -- API --------------------------------------------------------------------------------


def test_api_submit_get_cancel_retry_stats(env: Env) -> None:
    status, data, _ = env.api("POST", "/tasks", {"type": "add", "input": {"x": 1, "y": 2},
                                                "priority": 200, "tags": {"team": "a"}})
    assert status == 201 and data["created"] and data["status"] == "pending"
    task_id = data["id"]
    status, view, _ = env.api("GET", f"/tasks/{task_id}")
    assert status == 200 and view["priority"] == 200 and view["tags"] == {"team": "a"}
    assert view["queue"] == "default" and view["type"] == "add"

    status, listed, _ = env.api("GET", "/tasks", query={"status": "pending", "limit": "5"})
    assert status == 200 and [t["id"] for t in listed["tasks"]] == [task_id]
    status, stats, _ = env.api("GET", "/stats")
    assert status == 200 and stats["queues"]["default"]["pending"] == 1

    status, view, _ = env.api("POST", f"/tasks/{task_id}/cancel", {"reason": "not needed"})
    assert status == 200 and view["status"] == "cancelled"
    assert view["cancel_reason"] == "not needed"
    status, error, _ = env.api("POST", f"/tasks/{task_id}/cancel")
    assert status == 409 and "already cancelled" in error["message"]

    status, view, _ = env.api("POST", f"/tasks/{task_id}/retry")
    assert status == 200 and view["status"] == "pending"
    status, error, _ = env.api("POST", f"/tasks/{task_id}/retry")
    assert status == 409 and error["error"] == "conflict"


def test_api_submit_options_and_app_defaults(env: Env) -> None:
    task_id = env.submit({"type": "bounded", "delay": 60, "max_attempts": 5,
                          "retry": {"base": 2, "cap": 10}})
    record = env.record(task_id)
    assert record.status == Status.SCHEDULED and record.max_attempts == 5
    assert record.timeout == 30  # the app's default for the type
    other = env.record(env.submit({"type": "elsewhere"}))
    assert other.queue == "other"  # the app's queue for the type
    at = env.record(env.submit({"type": "add", "input": {"x": 1, "y": 1},
                                "at": "2030-01-31T09:00:00+00:00"}))
    assert at.status == Status.SCHEDULED and at.available_at == 1896080400.0


def test_api_idempotent_submit(env: Env) -> None:
    body = {"type": "add", "input": {"x": 1, "y": 1}, "key": "order-42"}
    status, first, _ = env.api("POST", "/tasks", body)
    assert status == 201 and first["created"]
    status, again, _ = env.api("POST", "/tasks", body)
    assert status == 200 and again == {**first, "created": False}
    status, error, _ = env.api("POST", "/tasks", {**body, "input": {"x": 2, "y": 2}})
    assert status == 409 and error["error"] == "conflict" and "order-42" in error["message"]
    status, data, _ = env.api("POST", "/tasks/batch", {"tasks": [body, body]})
    assert status == 200 and [t["created"] for t in data["tasks"]] == [False, False]


def test_api_base64_body(env: Env) -> None:
    status, data, _ = env.api("POST", "/tasks", raw='{"type": "add", "input": {"x": 1, "y": 1}}',
                              b64=True)
    assert status == 201 and data["created"]


def test_api_get_shows_the_error_without_traceback_unless_asked(env: Env) -> None:
    task_id = env.submit({"type": "boom", "input": {"message": "kaput"}})
    env.work({"qo": "kick"})
    status, view, _ = env.api("GET", f"/tasks/{task_id}")
    assert status == 200 and view["status"] == "dead"
    assert view["error"]["message"] == "kaput" and "traceback" not in view["error"]
    status, view, _ = env.api("GET", f"/tasks/{task_id}", query={"traceback": "1"})
    assert "RuntimeError" in view["error"]["traceback"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"type": "add", "input": ', "malformed JSON"),
        ("", "request body is empty"),
        ("[1, 2]", "must be a JSON object, not an array"),
        ('"add"', "must be a JSON object, not a string"),
        ('{"input": {}}', "field 'type' is required"),
        ('{"type": "bad/type"}', "unknown task type 'bad/type'"),
        ('{"type": "nope"}', "unknown task type 'nope'; registered: add, boom"),
        ('{"type": "add", "queue": "bad/queue"}', "invalid queue name 'bad/queue'"),
        ('{"type": "add", "queue": ".."}', "invalid queue name"),
        ('{"type": "add", "tags": {"a/b": "c"}}', "invalid tag name"),
        ('{"type": "add", "key": ""}', "invalid idempotency key"),
        ('{"type": "add", "priority": 256}', "priority: Input should be less than or equal to 255"),
        ('{"type": "add", "delay": -1}', "delay: Input should be greater than or equal to 0"),
        ('{"type": "add", "colour": "red"}', "colour: Extra inputs are not permitted"),
        ('{"type": "add", "delay": 5, "at": 1900000000}', "either a delay or a time"),
        ('{"type": "add", "at": "2030-01-01T00:00:00"}', "has no time zone"),
        ('{"type": "add", "retry": {"base": "x"}}', "retry.base"),
    ],
)
def test_api_bad_submits_get_400_and_store_nothing(env: Env, body: str, message: str) -> None:
    before = env.server.counts.snapshot()
    status, error, _ = env.api("POST", "/tasks", raw=body)
    assert status == 400, error
    assert error["error"] == "bad_request" and message in error["message"], error["message"]
    assert "Traceback" not in error["message"]
    assert "PUT" not in env.requests(before)
    assert env.all_keys() == []


def test_api_bad_batches_store_nothing(env: Env) -> None:
    good = {"type": "add", "input": {"x": 1, "y": 1}}
    cases = [
        ({"tasks": [good, {"type": "add", "priority": -1}]}, 400, "tasks[1].priority"),
        ({"tasks": [good, "x"]}, 400, "tasks[1]: must be a JSON object"),
        ({"tasks": [good, {"type": "add", "delay": 1, "at": 1}]}, 400, "tasks[1]: give either"),
        ({"tasks": []}, 400, "non-empty array"),
        ({"task": [good]}, 400, "unknown field(s) task"),
        ({"tasks": [good] * 1001}, 413, "at most 1000"),
    ]
    for body, expected, message in cases:
        status, error, _ = env.api("POST", "/tasks/batch", body)
        assert status == expected and message in error["message"], (body, error)
    assert env.all_keys() == []


def test_api_oversized_bodies_get_413_and_store_nothing(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QO_API_MAX_BODY", "2000")
    serverless.reset()
    body = {"type": "add", "input": {"x": 1, "y": 1, "pad": "p" * 3000}}
    status, error, _ = env.api("POST", "/tasks", body)
    assert status == 413 and error["error"] == "payload_too_large"
    assert "2,000 bytes" in error["message"]
    status, error, _ = env.api("POST", "/tasks", raw=json.dumps(body), b64=True)
    assert status == 413
    status, error, _ = env.api("POST", "/tasks", verbatim="@@not base64@@", b64=True)
    assert status == 400 and "base64" in error["message"]
    assert env.all_keys() == []

    # A payload over the queue's own limit (Settings.max_payload) is a 413 too.
    queue = Queue.from_url(f"s3://{env.bucket}/{PREFIX}", max_payload=100)
    serverless.configure(queue=queue, config=Config.from_env())
    status, error, _ = env.api("POST", "/tasks", {"type": "add", "input": {"pad": "p" * 500}})
    assert status == 413 and "over the limit of 100 bytes" in error["message"]
    assert env.all_keys() == []


def test_api_routes_ids_and_methods(env: Env) -> None:
    status, error, _ = env.api("GET", "/nowhere")
    assert status == 404 and error["error"] == "not_found"
    status, error, headers = env.api("DELETE", "/tasks")
    assert status == 405 and headers["allow"] == "GET, POST"
    status, error, headers = env.api("GET", "/tasks/batch")
    assert status == 405 and headers["allow"] == "POST"
    status, error, _ = env.api("GET", "/tasks/ffe8f0a1b2c3d4e5f6a7b8")
    assert status == 404 and "no task with id" in error["message"]
    status, error, _ = env.api("GET", "/tasks/NOT_AN_ID")
    assert status == 400 and "invalid task id" in error["message"]
    status, error, _ = env.api("POST", "/tasks/ffe8f0a1b2c3d4e5f6a7b8/cancel")
    assert status == 404
    status, error, _ = env.api("GET", "/tasks", query={"status": "bogus"})
    assert status == 400 and "invalid status" in error["message"]
    status, error, _ = env.api("GET", "/tasks", query={"limit": "0"})
    assert status == 400
    status, data, _ = env.api("GET", "/tasks/")  # trailing slash
    assert status == 200 and data == {"tasks": []}
    status, data, _ = env.api("GET", "/schedules")
    assert status == 200 and isinstance(data["schedules"], list)
    response = api.handler({"not": "a function url event"}, Ctx())
    assert response["statusCode"] == 400


def test_api_schedules_come_from_the_scheduler(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass
    class Schedule:
        name: str
        cron: str

    monkeypatch.setattr(api, "list_schedules", lambda queue: [Schedule("nightly", "0 3 * * *")])
    status, data, _ = env.api("GET", "/schedules")
    assert status == 200 and data == {"schedules": [{"name": "nightly", "cron": "0 3 * * *"}]}
    monkeypatch.setattr(api, "list_schedules", lambda queue: [])
    assert env.api("GET", "/schedules")[1] == {"schedules": []}


def test_api_unexpected_errors_are_500_without_details(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def secret_failure(store: Any) -> None:
        raise RuntimeError("secret detail /internal/path")

    monkeypatch.setattr(admin, "stats", secret_failure)
    status, error, _ = env.api("GET", "/stats")
    assert status == 500 and error["error"] == "internal_error"
    assert "secret" not in json.dumps(error) and "Traceback" not in json.dumps(error)

    def unavailable(store: Any) -> None:
        raise StoreUnavailable("S3 bucket 'x' unavailable")

    monkeypatch.setattr(admin, "stats", unavailable)
    status, error, _ = env.api("GET", "/stats")
    assert status == 503 and error["error"] == "unavailable"


# -- configuration, events, local tools ------------------------------------------------


def test_configuration_errors_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="QO_SAFETY_MARGIN='soon' is not a number"):
        Config.from_env({"QO_SAFETY_MARGIN": "soon"})
    with pytest.raises(ConfigError, match="must be at least"):
        Config.from_env({"QO_TASK_BUDGET": "0"})
    with pytest.raises(ConfigError, match="invalid queue name"):
        Config.from_env({"QO_QUEUES": "a,b/c"})
    assert Config.from_env({"QO_QUEUES": " a, b ,"}).queues == ["a", "b"]
    with pytest.raises(ConfigError, match="QO_APP: invalid app"):
        serverless.load_app("not a spec")
    with pytest.raises(ConfigError, match="QO_APP: cannot import app module"):
        serverless.load_app("no_such_module_here:app")
    with pytest.raises(ConfigError, match="not a qo.app.App"):
        serverless.load_app("tests.apps.demo_app:not_an_app")
    assert serverless.load_app("tests.apps.lambda_app") is lambda_app.app
    monkeypatch.delenv("QO_QUEUE", raising=False)
    monkeypatch.delenv("QO_APP", raising=False)
    serverless.reset()
    with pytest.raises(ConfigError, match="QO_QUEUE is not set"):
        serverless.runtime()
    monkeypatch.setenv("QO_QUEUE", "memory://sls-config")
    serverless.reset()
    with pytest.raises(ConfigError, match="QO_APP is not set"):
        lambda_worker.handler({"qo": "kick"}, Ctx())
    serverless.reset()


def test_event_keys_are_url_decoded_and_prefix_stripped() -> None:
    record = fixture("s3_object_created.json")["Records"][0]
    record["s3"]["object"]["key"] = (
        "my+jobs/ready/default/127/0001714564800123000-ffe8f0a1b2c3d4e5f6a7b8-reports%3Adaily")
    parsed = parse_worker_event({"Records": [record]}, bucket="qo-example-bucket",
                                prefix="my jobs")
    [ready] = parsed.markers
    assert ready.key == "ready/default/127/0001714564800123000-ffe8f0a1b2c3d4e5f6a7b8-reports:daily"
    assert ready.marker.task_type == "reports:daily" and ready.marker.priority == 128
    assert ready.event_time == pytest.approx(1714564800.123)
    parsed = parse_worker_event({"Records": [record]}, bucket="qo-example-bucket", prefix="jobs")
    assert parsed.markers == [] and parsed.ignored == 1


@pytest.mark.slow  # a real process
def test_infra_local_s3_prints_the_environment() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.Popen([str(ROOT / "infra" / "local-s3"), "--port", "0", "--bucket",
                             "qo-local-smoke"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("QO_QUEUE" in x for x in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        assert any(x.startswith("export AWS_ENDPOINT_URL=http://127.0.0.1:") for x in lines)
        assert "export QO_QUEUE=s3://qo-local-smoke" in lines
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow  # a real process
def test_infra_invoke_runs_the_handlers_against_a_queue(env: Env) -> None:
    url = f"s3://{env.bucket}/{PREFIX}"
    run_env = {**os.environ, "QO_QUEUE": url, "QO_APP": "qo.examples.demo:app",
               "PYTHONPATH": str(ROOT)}

    def invoke(*args: str) -> Any:
        done = subprocess.run([sys.executable, str(ROOT / "infra" / "invoke.py"), *args],
                              capture_output=True, text=True, env=run_env, timeout=60,
                              cwd=ROOT, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    created = invoke("api", "POST", "/tasks", '{"type": "add", "input": {"x": 20, "y": 22}}')
    assert created["statusCode"] == 201
    task_id = json.loads(created["body"])["id"]
    assert invoke("worker")["succeeded"] == 1
    assert invoke("sweeper")["errors"] == []
    shown = invoke("api", "GET", f"/tasks/{task_id}")
    assert json.loads(shown["body"])["result"] == 42


def test_an_idle_sweeper_costs_a_few_requests_a_minute(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QO_WORKER_FUNCTION", "qo-worker")
    serverless.reset()
    monkeypatch.setattr(sweeper, "invoke_worker", lambda name: pytest.fail("nothing to kick"))
    sweeper.handler(fixture("eventbridge_scheduled.json"), Ctx())  # the hourly retention pass

    before = env.server.counts.snapshot()
    report = sweeper.handler(fixture("eventbridge_scheduled.json"), Ctx())
    assert report["errors"] == [] and not report["kicked"]
    lists = 4
    # delayed/, leases/, ready/ (the kick check) and schedules/; the retention and audit cursors.
    assert env.requests(before) == {"LIST": lists, "GET": 2}


def test_template_wiring() -> None:
    yaml = pytest.importorskip("yaml")

    class Loader(yaml.SafeLoader):
        pass

    def tagged(loader: Any, suffix: str, node: Any) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return {suffix: loader.construct_scalar(node)}
        if isinstance(node, yaml.SequenceNode):
            return {suffix: loader.construct_sequence(node, deep=True)}
        return {suffix: loader.construct_mapping(node, deep=True)}

    Loader.add_multi_constructor("!", tagged)
    doc = yaml.load((ROOT / "template.yaml").read_text(), Loader=Loader)
    resources = doc["Resources"]
    for name, module in [("WorkerFunction", "worker"), ("SweeperFunction", "sweeper"),
                         ("ApiFunction", "api")]:
        assert resources[name]["Properties"]["Handler"] == f"lambdas/{module}.handler"
        source = (ROOT / "lambdas" / f"{module}.py").read_text()
        assert f"from qo.serverless.{module} import handler" in source
    # Nothing refers to the bucket resource: no cycle bucket -> worker -> policy -> bucket.
    for name, resource in resources.items():
        if name != "QueueBucket":
            assert "QueueBucket" not in json.dumps(resource), name
    notification = resources["QueueBucket"]["Properties"]["NotificationConfiguration"]
    [rule] = notification["LambdaConfigurations"][0]["Filter"]["S3Key"]["Rules"]
    assert rule["Value"] == {"Sub": "${Prefix}/ready/"}
    # Every variable the template sets is one the runtime reads.
    names = set(doc["Globals"]["Function"]["Environment"]["Variables"])
    for resource in resources.values():
        names |= set(resource.get("Properties", {}).get("Environment", {}).get("Variables", {}))
    runtime_source = (ROOT / "qo" / "serverless" / "__init__.py").read_text()
    assert names and all(f'"{name}"' in runtime_source for name in names), names
    assert (ROOT / "requirements.txt").exists()
