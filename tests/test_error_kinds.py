"""Every QoError has a kind, and the CLI exit code and the API status come from it (issue 14).

A command and a route that fail the same way answer the same way: the exit
code and the HTTP status (and the API's ``error`` code) are read from
``qo.errors.ErrorKind``, never chosen per error class, so the API cannot
answer 400 for a schedule that does not exist.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import qo
from qo import serverless
from qo.cli import common
from qo.errors import (
    AccessDenied,
    BucketNotFound,
    ConfigError,
    ErrorKind,
    InvalidName,
    PreconditionFailed,
    QoError,
    StoreError,
    StoreUnavailable,
)
from qo.protocol.admin import InvalidTransition, TaskNotFound
from qo.protocol.records import PayloadTooLarge
from qo.protocol.submit import IdempotencyConflict, InvalidBatchItem
from qo.queue import Queue
from qo.scheduler import ScheduleNotFound
from qo.serverless import api
from qo.settings import Settings
from qo.store.s3 import S3Store

from .helpers import api_call as call
from .test_cli import qo as run_qo

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]


def all_error_classes() -> list[type[QoError]]:
    """Every subclass of QoError defined anywhere in the qo package."""
    for module in pkgutil.walk_packages(qo.__path__, "qo."):
        importlib.import_module(module.name)
    found: set[type[QoError]] = set()
    todo = [QoError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("qo.") and sub not in found:
                found.add(sub)
                todo.append(sub)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


#: The kind chosen for each error (a new class must be added here, on purpose).
EXPECTED = {
    "qo.protocol.admin.InvalidTransition": ErrorKind.CONFLICT,
    "qo.protocol.admin.TaskNotFound": ErrorKind.NOT_FOUND,
    "qo.app.AppLoadError": ErrorKind.MISCONFIGURED,
    "qo.app.UnknownTaskType": ErrorKind.INVALID,
    "qo.cli.common.CliError": ErrorKind.INVALID,
    "qo.cli.doctor.DoctorFailed": ErrorKind.UNSUPPORTED_STORE,
    "qo.cron.InvalidSchedule": ErrorKind.INVALID,
    "qo.protocol.firing.SlotNotFired": ErrorKind.UNAVAILABLE,
    "qo.probes.Unhealthy": ErrorKind.UNAVAILABLE,
    "qo.errors.AccessDenied": ErrorKind.MISCONFIGURED,
    "qo.errors.BucketNotFound": ErrorKind.MISCONFIGURED,
    "qo.errors.ConfigError": ErrorKind.MISCONFIGURED,
    "qo.errors.DependencyCycle": ErrorKind.INVALID,
    "qo.errors.DependencyError": ErrorKind.INVALID,
    "qo.errors.InvalidName": ErrorKind.INVALID,
    "qo.errors.NoStatsSnapshot": ErrorKind.NOT_FOUND,
    "qo.errors.ListingStalled": ErrorKind.UNSUPPORTED_STORE,
    "qo.errors.NotSupported": ErrorKind.UNSUPPORTED_STORE,
    "qo.errors.StoreRefused": ErrorKind.MISCONFIGURED,
    "qo.errors.PreconditionFailed": ErrorKind.CONFLICT,
    "qo.errors.RateLimited": ErrorKind.UNAVAILABLE,
    "qo.errors.StoreError": ErrorKind.INTERNAL,
    "qo.errors.StoreUnavailable": ErrorKind.UNAVAILABLE,
    "qo.models.CorruptRecord": ErrorKind.INTERNAL,
    "qo.models.FutureSchema": ErrorKind.MISCONFIGURED,
    "qo.queue.ResultTimeout": ErrorKind.UNAVAILABLE,
    "qo.queue.TaskCancelled": ErrorKind.CONFLICT,
    "qo.queue.TaskFailed": ErrorKind.CONFLICT,
    "qo.protocol.records.InvalidPayload": ErrorKind.INVALID,
    "qo.protocol.records.PayloadTooLarge": ErrorKind.TOO_LARGE,
    "qo.scheduler.ScheduleExists": ErrorKind.CONFLICT,
    "qo.scheduler.ScheduleNotFound": ErrorKind.NOT_FOUND,
    "qo.serverless.worker.InvocationFailed": ErrorKind.UNAVAILABLE,
    "qo.serverless.worker.TaskTooLong": ErrorKind.MISCONFIGURED,
    "qo.store.faulty.InjectedFault": ErrorKind.UNAVAILABLE,
    "qo.protocol.submit.IdempotencyConflict": ErrorKind.CONFLICT,
    "qo.protocol.workflow.WorkflowNotFound": ErrorKind.NOT_FOUND,
    "qo.protocol.backpressure.QueueFull": ErrorKind.FULL,
    "qo.protocol.registry.InvalidInput": ErrorKind.INVALID,
    "qo.protocol.identity.InvalidIdentity": ErrorKind.INVALID,
    "qo.protocol.limits.InvalidLimit": ErrorKind.INVALID,
    "qo.protocol.limits.LimitNotFound": ErrorKind.NOT_FOUND,
    "qo.protocol.registry.UnregisteredType": ErrorKind.INVALID,
    "qo.protocol.submit.InvalidBatchItem": ErrorKind.INVALID,  # an instance takes its item's kind
    "qo.worker.StoreCheckFailed": ErrorKind.MISCONFIGURED,  # an instance takes its cause's
}


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__qualname__)
def test_every_error_class_declares_its_kind(cls: type[QoError]) -> None:
    declared = [c for c in cls.__mro__ if "kind" in vars(c) and c is not QoError]
    assert declared, f"{cls.__qualname__} inherits QoError's kind: declare kind = ErrorKind.X"
    assert isinstance(cls.kind, ErrorKind)
    for attr in ("exit_code", "http_status"):  # derived: a class may not pin its own
        assert not any(attr in vars(c) for c in cls.__mro__ if c is not QoError), (cls, attr)
    assert cls.exit_code == cls.kind.exit_code and cls.http_status == cls.kind.http_status
    assert EXPECTED.get(f"{cls.__module__}.{cls.__qualname__}") is cls.kind


def test_the_expected_table_names_only_existing_classes() -> None:
    names = {f"{c.__module__}.{c.__qualname__}" for c in all_error_classes()}
    assert set(EXPECTED) == names


def test_codes_are_distinct_and_derived_values_are_read_only() -> None:
    assert len({k.code for k in ErrorKind}) == len(ErrorKind)
    error = IdempotencyConflict("taken")
    assert (error.exit_code, error.http_status) == (3, 409)
    with pytest.raises(AttributeError, match="set kind"):
        error.exit_code = 1  # type: ignore[misc]
    wrapped = InvalidBatchItem(2, PayloadTooLarge("too big"))
    assert wrapped.kind is ErrorKind.TOO_LARGE and wrapped.http_status == 413


def test_the_documented_table_is_the_code() -> None:
    """docs/protocol.md's table lists every kind with its code, exit code and status."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    rows = re.findall(r"^\| `([A-Z_]+)` \| `(\w+)` \| (\d+) \| (\d+) \|", text, re.MULTILINE)
    assert {(name, code, int(exit_code), int(status)) for name, code, exit_code, status in rows} \
        == {(k.name, k.code, k.exit_code, k.http_status) for k in ErrorKind}


# -- every kind through both front ends ---------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("QO_APP", raising=False)
    serverless.reset()
    yield
    serverless.reset()


@pytest.mark.parametrize("kind", list(ErrorKind), ids=lambda k: k.name)
def test_both_front_ends_answer_any_error_by_its_kind(kind: ErrorKind,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    error = type("SomeError", (QoError,), {"kind": kind})("it went wrong")
    assert common.handle_error(error) == kind.exit_code
    assert capsys.readouterr().err.startswith("error: ")
    status, body = api.refusal(error, "req-1")
    assert status == kind.http_status and body["error"] == kind.code
    assert ("it went wrong" in body["message"]) == (kind is not ErrorKind.INTERNAL)


@pytest.fixture
def memory_url() -> str:
    """A named memory store, shared in-process by the CLI and the API."""
    return f"memory://kinds-{uuid.uuid4().hex[:8]}"


def use(url: str, **settings: Any) -> None:
    serverless.configure(queue=Queue.from_url(url, **settings))


def test_a_missing_task_is_4_and_404(memory_url: str) -> None:
    missing = "k" + "0" * 23
    assert run_qo("-q", memory_url, "show", missing).exit_code == TaskNotFound.kind.exit_code == 4
    use(memory_url)
    status, body = call("GET", f"/tasks/{missing}")
    assert (status, body["error"]) == (404, "not_found")


def test_a_missing_schedule_is_4_and_404(memory_url: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_qo("-q", memory_url, "schedule", "show", "nightly")
    assert result.exit_code == ScheduleNotFound.kind.exit_code == 4, result.output
    use(memory_url)

    def missing(queue: Queue) -> list[Any]:
        raise ScheduleNotFound("no schedule named 'nightly'")

    monkeypatch.setattr(api, "list_schedules", missing)
    status, body = call("GET", "/schedules")  # was 400: every other QoError was "bad input"
    assert (status, body["error"]) == (404, "not_found") and "nightly" in body["message"]


def test_an_invalid_name_is_2_and_400(memory_url: str) -> None:
    assert run_qo("-q", memory_url, "show", "NOT-AN-ID").exit_code == InvalidName.kind.exit_code
    use(memory_url)
    status, body = call("GET", "/tasks/NOT-AN-ID")
    assert (status, body["error"]) == (400, "bad_request") and "invalid task id" in body["message"]
    status, body = call("POST", "/tasks", {"type": "a/b"})
    assert (status, body["error"]) == (400, "bad_request")


def test_a_payload_over_the_limit_is_2_and_413(memory_url: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("qo.queue.Settings", lambda: replace(Settings(), max_payload=100))
    big = json.dumps({"pad": "p" * 500})
    result = run_qo("-q", memory_url, "submit", "add", "-i", big)
    assert result.exit_code == PayloadTooLarge.kind.exit_code == 2
    assert "over the limit of 100 bytes" in result.stderr
    use(memory_url, max_payload=100)
    status, body = call("POST", "/tasks", {"type": "add", "input": {"pad": "p" * 500}})
    assert (status, body["error"]) == (413, "payload_too_large")
    status, body = call("POST", "/tasks/batch", {"tasks": [{"type": "add", "input": {"pad": "p" * 500}}]})
    assert (status, body["error"]) == (413, "payload_too_large")
    assert body["message"].startswith("tasks[0]: ")


def test_an_idempotency_conflict_is_3_and_409(memory_url: str) -> None:
    assert run_qo("-q", memory_url, "submit", "add", "-i", '{"x": 1}', "--key", "k1").exit_code == 0
    result = run_qo("-q", memory_url, "submit", "add", "-i", '{"x": 2}', "--key", "k1")
    assert result.exit_code == IdempotencyConflict.kind.exit_code == 3
    use(memory_url)
    status, body = call("POST", "/tasks", {"type": "add", "input": {"x": 3}, "key": "k1"})
    assert (status, body["error"]) == (409, "conflict") and "k1" in body["message"]
    assert InvalidTransition.kind is ErrorKind.CONFLICT


def test_a_missing_bucket_is_misconfigured_in_both(s3_server: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    result = run_qo("-q", "s3://qo-kinds-no-such-bucket/x", "stats")
    assert result.exit_code == BucketNotFound.kind.exit_code == 2, result.output  # was 1
    assert "'qo-kinds-no-such-bucket' does not exist" in result.stderr
    serverless.configure(queue=Queue(S3Store("qo-kinds-no-such-bucket", "x",
                                             endpoint_url=s3_server.endpoint_url, max_attempts=1)))
    status, body = call("GET", "/stats")
    assert (status, body["error"]) == (500, "misconfigured")


def test_kinds_of_store_errors_differ_by_what_a_retry_can_do() -> None:
    assert StoreUnavailable.kind.exit_code == 5 and StoreUnavailable.http_status == 503
    for cls in (BucketNotFound, AccessDenied, ConfigError):
        assert cls.kind is ErrorKind.MISCONFIGURED and cls.http_status == 500
    assert StoreError.kind is ErrorKind.INTERNAL and PreconditionFailed.http_status == 409