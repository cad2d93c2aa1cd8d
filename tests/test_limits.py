"""Rate limits declared in code and checked at claim time (docs/protocol.md section 11)."""

from __future__ import annotations

import threading
import time

import pytest

from qo.app import App
from qo.errors import RateLimited
from qo.hooks import Event, Kind
from qo.limiter import Limiter
from qo.models import Status
from qo.protocol import keys, leases, limits, outcome, records, slots, sweep
from qo.protocol.claim import Claimer
from qo.protocol.limits import InvalidLimit
from qo.queue import Queue
from qo.retry import RetryDecision
from qo.settings import Settings
from qo.store.memory import MemoryStore
from qo.store.metrics import diff
from qo.worker import Worker, WorkerOptions

from .helpers import FakeClock
from .test_cli import as_json, assert_one_line_error, ok
from .test_cli import qo as run_qo


def make_app(clock: FakeClock | None = None) -> tuple[App, MemoryStore, FakeClock]:
    clock = clock or FakeClock()
    store = MemoryStore(clock=clock)
    app = App(Queue(store, Settings()))
    return app, store, clock


def run_lease(store: MemoryStore, marker: keys.Marker, now: float) -> leases.HeldLease:
    """The task's run lease, as a claimer takes it before admission."""
    held = leases.acquire(store, marker.queue, marker.task_id, owner="w", kind="run",
                          seconds=60, now=now)
    assert held is not None
    return held


def claimer_for(app: App, store: MemoryStore, owner: str = "w", *, gate: bool = True
                ) -> tuple[Claimer, Limiter]:
    limiter = Limiter(store, app.limits, owner=owner)
    claimer = Claimer(store, app.queue.settings, queues=app.queues(), task_types=app.accepted(),
                      owner=owner, admission=[limiter.admit], listing_ttl=0.0,
                      gate=limiter if gate else None)
    return claimer, limiter


def test_declarations() -> None:
    app, _, _ = make_app()
    app.limit("openai", rate="600/m", burst=5)

    @app.task(rate="10/s", burst=20, rate_key="customer", rate_limit="openai")
    def send(customer: str) -> None: ...

    @app.task(rate_limit=["openai"], concurrency=3)
    def summarize() -> None: ...

    assert app.limits["send"].rate == 10 and app.limits["send"].capacity == 20
    assert app.limits["send"].per_key and app.limits["send"].types == ["send"]
    assert app.limits["openai"].types == ["send", "summarize"]
    assert app.limits["openai"].rate == 10 and app.limits["openai"].capacity == 5
    assert app.limits["summarize"].concurrency == 3 and app.limits["summarize"].rate is None
    assert app.tasks["send"].limits == ("send", "openai")


@pytest.mark.parametrize(("options", "message"), [
    ({"rate": "10/d"}, "invalid rate"),
    ({"rate": "fast"}, "invalid rate"),
    ({"burst": 3}, "burst needs a rate"),
    ({"rate": "1/s", "rate_key": "a", "concurrency_key": "b"}, "one limit key"),
    ({"rate_limit": "no/slash"}, "limit name"),
    ({"concurrency": 0}, "concurrency"),
])
def test_bad_declarations_are_one_line_errors(options: dict, message: str) -> None:
    app, _, _ = make_app()
    with pytest.raises(Exception, match=message) as caught:
        app.task(**options)(lambda: None)
    assert "\n" not in str(caught.value)


def test_the_rate_key_goes_into_the_marker_at_submit() -> None:
    app, store, _ = make_app()

    @app.task(rate="1/s", rate_key="customer")
    def send(customer: str, n: int = 0) -> None: ...

    @app.task(rate="1/s", rate_key=lambda payload: payload["n"] % 2)
    def parity(n: int) -> None: ...

    send.submit("cust-1")
    parity.submit(3)
    markers = [keys.parse_ready_key(i.key) for i in store.list(keys.READY)]
    assert sorted(m.limit_key for m in markers if m) == sorted(
        [keys.hash_limit_key("cust-1"), keys.hash_limit_key("1")])


def claim_all(claimer: Claimer) -> list[str]:
    """Claim until nothing is admitted; the types claimed (each claim's lease is released)."""
    claimed = []
    while (claim := claimer.claim()) is not None:
        claimed.append(claim.record.type)
        claim.lease.release(claimer.store)
    return claimed


@pytest.mark.parametrize("gate", [True, False], ids=["gate", "admission-only"])
def test_a_limited_type_stays_queued_and_others_keep_flowing(gate: bool) -> None:
    app, store, _clock = make_app()
    app.task(name="slow", rate="10/s", burst=5)(lambda n: n)
    app.task(name="free")(lambda n: n)
    for n in range(30):
        app.submit("slow", {"n": n})
    for n in range(10):
        app.submit("free", {"n": n})
    claimer, _limiter = claimer_for(app, store, gate=gate)
    claimed = claim_all(claimer)
    assert claimed.count("free") == 10  # no head-of-line blocking
    assert claimed.count("slow") == 5  # the burst
    # The gate passes over the spent limit's tasks before their lease; without it
    # (an S3 event's claim_marker) each is refused under its lease.
    assert (claimer.stats.refused == 0) if gate else (claimer.stats.refused > 0)
    marker = keys.parse_ready_key(next(iter(store.list(keys.READY))).key)
    assert marker is not None and marker.task_type == "slow"
    current = records.read(store, marker.task_id)
    assert current is not None and current.value.attempt == 0  # no attempt consumed


def test_the_limiter_path_costs_a_read_of_the_settings_then_one_get_and_put_per_grant() -> None:
    app, store, clock = make_app()
    app.task(name="slow", rate="100/s", burst=100)(lambda n: n)
    for n in range(20):
        app.submit("slow", {"n": n})
    _, limiter = claimer_for(app, store)
    marker = keys.parse_ready_key(next(iter(store.list(keys.READY))).key)
    assert marker is not None
    before = store.counts.snapshot()
    assert limiter.admit(marker, None, clock()) is None  # type: ignore[arg-type]
    # LIST limits/ (the bucket's settings), then the bucket: GET + create-only PUT
    assert diff(store.counts.snapshot(), before) == {"LIST": 1, "GET": 1, "PUT": 1}
    for size in (2, 4, 8):  # each grant used up within its window doubles the next batch
        before = store.counts.snapshot()
        for _ in range(size):
            assert limiter.admit(marker, None, clock()) is None  # type: ignore[arg-type]
        assert diff(store.counts.snapshot(), before) == {"GET": 1, "PUT": 1}
    assert limiter.admit(marker, None, clock()) is None  # type: ignore[arg-type]  # takes 16
    clock.advance(2.0)  # the grant of 16 expired with 15 unused: they are dropped
    before = store.counts.snapshot()
    assert limiter.admit(marker, None, clock()) is None  # type: ignore[arg-type]
    assert diff(store.counts.snapshot(), before) == {"GET": 1, "PUT": 1}
    assert limiter.stats()["expired"] == 15
    assert limiter.stats()["writes"] == 6


def test_a_refused_grant_does_not_ask_the_bucket_again_before_it_refilled() -> None:
    app, store, clock = make_app()
    app.task(name="slow", rate="2/s", burst=1)(lambda n: n)
    app.submit("slow", {"n": 1})
    _, limiter = claimer_for(app, store)
    marker = keys.parse_ready_key(next(iter(store.list(keys.READY))).key)
    assert limiter.admit(marker, None, clock()) is None  # type: ignore[arg-type]
    refusal = limiter.admit(marker, None, clock())  # type: ignore[arg-type]
    assert refusal is not None and clock() + 0.5 <= refusal.retry_at <= clock() + 0.75
    before = store.counts.snapshot()
    for _ in range(5):  # more tasks meanwhile: refused, or held back by the gate, for free
        later = limiter.admit(marker, None, clock())  # type: ignore[arg-type]
        assert later is not None and later.retry_at == refusal.retry_at
        assert limiter.check(marker, clock()) == refusal.retry_at  # type: ignore[arg-type]
        assert limiter.enter(marker, clock()) == refusal.retry_at  # type: ignore[arg-type]
    assert diff(store.counts.snapshot(), before) == {}
    clock.advance(0.75)
    assert limiter.check(marker, clock()) is None  # type: ignore[arg-type]
    assert limiter.admit(marker, None, clock()) is None  # type: ignore[arg-type]


def test_several_limiters_admit_within_the_limit_and_use_it() -> None:
    """Four processes' limiters, threads each, demand far above 20/s for 60 s (test clock)."""
    app, store, clock = make_app()
    app.task(name="api", rate="20/s", burst=40)(lambda n: n)
    app.submit("api", {"n": 1})
    marker = keys.parse_ready_key(next(iter(store.list(keys.READY))).key)
    limiters = [Limiter(store, app.limits, owner=f"w{i}") for i in range(4)]
    admitted = [0]
    lock = threading.Lock()

    def demand(limiter: Limiter) -> None:
        for _ in range(5):
            if limiter.admit(marker, None, clock()) is None:  # type: ignore[arg-type]
                with lock:
                    admitted[0] += 1

    seconds, step = 60.0, 0.05
    for _ in range(round(seconds / step)):
        threads = [threading.Thread(target=demand, args=(lim,)) for lim in limiters
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        clock.advance(step)
    bound = 20 * seconds + 40
    assert admitted[0] <= bound
    assert admitted[0] >= 0.95 * bound
    writes = sum(lim.stats()["writes"] for lim in limiters)
    reads = sum(lim.stats()["takes"] for lim in limiters)
    print(f"admitted {admitted[0]} of {bound}, {writes} writes, {reads} reads")
    assert writes < admitted[0] / 4  # tokens are taken in batches, not one CAS per task
    assert reads < admitted[0]


def test_limits_in_the_bucket_override_the_code_and_add_types() -> None:
    app, store, _clock = make_app()
    app.task(name="slow", rate="10/s", burst=5)(lambda n: n)
    app.task(name="other")(lambda n: n)
    limits.write_spec(store, limits.make_spec("slow", rate="1/s", burst=1))
    limits.write_spec(store, limits.make_spec("shared", rate="1/s", burst=2, types=["other"]))
    for n in range(5):
        app.submit("slow", {"n": n})
        app.submit("other", {"n": n})
    claimer, _ = claimer_for(app, store)
    claimed = claim_all(claimer)
    assert claimed.count("slow") == 1 and claimed.count("other") == 2


def test_a_bad_limit_in_the_bucket_is_refused_at_write() -> None:
    store = MemoryStore()
    with pytest.raises(InvalidLimit):
        limits.write_spec(store, limits.LimitSpec(name="x"))


# -- RateLimited: the remote API's 429 -------------------------------------------------


def test_rate_limited_consumes_no_attempt_and_blocks_the_key_everywhere() -> None:
    app, store, clock = make_app()
    calls: list[str] = []

    @app.task(rate="100/s", rate_key="customer", max_attempts=1)
    def call_api(customer: str) -> str:
        calls.append(customer)
        if len(calls) == 1:
            raise RateLimited(retry_after=30)
        return "ok"

    first = call_api.submit("a")
    worker = Worker(app, app.queue, WorkerOptions(concurrency=1))
    assert worker.run_once()
    record = app.queue.get(first.id).record
    assert record.status == Status.FAILED and record.attempt == 0  # max_attempts=1, not dead
    assert record.error is not None and record.error.type == "RateLimited"
    assert record.available_at == pytest.approx(clock() + 30)
    # Another process's limiter sees the block in the bucket: key "a" waits, "b" flows.
    other_a, other_b = call_api.submit("a"), call_api.submit("b")
    other = Worker(app, app.queue, WorkerOptions(concurrency=1, worker_id="w2"))
    assert other.run_once()
    assert not other.run_once()
    assert app.queue.get(other_b.id).record.status == Status.SUCCEEDED
    assert app.queue.get(other_a.id).record.status == Status.PENDING
    clock.advance(31)
    sweep.promote(store)
    other.claimer.forget()  # (an idle worker lists again on its next poll)
    other.claimer._skip.clear()  # (skips are in real seconds; the test clock moved)
    assert other.run_once() and other.run_once()
    done = app.queue.get(first.id).record
    assert done.status == Status.SUCCEEDED and done.attempt == 1  # the same first attempt


def test_rate_limited_checks_its_delay() -> None:
    with pytest.raises(ValueError, match="retry_after"):
        RateLimited(retry_after=-1)
    decision = RetryDecision.decide(retryable=False, attempt=5, max_attempts=5, policy=None,
                                    error=RateLimited(retry_after=2))
    assert decision.retry and decision.delay == 2 and not decision.consumes_attempt


# -- concurrency ------------------------------------------------------------------------


def test_concurrency_slots_bound_running_tasks_per_key_and_come_back_on_outcome() -> None:
    app, store, _ = make_app()
    app.task(name="c", concurrency=2, concurrency_key="k")(lambda k, n: n)
    for n in range(4):
        app.submit("c", {"k": "x", "n": n})
        app.submit("c", {"k": "y", "n": n})
    claimer, limiter = claimer_for(app, store)
    limiter.connect(app.queue.hooks)
    held = []
    while (claim := claimer.claim()) is not None:
        held.append(claim)
    assert sorted(c.input["k"] for c in held) == ["x", "x", "y", "y"]
    assert len(slots.read_slots(store, "c")) == 4
    claimer._skip.clear()  # the refused keys may be tried again now
    outcome.succeed(store, held[0], None, app.queue.settings, hooks=app.queue.hooks)
    assert len(slots.read_slots(store, "c")) == 3  # the outcome gave its slot back
    nxt = claimer.claim()
    assert nxt is not None and nxt.input["k"] == held[0].input["k"]
    assert claimer.claim() is None


def test_a_dead_workers_slot_is_free_once_its_lease_expires() -> None:
    app, store, clock = make_app()
    app.task(name="c", concurrency=1)(lambda n: n)
    for n in range(2):
        app.submit("c", {"n": n})
    dead, _ = claimer_for(app, store, owner="dead")
    assert dead.claim() is not None  # then the process dies: no outcome, no release
    alive, _ = claimer_for(app, store, owner="alive")
    assert alive.claim() is None  # the slot is held by a live lease
    clock.advance(app.queue.settings.lease_seconds + 1)
    alive._skip.clear()
    before = store.counts.snapshot()
    claim = alive.claim()
    assert claim is not None and claim.record.type == "c"
    assert [s.owner for _, _, s in slots.read_slots(store, "c")] == ["alive"]
    # the claim, plus the slot: LIST, GET slot + GET lease (expired), PUT over it
    assert diff(store.counts.snapshot(), before)["GET"] >= 3


def test_slot_costs_one_list_and_one_put_and_release_is_free() -> None:
    app, store, clock = make_app()
    app.task(name="c", concurrency=5)(lambda n: n)
    app.submit("c", {"n": 1})
    _, limiter = claimer_for(app, store)
    limiter.refresh(clock())
    marker = keys.parse_ready_key(next(iter(store.list(keys.READY))).key)
    assert marker is not None
    held = run_lease(store, marker, clock())
    before = store.counts.snapshot()
    assert limiter.admit(marker, held, clock()) is None
    assert diff(store.counts.snapshot(), before) == {"LIST": 1, "PUT": 1}
    before = store.counts.snapshot()
    app.queue.hooks.connect(lambda e: None)
    limiter._on_outcome(Event(Kind.SUCCEEDED, marker.task_id))
    assert diff(store.counts.snapshot(), before) == {"DELETE": 1}


# -- the CLI --------------------------------------------------------------------------------


def test_cli_set_ls_show_rm(tmp_path) -> None:
    url = f"file://{tmp_path}/q"
    ok(run_qo("--queue", url, "limit", "set", "api", "--rate", "600/m", "--burst", "20",
              "--type", "send", "--type", "fetch"))
    listed = as_json(run_qo("--queue", url, "limit", "ls", "--json"))["limits"]
    assert listed == [{"name": "api", "rate": "10/s", "per_second": 10.0, "burst": 20.0,
                       "per_key": False, "concurrency": None, "concurrency_per_key": False,
                       "shards": 1, "types": ["send", "fetch"]}]
    assert "api" in ok(run_qo("--queue", url, "limit", "ls")).stdout
    shown = as_json(run_qo("--queue", url, "limit", "show", "api", "--json"))
    assert shown["limit"]["rate"] == "10/s" and shown["buckets"] == []
    assert_one_line_error(run_qo("--queue", url, "limit", "set", "api", "--rate", "10/d"),
                          2, "invalid rate")
    assert_one_line_error(run_qo("--queue", url, "limit", "set", "api"), 2, "neither")
    assert_one_line_error(run_qo("--queue", url, "limit", "show", "nope"), 4, "no limit")
    gone = as_json(run_qo("--queue", url, "limit", "rm", "api", "--yes", "--json"))
    assert gone == {"name": "api", "deleted": 1}
    assert as_json(run_qo("--queue", url, "limit", "ls", "--json")) == {"limits": []}


def test_a_refusal_tells_the_worker_when_to_poll_and_an_app_without_limits_has_no_limiter(
) -> None:
    app, store, _clock = make_app()
    app.task(name="slow", rate="1/s", burst=1)(lambda n: n)
    for n in range(3):
        app.submit("slow", {"n": n})
    worker = Worker(app, app.queue, WorkerOptions(concurrency=1))
    worker.claimer.listing_ttl = 3600.0  # one page for both claims, however slow the machine
    assert worker.limiter is not None
    assert worker.claimer.claim() is not None  # the burst
    before, started = store.counts.snapshot(), time.monotonic()
    assert worker.claimer.claim() is None  # held back: the next token is 1 s away
    assert worker.claimer.stats.refused == 0  # by the gate: no lease taken
    assert diff(store.counts.snapshot(), before) == {"GET": 1}  # the bucket (the page is cached)
    # Its turn: when the bucket refills (1 s on the test clock, + up to 0.5 s of jitter),
    # not a backoff.
    assert worker.claimer.next_try is not None
    assert started + 1.0 <= worker.claimer.next_try <= time.monotonic() + 1.5
    plain, _, _ = make_app()
    plain.task(name="t")(lambda: None)
    assert Worker(plain, plain.queue, WorkerOptions(concurrency=1)).limiter is None


def test_a_sharded_limit_holds_its_bound() -> None:
    app, store, clock = make_app()
    app.limit("hot", rate="40/s", burst=20, shards=4)
    app.task(name="api", rate_limit="hot")(lambda n: n)
    app.submit("api", {"n": 1})
    marker = keys.parse_ready_key(next(iter(store.list(keys.READY))).key)
    limiters = [Limiter(store, app.limits, owner=f"w{i}") for i in range(6)]
    admitted = 0
    for _ in range(200):  # 20 s in steps of 0.1 s
        for lim in limiters:
            for _ in range(3):
                admitted += lim.admit(marker, None, clock()) is None  # type: ignore[arg-type]
        clock.advance(0.1)
    assert admitted <= 40 * 20 + 20
    assert admitted >= 0.9 * (40 * 20 + 20)
    shards = {shard for _, shard, _ in limits.read_buckets(store, "hot")}
    assert shards == {0, 1, 2, 3}
