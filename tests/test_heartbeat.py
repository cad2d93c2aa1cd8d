"""LeaseKeeper: a failing renewal is retried until the lease expires by the worker's estimate."""

from __future__ import annotations

import pytest

from qo.heartbeat import LeaseKeeper, Renewal
from qo.protocol import leases
from qo.store.faulty import FaultyStore
from qo.store.memory import MemoryStore

from .helpers import FakeClock

pytestmark = pytest.mark.usefixtures("no_backoff_sleeps")  # a fake clock, one thread


def _keeper(seconds: float) -> tuple[FaultyStore, LeaseKeeper, FakeClock]:
    store = FaultyStore(MemoryStore())
    held = leases.acquire(store, "default", "t1", owner="w", kind="run", seconds=seconds,
                          now=store.now())
    assert held is not None
    clock = FakeClock(start=100.0)
    return store, LeaseKeeper(store, held, sent_at=clock(), clock=clock), clock


def test_failed_renewals_are_retried_until_the_estimated_expiry() -> None:
    store, keeper, clock = _keeper(30.0)
    assert keeper.next_renew == 110.0 and keeper.expires == 129.0  # sent + 30 - 1 s margin
    store.rates = {"before": 1.0}
    clock.advance(10)
    results = []
    while clock() < 140:
        if keeper.due():
            results.append(keeper.renew())
            if results[-1] is Renewal.LOST:
                break
        clock.advance(0.1)
    assert results[:-1] == [Renewal.FAILED] * (len(results) - 1) and results[-1] is Renewal.LOST
    assert len(results) >= 5  # backoff 1, 2, 4, 5, 5 ... and a last try before the expiry
    assert 128.9 <= clock() <= 129.2  # given up at the estimate, not before
    assert keeper.remaining() == 0.0


def test_a_renewal_after_the_outage_extends_the_estimate() -> None:
    store, keeper, clock = _keeper(30.0)
    store.rates = {"before": 1.0}
    clock.advance(10)
    assert keeper.renew() is Renewal.FAILED
    clock.advance(15)  # 25 s after the claim, 4 s before the estimate runs out
    store.clear()
    assert keeper.renew() is Renewal.RENEWED
    assert keeper.expires == 125.0 + 29.0 and keeper.next_renew == 135.0


def test_a_taken_over_lease_is_lost_at_once() -> None:
    store, keeper, clock = _keeper(30.0)
    obj = store.get(keeper.held.key)
    assert obj is not None
    store.put(keeper.held.key, obj.body + b" ", if_match=obj.etag)  # a reaper took it over
    clock.advance(10)
    assert keeper.renew() is Renewal.LOST and keeper.renew() is Renewal.LOST
