"""Health checks of a running worker: ``/livez`` and ``/readyz`` (``qo worker --health-port``).

- **live**: the process answers, every slot thread and the housekeeper are
  alive, and the housekeeper went round its loop recently (it wakes at
  least once per sweep interval). A worker that is draining is live: it is
  finishing its tasks on purpose, and killing it would only hand them to a
  reaper later.
- **ready**: the worker is not draining, its last store request did not
  fail (``qo.health.StoreHealth``), and the store answered recently (claims,
  lease renewals, sweeps and heartbeat records all count).

A check costs no store request: it reads what the worker's own threads
recorded. The server is the standard library's ``ThreadingHTTPServer`` in a
daemon thread, so probes need no extra; with ``metrics`` it also serves
``/metrics`` (one port for both).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from qo.errors import ErrorKind, QoError

if TYPE_CHECKING:
    from qo.metrics import WorkerMetrics
    from qo.worker import Worker

#: Beyond the worker's sweep interval (x 1.2, its jitter), how long a sweep may take
#: before the housekeeper counts as stuck.
HOUSEKEEPER_SLACK = 300.0
#: Beyond the worker's longest idle poll (x 3), how long the store may stay silent.
STORE_SLACK = 30.0

PATHS = {"/livez": "live", "/readyz": "ready"}
#: How often the server looks whether it was told to stop (``close`` waits up to this).
POLL = 0.1


class Unhealthy(QoError):
    """A health check failed (``qo health``), or no worker answered it."""

    kind = ErrorKind.UNAVAILABLE


@dataclass(frozen=True)
class Check:
    ok: bool
    reason: str

    def line(self, what: str) -> str:
        return what if self.ok else f"not {what}: {self.reason}"


class Probes:
    """The checks of one worker; thread-safe (they only read)."""

    def __init__(self, worker: Worker, *, clock: Callable[[], float] = time.monotonic,
                 housekeeper_stale: float | None = None, store_stale: float | None = None
                 ) -> None:
        self.worker = worker
        self.clock = clock
        options = worker.options
        self.housekeeper_stale = (housekeeper_stale if housekeeper_stale is not None
                                  else 1.2 * options.sweep_interval + HOUSEKEEPER_SLACK)
        self.store_stale = (store_stale if store_stale is not None
                            else 3 * options.poll_max + STORE_SLACK)

    def check(self, what: str) -> Check:
        return self.live() if what == "live" else self.ready()

    def live(self) -> Check:
        w = self.worker
        if w.stopping:
            return Check(True, "draining")
        if w.housekeeper is None:
            return Check(True, "starting")
        dead = [t.name for t in w.slots if not t.is_alive()]
        if dead:
            return Check(False, f"slot thread(s) {', '.join(dead)} died")
        if not w.housekeeper.is_alive():
            return Check(False, "the housekeeper thread died")
        if w.housekept_at is not None:
            idle = self.clock() - w.housekept_at
            if idle > self.housekeeper_stale:
                return Check(False, f"the housekeeper has not run for {idle:.0f} s")
        return Check(True, "alive")

    def ready(self) -> Check:
        w = self.worker
        if w.stopping:
            return Check(False, "draining")
        if w.health.down:
            return Check(False, "the store is unavailable")
        answered = w.health.answered_at
        if answered is None:
            return Check(False, "the store has not answered yet")
        silent = self.clock() - answered
        if silent > self.store_stale:
            return Check(False, f"the store has not answered for {silent:.0f} s")
        return Check(True, "ready")


class HealthServer:
    """``/livez`` and ``/readyz`` (200 or 503, one line of text), and ``/metrics`` with
    ``metrics``, on ``host:port`` (port 0: any free one) until ``close``."""

    def __init__(self, probes: Probes, host: str, port: int,
                 metrics: WorkerMetrics | None = None) -> None:
        self._httpd = ThreadingHTTPServer((host, port), _handler(probes, metrics))
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(POLL,),
                                        name="qo-health", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)


def _handler(probes: Probes, metrics: WorkerMetrics | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server calls it by this name
            path = self.path.split("?", 1)[0]
            if path == "/metrics" and metrics is not None:
                body, content_type = metrics.exposition(self.headers.get("Accept"))
                self._answer(200, body, content_type)
            elif path in PATHS:
                check = probes.check(PATHS[path])
                self._answer(200 if check.ok else 503,
                             f"{check.line(PATHS[path])}\n".encode(), "text/plain; charset=utf-8")
            else:
                self._answer(404, b"not found\n", "text/plain; charset=utf-8")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would drown the worker's log

    return Handler


def probe(host: str, port: int, what: str, timeout: float = 5.0) -> str:
    """Ask a worker's health server; its one line if healthy, else ``Unhealthy``."""
    import urllib.error
    import urllib.request

    path = next(p for p, w in PATHS.items() if w == what)
    url = f"http://{host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return str(response.read().decode().strip())
    except urllib.error.HTTPError as exc:
        line = exc.read().decode(errors="replace").strip() or f"HTTP {exc.code}"
        raise Unhealthy(line) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unhealthy(f"no worker health server answered on {host}:{port} ({reason})") from None
