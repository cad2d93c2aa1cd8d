"""The fleet scenario of ``python -m bench``: worker processes on the bench server, and buquet.

What it measures depends on timing, so this checks the measuring: the order
metric on hand-made orders, the targets on hand-made rows, and one tiny run
end to end (real worker processes, counts on the wire) in which a lone
single-slot worker must claim in exact priority-then-FIFO order and lose no
race. buquet is an optional bench dependency: without it the scenario must
say so and still run qo.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import fleet, fleet_procs, fleet_report, order
from bench.backends import Backend, Counts
from bench.cli import PROFILES, parse


def test_rank_inversion_counts_tasks_overtaken() -> None:
    ideal = ["a", "b", "c", "d", "e"]
    assert order.inversions(ideal, ideal)["max_rank_inversion"] == 0
    late = order.inversions(ideal, ["b", "c", "d", "a", "e"])
    # b started while a waited (1), c: a (1), d: a (1), a: none, e: none
    assert late["max_rank_inversion"] == 1 and late["max_displacement"] == 3
    last_first = order.inversions(ideal, ["e", "d", "c", "b", "a"])
    assert last_first["max_rank_inversion"] == 4 and last_first["worst_task"] == "e"
    assert (last_first["worst_ideal_position"], last_first["worst_start_position"]) == (4, 0)
    never = order.inversions(ideal, ["b", "c", "d", "e"])  # "a" never ran: it counts
    assert never["max_rank_inversion"] == 1 and never["tasks"] == 4


def test_priority_inversion_counts_only_higher_priorities() -> None:
    ideal = ["h1", "h2", "m1", "l1", "l2"]
    prio = {"h1": 200, "h2": 200, "m1": 100, "l1": 10, "l2": 10}
    fifo_swap = order.inversions(ideal, ["h2", "h1", "m1", "l2", "l1"], prio)
    assert fifo_swap["max_rank_inversion"] == 1 and fifo_swap["max_priority_inversion"] == 0
    low_first = order.inversions(ideal, ["l1", "h1", "h2", "m1", "l2"], prio)
    assert low_first["max_priority_inversion"] == 3 and low_first["priority_levels"] == [
        200, 100, 10]


def test_first_starts_orders_by_time_and_keeps_the_first_run() -> None:
    starts = [("b", 2.0), ("a", 1.0), ("b", 0.5), ("c", 3.0)]
    assert order.first_starts(starts) == ["b", "a", "c"]


def _row(procs: int, conc: int, tps: float, share: float, per_task: float = 0.0,
         server: float | None = 0.3, billable: float = 6.0) -> dict[str, Any]:
    return {"processes": procs, "concurrency": conc, "tasks_per_s": tps,
            "failed_share": share, "failed_per_task": per_task,
            "per_task": {"billable": billable}, "requests_per_s": tps * 8,
            "server_cpu_share": server}


def test_fleet_targets_met_and_missed() -> None:
    rows = [_row(8, 4, 40.0, 0.01, 0.04, billable=5.2), _row(32, 1, 30.0, 0.03)]
    rows[0].update(buquet_tasks_per_s=10.0, ratio_tasks_per_s=4.0)
    scaling = [_row(1, 1, 7.0, 0.0), _row(2, 1, 13.0, 0.0), _row(4, 1, 10.0, 0.0)]
    idle = [{"concurrency": c, "per_worker_billable_per_hour": v,
             "measured_per_hour": {"billable": v + 192}}
            for c, v in ((1, 312.0), (4, 312.0), (16, 400.0))]
    tg = fleet_report.targets({"fleet": {"rows": rows, "scaling": scaling}, "idle": idle})
    assert tg["fleet 8x4: failed conditional writes per task"]["met"] is True
    assert tg["fleet 8x4: billable requests per task"]["met"] is True
    assert tg["fleet 8x4: tasks/s against buquet, 8 processes"]["met"] is True
    share = tg["fleet 32x1 and 8x4: failed conditional writes share of writes"]
    assert share["met"] is False and share["value"] == {"8x4": 0.01, "32x1": 0.03}
    scale = tg["fleet scaling (P x 1): tasks/s does not fall until the server saturates"]
    assert scale["met"] is False and scale["falls_before_saturation_at"] == [4]
    assert scale["peak_at_processes"] == 2
    idle_t = tg["idle: billable requests per worker-hour, 20 ms latency"]
    assert idle_t["met"] is False and idle_t["per_worker"] == {1: 312.0, 4: 312.0, 16: 400.0}


def test_a_fall_after_the_server_saturates_is_not_a_miss() -> None:
    series = [_row(1, 1, 7.0, 0.0, server=0.3), _row(2, 1, 13.0, 0.0, server=0.85),
              _row(4, 1, 10.0, 0.0, server=0.9)]
    t = fleet_report.scaling_target(series)
    assert t["server_saturated_at_processes"] == 2 and t["met"] is True


def test_buquet_comparison_without_buquet_is_not_applicable() -> None:
    rows = [_row(8, 4, 40.0, 0.01) | {"buquet_tasks_per_s": None, "ratio_tasks_per_s": None}]
    tg = fleet_report.targets({"fleet": {"rows": rows, "peer_status": fleet.NOT_INSTALLED}})
    t = tg["fleet 8x4: tasks/s against buquet, 8 processes"]
    assert t["met"] is None and t["note"] == fleet.NOT_INSTALLED
    other = fleet_report.targets({"fleet": {"rows": rows, "peer": [_row(2, 1, 5.0, 0.0)],
                                            "peer_status": "buquet 0.1.0"}})
    assert other["fleet 8x4: tasks/s against buquet, 8 processes"]["note"] == (
        "no buquet run with 8 processes")


def test_conditional_failures_count_412_and_409_not_404() -> None:
    c = Counts({"PUT": 10, "PUT_412": 2, "PUT_409": 1, "DELETE": 5, "DELETE_404": 3,
                "DELETE_412": 1})
    assert fleet.conditional_failures(c) == 4


def test_profiles_have_the_issue_layouts() -> None:
    for name in ("quick", "full"):
        fl = PROFILES[name]["fleet"]
        assert {(1, 8), (8, 1), (8, 4), (32, 1)} <= set(fl["layouts"])
        assert {1, 2, 4, 8, 16} <= set(fl["scaling"]) and 8 in fl["peer"]
        assert {1, 4, 16} <= {c for c, _, _ in PROFILES[name]["idle"]}


def test_bad_fleet_layout_is_a_one_line_error() -> None:
    import bench

    with pytest.raises(SystemExit, match="^error: a fleet layout is PxC"):
        bench.main(["--only", "fleet", "--fleet-layouts", "8by4"])
    with pytest.raises(SystemExit, match="^error: --peer takes process counts"):
        bench.main(["--only", "fleet", "--peer", "eight"])
    assert parse(["--fleet-layouts", "8x4"]).fleet_layouts == "8x4"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_tiny_fleet_on_the_bench_server(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = fleet_procs.buquet_installed()
    backend = Backend("moto", latency=0.0)
    backend.start()
    try:
        out = fleet.fleet(backend, 20, [(1, 1), (2, 2)], [1, 2], [2], timeout=120.0,
                          peer_idle=(0.5, 1.0))
        if not installed:  # the peer's part must say why it is missing
            assert out["peer_status"] == fleet.NOT_INSTALLED and out["peer"] == []
        monkeypatch.setattr(fleet, "buquet_installed", lambda: False)
        alone = fleet.fleet(backend, 10, [(1, 2)], [], [2], timeout=120.0)
        unasked = fleet.fleet(backend, 10, [(1, 1)], [], [], timeout=120.0, peer_idle=(0.5, 1))
    finally:
        backend.close()
    assert alone["peer_status"] == fleet.NOT_INSTALLED and alone["peer"] == []
    assert unasked["peer_status"].startswith("buquet not run") and "peer_idle" not in unasked
    assert alone["rows"][0]["ok"], alone["rows"][0]["errors"]

    one, two = out["rows"]
    assert [r["processes"] for r in out["scaling"]] == [1, 2]
    assert out["scaling"][0] is one  # the 1x1 layout is reused, not run twice
    for r in out["rows"] + out["scaling"] + out["peer"]:
        assert r["ok"], r["errors"]
        assert r["unique_tasks_run"] == r["tasks"] == 20 and r["left_over"] == 0
        assert r["per_task"]["PUT"] >= 4 and r["per_task"]["billable"] >= 5
        assert r["cost_per_million_usd"] > 0 and r["cpu_per_task_ms"] > 0
        assert r["failed_conditional_writes"] <= r["writes"]
        assert r["tasks_per_s"] > 0 and r["order"]["tasks"] == 20
    assert one["failed_conditional_writes"] == 0  # a lone slot never loses a race
    assert one["order"]["max_rank_inversion"] == 0  # exact priority-then-FIFO order
    assert one["order"]["priority_levels"] == sorted(fleet.PRIORITIES, reverse=True)
    assert one["per_task_submit"]["PUT"] >= 2
    assert two["slots"] == 4
    if installed:
        (peer,) = out["peer"]
        assert peer["system"] == "buquet" and peer["processes"] == 2
        assert two["buquet_tasks_per_s"] == peer["tasks_per_s"]
        assert two["ratio_tasks_per_s"] == round(two["tasks_per_s"] / peer["tasks_per_s"], 2)
        assert out["peer_status"].startswith("buquet ")
        idle = out["peer_idle"]
        assert idle["measured_per_hour"]["billable"] > 0 and idle["window_seconds"] >= 1.0
    else:
        assert "peer_idle" not in out
