"""Machine description, target checks and the printed tables."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions = {}
    for pkg in ("boto3", "botocore", "moto", "werkzeug", "pydantic"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    rev = ""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True, check=False,
                             capture_output=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    dirty = None
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=ROOT, text=True, capture_output=True, timeout=5, check=False).stdout
        dirty = sorted(line[3:] for line in status.splitlines() if line.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib,
            "python": sys.version.split()[0], "platform": platform.platform(),
            "packages": versions, "git_revision": rev, "modified_files": dirty}


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cpu_times() -> list[int]:
    """Machine-wide jiffies from /proc/stat: user nice system idle iowait irq softirq steal."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return []


def cpu_usage(before: list[int], after: list[int]) -> dict[str, float] | None:
    """Share of all cores busy (anyone's processes, not only ours) and stolen, in between."""
    if len(before) < 8 or len(after) < 8:
        return None
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    return {"busy": round((total - d[3] - d[4]) / total, 3), "steal": round(d[7] / total, 3)}


# -- targets ---------------------------------------------------------------------------


def targets(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layout in ("independent", "shared"):
        rows = [r for r in result.get("throughput", []) if r["layout"] == layout]
        if rows:
            out.update(_throughput_targets(layout, rows))
    claim = result.get("claim_cost", [])
    if claim:
        flat = {}
        for backend in sorted({r["backend"] for r in claim}):
            least = min(r["pending"] for r in claim if r["backend"] == backend)
            per = [r["per_claim"]["billable"] for r in claim  # the rows that vary finished
                   if r["backend"] == backend and r["pending"] == least]
            if per:
                flat[backend] = {"billable_per_claim": per,
                                 "flat": max(per) - min(per) <= 0.02 * max(per)}
        out["claim_cost_flat"] = {"by_backend": flat,
                                  "met": all(v["flat"] for v in flat.values())}
    from bench import fleet_report  # it imports this module's table helpers

    out.update(fleet_report.targets(result))
    return out


def _throughput_targets(layout: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    by_k = {r["workers"]: r for r in rows}
    top = by_k.get(32) or by_k[max(by_k)]
    share = top["failed_writes"]["share"]
    steady = (top.get("steady") or {}).get("failed_writes", {}).get("share")
    out[f"failed_writes_at_max_workers ({layout})"] = {
        "workers": top["workers"], "value": share, "steady_value": steady,
        "target": "< 0.05 of all writes (whole drain)", "met": share < 0.05}
    if len(by_k) >= 2:
        ks = sorted(by_k)
        tps = [by_k[k]["tasks_per_s"] or 0.0 for k in ks]
        peak_i = max(range(len(tps)), key=lambda i: tps[i])
        grows = all(tps[i + 1] > tps[i] * 1.1 for i in range(peak_i))
        holds = all(t >= 0.8 * tps[peak_i] for t in tps[peak_i:])
        steady_tps = {k: (by_k[k].get("steady") or {}).get("tasks_per_s") for k in ks}
        out[f"throughput_scales ({layout})"] = {
            "tasks_per_s": dict(zip(ks, tps, strict=True)), "steady_tasks_per_s": steady_tps,
            "peak_at_workers": ks[peak_i],
            "peak_requests_per_s": by_k[ks[peak_i]]["requests_per_s"],
            "grows_until_peak": grows, "no_collapse_after_peak": holds, "met": grows and holds}
    if layout == "independent" or 1 in by_k:
        happy = by_k[min(by_k)]
        path = happy["per_task_task_path"]
        out["request_budget_happy_path"] = {
            "workers": happy["workers"], "put_per_task": path["PUT"],
            "billable_per_task": path["billable"],
            "gross_put_per_task": happy["per_task"]["PUT"],
            "gross_billable_per_task": happy["per_task"]["billable"],
            "target": "PUT <= 4 and billable <= 6 (task path)",
            "met": path["PUT"] <= 4.0 + 1e-9 and path["billable"] <= 6.0 + 1e-9}
    return out


# -- printing ----------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:,.1f}"
    return str(v)


def _table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text
        print(f"\n{title}")
        widths = [max(len(h), *(len(_fmt(r[i])) for r in rows)) if rows else len(h)
                  for i, h in enumerate(header)]
        print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
        for r in rows:
            print("  ".join(_fmt(v).rjust(w) for v, w in zip(r, widths, strict=True)))
        return
    table = Table(title=title, title_justify="left")
    for h in header:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*(_fmt(v) for v in r))
    Console(width=200).print(table)


def _share(v: Any) -> str:
    return f"{v:.1%}" if isinstance(v, float) else ("-" if v is None else str(v))


def print_report(result: dict[str, Any]) -> None:
    meta = result["meta"]
    print(f"\nqo bench — profile {meta['profile']}, backend {meta['backend']}, "
          f"latency {meta['latency_s']} s, counting {meta['counting']}")
    print(f"machine: {meta['machine']['cpu']} x{meta['machine']['cores']}, "
          f"{meta['machine']['memory_gib']} GiB; load before {meta['load_before']}, "
          f"after {meta['load_after']}; machine CPU {meta.get('machine_cpu')}; "
          f"{meta['duration_s']} s")
    rows = result.get("throughput", [])
    if rows:
        def st(r: dict[str, Any], *path: str) -> Any:
            v: Any = r.get("steady")
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            return "-" if v is None else v

        _table(f"Throughput ({rows[0]['tasks']} tasks drained by burst workers)",
               ["layout", "workers", "procs", "seconds", "tasks/s", "steady tasks/s",
                "req/s", "server CPU s", "worker CPU s", "machine busy", "dup runs", "ok"],
               [[r["layout"][:5], r["workers"], r["processes"], r["seconds"], r["tasks_per_s"],
                 st(r, "tasks_per_s"), r["requests_per_s"],
                 r["cpu_seconds"]["server"] if r["cpu_seconds"]["server"] is not None else "-",
                 round(sum(r["cpu_seconds"]["workers"]), 1),
                 _share((r["cpu_seconds"].get("machine") or {}).get("busy")),
                 r["duplicate_runs"], r["ok"]]
                for r in rows])
        _table("Requests per task (gross = all requests of submit + drain; task path = "
               "without worker heartbeats and housekeeping)",
               ["layout", "workers", "PUT", "GET", "LIST", "billable", "path PUT",
                "path billable", "$/M tasks", "failed writes", "steady failed",
                "lease conflicts", "stale claims"],
               [[r["layout"][:5], r["workers"], r["per_task"]["PUT"], r["per_task"]["GET"],
                 r["per_task"]["LIST"], r["per_task"]["billable"],
                 r["per_task_task_path"]["PUT"], r["per_task_task_path"]["billable"],
                 r["cost_per_million_usd"], f"{r['failed_writes']['share']:.1%}",
                 _share(st(r, "failed_writes", "share")),
                 f"{r['lease_conflict_share']:.1%}", r["claim_stats"].get("stale", 0)]
                for r in rows])
    claim = result.get("claim_cost", [])
    if claim:
        _table("Claim cost (one claimer; requests per claim)",
               ["backend", "finished", "pending", "claims", "PUT", "GET", "LIST", "DELETE",
                "billable", "ms/claim", "LIST ms"],
               [[r["backend"], r["finished"], r["pending"], r["claims"], r["per_claim"]["PUT"],
                 r["per_claim"]["GET"], r["per_claim"]["LIST"], r["per_claim"]["DELETE"],
                 r["per_claim"]["billable"], r["ms_per_claim"], r["list_ms"]] for r in claim])
    idle_rows = result.get("idle", [])
    if idle_rows:
        _table("Idle worker, requests per hour (measured with scaled intervals | formula)",
               ["concurrency", "latency ms", "LIST ready/poll", "LIST ready", "formula",
                "PUT workers", "formula",
                "wake-ups", "sweeps", "LIST (all)", "PUT (all)", "HEAD", "billable",
                "$/worker-month"],
               [[r["concurrency"], round(r.get("latency_s", 0.0) * 1000, 1),
                 r.get("ready_lists_per_poll"),
                 r["measured_by_family_per_hour"].get("LIST ready", 0),
                 r["formula_per_hour"]["LIST ready (polls)"],
                 r["measured_by_family_per_hour"].get("PUT workers", 0),
                 r["formula_per_hour"]["PUT workers (heartbeat)"],
                 r["formula_per_hour"]["housekeeper wake-ups"], r["sweeps_per_hour"],
                 r["measured_per_hour"].get("LIST", 0), r["measured_per_hour"].get("PUT", 0),
                 r["measured_per_hour"].get("HEAD", 0), r["measured_per_hour"]["billable"],
                 r["cost_per_worker_month_usd"]] for r in idle_rows])
    sub = result.get("submit")
    if sub:
        _table("Submit throughput (one client)",
               ["mode", "tasks", "s", "tasks/s", "PUT/task", "billable/task"],
               [["single", sub["single"]["tasks"], sub["single"]["seconds"],
                 sub["single"]["tasks_per_s"], sub["single"]["per_task"]["PUT"],
                 sub["single"]["per_task"]["billable"]],
                [f"batch of {sub['batch']['batch_size']}", sub["batch"]["tasks"],
                 sub["batch"]["seconds"], sub["batch"]["tasks_per_s"],
                 sub["batch"]["per_task"]["PUT"], sub["batch"]["per_task"]["billable"]]])
    lat = result.get("latency")
    if lat:
        _table("Submit-to-start latency (steady submit rate, long-running workers)",
               ["workers", "rate/s", "achieved/s", "tasks", "started", "p50 ms", "p90 ms",
                "p99 ms", "max ms", "submit call p50 ms"],
               [[lat["workers"], lat["rate_per_s"], lat["achieved_rate_per_s"], lat["tasks"],
                 lat["started"], lat["p50_ms"], lat["p90_ms"], lat["p99_ms"], lat["max_ms"],
                 lat["submit_call_p50_ms"]]])
    from bench import fleet_report

    fleet_report.print_fleet(result)
    from bench import limits

    limits.print_limits(result, _table)
    tg = result.get("targets", {})
    if tg:
        print("\nTargets:")
        for name, t in tg.items():
            detail = {k: v for k, v in t.items() if k != "met"}
            mark = "N/A " if t["met"] is None else "MET " if t["met"] else "MISS"
            print(f"  {mark}  {name}: {detail}")
    if rows:
        happy = rows[0]
        print(f"\nS3 cost per million tasks, happy path ({happy['workers']} worker): "
              f"${happy['cost_per_million_usd']:.2f} gross, "
              f"${happy['cost_per_million_task_path_usd']:.2f} task path "
              f"(PUT/POST/LIST $0.005 per 1,000, GET/HEAD $0.0004 per 1,000, DELETE free)")


# -- markdown (for docs/benchmarks.md) ------------------------------------------------------


def _md(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    """The result as the markdown tables that docs/benchmarks.md shows."""
    out: list[str] = []
    rows = result.get("throughput", [])
    if rows:
        out.append(_md(
            ["layout", "workers", "s", "tasks/s", "steady tasks/s", "req/s", "server CPU s",
             "machine busy", "PUT/task", "GET/task", "LIST/task", "billable/task",
             "$/M tasks", "failed writes", "steady failed", "lease conflicts", "stale claims"],
            [[r["layout"], r["workers"], r["seconds"], r["tasks_per_s"],
              (r.get("steady") or {}).get("tasks_per_s", "-"), r["requests_per_s"],
              r["cpu_seconds"]["server"] if r["cpu_seconds"]["server"] is not None else "-",
              _share((r["cpu_seconds"].get("machine") or {}).get("busy")),
              r["per_task"]["PUT"], r["per_task"]["GET"], r["per_task"]["LIST"],
              r["per_task"]["billable"], r["cost_per_million_usd"],
              f"{r['failed_writes']['share']:.1%}",
              _share(((r.get("steady") or {}).get("failed_writes") or {}).get("share")),
              f"{r['lease_conflict_share']:.1%}", r["claim_stats"].get("stale", 0)]
             for r in rows]))
    claim = result.get("claim_cost", [])
    if claim:
        out.append(_md(
            ["backend", "finished", "pending", "claims", "PUT", "GET", "LIST", "DELETE",
             "billable", "ms/claim", "LIST ms"],
            [[r["backend"], r["finished"], r["pending"], r["claims"], r["per_claim"]["PUT"],
              r["per_claim"]["GET"], r["per_claim"]["LIST"], r["per_claim"]["DELETE"],
              r["per_claim"]["billable"], r["ms_per_claim"], r["list_ms"]] for r in claim]))
    idle_rows = result.get("idle", [])
    if idle_rows:
        fams = sorted({k for r in idle_rows for k in r["measured_by_family_per_hour"]})
        out.append(_md(
            ["concurrency", "latency ms", "LIST ready per poll", *fams, "billable",
             "$/worker-month"],
            [[r["concurrency"], round(r.get("latency_s", 0.0) * 1000, 1),
              r.get("ready_lists_per_poll"),
              *(r["measured_by_family_per_hour"].get(f, 0) for f in fams),
              r["measured_per_hour"]["billable"], r["cost_per_worker_month_usd"]]
             for r in idle_rows]))
    sub = result.get("submit")
    if sub:
        out.append(_md(["mode", "tasks", "s", "tasks/s", "PUT/task", "billable/task"],
                       [[m if m == "single" else f"batch of {sub[m]['batch_size']}",
                         sub[m]["tasks"], sub[m]["seconds"], sub[m]["tasks_per_s"],
                         sub[m]["per_task"]["PUT"], sub[m]["per_task"]["billable"]]
                        for m in ("single", "batch")]))
    lat = result.get("latency")
    if lat:
        out.append(_md(["workers", "rate/s", "tasks", "p50 ms", "p90 ms", "p99 ms", "max ms",
                        "submit call p50 ms"],
                       [[lat["workers"], lat["rate_per_s"], lat["tasks"], lat["p50_ms"],
                         lat["p90_ms"], lat["p99_ms"], lat["max_ms"],
                         lat["submit_call_p50_ms"]]]))
    from bench import fleet_report

    fleet_md = fleet_report.markdown_fleet(result)
    if fleet_md:
        out.append(fleet_md)
    from bench import limits

    limits_md = limits.markdown_limits(result, _md)
    if limits_md:
        out.append(limits_md)
    return "\n\n".join(out) + "\n"
