"""The Lambda functions' EMF metrics and JSON logs (qo.serverless.telemetry)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from qo import serverless
from qo.app import App
from qo.queue import Queue
from qo.serverless import sweeper, telemetry, worker
from qo.serverless.events import KICK_EVENT
from qo.store.memory import MemoryStore

from .test_fleet_stats import known_tasks


class Ctx:
    def __init__(self) -> None:
        self._deadline = time.monotonic() + 120
        self.aws_request_id = secrets.token_hex(8)
        self.function_name = "qo-test-fn"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@pytest.fixture
def lambda_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Queue]:
    for name in ("QO_WORKER_FUNCTION", "QO_APP", "QO_QUEUES", "POWERTOOLS_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "qo-test-fn")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "qo/test")
    queue = Queue(MemoryStore())
    app = App(queue)

    @app.task
    def ok(ctx: Any) -> int:
        return 1

    @app.task(max_attempts=1)
    def boom(ctx: Any) -> None:
        raise ValueError("no")

    serverless.configure(queue=queue, app=app)
    telemetry.reset()
    try:
        yield queue
    finally:
        telemetry.reset()
        serverless.reset()


def output(capsys: pytest.CaptureFixture[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(EMF documents, log lines) written to stdout; every line is one JSON object."""
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    return [d for d in lines if "_aws" in d], [d for d in lines if "_aws" not in d]


def metrics_of(doc: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    [directive] = doc["_aws"]["CloudWatchMetrics"]
    return {m["Name"]: (m["Unit"], doc[m["Name"]]) for m in directive["Metrics"]}


def test_a_worker_invocation_emits_one_emf_document_of_its_outcomes(
    lambda_env: Queue, capsys: pytest.CaptureFixture[str],
) -> None:
    for _ in range(2):
        lambda_env.submit("ok")
    lambda_env.submit("boom")
    capsys.readouterr()
    report = worker.handler(KICK_EVENT, Ctx())
    assert report["succeeded"] == 2
    [doc], logs = output(capsys)
    [directive] = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "qo/test" and directive["Dimensions"] == [["service"]]
    assert doc["service"] == "qo-worker" and isinstance(doc["_aws"]["Timestamp"], int)
    got = metrics_of(doc)
    assert got["TasksSucceeded"] == ("Count", [2.0]) and got["TasksDead"] == ("Count", [1.0])
    assert "TasksRetried" not in got  # none: not written (a metric is billed per hour seen)
    done = [line for line in logs if line.get("event") == "invocation_done"]
    assert len(done) == 1 and done[0]["service"] == "qo-worker"
    assert done[0]["function_name"] == "qo-test-fn" and done[0]["cold_start"] is True
    assert done[0]["level"] == "INFO" and done[0]["claimed"] == 3
    lambda_env.submit("ok")
    worker.handler(KICK_EVENT, Ctx())
    [again], logs = output(capsys)
    assert metrics_of(again)["TasksSucceeded"] == ("Count", [1.0])  # counted per invocation
    assert all(line["cold_start"] is False for line in logs)
    worker.handler(KICK_EVENT, Ctx())  # nothing to do: no metric at all
    assert output(capsys)[0] == []


def test_the_sweeper_emits_the_snapshots_gauges_fleet_wide_and_per_queue(
    lambda_env: Queue, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QO_METRICS_PER_QUEUE", "1")
    serverless.configure(queue=lambda_env, app=serverless.runtime().app)
    known_tasks(lambda_env.store)
    capsys.readouterr()
    report = sweeper.handler({}, Ctx())
    assert report["errors"] == [] and report["stats"] is True
    docs, _ = output(capsys)
    fleet = [d for d in docs if "queue" not in d]
    per_queue = {d["queue"]: d for d in docs if "queue" in d}
    [whole] = fleet
    got = metrics_of(whole)
    assert got["DeadTasks"] == ("Count", [1.0]) and got["ReadyTasks"] == ("Count", [5.0])
    assert got["RunningTasks"] == ("Count", [1.0]) and got["DelayedTasks"] == ("Count", [1.0])
    assert got["OldestReadyAgeSeconds"][0] == "Seconds"
    assert got["OldestReadyAgeSeconds"][1][0] >= 0
    assert set(per_queue) == {"default", "bulk"}
    [directive] = per_queue["bulk"]["_aws"]["CloudWatchMetrics"]
    assert sorted(directive["Dimensions"][0]) == ["queue", "service"]
    assert metrics_of(per_queue["bulk"])["ReadyTasks"] == ("Count", [2.0])
    assert metrics_of(per_queue["default"])["DeadTasks"] == ("Count", [1.0])
    sweeper.handler({}, Ctx())  # the snapshot is fresh, nothing happened: no metric
    assert output(capsys)[0] == []


def test_without_per_queue_gauges_the_sweeper_writes_one_document(
    lambda_env: Queue, capsys: pytest.CaptureFixture[str],
) -> None:
    known_tasks(lambda_env.store)
    capsys.readouterr()
    sweeper.handler({}, Ctx())
    [doc], _ = output(capsys)
    assert "queue" not in doc and metrics_of(doc)["DeadTasks"] == ("Count", [1.0])


def test_outside_lambda_nothing_is_written_to_stdout(
    lambda_env: Queue, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME")
    lambda_env.submit("ok")
    capsys.readouterr()
    assert worker.handler(KICK_EVENT, Ctx())["succeeded"] == 1
    assert capsys.readouterr().out == ""


def test_without_powertools_logs_are_still_json_and_metrics_are_skipped(
    lambda_env: Queue, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    for name in [m for m in sys.modules if m.startswith("aws_lambda_powertools")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "aws_lambda_powertools", None)  # as if not installed
    lambda_env.submit("ok")
    capsys.readouterr()
    assert worker.handler(KICK_EVENT, Ctx())["succeeded"] == 1
    docs, logs = output(capsys)
    assert docs == []
    assert any("aws-lambda-powertools is not installed" in line["msg"] for line in logs)
    assert any(line.get("event") == "invocation_done" for line in logs)


def test_the_templates_alarms_watch_metrics_the_sweeper_emits() -> None:
    import yaml

    from .test_serverless import ROOT

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
    namespace = doc["Globals"]["Function"]["Environment"]["Variables"][
        "POWERTOOLS_METRICS_NAMESPACE"]
    sweeper_service = resources["SweeperFunction"]["Properties"]["Environment"]["Variables"][
        "POWERTOOLS_SERVICE_NAME"]
    alarms = {name: r["Properties"] for name, r in resources.items()
              if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert {a["MetricName"] for a in alarms.values()} == {"DeadTasks", "OldestReadyAgeSeconds"}
    source = (ROOT / "qo" / "serverless" / "telemetry.py").read_text()
    for alarm in alarms.values():
        assert alarm["Namespace"] == namespace
        assert alarm["Dimensions"] == [{"Name": "service", "Value": sweeper_service}]
        assert f'"{alarm["MetricName"]}"' in source  # a metric telemetry.flush writes
