"""The limits scenario: worker processes under rate and concurrency limits.

Several OS processes run one ``qo.worker.Worker`` each on one store, for a fixed
time, with more demand than the limits admit. Each handler notes its type, key
and start/end time. The figures: per limit, tasks admitted against the bound
``rate * duration + burst`` (over-admission: above it; use: share of
``rate * duration``), the worst over-admission of any ``WINDOW``-second window,
the most tasks of the concurrency-limited type running at once, whether the
unlimited type flowed, and from the server's counts the limiter's requests per
admitted task, the leases refused claims cost, and the failed writes (412).
The slow test ``tests/test_limits_process.py`` runs the same code, smaller.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import queue as queue_mod
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.backends import BackendSpec, Counts, open_raw_store
from qo.app import App
from qo.protocol.submit import SubmitRequest
from qo.queue import Queue
from qo.worker import Worker, WorkerOptions

#: The limits under test: (rate per s, burst) and the concurrency bound.
#: Low enough that the workers could run far more (the bench machine is small and
#: shared): what is measured is the limits, not the workers' throughput.
LIMITED = (4.0, 4)  # the type ``limited``: one bucket
KEYED = (1.0, 2)  # ``keyed``: per key, for each of KEYS
KEYS = ("k0", "k1", "k2")
SHARED = (3.0, 3)  # the named limit ``shared`` of ``shared_a`` and ``shared_b``
CONCURRENCY = 2  # ``conc``, each holding HOLD seconds
HOLD = 0.5
WINDOW = 2.0

app = App(default_queue="default")
app.limit("shared", rate=SHARED[0], burst=SHARED[1])
_notes: list[tuple[str, str, float, float]] = []  # (type, key, start, end)


def _note(task_type: str, key: str, hold: float = 0.0) -> None:
    start = time.time()
    if hold:
        time.sleep(hold)
    _notes.append((task_type, key, start, time.time()))


@app.task(name="limited", rate=LIMITED[0], burst=LIMITED[1])
def limited(n: int = 0) -> None:
    _note("limited", "")


@app.task(name="keyed", rate=KEYED[0], burst=KEYED[1], rate_key="k")
def keyed(k: str, n: int = 0) -> None:
    _note("keyed", k)


@app.task(name="shared_a", rate_limit="shared")
def shared_a(n: int = 0) -> None:
    _note("shared", "")


@app.task(name="shared_b", rate_limit="shared")
def shared_b(n: int = 0) -> None:
    _note("shared", "")


@app.task(name="conc", concurrency=CONCURRENCY)
def conc(n: int = 0) -> None:
    _note("conc", "", HOLD)


@app.task(name="free")
def free(n: int = 0) -> None:
    _note("free", "")


def demand(duration: float, free_tasks: int, limited: bool = True) -> dict[str, int]:
    """Tasks per type: half again what the limits admit in ``duration`` (none without
    ``limited``: the baseline of the unlimited type alone)."""
    over = 1.5 if limited else 0.0
    return {
        "limited": int(over * (LIMITED[0] * duration + LIMITED[1])),
        "keyed": int(over * (KEYED[0] * duration + KEYED[1])) * len(KEYS),
        "shared_a": int(over * (SHARED[0] * duration + SHARED[1]) / 2),
        "shared_b": int(over * (SHARED[0] * duration + SHARED[1]) / 2),
        "conc": int(over * CONCURRENCY * duration / HOLD),
        "free": free_tasks,
    }


#: The queue of the limited types in the ``split`` run (the unlimited type stays in the
#: default queue, which a worker tries first).
LIMITED_QUEUE = "limits"


def submit(store: Any, counts: dict[str, int], split: bool = False) -> None:
    """Submit the tasks interleaved by type (so no type waits behind another's backlog);
    ``split``: the limited types to a queue of their own."""
    queue = Queue(store)
    reqs: list[SubmitRequest] = []
    longest = max(counts.values())
    for i in range(longest):
        for task_type, n in counts.items():
            if i < n:
                payload: dict[str, Any] = {"n": i}
                if task_type == "keyed":
                    payload["k"] = KEYS[i % len(KEYS)]
                definition = app.definition(task_type)
                options = app.submit_defaults(definition)
                if split and task_type != "free":
                    options["queue"] = LIMITED_QUEUE
                reqs.append(SubmitRequest(type=task_type, input=payload, **options,
                                          limit_key=definition.limit_key_of(payload)))
    for start in range(0, len(reqs), 100):
        queue.submit_many(reqs[start:start + 100])


def worker_main(spec: BackendSpec, index: int, concurrency: int, duration: float,
                ready: Any, go: Any, results: Any, threaded: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    store = open_raw_store(spec)
    store.now()
    worker = Worker(app, Queue(store), WorkerOptions(
        concurrency=concurrency, poll_max=1.0, worker_id=f"limits-{index}",
        queues=[app.default_queue, LIMITED_QUEUE]))
    ready.put(index)
    if not go.wait(120):
        return
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    thread.join(duration)
    worker.stop()
    thread.join(60)
    assert worker.limiter is not None
    s = worker.claimer.stats
    results.put((index, [] if threaded else list(_notes), worker.limiter.stats(),
                 {"claims": s.claims, "refused": s.refused, "lists": s.lists,
                  "lease_conflicts": s.lease_conflicts}))
    if not threaded:
        store.close()


def run(spec: BackendSpec, *, procs: int, concurrency: int, duration: float,
        free_tasks: int = 200, snapshot: Callable[[], Counts] | None = None,
        set_latency: Callable[[float], None] | None = None,
        latency: float = 0.0, limited: bool = True, split: bool = False) -> dict[str, Any]:
    """One run: submit, start ``procs`` workers, release them for ``duration`` seconds,
    and the figures (see the module docstring). ``set_latency``: the bench server's, 0
    while submitting, ``latency`` while measuring."""
    store = open_raw_store(spec)
    counts = demand(duration, free_tasks, limited)
    if set_latency is not None:
        set_latency(0.0)  # bulk population at full speed
    submit(store, counts, split)
    threaded = spec.kind == "memory"  # one store in this process: workers are threads
    workers: list[Any]
    if threaded:
        _notes.clear()
        ready, results, go = queue_mod.Queue(), queue_mod.Queue(), threading.Event()
        workers = [threading.Thread(target=worker_main, daemon=True, args=(
            spec, i, concurrency, duration, ready, go, results, True)) for i in range(procs)]
    else:
        ctx = mp.get_context("forkserver")
        with contextlib.suppress(ValueError, RuntimeError):
            ctx.set_forkserver_preload(["bench.limits"])
        ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        workers = [ctx.Process(target=worker_main, daemon=True,
                               args=(spec, i, concurrency, duration, ready, go, results))
                   for i in range(procs)]
    gathered: list[Any] = []
    try:
        for p in workers:
            p.start()
        for _ in workers:
            ready.get(timeout=120)
        if set_latency is not None:
            set_latency(latency)
        before = snapshot() if snapshot else None
        t0 = time.time()
        go.set()
        deadline = time.monotonic() + duration + 120
        while len(gathered) < procs and time.monotonic() < deadline:
            with contextlib.suppress(queue_mod.Empty):
                gathered.append(results.get(timeout=1.0))
        wire = (snapshot() - before) if snapshot and before is not None else None
    finally:
        for p in workers:
            if threaded or p.pid is None:
                continue
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
        if not threaded:
            store.close()
    if threaded and gathered:
        gathered[0] = (gathered[0][0], list(_notes), *gathered[0][2:])
    return figures(gathered, t0, duration, counts, wire, procs, concurrency)


def _bound(rate: float, burst: int, seconds: float) -> float:
    return rate * seconds + burst


def _rate_figures(starts: list[float], t0: float, duration: float, rate: float,
                  burst: int) -> dict[str, Any]:
    inside = sorted(s for s in starts if t0 <= s <= t0 + duration)
    bound = _bound(rate, burst, duration)
    worst = 0.0  # the worst window: admitted beyond rate * WINDOW + burst
    j = 0
    for i, s in enumerate(inside):
        while inside[j] < s - WINDOW:
            j += 1
        worst = max(worst, (i - j + 1) - _bound(rate, burst, WINDOW))
    return {"rate": rate, "burst": burst, "admitted": len(inside), "bound": bound,
            "over_admission": max(0.0, len(inside) - bound),
            "use": round(len(inside) / (rate * duration), 4),
            "of_bound": round(len(inside) / bound, 4),
            "under_use": round(max(0.0, 1 - len(inside) / bound), 4),
            f"worst_{WINDOW:g}s_window_over": max(0.0, worst)}


def _max_running(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = most = 0
    for _, d in events:
        running += d
        most = max(most, running)
    return most


def figures(gathered: list[Any], t0: float, duration: float, counts: dict[str, int],
            wire: Counts | None, procs: int, concurrency: int) -> dict[str, Any]:
    notes = [n for _, ns, _, _ in gathered for n in ns]
    stats: dict[str, int] = {}
    claims: dict[str, int] = {}
    for _, _, lim, cl in gathered:
        for k, v in lim.items():
            stats[k] = stats.get(k, 0) + v
        for k, v in cl.items():
            claims[k] = claims.get(k, 0) + v

    def starts(task_type: str, key: str | None = None) -> list[float]:
        return [s for t, k, s, _ in notes if t == task_type and (key is None or k == key)]

    out: dict[str, Any] = {
        "procs": procs, "concurrency": concurrency, "duration_s": duration,
        "submitted": counts, "workers_reported": len(gathered),
        "limits": {
            "limited": _rate_figures(starts("limited"), t0, duration, *LIMITED),
            "shared": _rate_figures(starts("shared"), t0, duration, *SHARED),
            **{f"keyed:{k}": _rate_figures(starts("keyed", k), t0, duration, *KEYED)
               for k in KEYS},
        },
        "concurrency_limit": {"limit": CONCURRENCY, "max_running": _max_running(
            [(s, e) for t, _, s, e in notes if t == "conc"]),
            "ran": len(starts("conc"))},
        "free": {"submitted": counts["free"], "ran": len(starts("free")),
                 "all_done_after_s": round(max(starts("free")) - t0, 2)
                 if len(starts("free")) == counts["free"] else None},
        "limiter": stats, "claims": claims,
    }
    limited_admitted = sum(len(starts(t)) for t in ("limited", "keyed", "shared", "conc"))
    out["admitted_limited_tasks"] = limited_admitted
    free_starts = starts("free")
    if free_starts:  # what else the workers ran meanwhile: the limited types, at their limits
        last = max(free_starts)
        out["free"]["limited_ran_meanwhile"] = sum(
            1 for t, _, s, _ in notes if t != "free" and s <= last)
    if wire is not None:
        fam = wire.families
        limiter_requests = sum(v for k, v in fam.items()
                               if k.split(" ")[-1] in ("buckets", "slots", "limits")
                               and "_" not in k.split(" ")[0])
        out["requests"] = {
            "limiter_per_admitted_task": round(limiter_requests / max(1, limited_admitted), 3),
            "bucket_412": fam.get("PUT_412 buckets", 0),
            "slot_412": fam.get("PUT_412 slots", 0),
            # each refused claim took (and gave back) a task's lease: 1 PUT + 1 free DELETE
            "refused_claim_leases_per_admitted_task": round(
                claims.get("refused", 0) / max(1, limited_admitted), 3),
            "all_per_task_run": round(sum(v for k, v in wire.kinds.items() if "_" not in k)
                                      / max(1, len(notes)), 3),
            "by_family": {k: v for k, v in sorted(fam.items())
                          if k.split(" ")[-1] in ("buckets", "slots", "limits", "leases")},
        }
    return out


# -- the scenario in ``python -m bench`` -------------------------------------------------


def run_scenario(backend: Any, prof: dict[str, Any], latency: float) -> dict[str, Any]:
    """The mixed run, the same with the limited types in a queue of their own, then the
    unlimited type alone (its baseline), each on fresh state."""
    out: dict[str, Any] = {"counting": backend.counting}
    for name, limited, split in (("mixed", True, False), ("split", True, True),
                                 ("free_alone", False, False)):
        spec = backend.fresh()
        counted = backend.kind == "moto"
        out[name] = run(spec, procs=prof["procs"], concurrency=prof["concurrency"],
                        duration=prof["duration"], free_tasks=prof["free"],
                        snapshot=backend.snapshot if counted else None,
                        set_latency=backend.set_latency if counted else None,
                        latency=latency, limited=limited, split=split)
    return out


def rows(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The rate limits' table: one row per limit."""
    header = ["limit", "rate/s", "burst", "admitted", "bound", "over", "of bound",
              "of rate x s", f"worst {WINDOW:g}s over"]
    mixed = result["mixed"]
    body = [[name, f["rate"], f["burst"], f["admitted"], f["bound"], f["over_admission"],
             f"{f['of_bound']:.1%}", f"{f['use']:.1%}", f[f"worst_{WINDOW:g}s_window_over"]]
            for name, f in mixed["limits"].items()]
    return header, body


def summary(result: dict[str, Any]) -> list[str]:
    mixed, alone = result["mixed"], result["free_alone"]
    c, req = mixed["concurrency_limit"], mixed.get("requests")
    lines = [
        (f"{mixed['procs']} processes x {mixed['concurrency']} slots, {mixed['duration_s']:g} s; "
        f"concurrency limit {c['limit']}: at most {c['max_running']} ran at once ({c['ran']} ran)"),
        (f"unlimited type: {mixed['free']['ran']}/{mixed['free']['submitted']} ran, all done "
         f"after {mixed['free']['all_done_after_s']} s beside the limited backlog in its queue, "
         f"{result['split']['free']['all_done_after_s']} s with the limited types in a queue "
         f"of their own, {alone['free']['all_done_after_s']} s alone"),
    ]
    if "limited_ran_meanwhile" in mixed["free"]:
        lines.append(f"meanwhile, in one queue, the workers ran "
                     f"{mixed['free']['limited_ran_meanwhile']} limited tasks (in their own "
                     f"queue: {result['split']['free'].get('limited_ran_meanwhile', 0)}, a "
                     f"worker tries its queues in order)")
    if req:
        lines.append(
            f"limiter requests per admitted task {req['limiter_per_admitted_task']}, refused "
            f"claims' leases per admitted task {req['refused_claim_leases_per_admitted_task']}, "
            f"412s: buckets {req['bucket_412']}, slots {req['slot_412']}; all requests per task "
            f"run {req['all_per_task_run']}")
    return lines


def print_limits(result: dict[str, Any], table: Callable[[str, list[str], list[list[Any]]], None]
                 ) -> None:
    if "limits" not in result:
        return
    header, body = rows(result["limits"])
    table("Limits: admitted vs rate x duration + burst (bench/limits.py)", header, body)
    for line in summary(result["limits"]):
        print("  " + line)


def markdown_limits(result: dict[str, Any], md: Callable[[list[str], list[list[Any]]], str]
                    ) -> str | None:
    if "limits" not in result:
        return None
    header, body = rows(result["limits"])
    return md(header, body) + "\n\n" + "\n".join(f"- {x}" for x in summary(result["limits"]))
