"""Keeps ``bench/`` from rotting: the tiniest profile, and the server's count endpoints.

Nothing here asserts a timing: only that the benchmark runs end to end and
reports what it promises, with sane request counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench

pytestmark = pytest.mark.slow  # real processes, real time or many examples

def test_tiny_profile_on_the_memory_store(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--backend", "memory", "--latency", "0.002",
                       "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())

    assert {"meta", "throughput", "claim_cost", "idle", "submit", "latency", "targets"} <= set(
        result)
    meta = result["meta"]
    assert meta["backend"] == "memory" and meta["profile"] == "tiny"
    assert meta["machine"]["cores"] >= 1 and len(meta["load_before"]) == 3

    rows = result["throughput"]
    assert [r["workers"] for r in rows] == [1, 4]
    for r in rows:
        assert r["ok"], r["errors"]
        assert r["unique_tasks_run"] == r["tasks"] == 20
        assert r["per_task"]["PUT"] >= 4  # submit 2 + lease 1 + record 1, at least
        assert r["per_task"]["GET"] >= 1
        assert r["per_task_task_path"]["PUT"] >= 4
        assert r["per_task"]["billable"] >= r["per_task_task_path"]["billable"] >= 5
        assert r["cost_per_million_usd"] > 0
        assert 0.0 <= r["failed_writes"]["share"] < 1.0
        assert r["tasks_per_s"] > 0
    one = rows[0]
    assert one["failed_writes"]["failed"] == 0  # a lone worker never loses a race
    assert one["per_task_task_path"]["PUT"] == 4.0

    claims = result["claim_cost"]
    assert {r["finished"] for r in claims} >= {100, 1000}
    per = [r["per_claim"]["billable"] for r in claims if r["pending"] == 50]
    assert len(per) == 2 and all(2.0 <= p <= 2.1 for p in per)  # PUT lease + GET, flat

    idle = result["idle"][0]
    assert idle["measured_by_family_per_hour"]["LIST ready"] > 0
    assert idle["formula_per_hour"]["LIST ready (polls)"] > 0

    sub = result["submit"]
    assert sub["single"]["per_task"]["PUT"] == sub["batch"]["per_task"]["PUT"] == 2
    lat = result["latency"]
    assert lat["started"] == lat["tasks"] > 0 and 0 <= lat["p50_ms"] <= lat["p99_ms"]

    assert {"failed_writes_at_max_workers (independent)", "throughput_scales (independent)",
            "request_budget_happy_path", "claim_cost_flat"} <= set(result["targets"])
    assert result["targets"]["request_budget_happy_path"]["met"]
    assert result["targets"]["claim_cost_flat"]["met"]


def test_bench_server_counts_on_the_wire() -> None:
    """The moto server in its own process: counts by kind and key family over HTTP."""
    from bench.backends import Backend

    backend = Backend("moto", latency=0.0)
    backend.start()
    try:
        store = backend.store()
        store.put("tasks/a.json", b"{}", if_none_match=True)
        with pytest.raises(Exception, match="conditional put"):
            store.put("tasks/a.json", b"{}", if_none_match=True)
        list(store.list("ready/"))
        counts = backend.snapshot()
        assert counts.kinds == {"PUT": 2, "PUT_412": 1, "LIST": 1}
        assert counts.families == {"PUT tasks": 2, "PUT_412 tasks": 1, "LIST ready": 1}
        assert counts.failed_writes() == 1
        backend.set_latency(0.05)
        assert backend.server is not None and backend.server.counts()["latency"] == 0.05
        backend.reset_counts()
        assert backend.snapshot().kinds == {}
        backend.fresh()  # a new empty bucket
        assert list(backend.store().list("")) == []
        store.close()
    finally:
        backend.close()
