"""Limits held across worker processes on a moto server (bench/limits.py, smaller).

Three worker processes, four slots each, more demand than every limit admits:
the per-type, per-key and shared (global) rate limits and the concurrency
limit hold, and the unlimited type runs all its tasks while the limited ones
still wait. The figures themselves (use, requests per task) are the bench's.
"""

from __future__ import annotations

import uuid

import pytest

from bench import limits as scenario
from bench.backends import BackendSpec, moto_client
from qo.store.s3 import S3Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: The S3 Date header has a resolution of one second: a store clock may lag by that
#: much, so a bucket can refill up to one second of its rate more than wall time says.
CLOCK_SLACK_S = 1.0


def test_limits_hold_across_processes(s3_server) -> None:
    spec = BackendSpec("moto", endpoint=s3_server.endpoint_url, bucket=f"lim-{uuid.uuid4().hex[:8]}")
    store = S3Store(spec.bucket, client=moto_client(spec.endpoint))
    store.create_bucket()
    store.close()
    duration = 15.0
    result = scenario.run(spec, procs=3, concurrency=4, duration=duration, free_tasks=30)
    assert result["workers_reported"] == 3
    for name, fig in result["limits"].items():
        assert fig["admitted"] <= fig["bound"] + fig["rate"] * CLOCK_SLACK_S, (name, fig)
        assert fig["admitted"] >= fig["burst"], (name, fig)  # it did admit
    conc = result["concurrency_limit"]
    assert conc["max_running"] <= scenario.CONCURRENCY and conc["ran"] > scenario.CONCURRENCY
    # The unlimited type ran every task while the limited ones still had a backlog.
    assert result["free"]["ran"] == result["free"]["submitted"]
    submitted = result["submitted"]
    assert result["limits"]["limited"]["admitted"] < submitted["limited"]
    assert sum(result["limits"][f"keyed:{k}"]["admitted"] for k in scenario.KEYS) \
        < submitted["keyed"]
