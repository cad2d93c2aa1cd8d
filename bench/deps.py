"""``python -m bench --only deps``: what a dependency edge costs, and how soon a child starts.

Two measures per shape (fan-in: N parents -> 1 join; fan-out: 1 -> N; chain of N),
on the counting memory store with ``latency`` per request:

* **requests per edge**: the graph is driven synchronously (claim, succeed, one
  task at a time), once with its edges and once as the same tasks without, so
  the difference divided by the edges is exactly what dependencies add;
* **release latency**: a real worker (8 slots, ``poll_max`` 1 s) runs the graph, once it
  is all submitted (the queue is paused meanwhile); the
  time from the last parent's handler returning to the child's handler starting
  (its outcome CAS, the follow-up, the child's CAS and marker, a claim), median
  over the repeats; for a fan-out, to the first child; for a chain, the mean per hop.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from typing import Any

from qo.app import App
from qo.protocol import outcome
from qo.protocol.claim import Claimer
from qo.queue import Queue
from qo.settings import Settings
from qo.store.memory import MemoryStore
from qo.store.metrics import diff
from qo.worker import Worker, WorkerOptions

BILLABLE = ("PUT", "GET", "LIST", "HEAD", "PUT_412")


def _graph(queue: Queue, shape: str, n: int, with_edges: bool) -> tuple[list[str], int]:
    """Submit the shape; (every id, number of edges)."""
    def dep(ids: list[str]) -> dict[str, Any]:
        return {"depends_on": ids} if with_edges else {}

    if shape == "fan_in":
        parents = [queue.submit("t", {"i": i}).id for i in range(n)]
        return [*parents, queue.submit("t", None, **dep(parents)).id], n
    if shape == "fan_out":
        root = queue.submit("t").id
        return [root, *(queue.submit("t", {"i": i}, **dep([root])).id for i in range(n))], n
    ids = [queue.submit("t").id]
    for i in range(n - 1):
        ids.append(queue.submit("t", {"i": i}, **dep([ids[-1]])).id)
    return ids, n - 1


def requests_per_edge(shape: str, n: int) -> dict[str, Any]:
    totals = []
    for with_edges in (False, True):
        store = MemoryStore()
        queue = Queue(store, Settings())
        queue.registry.listing()
        claimer = Claimer(store, queue.settings, queues=["default"], task_types={"t"},
                          owner="bench")
        before = store.counts.snapshot()
        ids, edges = _graph(queue, shape, n, with_edges)
        for _ in range(len(ids) * 3):
            claim = claimer.claim()
            if claim is None:
                claimer.forget()
                claim = claimer.claim()
                if claim is None:
                    break
            outcome.succeed(store, claim, 0, queue.settings)
        done = sum(queue.get(i).record.status == "succeeded" for i in ids)
        assert done == len(ids), f"{shape}: {done} of {len(ids)} tasks ran"
        totals.append(diff(store.counts.snapshot(), before))
    plain, deps = totals
    per_edge = {k: round((deps.get(k, 0) - plain.get(k, 0)) / edges, 2)
                for k in ("PUT", "GET", "LIST", "PUT_412")}
    billable = sum(deps.get(k, 0) - plain.get(k, 0) for k in BILLABLE) / edges
    return {"shape": shape, "n": n, "edges": edges, "per_edge": per_edge,
            "billable_per_edge": round(billable, 2),
            "usd_per_million_edges": round(
                (per_edge["PUT"] + per_edge["LIST"] + per_edge["PUT_412"]) * 5.0
                + per_edge["GET"] * 0.4, 2)}


def _release_once(shape: str, n: int, latency: float) -> float:
    store = MemoryStore(latency=latency)
    queue = Queue(store, Settings())
    app = App(queue)
    ended: dict[str, float] = {}
    started: dict[str, float] = {}
    lock = threading.Lock()

    @app.task
    def t(ctx, i: int = 0) -> int:
        with lock:
            started[ctx.task_id] = time.monotonic()
        if ctx.depends_on == () and shape == "fan_in":
            time.sleep(0.05)  # parents that end together
        with lock:
            ended[ctx.task_id] = time.monotonic()
        return i

    worker = Worker(app, queue, WorkerOptions(concurrency=8, poll_max=1.0,
                                              heartbeat_interval=3600))
    queue.pause("default")  # the whole graph first: its submit is not what is measured
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    ids, _ = _graph(queue, shape, n, True)
    queue.resume("default")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with lock:
            if all(i in ended for i in ids):
                break
        time.sleep(0.05)
    worker.stop()
    thread.join(30)
    if shape == "fan_in":
        return started[ids[-1]] - max(ended[i] for i in ids[:-1])
    if shape == "fan_out":
        return min(started[i] for i in ids[1:]) - ended[ids[0]]
    return statistics.mean(started[b] - ended[a] for a, b in itertools.pairwise(ids))


def release_latency(shape: str, n: int, latency: float, repeats: int = 3) -> dict[str, Any]:
    samples = [_release_once(shape, n, latency) for _ in range(repeats)]
    what = {"fan_in": "last parent ended -> join started",
            "fan_out": "parent ended -> first child started",
            "chain": "mean per hop: parent ended -> child started"}[shape]
    return {"shape": shape, "n": n, "latency_s": latency, "measure": what,
            "median_ms": round(statistics.median(samples) * 1000, 1),
            "max_ms": round(max(samples) * 1000, 1)}


def run(latency: float, sizes: dict[str, int]) -> dict[str, Any]:
    return {"requests": [requests_per_edge(s, n) for s, n in sizes.items()],
            "release": [release_latency(s, n, latency) for s, n in sizes.items()]}


def _rows(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    release = {(r["shape"], r["n"]): r for r in result.get("release", [])}
    header = ["shape", "n", "edges", "PUT/edge", "GET/edge", "LIST/edge", "412/edge",
              "billable/edge", "$/M edges", "release", "median ms", "max ms"]
    rows = []
    for r in result.get("requests", []):
        rel = release.get((r["shape"], r["n"]), {})
        rows.append([r["shape"], r["n"], r["edges"], r["per_edge"]["PUT"], r["per_edge"]["GET"],
                     r["per_edge"]["LIST"], r["per_edge"]["PUT_412"], r["billable_per_edge"],
                     r["usd_per_million_edges"], rel.get("measure", "-"),
                     rel.get("median_ms", "-"), rel.get("max_ms", "-")])
    return header, rows


def print_report(result: dict[str, Any]) -> None:
    deps = result.get("deps")
    if not deps:
        return
    from bench.report import _table

    header, rows = _rows(deps)
    latency = (deps.get("release") or [{}])[0].get("latency_s", "-")
    _table(f"Dependencies: requests an edge adds, and how soon a child starts "
           f"(memory store, {latency} s per request)", header, rows)


def markdown(result: dict[str, Any]) -> str:
    from bench.report import _md

    header, rows = _rows(result.get("deps") or {})
    return _md(header, rows) + "\n" if rows else ""
