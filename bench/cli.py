"""``python -m bench``: run the scenarios, print tables, write JSON."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from bench import aio_io, deps, fleet, idle_cost, limits, report, scenarios
from bench.backends import Backend

#: Scenario sizes per profile. ``tiny`` is for the smoke test (seconds, memory store).
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {
        "tasks": 20, "workers": [1, 4], "layouts": ["independent"], "shared_workers": None,
        "claim_memory": [(100, 50), (1000, 50), (100, 200)], "claim_remote": [(100, 50)],
        "claims": 50, "idle": [(1, 1000.0, 1.2), (4, 1000.0, 1.2)], "submit": (10, 40),
        "latency": (2, 50.0, 0.6), "timeout": 60.0,
        "fleet": {"tasks": 20, "layouts": [(1, 1), (2, 2)], "scaling": [], "peer": [2],
                  "timeout": 60.0, "peer_idle": (1.0, 2.0)},
        "limits": {"procs": 2, "concurrency": 2, "duration": 3.0, "free": 10},
        "deps": {"fan_in": 20, "fan_out": 20, "chain": 5},
    },
    "quick": {
        "tasks": 100, "workers": [1, 2, 4, 8, 16, 32], "layouts": ["independent", "shared"],
        "shared_workers": [8, 32],
        "claim_memory": [(100, 100), (10_000, 100), (100_000, 100), (100, 10_000)],
        "claim_remote": [(100, 50), (1000, 50), (100, 1000)],
        "claims": 50, "idle": [(1, 20.0, 60.0), (4, 20.0, 60.0), (16, 20.0, 60.0)],
        "submit": (50, 300),
        "latency": (8, 10.0, 10.0), "timeout": 120.0,
        "fleet": {"tasks": 150, "layouts": [(1, 8), (8, 1), (8, 4), (32, 1)],
                  "scaling": [1, 2, 4, 8, 16], "peer": [8], "timeout": 180.0,
                  "peer_idle": (10.0, 30.0)},
        "limits": {"procs": 3, "concurrency": 4, "duration": 30.0, "free": 100},
        "deps": {"fan_in": 100, "fan_out": 200, "chain": 20},
    },
    "full": {
        "tasks": 500, "workers": [1, 2, 4, 8, 16, 32], "layouts": ["independent", "shared"],
        "shared_workers": None,
        "claim_memory": [(100, 100), (10_000, 100), (100_000, 100), (100, 10_000)],
        "claim_remote": [(100, 100), (10_000, 100), (100, 10_000)],
        "claims": 100, "idle": [(1, 10.0, 180.0), (4, 10.0, 180.0), (16, 10.0, 180.0)],
        "submit": (200, 2000),
        "latency": (8, 10.0, 30.0), "timeout": 300.0,
        "fleet": {"tasks": 500, "layouts": [(1, 8), (8, 1), (8, 4), (32, 1)],
                  "scaling": [1, 2, 4, 8, 16, 32], "peer": [1, 8, 32], "timeout": 400.0,
                  "peer_idle": (15.0, 60.0)},
        "deps": {"fan_in": 1000, "fan_out": 1000, "chain": 100},
        "limits": {"procs": 4, "concurrency": 4, "duration": 90.0, "free": 200},
    },
}
SCENARIOS = ("throughput", "claim", "idle", "submit", "latency", "fleet", "aio", "limits",
             "deps")
#: ``idle`` entries are (concurrency, scale, seconds): intervals divided by scale, latency
#: not (it must stay small against poll_max / scale); the runs go in parallel.
#: ``fleet``: N tasks; (processes, slots) layouts; the P x 1 scaling series; buquet's
#: process counts (one worker each); a bound per drain; buquet's idle run (settle, window s).


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tiny", dest="profile", action="store_const", const="tiny",
                   help="seconds; for the smoke test")
    g.add_argument("--quick", dest="profile", action="store_const", const="quick",
                   help="the default; about 3 minutes on moto")
    g.add_argument("--full", dest="profile", action="store_const", const="full",
                   help="about 15 minutes on moto")
    p.add_argument("--backend", choices=["moto", "local", "memory", "s3"], default="moto",
                   help="s3 needs QO_BENCH_S3=s3://bucket/prefix")
    p.add_argument("--tasks", type=int, help="tasks per throughput run")
    p.add_argument("--workers", help="comma-separated worker counts, e.g. 1,2,4,8,16,32")
    p.add_argument("--layout", choices=["independent", "shared", "both"],
                   help="independent: k Workers of concurrency 1; shared: one Worker per "
                        "process with k/processes slots")
    p.add_argument("--procs", type=int, default=2,
                   help="worker processes (the GIL limits one process); default 2")
    p.add_argument("--latency", type=float, default=0.02,
                   help="seconds added per request (moto server, memory store, and the "
                        "idle scenario's store whatever the backend)")
    p.add_argument("--fleet-tasks", type=int, help="tasks per fleet drain (quick 150, full 500)")
    p.add_argument("--fleet-layouts", metavar="PxC,...",
                   help="the fleet's layouts, e.g. 8x4,32x1 (the scaling series is then "
                        "skipped)")
    p.add_argument("--peer", metavar="P,...", help="buquet's process counts, e.g. 8; 0: none")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--json-out", default="bench/results/latest.json")
    p.add_argument("--markdown", metavar="JSON",
                   help="print the markdown tables of an earlier run's JSON, run nothing")
    p.set_defaults(profile="quick")
    return p.parse_args(argv)


def _layout(text: str) -> tuple[int, int]:
    p, sep, c = text.strip().lower().partition("x")
    if not sep or not p.isdigit() or not c.isdigit() or int(p) < 1 or int(c) < 1:
        raise SystemExit(f"error: a fleet layout is PxC, e.g. 8x4, not {text.strip()!r}")
    return int(p), int(c)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.markdown:
        loaded = json.loads(Path(args.markdown).read_text())
        print(report.markdown(loaded) + deps.markdown(loaded), end="")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    prof = dict(PROFILES[args.profile])
    if args.tasks:
        prof["tasks"] = args.tasks
    elif args.backend == "local":  # no added latency: more tasks to measure anything
        prof["tasks"] *= 10
    if args.workers:
        prof["workers"] = [int(x) for x in args.workers.split(",") if x.strip()]
        prof["shared_workers"] = None
    if args.layout:
        prof["layouts"] = ["independent", "shared"] if args.layout == "both" else [args.layout]
    fl = dict(prof["fleet"])
    if args.fleet_tasks:
        fl["tasks"] = args.fleet_tasks
    if args.fleet_layouts:
        fl["layouts"] = [_layout(x) for x in args.fleet_layouts.split(",") if x.strip()]
        fl["scaling"] = []
    if args.peer:
        if not all(x.strip().isdigit() for x in args.peer.split(",")):
            raise SystemExit(f"error: --peer takes process counts, e.g. 1,8; not {args.peer!r}")
        fl["peer"] = [int(x) for x in args.peer.split(",") if int(x) > 0]
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    unknown = only - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    latency = args.latency if args.backend in ("moto", "memory") else 0.0

    started = time.time()
    load_before = report.loadavg()
    cpu_before = report.cpu_times()
    result: dict[str, Any] = {"meta": {
        "profile": args.profile, "backend": args.backend, "latency_s": latency,
        "procs": args.procs, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": report.machine(), "load_before": load_before,
    }}
    backend = Backend(args.backend, latency=latency, s3_url=os.environ.get("QO_BENCH_S3"))
    scenarios.log(f"starting backend {args.backend} (profile {args.profile})")
    backend.start()
    result["meta"]["counting"] = backend.counting
    try:
        if "throughput" in only:
            result["throughput"] = scenarios.throughput(
                backend, prof["tasks"], prof["workers"], prof["layouts"], args.procs,
                prof["timeout"], prof.get("shared_workers"))
        if "claim" in only:
            rows = []
            mem = Backend("memory", latency=0.0)
            mem.start()
            for finished, pending in prof["claim_memory"]:
                rows.append(scenarios.claim_cost(mem, finished, pending, prof["claims"], 0.0))
            mem.close()
            if args.backend != "memory":
                for finished, pending in prof["claim_remote"]:
                    rows.append(scenarios.claim_cost(backend, finished, pending,
                                                     prof["claims"], latency))
            result["claim_cost"] = rows
        if "idle" in only:
            result["idle"] = idle_cost.idle_all(prof["idle"], args.latency)
        if "submit" in only:
            single, batch = prof["submit"]
            result["submit"] = scenarios.submit(backend, single, batch)
        if "latency" in only:
            k, rate, secs = prof["latency"]
            result["latency"] = scenarios.submit_to_start(backend, k, args.procs, rate, secs)
        if "fleet" in only:
            result["fleet"] = fleet.fleet(backend, fl["tasks"], fl["layouts"], fl["scaling"],
                                          fl["peer"], fl["timeout"], fl.get("peer_idle"))
        if "aio" in only:  # async handler sleeping 100 ms, concurrency 1, 10, 200 (bench/aio_io.py)
            result["aio_io"] = aio_io.run(backend, [1, 10, 200], 3, prof["timeout"])
        if "limits" in only:  # rate and concurrency limits under P processes (bench/limits.py)
            result["limits"] = limits.run_scenario(backend, prof["limits"], latency)
        if "deps" in only:  # requests per edge, release latency (bench/deps.py; memory store)
            result["deps"] = deps.run(args.latency, prof["deps"])
    finally:
        backend.close()
    result["meta"]["load_after"] = report.loadavg()
    result["meta"]["machine_cpu"] = report.cpu_usage(cpu_before, report.cpu_times())
    result["meta"]["duration_s"] = round(time.time() - started, 1)
    result["targets"] = report.targets(result)
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    report.print_report(result)
    deps.print_report(result)
    print(f"\nJSON written to {out}")
    return 0
