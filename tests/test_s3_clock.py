"""S3Store's clock estimate: it follows the store's clock, not this machine's.

The estimate is ``monotonic + offset``, the offset being the largest recent
``Date`` sample. These tests step the wall clock of the process (as NTP or an
operator would) and check that neither the estimate nor a scheduler's
decisions move with it; and, with a fake ``Date`` source, that the estimate
stays within its tolerance of a store clock that itself steps.
"""

from __future__ import annotations

import math
import time
import types
from email.utils import formatdate
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qo import scheduler
from qo.queue import Queue
from qo.store import s3 as s3mod
from qo.store.s3 import _OFFSET_WINDOW, S3Store

from .conftest import new_bucket_name

#: Date has one-second resolution: the estimate may lag the store by this much.
TOLERANCE = 2.0


pytestmark = pytest.mark.slow  # real processes, real time or many examples

class SteppingWallClock:
    """``time`` as seen by qo.store.s3, with a wall clock the test can step."""

    def __init__(self) -> None:
        self.step = 0.0

    def time(self) -> float:
        return time.time() + self.step

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> SteppingWallClock:
    clock = SteppingWallClock()
    monkeypatch.setattr(s3mod, "time", types.SimpleNamespace(
        time=clock.time, monotonic=clock.monotonic, sleep=clock.sleep))
    return clock


def server_store(s3_server: Any) -> S3Store:
    store = S3Store(new_bucket_name(), "q", endpoint_url=s3_server.endpoint_url)
    store.create_bucket()
    return store


@pytest.mark.parametrize("step", [20.0, -20.0])
def test_a_wall_clock_step_does_not_move_the_store_clock(
        s3_server: Any, wall: SteppingWallClock, step: float) -> None:
    store = server_store(s3_server)  # the test server's Date is this process's real clock
    try:
        store.put("a", b"1")
        assert abs(store.now() - time.time()) < TOLERANCE
        wall.step = step  # this machine's clock jumps; the store's does not
        for i in range(5):
            store.put(f"b{i}", b"1")  # every response is a fresh offset sample
            assert abs(store.now() - time.time()) < TOLERANCE, f"followed a {step:+g} s step"
    finally:
        store.close()


def test_after_a_forward_step_the_daemon_fires_on_the_store_clock(
        s3_server: Any, wall: SteppingWallClock) -> None:
    store = server_store(s3_server)
    try:
        queue = Queue(store)
        start = store.now() - 3600 + 30  # the next hourly slot is 30 s ahead of the store
        scheduler.add(queue, "hourly", "t", every="1h", start_at=start)
        slot = scheduler.load(queue, "hourly").value.next_slot
        assert slot is not None and slot == pytest.approx(start + 3600)
        wall.step = 40.0  # now this machine believes the slot is 10 s past
        store.put("sample", b"")  # a Date sample taken after the step
        daemon = scheduler.SchedulerDaemon(queue, refresh=60)
        daemon.run(max_rounds=1)
        fired = list(store.list("tasks/"))
        assert fired == [] or time.time() >= slot - 1, "fired a slot before the store reached it"
        assert scheduler.load(queue, "hourly").value.next_slot == slot
    finally:
        store.close()


# -- the estimate against a fake Date source ----------------------------------------


#: After a backward step of the store's clock, the estimate is back within
#: tolerance once two windows (plus the gaps between responses) have passed.
SETTLED = 2 * _OFFSET_WINDOW + 10


class FakeResponse:
    def __init__(self, server_time: float) -> None:
        self.headers = {"Date": formatdate(server_time, usegmt=True)}


def fed_store() -> tuple[S3Store, list[float]]:
    """An S3Store that never talks to a server; the test feeds it Date samples."""
    store = S3Store("fake", endpoint_url="http://127.0.0.1:9")
    mono = [2_000_000.0]
    store._mono = lambda: mono[0]
    store._wall = lambda: math.nan  # must never be used
    return store, mono


@settings(max_examples=60, deadline=None)
@given(
    offset=st.floats(-1e5, 1e6),
    step=st.floats(-3600, 3600),
    gaps=st.lists(st.floats(0.01, 5.0), min_size=5, max_size=80),
    latencies=st.lists(st.floats(0.0, 0.5), min_size=80, max_size=80),
)
def test_the_estimate_follows_a_stepping_store_clock(
        offset: float, step: float, gaps: list[float], latencies: list[float]) -> None:
    """Never ahead of the store; at most 1 s + latency behind once it has samples.

    Half-way, the store's clock steps by ``step``. From two windows after the
    step on, the estimate is back within tolerance of the new clock.
    """
    store, mono = fed_store()
    try:
        step_at = mono[0] + sum(gaps) / 2
        true = offset
        stepped_at = None
        for gap, latency in zip(gaps, latencies, strict=False):
            mono[0] += gap
            if stepped_at is None and mono[0] >= step_at:
                true, stepped_at = offset + step, mono[0]
            stamped = mono[0] - latency + true  # the server's time when it wrote Date
            store._on_response(FakeResponse(math.floor(stamped)))
            store._last_now = -math.inf  # look at the raw estimate, not the no-backwards guard
            estimate = store.now()
            settled = stepped_at is None or step >= 0 or mono[0] - stepped_at >= SETTLED
            if settled:  # a backward store step is followed once older samples expire
                assert estimate <= mono[0] + true + 1e-6
                assert estimate >= mono[0] + true - 1.0 - 0.5 - 1e-6
    finally:
        store.close()


def test_an_old_largest_sample_expires_within_two_windows() -> None:
    store, mono = fed_store()
    try:
        store._on_response(FakeResponse(mono[0] + 100))  # the store was 100 s ahead...
        assert store.now() == pytest.approx(mono[0] + 100)
        for _ in range(int(2 * _OFFSET_WINDOW) + 2):  # ...then stepped back to 0
            mono[0] += 1
            store._on_response(FakeResponse(mono[0]))
        store._last_now = -math.inf
        assert store.now() == pytest.approx(mono[0], abs=1.0)
    finally:
        store.close()
