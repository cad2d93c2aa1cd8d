"""The benchmark scenarios. Each returns plain JSON-able dicts.

Definitions (also in docs/benchmarks.md):

- *throughput*: N tasks are submitted first (batch submit, timed apart);
  then k burst-mode workers are released together, and the clock runs from
  that moment until the last worker has exited (every task done, the burst
  check made, the heartbeat record deleted). tasks/s = N / that time.
- *requests per task*: everything on the wire during submit + drain,
  divided by N ("gross"); and the task path only ("task"), which leaves out
  the workers' heartbeat records (``workers/``) and housekeeping LISTs
  (anything but ``ready/``).
- *failed writes*: ``PUT_412 + PUT_409 + PUT_404 + DELETE_412`` (and 409/404
  deletes) over all writes (PUT + DELETE), during the drain.
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import report
from bench.backends import Backend, Counts
from bench.workers import TASK_TYPE, WorkerFleet, layout_groups
from qo.ids import new_task_id
from qo.models import Status, TaskRecord, dumps
from qo.protocol import keys
from qo.protocol.claim import Claimer
from qo.protocol.submit import SubmitRequest
from qo.queue import Queue
from qo.settings import Settings
from qo.store.memory import MemoryStore
from qo.store.metrics import BILLABLE, PRICE_PER_REQUEST

KINDS = ("PUT", "GET", "HEAD", "LIST", "DELETE")
TASK_FAMILIES = ("tasks", "ready", "leases", "delayed", "dead", "payloads")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- counting helpers ----------------------------------------------------------------


def per_unit(counts: dict[str, int], n: int) -> dict[str, float]:
    out = {k: round(counts.get(k, 0) / n, 4) for k in KINDS}
    out["billable"] = round(sum(counts.get(k, 0) for k in BILLABLE) / n, 4)
    return out


def cost_per_million(per_task: dict[str, float]) -> float:
    return round(sum(per_task.get(k, 0.0) * p for k, p in PRICE_PER_REQUEST.items()) * 1e6, 2)


def task_path(c: Counts) -> dict[str, int]:
    """Counts by kind, without worker heartbeats and housekeeping LISTs."""
    out: dict[str, int] = {}
    for name, v in c.families.items():
        kind, _, fam = name.partition(" ")
        if kind not in KINDS:
            continue
        if kind == "LIST" and fam != "ready":
            continue
        if kind != "LIST" and fam not in TASK_FAMILIES:
            continue
        out[kind] = out.get(kind, 0) + v
    return out


def failed_share(c: Counts) -> dict[str, Any]:
    writes = c.get("PUT") + c.get("DELETE")
    failed = c.failed_writes()
    by = {k: v for k, v in c.families.items()
          if k.split(" ")[0].split("_")[0] in ("PUT", "DELETE") and "_" in k.split(" ")[0]}
    return {"failed": failed, "writes": writes,
            "share": round(failed / writes, 4) if writes else 0.0, "by_family": by}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    i = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[i]


def submit_batches(queue: Queue, n: int, batch: int = 100, payload: dict | None = None) -> None:
    for start in range(0, n, batch):
        m = min(batch, n - start)
        queue.submit_many([SubmitRequest(type=TASK_TYPE, input=payload or {}) for _ in range(m)])


# -- throughput, contention, requests per task ------------------------------------------


def throughput(backend: Backend, tasks: int, workers: list[int], layouts: list[str],
               procs: int, timeout: float, shared_workers: list[int] | None = None
               ) -> list[dict[str, Any]]:
    rows = []
    for layout in layouts:
        for k in (shared_workers or workers) if layout == "shared" else workers:
            if layout == "shared" and k == 1 and "independent" in layouts:
                continue  # the same thing as one independent worker
            rows.append(throughput_one(backend, tasks, k, layout, procs, timeout))
    return rows


class Progress(threading.Thread):
    """Watches live counts during a drain; snapshots when 10% and 90% of tasks are done.

    Completions are the successful PUTs of ``tasks/`` records (one per task on
    the happy path). Only backends with live counts (the moto server, the
    in-process memory store) give a steady-state window; others give none.
    """

    def __init__(self, backend: Backend, base: Counts, tasks: int,
                 marks: tuple[float, float] = (0.1, 0.9)) -> None:
        super().__init__(daemon=True)
        self.backend, self.base, self.tasks, self.marks = backend, base, tasks, marks
        self.done = threading.Event()
        self.points: list[tuple[float, int, Counts]] = []

    def completed(self, c: Counts) -> int:
        f = c.families
        return (f.get("PUT tasks", 0) - f.get("PUT_412 tasks", 0) - f.get("PUT_404 tasks", 0)
                - f.get("PUT_409 tasks", 0))

    def run(self) -> None:
        pending = list(self.marks)
        while pending and not self.done.wait(0.05):
            try:
                snap = self.backend.snapshot() - self.base
            except OSError:
                continue
            n = self.completed(snap)
            while pending and n >= pending[0] * self.tasks:
                self.points.append((time.monotonic(), n, snap))
                pending.pop(0)

    def window(self) -> dict[str, Any] | None:
        if len(self.points) < 2:
            return None
        (t1, n1, c1), (t2, n2, c2) = self.points[0], self.points[-1]
        if t2 <= t1 or n2 <= n1:
            return None
        c = c2 - c1
        fs = failed_share(c)
        return {"from_done": n1, "to_done": n2, "seconds": round(t2 - t1, 3),
                "tasks_per_s": round((n2 - n1) / (t2 - t1), 2),
                "requests_per_s": round(sum(c.get(x) for x in KINDS) / (t2 - t1), 1),
                "per_task": per_unit(c.kinds, n2 - n1),
                "failed_writes": {k: fs[k] for k in ("failed", "writes", "share")}}


def throughput_one(backend: Backend, tasks: int, k: int, layout: str, procs: int,
                   timeout: float) -> dict[str, Any]:
    backend.fresh()
    store = backend.store()
    queue = Queue(store)
    store.now()
    c0 = backend.snapshot()
    t = time.perf_counter()
    submit_batches(queue, tasks)
    submit_s = time.perf_counter() - t
    c1 = backend.snapshot()
    groups = layout_groups(k, layout, procs, burst=True, timeout=timeout)
    fleet = WorkerFleet(backend, groups)
    fleet.start()
    c2 = backend.snapshot()
    cpu0 = backend.server_cpu()
    machine0 = report.cpu_times()
    progress = Progress(backend, c2, tasks)
    fleet.release()
    progress.start()
    res = fleet.collect(timeout + 30)
    progress.done.set()
    progress.join(5)
    cpu1 = backend.server_cpu()
    machine_cpu = report.cpu_usage(machine0, report.cpu_times())
    c3 = backend.snapshot()
    submit_c, drain_c, total = c1 - c0, c3 - c2, (c1 - c0) + (c3 - c2)
    # verification, after the counts were taken
    check = backend.store(counted=False)
    left_ready = sum(1 for _ in check.list(keys.READY, limit=1000))
    left_leases = sum(1 for _ in check.list(keys.LEASES, limit=1000))
    check.close()
    store.close()
    ids = [s[0] for s in res.starts]
    unique = len(set(ids))
    gross = per_unit(total.kinds, tasks)
    path = per_unit(task_path(total), tasks)
    fs = failed_share(drain_c)
    seconds = res.seconds
    row = {
        "workers": k, "layout": layout, "processes": len(groups),
        "slots_per_process": [g.workers * g.concurrency for g in groups],
        "tasks": tasks,
        "seconds": round(seconds, 3),
        "tasks_per_s": round(tasks / seconds, 2) if seconds > 0 else None,
        "requests_per_s": round(sum(drain_c.get(x) for x in KINDS) / seconds, 1)
        if seconds > 0 else None,
        "submit_seconds": round(submit_s, 3),
        "per_task": gross,
        "per_task_task_path": path,
        "cost_per_million_usd": cost_per_million(gross),
        "cost_per_million_task_path_usd": cost_per_million(path),
        "failed_writes": fs,
        "steady": progress.window(),
        "cpu_seconds": {"workers": res.cpu_seconds,
                        "server": None if cpu0 is None or cpu1 is None
                        else round(cpu1 - cpu0, 2),
                        "machine": machine_cpu},
        "claim_stats": res.claim_stats,
        "lease_conflict_share": round(
            res.claim_stats.get("lease_conflicts", 0)
            / max(1, res.claim_stats.get("lease_conflicts", 0) + res.claim_stats.get("claims", 0)),
            4),
        "worker_summary": res.summary,
        "first_start_s": round(min((s[1] for s in res.starts), default=0) - res.started_at, 3),
        "last_start_s": round(max((s[1] for s in res.starts), default=0) - res.started_at, 3),
        "handler_runs": len(ids), "unique_tasks_run": unique, "duplicate_runs": len(ids) - unique,
        "left_ready": left_ready, "left_leases": left_leases,
        "ok": unique == tasks and left_ready == 0 and left_leases == 0 and not res.errors,
        "errors": res.errors[:5],
        "counts_submit": submit_c.to_json(), "counts_drain": drain_c.to_json(),
    }
    steady: dict[str, Any] = progress.window() or {}
    log(f"throughput {layout:11s} k={k:2d}: {row['tasks_per_s']} tasks/s in {seconds:.1f} s "
        f"(steady {steady.get('tasks_per_s')}), {gross['PUT']} PUT/task, failed writes "
        f"{fs['share']:.1%} (steady {steady.get('failed_writes', {}).get('share')}), "
        f"cpu {row['cpu_seconds']}, ok={row['ok']}")
    return row


# -- claim cost vs stored tasks ------------------------------------------------------------


def _finished_record(now: float, i: int) -> TaskRecord:
    return TaskRecord(id=new_task_id(now - i * 0.001), queue="default", type=TASK_TYPE,
                      input_hash="x", status=Status.SUCCEEDED, created_at=now - 60,
                      available_at=now - 60, finished_at=now - 30, attempt=1)


def claim_cost(backend: Backend, finished: int, pending: int, claims: int,
               latency: float) -> dict[str, Any]:
    """Requests and time per claim, one claimer, with stored finished/pending tasks."""
    backend.fresh()
    backend.set_latency(0.0)
    raw = backend.store(counted=False)
    now = raw.now()
    t = time.perf_counter()
    bodies = ((keys.task_key(r.id), dumps(r))
              for r in (_finished_record(now, i) for i in range(finished)))
    if isinstance(raw, MemoryStore):
        for key, body in bodies:
            raw.put(key, body)
    else:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda kb: raw.put(kb[0], kb[1]), bodies))
    submit_batches(Queue(raw), pending, batch=1000)
    populate_s = time.perf_counter() - t
    backend.set_latency(latency)
    store = backend.store()
    list_ms = []
    for _ in range(3):
        t = time.perf_counter()
        list(store.list(keys.ready_prefix("default"), limit=200))
        list_ms.append((time.perf_counter() - t) * 1000)
    claimer = Claimer(store, Settings(), queues=["default"], task_types={TASK_TYPE},
                      owner="bench-claimer", spread=2)
    n = min(claims, pending)
    before = backend.snapshot()
    t = time.perf_counter()
    got = sum(1 for _ in range(n) if claimer.claim() is not None)
    seconds = time.perf_counter() - t
    made = backend.snapshot() - before
    raw.close()
    store.close()
    row = {
        "backend": backend.kind, "finished": finished, "pending": pending, "claims": got,
        "per_claim": per_unit(made.kinds, max(1, got)),
        "ms_per_claim": round(seconds / max(1, got) * 1000, 3),
        "list_ms": round(statistics.median(list_ms), 2),
        "populate_seconds": round(populate_s, 1),
    }
    log(f"claim cost {backend.kind} finished={finished} pending={pending}: "
        f"{row['per_claim']} {row['ms_per_claim']} ms/claim, LIST {row['list_ms']} ms")
    return row


# -- submit throughput -------------------------------------------------------------------------


def submit(backend: Backend, single: int, batch_tasks: int, batch: int = 100) -> dict[str, Any]:
    backend.fresh()
    store = backend.store()
    queue = Queue(store)
    store.now()
    out: dict[str, Any] = {}
    before = backend.snapshot()
    t = time.perf_counter()
    for i in range(single):
        queue.submit(TASK_TYPE, {"i": i})
    s = time.perf_counter() - t
    made = backend.snapshot() - before
    out["single"] = {"tasks": single, "seconds": round(s, 3),
                     "tasks_per_s": round(single / s, 1), "ms_per_submit": round(s / single * 1000, 2),
                     "per_task": per_unit(made.kinds, single)}
    before = backend.snapshot()
    t = time.perf_counter()
    submit_batches(queue, batch_tasks, batch)
    s = time.perf_counter() - t
    made = backend.snapshot() - before
    out["batch"] = {"tasks": batch_tasks, "batch_size": batch, "seconds": round(s, 3),
                    "tasks_per_s": round(batch_tasks / s, 1),
                    "per_task": per_unit(made.kinds, batch_tasks)}
    store.close()
    log(f"submit: single {out['single']['tasks_per_s']} tasks/s, "
        f"batch {out['batch']['tasks_per_s']} tasks/s")
    return out


# -- submit-to-start latency ---------------------------------------------------------------------


def submit_to_start(backend: Backend, workers: int, procs: int, rate: float,
                    seconds: float) -> dict[str, Any]:
    """Tasks submitted at a steady rate while long-running workers poll (defaults)."""
    backend.fresh()
    n = max(1, int(rate * seconds))
    groups = layout_groups(workers, "independent", procs, burst=False, timeout=seconds + 180)
    fleet = WorkerFleet(backend, groups)
    fleet.start()
    fleet.release()
    store = backend.store()
    queue = Queue(store)
    store.now()
    durations: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        t0 = time.time()
        queue.submit(TASK_TYPE, {"t": t0})
        with lock:
            durations.append(time.time() - t0)

    t_start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        for i in range(n):
            delay = t_start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i)
    achieved = n / (time.monotonic() - t_start)
    check = backend.store(counted=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # all claimed and finished?
        if not any(True for _ in check.list(keys.READY, limit=1)) and not any(
                True for _ in check.list(keys.LEASES, limit=1)):
            break
        time.sleep(0.25)
    fleet.stop.set()
    res = fleet.collect(120)
    check.close()
    store.close()
    lat = [(start - t) * 1000 for _, start, t in res.starts if t]
    row = {"workers": workers, "processes": len(groups), "rate_per_s": rate,
           "achieved_rate_per_s": round(achieved, 1), "tasks": n, "started": len(lat),
           "p50_ms": round(pct(lat, 0.50), 1), "p90_ms": round(pct(lat, 0.90), 1),
           "p99_ms": round(pct(lat, 0.99), 1), "max_ms": round(max(lat), 1) if lat else None,
           "submit_call_p50_ms": round(pct([d * 1000 for d in durations], 0.5), 1),
           "errors": res.errors[:5]}
    log(f"submit-to-start: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms "
        f"({len(lat)}/{n} started)")
    return row
