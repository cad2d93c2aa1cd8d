"""``qo stats --fleet``: the fleet statistics snapshot (``qo.protocol.fleetstats``).

One GET of ``stats/fleet.json``, which whoever sweeps writes every
``stats_interval``; ``--fresh`` computes it now from the indexes instead
(a few LISTs, bounded; nothing is written).
"""

from __future__ import annotations

from rich.table import Table

from qo.cli import common
from qo.cli.common import cell, emit_json, fmt_time, note
from qo.errors import NoStatsSnapshot
from qo.protocol import fleetstats
from qo.queue import Queue


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def show(queue: Queue, *, fresh: bool, json: bool) -> None:
    snap = queue.fleet_stats(fresh=fresh)
    if snap is None:
        raise NoStatsSnapshot(f"no fleet statistics in {queue.url} yet (workers and the Lambda "
                         "sweeper write them every stats_interval): use --fresh")
    age = max(0.0, queue.store.now() - snap.at)
    if json:
        emit_json(fleetstats.as_dict(snap) | {"age": round(age, 3)})
        return
    if snap.truncated:
        note(f"warning: {', '.join(snap.truncated)} had {snap.scan_limit:,} keys or more: "
             "those counts are lower bounds")
    table = Table(title=f"fleet at {fmt_time(snap.at)} ({_age(age)} ago, by {snap.by})")
    columns = ("queue", "ready", "oldest ready", "running", "delayed", "dead", "paused")
    for name in columns:
        table.add_column(name, justify="left" if name == "queue" else "right")
    for name, q in snap.queues.items():
        table.add_row(cell(name), cell(snap.bound("ready", q.ready)),
                      cell(_age(q.oldest_ready_age)), cell(snap.bound("leases", q.running)),
                      cell(snap.bound("delayed", q.delayed)), cell(snap.bound("dead", q.dead)),
                      cell("yes" if q.paused else ""))
    common.console().print(table)
    if snap.throughput is not None:
        t = snap.throughput
        note(f"throughput: {t.processed} attempts finished ({t.failed} failed) in the "
             f"{_age(t.seconds)} before it")
    if not snap.workers:
        note("no live worker records (Lambda workers publish none)")
        return
    workers = Table(title="live workers")
    for name in ("worker", "host", "queues", "serves", "running", "seen"):
        workers.add_column(name)
    for w in snap.workers:
        serves = "all" if w.task_types is None else ", ".join(w.task_types)
        workers.add_row(cell(w.id), cell(w.host), cell(", ".join(w.queues)), cell(serves),
                        cell(f"{w.running}/{w.concurrency}"), cell(fmt_time(w.seen_at)))
    common.console().print(workers)
