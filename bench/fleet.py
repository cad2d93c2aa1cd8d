"""The fleet scenario: P worker processes x C slots, qo and its peer buquet, on one server.

For each layout: N trivial tasks are submitted first (a batch submit,
counted apart from the drain, priorities mixed for qo), then P worker
processes are started, warmed, and released together; the clock runs from
the release until the N-th handler has *returned* (the same moment for qo
and buquet: the task's last write follows). Requests are counted on the wire
by the bench server. Per layout it reports:

- tasks/s: N / that time; steady tasks/s between 10 % and 90 % done;
- billable requests per task (PUT, GET, HEAD, LIST; submit + drain, / N), the
  same in the steady window (the drain's requests between 10 % and 90 % done per
  task done meanwhile, plus the submit's per task: without the processes'
  start-up and burst-exit requests, which a 500-task run spreads over few tasks) and
  $ per million tasks (PUT/LIST $0.005 per 1,000, GET/HEAD $0.0004, DELETE
  free; a failed conditional PUT is billed like any PUT);
- failed conditional writes (412, and 409 ConditionalRequestConflict) per
  task and as a share of all writes (PUT + DELETE) of the drain;
- CPU seconds per task in the worker processes (user + system, every thread);
- order: the largest rank inversion against priority-then-FIFO (bench.order).

buquet (PyPI ``buquet``, optional: ``pip install -e '.[bench]'``) runs one
worker per process with its defaults, in its own versioned bucket on the same
server, with the same N, in the same run. It has no priorities, so its order
is measured against submit order (FIFO). Without it the scenario says
"buquet not installed" and runs qo alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Iterator
from typing import Any

from bench import order, report
from bench.backends import Backend, Counts, moto_client
from bench.fleet_procs import (
    BUQUET_ENV,
    TASK_TYPE,
    ProcessFleet,
    ProcResult,
    ProcSpec,
    buquet_installed,
)
from bench.scenarios import KINDS, cost_per_million, log, per_unit
from qo.protocol import keys
from qo.protocol.submit import SubmitRequest
from qo.queue import Queue

BUQUET_BUCKET = "buquet-bench"
PRIORITIES = (64, 128, 192)  # the mix submitted to qo (higher runs first)
NOT_INSTALLED = "buquet not installed (pip install -e '.[bench]')"


def conditional_failures(c: Counts) -> int:
    """Writes refused by their precondition: 412, and S3's 409 ConditionalRequestConflict."""
    return sum(c.get(f"{kind}_{code}") for kind in ("PUT", "DELETE") for code in (412, 409))


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _submit_qo(backend: Backend, tasks: int, seed: int) -> None:
    """Submit N tasks of a seeded mix of priorities, 100 per batch."""
    rng = random.Random(seed)
    store = backend.store()
    queue = Queue(store)
    store.now()
    for start in range(0, tasks, 100):
        queue.submit_many([SubmitRequest(type=TASK_TYPE, input={"seq": i},
                                         priority=rng.choice(PRIORITIES))
                           for i in range(start, min(tasks, start + 100))])
    store.close()


def _ideal_qo(backend: Backend) -> tuple[list[str], dict[str, int]]:
    """The order qo promises: the ready listing (priority, then due time, then id)."""
    store = backend.store(counted=False)
    ideal: list[str] = []
    prio: dict[str, int] = {}
    for info in store.list(keys.ready_prefix("default")):
        m = keys.parse_ready_key(info.key)
        if m is not None:
            ideal.append(m.task_id)
            prio[m.task_id] = m.priority
    store.close()
    return ideal, prio


def _submit_buquet(endpoint: str, tasks: int) -> list[str]:
    """Create buquet's versioned bucket and submit N tasks (in submit order = FIFO)."""
    client = moto_client(endpoint)
    client.create_bucket(Bucket=BUQUET_BUCKET)
    client.put_bucket_versioning(Bucket=BUQUET_BUCKET,
                                 VersioningConfiguration={"Status": "Enabled"})
    client.close()

    async def submit() -> None:
        import buquet

        if not tasks:
            return
        q = await buquet.connect(endpoint=endpoint, bucket=BUQUET_BUCKET, region="us-east-1")
        for start in range(0, tasks, 100):
            await q.submit_many([(TASK_TYPE, {"seq": i})
                                 for i in range(start, min(tasks, start + 100))])

    with _env(BUQUET_ENV):
        asyncio.run(submit())
    return [str(i) for i in range(tasks)]


def _left_over(backend: Backend, system: str) -> int:
    """Ready markers and leases left after the run (uncounted: the counts are taken)."""
    if system == "qo":
        store = backend.store(counted=False)
        n = sum(1 for _ in store.list(keys.READY, limit=1000))
        n += sum(1 for _ in store.list(keys.LEASES, limit=1000))
        store.close()
        return n
    client = moto_client(backend.spec.endpoint)
    n = 0
    for prefix in ("ready/", "leases/"):
        n += client.list_objects_v2(Bucket=BUQUET_BUCKET, Prefix=prefix).get("KeyCount", 0)
    client.close()
    return n


def _wait_buquet_settled(backend: Backend, base: Counts, tasks: int, limit: float = 5.0
                         ) -> None:
    """buquet has no burst mode: once its last handler returned, wait (at most ``limit``
    seconds) for its last completions, seen on the wire as one DELETE of a lease per
    task, before the parent stops its workers."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        fam = (backend.snapshot() - base).families
        if fam.get("DELETE leases", 0) - fam.get("DELETE_404 leases", 0) >= tasks:
            return
        time.sleep(0.02)


def run_one(backend: Backend, system: str, procs: int, concurrency: int, tasks: int,
            timeout: float, seed: int = 15) -> dict[str, Any]:
    """One drain: submit, start P processes of C slots, release, wait, count."""
    backend.fresh()
    c0 = backend.snapshot()
    t = time.perf_counter()
    if system == "qo":
        _submit_qo(backend, tasks, seed)
    else:
        _submit_buquet(backend.spec.endpoint, tasks)
    submit_s = time.perf_counter() - t
    c1 = backend.snapshot()
    if system == "qo":
        ideal, prio = _ideal_qo(backend)
    else:
        ideal, prio = [str(i) for i in range(tasks)], {}
    specs = [ProcSpec(system, i, concurrency, backend.spec, BUQUET_BUCKET, timeout)
             for i in range(procs)]
    with ProcessFleet(specs) as fleet:
        fleet.start()
        c2 = backend.snapshot()
        server0 = backend.server_cpu()
        machine0 = report.cpu_times()
        released = fleet.release()
        done_at, marks = fleet.wait_done(
            tasks, timeout, on_mark=backend.snapshot if backend.spec.counted_on_wire else None)
        if system == "buquet" and done_at is not None:
            _wait_buquet_settled(backend, c2, tasks)
        results = fleet.collect(60.0)
        exited = max((r.finished_at for r in results), default=time.time())
    server1 = backend.server_cpu()
    machine = report.cpu_usage(machine0, report.cpu_times())
    c3 = backend.snapshot()
    for r in results:
        if r.counts is not None:
            backend.absorb(r.counts)
    if not backend.spec.counted_on_wire:
        c3 = backend.snapshot()
    left = _left_over(backend, system)
    row = summarize(system, procs, concurrency, tasks, results, released, done_at, exited,
                    marks, c1 - c0, c3 - c2, ideal, prio)
    row["submit_seconds"] = round(submit_s, 3)
    row["machine_cpu"] = machine
    row["left_over"] = left
    row["ok"] = row["ok"] and left == 0
    wall = exited - released
    row["server_cpu_s"] = None if server0 is None or server1 is None else round(
        server1 - server0, 2)
    row["server_cpu_share"] = None if row["server_cpu_s"] is None or wall <= 0 else round(
        row["server_cpu_s"] / wall, 3)
    log(f"fleet {system} {procs}x{concurrency}: {row['tasks_per_s']} tasks/s, "
        f"{row['per_task']['billable']} billable/task, {row['failed_per_task']} 412/task "
        f"({row['failed_share']:.1%} of writes), cpu {row['cpu_per_task_ms']} ms/task, "
        f"max rank inversion {row['order']['max_rank_inversion']}, ok={row['ok']}")
    return row


def summarize(system: str, procs: int, concurrency: int, tasks: int,
              results: list[ProcResult], released: float, done_at: float | None,
              exited: float, marks: list[tuple[float, int, Any]], submit_c: Counts,
              drain_c: Counts, ideal: list[str], prio: dict[str, int]) -> dict[str, Any]:
    starts = [s for r in results for s in r.starts]
    errors = [e for r in results for e in r.errors]
    unique = len({task for task, _ in starts})
    seconds = (done_at - released) if done_at is not None else None
    total = submit_c + drain_c
    gross = per_unit(total.kinds, tasks)
    failed = conditional_failures(drain_c)
    writes = drain_c.get("PUT") + drain_c.get("DELETE")
    cpu = sum(r.cpu_seconds for r in results)
    steady = steady_billable = None
    if len(marks) == 2 and marks[1][0] > marks[0][0]:
        steady = round((marks[1][1] - marks[0][1]) / (marks[1][0] - marks[0][0]), 2)
        (_, n0, m0), (_, n1, m1) = marks
        if m0 is not None and m1 is not None and n1 > n0:
            # The drain's requests between 10 % and 90 % done, plus the submit's share:
            # what a task costs once the fleet is running, without its start and end.
            window = per_unit((m1 - m0).kinds, n1 - n0)["billable"]
            steady_billable = round(window + per_unit(submit_c.kinds, tasks)["billable"], 3)
    stats: dict[str, int] = {}
    for r in results:
        for k, v in r.claim_stats.items():
            stats[k] = stats.get(k, 0) + v
    if len(results) < procs:
        errors.append(f"{procs - len(results)} worker process(es) lost")
    return {
        "system": system, "processes": procs, "concurrency": concurrency,
        "slots": procs * concurrency, "tasks": tasks,
        "seconds": None if seconds is None else round(seconds, 3),
        "exit_seconds": round(exited - released, 3),
        "tasks_per_s": round(tasks / seconds, 2) if seconds else None,
        "steady_tasks_per_s": steady,
        "steady_billable_per_task": steady_billable,
        "requests_per_s": round(sum(drain_c.get(k) for k in KINDS) / seconds, 1)
        if seconds else None,
        "per_task": gross,
        "per_task_submit": per_unit(submit_c.kinds, tasks),
        "per_task_drain": per_unit(drain_c.kinds, tasks),
        "cost_per_million_usd": cost_per_million(gross),
        "failed_conditional_writes": failed, "writes": writes,
        "failed_per_task": round(failed / tasks, 4),
        "failed_share": round(failed / writes, 4) if writes else 0.0,
        "delete_404_per_task": round(drain_c.get("DELETE_404") / tasks, 4),
        "cpu_seconds_workers": round(cpu, 2),
        "cpu_per_task_ms": round(cpu / tasks * 1000, 2),
        "order": order.inversions(ideal, order.first_starts(starts), prio or None),
        "claim_stats": stats,
        "handler_runs": len(starts), "unique_tasks_run": unique,
        "duplicate_runs": len(starts) - unique,
        "ok": unique == tasks and seconds is not None and not errors,
        "errors": errors[:5],
        "counts_submit": submit_c.to_json(), "counts_drain": drain_c.to_json(),
    }


def buquet_idle(backend: Backend, settle: float, window: float) -> dict[str, Any]:
    """One idle buquet worker (its defaults) on the bench server: requests per hour,
    counted on the wire over ``window`` seconds after ``settle`` seconds of running
    (real time: buquet's intervals cannot be scaled from outside), times 3600 / window."""
    backend.fresh()
    _submit_buquet(backend.spec.endpoint, 0)
    with ProcessFleet([ProcSpec("buquet", 0, 1, backend.spec, BUQUET_BUCKET,
                                settle + window + 30)]) as procs:
        procs.start()
        procs.release()
        time.sleep(settle)
        c0 = backend.snapshot()
        t0 = time.monotonic()
        time.sleep(window)
        c1 = backend.snapshot()
        measured = time.monotonic() - t0
        procs.collect(30.0)
    made = c1 - c0
    factor = 3600.0 / measured
    per_hour = {k: round(v * factor, 1) for k, v in sorted(made.kinds.items())}
    per_hour["billable"] = round(per_unit(made.kinds, 1)["billable"] * factor, 1)
    row = {"system": "buquet", "concurrency": 1, "settle_seconds": settle,
           "window_seconds": round(measured, 2), "measured_per_hour": per_hour,
           "measured_by_family_per_hour": {k: round(v * factor, 1)
                                           for k, v in sorted(made.families.items())},
           "cost_per_worker_month_usd": round(cost_per_million(per_hour) / 1e6 * 730, 3)}
    log(f"buquet idle: {per_hour['billable']} billable/hour ({row['measured_by_family_per_hour']})")
    return row


def fleet(backend: Backend, tasks: int, layouts: list[tuple[int, int]], scaling: list[int],
          peer: list[int], timeout: float, peer_idle: tuple[float, float] | None = None
          ) -> dict[str, Any]:
    """Every layout of qo, the single-slot scaling series, then buquet's layouts and,
    if ``peer_idle`` = (settle, window) seconds, its idle cost."""
    if backend.in_process:
        return {"skipped": "the fleet needs worker processes: not on the memory backend"}
    out: dict[str, Any] = {"tasks": tasks, "rows": [], "scaling": [], "peer": []}
    for p, c in layouts:
        out["rows"].append(run_one(backend, "qo", p, c, tasks, timeout))
    done = {(r["processes"], r["concurrency"]): r for r in out["rows"]}
    for p in scaling:
        row = done.get((p, 1)) or run_one(backend, "qo", p, 1, tasks, timeout)
        out["scaling"].append(row)
    if not peer:
        out["peer_status"] = "buquet not run (no process counts for it)"
    elif backend.kind != "moto":
        out["peer_status"] = "buquet runs on the moto backend only"
    elif not buquet_installed():
        out["peer_status"] = NOT_INSTALLED
        log(f"fleet: {NOT_INSTALLED}")
    else:
        from importlib import metadata

        out["peer_status"] = f"buquet {metadata.version('buquet')}"
        for p in peer:
            out["peer"].append(run_one(backend, "buquet", p, 1, tasks, timeout))
        if peer_idle:
            out["peer_idle"] = buquet_idle(backend, *peer_idle)
    by_procs = {r["processes"]: r for r in out["peer"]}
    for r in out["rows"] + out["scaling"]:
        b = by_procs.get(r["processes"])
        r["buquet_tasks_per_s"] = b["tasks_per_s"] if b else None
        r["ratio_tasks_per_s"] = (round(r["tasks_per_s"] / b["tasks_per_s"], 2)
                                  if b and r["tasks_per_s"] and b["tasks_per_s"] else None)
        r["ratio_billable"] = (round(r["per_task"]["billable"] / b["per_task"]["billable"], 2)
                               if b else None)
    return out
