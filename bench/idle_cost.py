"""The idle-cost scenario: what an idle worker costs per hour, on a store with latency.

Intervals are scaled down so an hour passes in minutes; the store's latency
is not, because whether idle slots share one poll depends on real times.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.backends import CountingStore
from bench.scenarios import log
from bench.workers import app
from qo.protocol import keys
from qo.queue import Queue
from qo.store.memory import MemoryStore
from qo.store.metrics import BILLABLE, PRICE_PER_REQUEST, RequestCounter
from qo.worker import Worker, WorkerOptions


def lists_per_sweep() -> int:
    """LISTs of one full sweep (schedules, promote, reap) on an empty store."""
    store = MemoryStore()
    Queue(store).sweep(owner="probe")
    return store.counts["LIST"]


class PollClock:
    """Start times of the LISTs of ``ready/``, grouped into polls.

    A poll is a burst of LISTs whose starts are less than ``gap`` apart: the
    slots of one idle worker that wake together. Waits between polls are at
    least poll_max / 2 once the worker has backed off, so a gap of a quarter
    of poll_max separates polls and never splits one.
    """

    def __init__(self, inner: Any, gap: float) -> None:
        self.inner, self.gap = inner, gap
        self.url = inner.url
        self._lock = threading.Lock()
        self.starts: list[float] = []

    def list(self, prefix: str, **kwargs: Any) -> Any:
        if prefix.startswith(keys.READY):
            with self._lock:
                self.starts.append(time.monotonic())
        return self.inner.list(prefix, **kwargs)

    def per_poll(self, since: float) -> tuple[int, int]:
        """(LISTs, polls) that started after ``since`` (monotonic time)."""
        with self._lock:
            starts = sorted(t for t in self.starts if t >= since)
        polls = sum(1 for i, t in enumerate(starts) if i == 0 or t - starts[i - 1] >= self.gap)
        return len(starts), polls

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def idle(concurrency: int, scale: float, seconds: float, latency: float = 0.02
         ) -> dict[str, Any]:
    """An idle Worker with every interval divided by ``scale``, on a store that takes
    ``latency`` seconds per request; counts scaled to one hour.

    One scaled hour lasts 3600/scale seconds; the run lasts ``seconds``. The
    first 3 poll_max (scaled; at most half the run) are the back-off's ramp and
    are left out: counts are taken over the window from then to the end, and
    extrapolated from that window to a full (scaled) hour. Latency is *not* scaled: whether
    idle slots share a poll depends on how long a LIST takes against how
    closely the slots wake, both real times. Keep ``latency`` small against
    the scaled poll wait (poll_max / scale) or the hour stretches.

    The formula uses the current ``WorkerOptions`` defaults: a poll comes
    every U(poll_max/2, poll_max) (mean 0.75 poll_max) and makes one LIST
    per queue *per slot that joins it* (``ready_lists_per_poll`` measures
    that: 1 if idle slots share the poll, up to the concurrency if each slot
    starts its own LIST before the first returns); the heartbeat record is
    one PUT per ``heartbeat_interval``; the housekeeper wakes every
    U(0.8, 1.2) x ``sweep_interval`` (what a wake-up costs depends on the
    sweep code, so it is reported by key family, not predicted).
    """
    d = WorkerOptions()
    counts, fams = RequestCounter(), RequestCounter()
    clock = PollClock(MemoryStore(latency=latency), gap=d.poll_max / scale / 4)
    store = CountingStore(clock, counts, fams)  # type: ignore[arg-type]
    opts = WorkerOptions(concurrency=concurrency, poll_min=d.poll_min / scale,
                         poll_max=d.poll_max / scale, sweep_interval=d.sweep_interval / scale,
                         heartbeat_interval=d.heartbeat_interval / scale)
    worker = Worker(app, Queue(store), opts)  # type: ignore[arg-type]
    worker.claimer.listing_ttl /= scale
    thread = threading.Thread(target=worker.run, daemon=True)
    # The backoff climbs from poll_min to poll_max in about 2 poll_max (scaled); polls
    # that close together would merge, so LISTs per poll are counted after that.
    # Counts are taken over the window from then to the end of the run, and scaled
    # from that window to an hour: the start-up ramp is left out.
    settle = min(3 * d.poll_max / scale, seconds / 2)
    started = time.monotonic()
    settled = started + settle
    thread.start()
    time.sleep(max(0.0, settled - time.monotonic()))
    base, fbase = counts.snapshot(), fams.snapshot()
    time.sleep(max(0.0, started + seconds - time.monotonic()))
    window = time.monotonic() - settled
    snap = _minus(counts.snapshot(), base)
    fsnap = _minus(fams.snapshot(), fbase)
    settled_lists, polls = clock.per_poll(settled)
    worker.stop()
    thread.join(30)
    factor = (3600.0 / scale) / window
    measured = {k: round(v * factor, 1) for k, v in sorted(snap.items())}
    measured["billable"] = round(sum(snap.get(k, 0) for k in BILLABLE) * factor, 1)
    by_family = {k: round(v * factor, 1) for k, v in sorted(fsnap.items())}
    lps = lists_per_sweep()
    formula = {
        "LIST ready (polls)": round(3600 / (0.75 * d.poll_max), 1),
        "PUT workers (heartbeat)": round(3600 / d.heartbeat_interval, 1),
        "housekeeper wake-ups": round(3600 / d.sweep_interval, 1),
        "LIST per full sweep": lps,
    }
    cost = sum(measured.get(k, 0) * p for k, p in PRICE_PER_REQUEST.items())
    shared = round(sum(v for k, v in by_family.items() if fleet_shared(k)), 1)
    row = {"concurrency": concurrency, "scale": scale, "run_seconds": seconds,
           "latency_s": latency, "window_seconds": round(window, 2),
           "scaled_hours": round(window * scale / 3600, 3),
           "fleet_shared_per_hour": shared,
           "per_worker_billable_per_hour": round(measured["billable"] - shared, 1),
           "defaults": {"poll_max": d.poll_max, "sweep_interval": d.sweep_interval,
                        "heartbeat_interval": d.heartbeat_interval},
           "measured_per_hour": measured, "measured_by_family_per_hour": by_family,
           "polls_settled": polls,
           "ready_lists_per_poll": round(settled_lists / polls, 2) if polls else None,
           "sweeps_per_hour": by_family.get("LIST schedules", 0.0),
           "formula_per_hour": formula,
           "cost_per_worker_hour_usd": round(cost, 5),
           "cost_per_worker_month_usd": round(cost * 730, 3)}
    log(f"idle concurrency={concurrency} latency={latency * 1000:g} ms: "
        f"{row['ready_lists_per_poll']} LIST of ready/ per poll, "
        f"{measured['billable']} billable/hour ({row['per_worker_billable_per_hour']} without "
        f"the fleet's sweeps); measured {by_family}, formula {formula}")
    return row


def _minus(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a[k] - b.get(k, 0) for k in a if a[k] - b.get(k, 0)}


def fleet_shared(name: str) -> bool:
    """Whether a ``"KIND family"`` count is the fleet's sweep work, which one worker of a
    fleet does for all: taking the sweep turn (PUT/GET of ``sweep/``) and the sweep's
    LISTs (anything but ``ready/``). Each worker's own: the LIST of ``ready/`` of its
    polls, its heartbeat record, and the HEAD of ``sweep/turn`` of each wake-up."""
    kind, _, family = name.partition(" ")
    if kind not in BILLABLE:
        return False
    if kind == "LIST":
        return family != "ready"
    return family == "sweep" and kind in ("PUT", "GET")


def idle_all(runs: list[tuple[int, float, float]], latency: float) -> list[dict[str, Any]]:
    """Several idle runs at once (they sleep, so they do not disturb each other)."""
    with ThreadPoolExecutor(max(1, len(runs))) as pool:
        return list(pool.map(lambda run: idle(run[0], run[1], run[2], latency), runs))
