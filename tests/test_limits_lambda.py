"""The Lambda worker applies the app's limits too (docs/protocol.md section 11)."""

from __future__ import annotations

import pytest

from qo.models import Status
from qo.protocol import keys, records
from qo.queue import Queue

from .apps import limited_app
from .test_serverless import Env, env  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(120)


def test_a_lambda_worker_admits_within_the_limit_and_leaves_the_rest_queued(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from qo import serverless

    monkeypatch.setenv("QO_APP", "tests.apps.limited_app:app")
    serverless.reset()
    limited_app.RAN.clear()
    queue = Queue(env.store)
    app = limited_app.app
    app.use(queue)
    for customer in ("a", "a", "a", "b"):
        limited_app.call_api.submit(customer)
    report = env.work({"qo": "kick"})
    assert report["succeeded"] == 3  # burst 2 for "a", and "b" flows beside it
    assert sorted(limited_app.RAN) == ["a", "a", "b"]
    (left,) = [keys.parse_ready_key(k) for k in env.ready_keys()]
    assert left is not None and left.limit_key == keys.hash_limit_key("a")
    current = records.read(env.store, left.task_id)
    assert current is not None
    assert current.value.status == Status.PENDING and current.value.attempt == 0
