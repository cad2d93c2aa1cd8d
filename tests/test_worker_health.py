"""Worker health checks (issue 19): /livez and /readyz through a drain and a store outage."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from qo.app import App
from qo.cli import app as cli
from qo.context import Context
from qo.metrics import WorkerMetrics
from qo.models import Status
from qo.probes import HealthServer, Probes
from qo.queue import Queue
from qo.store.faulty import OPS, FaultyStore
from qo.store.memory import MemoryStore
from qo.worker import Worker, WorkerOptions

from .helpers import ROOT, start_qo, wait_for

pytestmark = pytest.mark.timeout(120)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def health_cli(port: int, *args: str) -> Any:
    return CliRunner().invoke(cli, ["health", "--port", str(port), *args])


class Running:
    """A worker in a thread, its health server, and a task that holds a slot."""

    def __init__(self, store: Any, **options: Any) -> None:
        self.queue = Queue(store)
        self.app = App(self.queue)
        self.release = threading.Event()

        @self.app.task
        def hold(ctx: Context) -> None:
            self.release.wait(60)

        self.worker = Worker(self.app, self.queue, WorkerOptions(
            concurrency=2, poll_max=0.1, **options))
        self.server = HealthServer(Probes(self.worker), "127.0.0.1", 0)
        self.port = self.server.port
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def close(self) -> None:
        self.release.set()
        self.worker.stop()
        if self.thread.is_alive():
            self.thread.join(60)
        self.server.close()


@pytest.fixture
def running() -> Iterator[Running]:
    r = Running(MemoryStore())
    try:
        yield r
    finally:
        r.close()


def test_a_worker_not_started_is_live_but_not_ready(running: Running) -> None:
    assert get(running.port, "/livez") == (200, "live\n")
    assert get(running.port, "/readyz") == (503, "not ready: the store has not answered yet\n")
    assert get(running.port, "/nope")[0] == 404


def test_readyz_fails_and_livez_holds_while_the_worker_drains(running: Running) -> None:
    handle = running.app.submit("hold")
    running.thread.start()
    wait_for(lambda: get(running.port, "/readyz")[0] == 200)
    assert get(running.port, "/readyz") == (200, "ready\n")
    assert health_cli(running.port).output == "ready\n"
    wait_for(lambda: running.queue.get(handle.id).status == Status.RUNNING)
    running.worker.stop()  # what SIGTERM does: stop claiming, let running tasks finish
    assert get(running.port, "/readyz") == (503, "not ready: draining\n")
    assert get(running.port, "/livez") == (200, "live\n")
    result = health_cli(running.port)
    assert result.exit_code == 5 and result.output == "error: not ready: draining\n"
    assert health_cli(running.port, "--check", "live").exit_code == 0
    running.release.set()
    running.thread.join(60)
    assert running.queue.get(handle.id).status == Status.SUCCEEDED
    assert get(running.port, "/livez") == (200, "live\n")  # stopped on purpose


def test_readyz_follows_a_store_outage_and_its_end() -> None:
    faulty = FaultyStore(MemoryStore())
    r = Running(faulty)
    try:
        r.thread.start()
        wait_for(lambda: get(r.port, "/readyz")[0] == 200)
        for op in OPS:  # every request fails, as in an outage
            faulty.inject(op, "before", times=10**9)
        wait_for(lambda: get(r.port, "/readyz") == (503, "not ready: the store is unavailable\n"))
        assert get(r.port, "/livez") == (200, "live\n")  # nothing to restart for
        faulty.clear()
        wait_for(lambda: get(r.port, "/readyz")[0] == 200)
        handle = r.app.submit("hold")
        r.release.set()
        wait_for(lambda: r.queue.get(handle.id).status == Status.SUCCEEDED)
    finally:
        r.close()


def test_livez_fails_when_a_slot_thread_dies(running: Running,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the death is expected
    real, calls = running.worker.claimer.claim, []

    def claim_once_broken() -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in a slot")
        return real()

    monkeypatch.setattr(running.worker.claimer, "claim", claim_once_broken)
    running.thread.start()
    wait_for(lambda: get(running.port, "/livez")[0] == 503)
    status, body = get(running.port, "/livez")
    assert status == 503 and body.startswith("not live: slot thread(s) qo-slot-")
    assert body.endswith(" died\n")
    result = health_cli(running.port, "--check", "live")
    assert result.exit_code == 5 and result.output.startswith("error: not live: slot thread")


def test_a_stuck_housekeeper_and_a_silent_store_fail_their_checks(running: Running) -> None:
    running.thread.start()
    wait_for(lambda: running.worker.housekeeper is not None  # past "starting"
             and running.worker.housekept_at is not None
             and running.worker.health.answered_at is not None)
    later = Probes(running.worker, clock=lambda: time.monotonic() + 10_000)
    live, ready = later.live(), later.ready()
    assert not live.ok and live.reason.startswith("the housekeeper has not run for ")
    assert not ready.ok and ready.reason.startswith("the store has not answered for ")
    assert Probes(running.worker).live().ok


def test_one_port_can_serve_health_checks_and_metrics(running: Running) -> None:
    metrics = WorkerMetrics()
    detach = metrics.attach(running.worker)
    server = HealthServer(Probes(running.worker), "127.0.0.1", 0, metrics=metrics)
    try:
        status, body = get(server.port, "/metrics")
        assert status == 200 and 'qo_worker_slots{state="idle"} 2.0' in body
        assert get(server.port, "/livez")[0] == 200
    finally:
        server.close()
        detach()


def test_qo_health_without_a_server_is_one_error_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    result = health_cli(port)
    assert result.exit_code == 5
    assert result.output.startswith(f"error: no worker health server answered on 127.0.0.1:{port}")
    assert len(result.output.splitlines()) == 1


def test_a_health_port_in_use_is_one_error_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["--queue", "memory://health", "worker", "--app",
                                          "tests.apps.demo_app:app", "--health-port", str(port)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: cannot serve health checks on 127.0.0.1:{port}: ")
    assert len(result.output.splitlines()) == 1


@pytest.mark.slow
def test_qo_worker_probes_through_a_sigterm_drain(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    queue = Queue.from_url(url)
    slow = queue.submit("slow", {"seconds": 120})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    proc, lines = start_qo(
        "--queue", url, "worker", "--app",
        "tests.apps.demo_app:app", "--concurrency", "1", "--grace", "120", "--poll-max", "0.2",
        "--health-port", str(free), "--metrics-port", str(free), "--log-format", "json")

    def served(what: str) -> int:
        event = next(orjson.loads(line) for line in lines
                     if '"event":"serving"' in line and f'"what":"{what}"' in line)
        return int(event["url"].rsplit(":", 1)[1])

    try:
        wait_for(lambda: any('"event":"serving"' in line for line in lines), timeout=60)
        port = served("health checks and metrics")  # one port for both
        assert port == free and sum('"event":"serving"' in line for line in lines) == 1
        status, text = get(port, "/metrics")
        assert status == 200 and 'qo_worker_slots{state="busy"}' in text
        wait_for(lambda: queue.get(slow.id).status == Status.RUNNING, timeout=60)
        wait_for(lambda: get(port, "/readyz")[0] == 200, timeout=60)
        probe = [sys.executable, "-m", "qo", "health", "--port", str(port)]
        done = subprocess.run(probe, cwd=ROOT, capture_output=True, text=True, timeout=60,
                              check=False)
        assert (done.returncode, done.stdout) == (0, "ready\n")
        proc.send_signal(signal.SIGTERM)  # drains: the slow task may run out its grace
        wait_for(lambda: get(port, "/readyz")[0] == 503, timeout=60)
        assert get(port, "/readyz") == (503, "not ready: draining\n")
        assert get(port, "/livez") == (200, "live\n")
        done = subprocess.run(probe, cwd=ROOT, capture_output=True, text=True, timeout=60,
                              check=False)
        assert (done.returncode, done.stderr) == (5, "error: not ready: draining\n")
        proc.send_signal(signal.SIGTERM)  # a second one ends the grace period
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, "".join(lines)
    assert queue.get(slow.id).status == Status.PENDING  # handed back
