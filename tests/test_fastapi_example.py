"""The FastAPI example: 202 with the task's URL, then a result awaited with a timeout."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from qo.examples.fastapi_app import app, create_api
from qo.queue import Queue
from qo.store.memory import MemoryStore
from qo.worker import Worker, WorkerOptions

pytestmark = pytest.mark.timeout(120)


def test_submit_answers_202_and_the_result_is_awaited() -> None:
    queue = Queue(MemoryStore())
    app.use(queue)
    client = TestClient(create_api(app))
    created = client.post("/thumbnails", json={"url": "https://example.com/a.jpg", "size": 64})
    assert created.status_code == 202
    body = created.json()
    assert created.headers["Location"] == body["url"] == f"/tasks/{body['id']}"
    # no worker yet: the wait ends with 202, still to do
    pending = client.get(f"{body['url']}/result", params={"timeout": 0.1})
    assert pending.status_code == 202 and pending.json()["status"] == "not finished"
    assert client.get(body["url"]).json()["status"] == "pending"
    worker = Worker(app, queue, WorkerOptions(concurrency=10, poll_max=0.05))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        done = client.get(f"{body['url']}/result", params={"timeout": 30})
    finally:
        worker.stop()
        thread.join(30)
    assert done.status_code == 200
    assert done.json()["result"] == {"url": "https://example.com/a.jpg", "size": 64,
                                     "thumbnail": "https://example.com/a.jpg.64.png"}
    assert client.get(body["url"]).json()["status"] == "succeeded"


def test_bad_requests_and_unknown_tasks_get_clear_answers() -> None:
    app.use(Queue(MemoryStore()))
    client = TestClient(create_api(app))
    assert client.post("/thumbnails", json={"url": "", "size": 64}).status_code == 422
    missing = "0" * 22
    assert client.get(f"/tasks/{missing}").status_code == 404
    assert client.get(f"/tasks/{missing}/result", params={"timeout": 5}).status_code == 404
    assert client.get("/tasks/not-an-id!").status_code == 400
