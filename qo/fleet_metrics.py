"""The fleet statistics snapshot as Prometheus text (``GET /metrics`` of the HTTP API).

Formatted by ``prometheus_client`` (the ``metrics`` extra, imported only
here, when asked): a collector turns one snapshot into gauges, so one scrape
costs the API one GET of ``stats/fleet.json`` however many workers there are.
Labels are bounded: queue names, priorities (0-255), the four indexes.

======================================================  =================================
``qo_fleet_tasks{queue,state}``                         ready, running, delayed, dead
``qo_fleet_ready_tasks{queue,priority}``                ready tasks by priority
``qo_fleet_oldest_ready_age_seconds{queue}``            age of the oldest ready task
``qo_fleet_queue_paused{queue}``                        1 if the queue is paused
``qo_fleet_workers{queue}``                             live workers serving the queue
``qo_fleet_worker_slots{state}``                        ``total`` and ``busy`` slots
``qo_fleet_attempts_per_second{outcome}``               ``finished``, ``failed`` (last interval)
``qo_fleet_snapshot_timestamp_seconds``                 when it was computed (store clock)
``qo_fleet_snapshot_age_seconds``                       how old it was when served
``qo_fleet_snapshot_truncated{index}``                  1: that index's counts are lower bounds
======================================================  =================================
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from qo.errors import ConfigError
from qo.protocol.fleetstats import INDEXES, FleetStats

#: The content type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _client() -> Any:
    try:
        import prometheus_client
        from prometheus_client import core
    except ImportError:
        raise ConfigError("serving /metrics needs prometheus_client: "
                          "pip install 'qo-queue[metrics]'") from None
    return prometheus_client, core


def families(snap: FleetStats, now: float) -> Iterator[Any]:
    """The snapshot as ``prometheus_client`` metric families."""
    _, core = _client()
    gauge = core.GaugeMetricFamily
    tasks = gauge("qo_fleet_tasks", "Tasks by queue and state, from the indexes",
                  labels=["queue", "state"])
    by_priority = gauge("qo_fleet_ready_tasks", "Ready tasks by queue and priority",
                        labels=["queue", "priority"])
    oldest = gauge("qo_fleet_oldest_ready_age_seconds",
                   "Seconds since the oldest ready task became claimable", labels=["queue"])
    paused = gauge("qo_fleet_queue_paused", "1 if the queue is paused", labels=["queue"])
    for name, q in snap.queues.items():
        for state, value in (("ready", q.ready), ("running", q.running),
                             ("delayed", q.delayed), ("dead", q.dead)):
            tasks.add_metric([name, state], value)
        for priority, value in sorted(q.by_priority.items()):
            by_priority.add_metric([name, str(priority)], value)
        if q.oldest_ready_age is not None:
            oldest.add_metric([name], q.oldest_ready_age)
        paused.add_metric([name], 1 if q.paused else 0)
    yield from (tasks, by_priority, oldest, paused)
    workers = gauge("qo_fleet_workers", "Live workers serving the queue", labels=["queue"])
    serving: dict[str, int] = {}
    for w in snap.workers:
        for name in w.queues:
            serving[name] = serving.get(name, 0) + 1
    for name, count in sorted(serving.items()):
        workers.add_metric([name], count)
    slots = gauge("qo_fleet_worker_slots", "Slots of the live workers", labels=["state"])
    slots.add_metric(["total"], sum(w.concurrency for w in snap.workers))
    slots.add_metric(["busy"], sum(w.running for w in snap.workers))
    yield from (workers, slots)
    if snap.throughput is not None and snap.throughput.seconds > 0:
        t = snap.throughput
        rate = gauge("qo_fleet_attempts_per_second",
                     "Attempts finished per second over the snapshot's interval "
                     "(from the worker records)", labels=["outcome"])
        rate.add_metric(["finished"], t.processed / t.seconds)
        rate.add_metric(["failed"], t.failed / t.seconds)
        yield rate
    yield gauge("qo_fleet_snapshot_timestamp_seconds",
                "When the snapshot was computed (store clock)", value=snap.at)
    yield gauge("qo_fleet_snapshot_age_seconds", "Age of the snapshot when served",
                value=max(0.0, now - snap.at))
    truncated = gauge("qo_fleet_snapshot_truncated",
                      "1 if the index had scan_limit keys or more (counts are lower bounds)",
                      labels=["index"])
    for index in INDEXES:
        truncated.add_metric([index], 1 if index in snap.truncated else 0)
    yield truncated


def exposition(snap: FleetStats, now: float) -> str:
    """The snapshot in Prometheus' text format (``CONTENT_TYPE``)."""
    client, _ = _client()

    class Snapshot:
        def collect(self) -> Iterator[Any]:
            return families(snap, now)

    registry = client.CollectorRegistry(auto_describe=False)
    registry.register(Snapshot())
    return str(client.generate_latest(registry).decode())
