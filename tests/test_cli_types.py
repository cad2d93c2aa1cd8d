"""``qo types`` and ``qo types --publish`` (issue 16)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from qo.app import App
from qo.protocol import typeview
from qo.queue import Queue
from qo.store.memory import MemoryStore
from qo.store.metrics import diff
from qo.worker import Worker, WorkerOptions

from .test_cli import qo as run_qo

pytestmark = pytest.mark.timeout(120)
APP = "tests.apps.registry_app:app"


def make_app(queue: Queue) -> App:
    app = App(queue)

    @app.task(queue="emails")
    def send(to: str) -> str:
        """Send one email."""
        return to

    app.task(name="resize")(lambda size: size)
    return app


def test_types_lists_versions_workers_and_waiting_tasks(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    queue = Queue.from_url(url)
    app = make_app(queue)
    app.publish(queue.store, owner="w1")
    queue.submit("send", {"to": "a"})
    queue.submit("send", {"to": "b"}, delay=3600)
    queue.submit("resize", {"size": 1})
    queue.submit("legacy", allow_unregistered=True)

    data = orjson.loads(run_qo("-q", url, "types", "--json").stdout)
    rows = {r["type"]: r for r in data["types"]}
    assert set(rows) == {"send", "resize", "legacy"}
    assert rows["send"] == {"type": "send", "versions": [1], "registered": True,
                            "queue": "emails", "doc": "Send one email.", "workers": [],
                            "ready": 1, "delayed": 1, "unserved": True,
                            "unserved_versions": [1]}
    assert rows["legacy"]["registered"] is False and rows["legacy"]["versions"] == []

    worker = Worker(app, queue, WorkerOptions(concurrency=1, worker_id="w-send"))
    worker._write_heartbeat("running")  # what a running worker has published
    data = orjson.loads(run_qo("-q", url, "types", "--json").stdout)
    rows = {r["type"]: r for r in data["types"]}
    assert rows["send"]["workers"] == ["w-send"] and rows["send"]["unserved"] is False
    assert rows["legacy"]["unserved"] is True

    shown = run_qo("-q", url, "types")
    assert shown.exit_code == 0, shown.output
    assert "send" in shown.stdout and "emails" in shown.stdout and "unregistered" in shown.stdout
    assert "warning: no live worker serves 'legacy' (1 waiting)" in shown.stderr


def test_types_publish_writes_the_apps_definitions_once(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    first = orjson.loads(run_qo("-q", url, "types", "--publish", "--app", APP, "--json").stdout)
    assert first == {"written": ["types/echo/1.json"], "unchanged": 0, "contested": []}
    again = run_qo("-q", url, "types", "--publish", "--app", APP)
    assert again.exit_code == 0 and "published 0 definition(s), 1 unchanged" in again.stdout
    bad = run_qo("-q", url, "types", "--publish")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --publish needs --app")


def test_an_empty_bucket_has_no_types(tmp_path: Path) -> None:
    shown = run_qo("-q", f"file://{tmp_path / 's'}", "types")
    assert shown.exit_code == 0 and "no task type is registered" in shown.stderr


def test_the_overview_costs_what_its_docstring_says() -> None:
    store = MemoryStore()
    queue = Queue(store)
    make_app(queue).publish(store, owner="w1")
    queue.submit("send", {"to": "a"})
    before = store.counts.snapshot()
    typeview.overview(store)
    # LIST types/, 2 GET (one per type), LIST ready/, LIST delayed/, LIST workers/ (none)
    assert diff(store.counts.snapshot(), before) == {"LIST": 4, "GET": 2}
