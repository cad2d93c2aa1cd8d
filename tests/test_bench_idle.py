"""The idle scenario of ``python -m bench`` runs with store latency and counts LISTs per poll.

Whether idle slots share one poll depends on how long a LIST takes, so the
scenario's store has latency. What it measures depends on timing, so this
checks the measuring, not the measurement.
"""

from __future__ import annotations

import pytest

from bench import idle_cost
from bench.cli import PROFILES
from qo.store.memory import MemoryStore
from qo.worker import WorkerOptions


def test_poll_clock_groups_lists_into_polls() -> None:
    clock = idle_cost.PollClock(MemoryStore(), gap=0.25)
    clock.starts += [10.0, 10.001, 10.003, 10.004, 11.0, 11.002, 12.0]  # 4 slots, 2, then 1
    assert clock.per_poll(since=0.0) == (7, 3)
    assert clock.per_poll(since=10.5) == (3, 2)
    list(clock.list("ready/default/"))
    list(clock.list("delayed/"))  # only ready/ LISTs are polls
    assert len(clock.starts) == 8


@pytest.mark.slow  # real time: a store with latency
@pytest.mark.timeout(120)
def test_idle_runs_on_a_store_with_latency() -> None:
    rows = idle_cost.idle_all([(1, 1000.0, 1.0), (2, 1000.0, 1.0)], latency=0.001)
    assert [r["concurrency"] for r in rows] == [1, 2]
    for row in rows:
        assert row["latency_s"] == 0.001
        assert row["measured_by_family_per_hour"]["LIST ready"] > 0
        assert row["polls_settled"] > 0 and row["ready_lists_per_poll"] >= 1.0


def test_profiles_keep_latency_small_against_the_scaled_poll() -> None:
    for name in ("quick", "full"):
        for concurrency, scale, seconds in PROFILES[name]["idle"]:
            assert WorkerOptions().poll_max / scale >= 0.5, (name, scale)  # vs 20 ms
            assert seconds * scale / 3600 >= 0.3  # at least 0.3 scaled hours
        assert 4 in {c for c, _, _ in PROFILES[name]["idle"]}  # the default concurrency
