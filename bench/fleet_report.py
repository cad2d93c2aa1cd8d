"""Targets, printed tables and markdown of the fleet scenario and the idle targets (issue 15)."""

from __future__ import annotations

from typing import Any

from bench.report import _md, _table

SATURATED = 0.8  # the server's CPU share (of one core) above which it counts as saturated


def _layout(r: dict[str, Any]) -> str:
    return f"{r['processes']}x{r['concurrency']}"


def _find(rows: list[dict[str, Any]], procs: int, conc: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["processes"] == procs and r["concurrency"] == conc),
                None)


def targets(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fl = result.get("fleet") or {}
    rows = fl.get("rows", [])
    big = _find(rows, 8, 4)
    if big is not None:
        out["fleet 8x4: failed conditional writes per task"] = {
            "value": big["failed_per_task"], "target": "<= 0.05",
            "met": big["failed_per_task"] <= 0.05}
        out["fleet 8x4: billable requests per task"] = {
            "value": big["per_task"]["billable"], "target": "<= 5.3",
            "met": big["per_task"]["billable"] <= 5.3 + 1e-9}
        peer = big.get("buquet_tasks_per_s")
        out["fleet 8x4: tasks/s against buquet, 8 processes"] = {
            "qo": big["tasks_per_s"], "buquet": peer, "ratio": big.get("ratio_tasks_per_s"),
            "target": ">= 2x", "met": None if peer is None or big.get("ratio_tasks_per_s") is None
            else big["ratio_tasks_per_s"] >= 2.0,
            **({} if peer is not None else {"note": fl.get("peer_status") if not fl.get("peer")
                                            else "no buquet run with 8 processes"})}
    shares = {_layout(r): r["failed_share"] for r in rows
              if (r["processes"], r["concurrency"]) in ((8, 4), (32, 1))}
    if shares:
        out["fleet 32x1 and 8x4: failed conditional writes share of writes"] = {
            "value": shares, "target": "<= 2 % each",
            "met": all(v <= 0.02 for v in shares.values())}
    series = sorted(fl.get("scaling", []), key=lambda r: r["processes"])
    if len(series) >= 2:
        out["fleet scaling (P x 1): tasks/s does not fall until the server saturates"] = (
            scaling_target(series))
    idle = {r["concurrency"]: r for r in result.get("idle", [])
            if "per_worker_billable_per_hour" in r}
    if idle:
        wanted = [c for c in (1, 4, 16) if c in idle]
        per = {c: idle[c]["per_worker_billable_per_hour"] for c in wanted}
        out["idle: billable requests per worker-hour, 20 ms latency"] = {
            "per_worker": per, "with_fleet_sweeps": {c: idle[c]["measured_per_hour"]["billable"]
                                                     for c in wanted},
            "target": "<= 320 at concurrency 1, 4, 16 (per worker; the fleet's sweeps apart)",
            "met": len(wanted) == 3 and all(v <= 320 for v in per.values())}
        if fl.get("peer_idle"):
            out["idle: billable requests per worker-hour, 20 ms latency"]["buquet"] = (
                fl["peer_idle"]["measured_per_hour"]["billable"])
    return out


def scaling_target(series: list[dict[str, Any]]) -> dict[str, Any]:
    """Met if no step before the server saturates loses more than 10 % of tasks/s."""
    tps = [r["tasks_per_s"] or 0.0 for r in series]
    share = [r.get("server_cpu_share") for r in series]
    saturated_at = next((r["processes"] for r, s in zip(series, share, strict=True)
                         if s is not None and s >= SATURATED), None)
    falls = []
    for i in range(1, len(series)):
        before_saturation = saturated_at is None or series[i - 1]["processes"] < saturated_at
        if before_saturation and tps[i] < 0.9 * tps[i - 1]:
            falls.append(series[i]["processes"])
    peak = max(range(len(tps)), key=lambda i: tps[i])
    return {"tasks_per_s": {r["processes"]: t for r, t in zip(series, tps, strict=True)},
            "requests_per_s": {r["processes"]: r["requests_per_s"] for r in series},
            "server_cpu_share": {r["processes"]: s for r, s in zip(series, share, strict=True)},
            "machine_busy": {r["processes"]: (r.get("machine_cpu") or {}).get("busy")
                             for r in series},
            "peak_at_processes": series[peak]["processes"],
            "server_saturated_at_processes": saturated_at,
            "falls_before_saturation_at": falls, "met": not falls}


def _rows(fl: dict[str, Any]) -> list[dict[str, Any]]:
    seen: set[tuple[str, int, int]] = set()
    out = []
    for r in fl.get("rows", []) + fl.get("scaling", []) + fl.get("peer", []):
        key = (r["system"], r["processes"], r["concurrency"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


HEADER = ["system", "P x C", "tasks/s", "steady tasks/s", "buquet tasks/s", "qo/buquet",
          "req/s", "billable/task", "steady billable/task", "$/M tasks", "412/task",
          "412 % of writes",
          "CPU ms/task", "max rank inversion", "max priority inversion", "server CPU",
          "machine busy", "ok"]


def _cells(r: dict[str, Any]) -> list[Any]:
    o = r["order"]
    return [r["system"], _layout(r), r["tasks_per_s"], r["steady_tasks_per_s"] or "-",
            r.get("buquet_tasks_per_s") or "-", r.get("ratio_tasks_per_s") or "-",
            r["requests_per_s"], r["per_task"]["billable"],
            r.get("steady_billable_per_task") or "-", r["cost_per_million_usd"],
            r["failed_per_task"], f"{r['failed_share']:.1%}", r["cpu_per_task_ms"],
            o["max_rank_inversion"], o.get("max_priority_inversion", "-"),
            "-" if r.get("server_cpu_share") is None else f"{r['server_cpu_share']:.0%}",
            "-" if not r.get("machine_cpu") else f"{r['machine_cpu']['busy']:.0%}",
            r["ok"]]


MIX = ["system", "P x C", "PUT", "GET", "HEAD", "LIST", "DELETE", "billable",
       "PUT 412", "DELETE 404", "handler runs"]


def _mix(r: dict[str, Any]) -> list[Any]:
    p, kinds = r["per_task"], r["counts_drain"]["by_kind"]
    return [r["system"], _layout(r), p["PUT"], p["GET"], p["HEAD"], p["LIST"], p["DELETE"],
            p["billable"], kinds.get("PUT_412", 0), kinds.get("DELETE_404", 0),
            r["handler_runs"]]


def print_fleet(result: dict[str, Any]) -> None:
    fl = result.get("fleet")
    if not fl:
        return
    if fl.get("skipped"):
        print(f"\nFleet: skipped ({fl['skipped']})")
        return
    rows = _rows(fl)
    _table(f"Fleet ({fl['tasks']} tasks, P processes x C slots; peer: {fl.get('peer_status')})",
           HEADER, [_cells(r) for r in rows])
    _table("Fleet request mix (per task, submit + drain; 412 and 404 are counts of the drain)",
           MIX, [_mix(r) for r in rows])
    idle = fl.get("peer_idle")
    if idle:
        _table(f"buquet idle worker, requests per hour (on the wire, {idle['window_seconds']} s "
               f"after {idle['settle_seconds']} s)", IDLE, [_idle(idle)])


IDLE = ["system", "LIST", "PUT", "GET", "HEAD", "DELETE", "billable", "$/worker-month"]


def _idle(r: dict[str, Any]) -> list[Any]:
    m = r["measured_per_hour"]
    return [r["system"], *(m.get(k, 0) for k in ("LIST", "PUT", "GET", "HEAD", "DELETE")),
            m["billable"], r["cost_per_worker_month_usd"]]


def markdown_fleet(result: dict[str, Any]) -> str:
    fl = result.get("fleet")
    if not fl or fl.get("skipped"):
        return ""
    rows = _rows(fl)
    out = _md(HEADER, [_cells(r) for r in rows]) + "\n\n" + _md(MIX, [_mix(r) for r in rows])
    if fl.get("peer_idle"):
        out += "\n\n" + _md(IDLE, [_idle(fl["peer_idle"])])
    return out
