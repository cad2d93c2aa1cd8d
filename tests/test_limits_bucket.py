"""Token buckets in the store (qo/protocol/limits.py, docs/protocol.md section 11)."""

from __future__ import annotations

import threading

import pytest

from qo.models import TaskRecord, dumps, loads
from qo.protocol import index, keys, limits
from qo.protocol.limits import InvalidLimit, make_spec, parse_rate, take
from qo.store.memory import MemoryStore
from qo.store.metrics import diff

from .helpers import FakeClock


@pytest.mark.parametrize(("text", "per_second"), [
    ("10/s", 10.0), ("600/m", 10.0), ("1000/h", 1000 / 3600), ("5/sec", 5.0),
    ("30/min", 0.5), ("2/hour", 2 / 3600), ("1/5m", 1 / 300), (" 2.5 / s ", 2.5), (7, 7.0),
])
def test_rates_parse(text: object, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["10", "ten/s", "10/d", "-1/s", "0/s", "10/s/s", "", None,
                                  "1e9/s", True])
def test_bad_rates_are_one_line_errors(text: object) -> None:
    with pytest.raises(InvalidLimit) as caught:
        parse_rate(text)
    assert "\n" not in str(caught.value) and "rate" in str(caught.value)


def test_format_rate_reads_back() -> None:
    assert [limits.format_rate(parse_rate(t)) for t in ("10/s", "600/m", "90/m", "1000/h")] == [
        "10/s", "10/s", "90/m", "1000/h"]


def test_spec_checks() -> None:
    assert make_spec("api", rate="10/s", burst=20).capacity == 20
    assert make_spec("api", rate="600/m").capacity == 10
    for bad in ({}, {"burst": 3}, {"rate": "10/s", "shards": 0}, {"concurrency": 0}):
        with pytest.raises(InvalidLimit):
            make_spec("api", **bad)
    with pytest.raises(Exception, match="limit name"):
        make_spec("a/b", rate="1/s")


def test_take_costs_one_get_and_one_put_and_a_refusal_writes_nothing() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    key = keys.bucket_key("api", "", 0)
    before = store.counts.snapshot()
    got = take(store, key, rate=10, capacity=20, want=8, now=clock())
    assert got.granted == 8
    assert diff(store.counts.snapshot(), before) == {"GET": 1, "PUT": 1}
    assert take(store, key, rate=10, capacity=20, want=100, now=clock()).granted == 12
    before = store.counts.snapshot()
    refused = take(store, key, rate=10, capacity=20, want=5, now=clock())
    assert refused.granted == 0 and refused.retry_at == pytest.approx(clock() + 0.5)
    assert diff(store.counts.snapshot(), before) == {"GET": 1}
    clock.advance(0.5)
    assert take(store, key, rate=10, capacity=20, want=5, now=clock()).granted == 5


def test_a_lost_race_costs_one_get_and_tries_again() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    key = keys.bucket_key("api", "", 0)
    take(store, key, rate=10, capacity=20, want=1, now=clock())
    real_get = store.get
    raced = []

    def get_then_race(k: str):  # another taker writes between our GET and our PUT
        obj = real_get(k)
        if not raced:
            raced.append(1)
            take(store, key, rate=10, capacity=20, want=4, now=clock())
        return obj

    store.get = get_then_race  # type: ignore[method-assign]
    before = store.counts.snapshot()
    got = take(store, key, rate=10, capacity=20, want=3, now=clock())
    assert got.granted == 3 and got.tokens_left == pytest.approx(12)
    # ours: GET, PUT (412), GET; the racer's GET + PUT; ours again: PUT
    assert diff(store.counts.snapshot(), before) == {"GET": 3, "PUT": 3, "PUT_412": 1}


def test_block_stops_grants_until_then_and_refills_from_then() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    key = keys.bucket_key("api", "k", 0)
    assert limits.block(store, key, until=clock() + 5, capacity=10, now=clock())
    clock.advance(4)
    refused = take(store, key, rate=2, capacity=10, want=1, now=clock())
    assert refused.granted == 0 and refused.retry_at == pytest.approx(clock() + 1)
    clock.advance(2)  # one second past the block: 2 tokens
    assert take(store, key, rate=2, capacity=10, want=5, now=clock()).granted == 2


def test_threads_never_take_more_than_rate_times_duration_plus_burst() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    key = keys.bucket_key("api", "", 0)
    got: list[int] = []
    lock = threading.Lock()

    def taker() -> None:
        for _ in range(20):
            n = take(store, key, rate=50, capacity=10, want=3, now=clock()).granted
            with lock:
                got.append(n)

    for _step in range(10):
        threads = [threading.Thread(target=taker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        clock.advance(1.0)
    # each step refills the bucket to its capacity (10), and 4 threads drain it
    assert sum(got) == 10 * 10


def test_the_limit_key_rides_in_the_marker_and_the_record() -> None:
    rec = TaskRecord(id="0" * 22, queue="q", type="t", input_hash="x", created_at=0,
                     available_at=1, labels=["gpu"], limit_key=keys.hash_limit_key("cust-1"))
    marker = index.marker_of(rec)
    assert marker.ready_key.endswith("-t~gpu!" + rec.limit_key)
    assert keys.parse_ready_key(marker.ready_key) == marker
    assert keys.parse_delayed_key(marker.delayed_key) == marker
    assert loads(TaskRecord, dumps(rec), "r") == rec
    assert b'"v":4' in dumps(rec)
    plain = rec.model_copy(update={"limit_key": None})
    assert b'"v":2' in dumps(plain) and b"limit_key" not in dumps(plain)


def test_the_limit_key_rides_in_an_aging_marker_too() -> None:
    marker = keys.Marker("q", 7, 1_800_000_000.25, "abc", "send", 2, ("gpu",), aging=30,
                         limit_key=keys.hash_limit_key("c"))
    assert marker.ready_key.endswith("!" + marker.limit_key)
    assert keys.parse_ready_key(marker.ready_key) == marker
    assert keys.parse_delayed_key(marker.delayed_key) == marker
