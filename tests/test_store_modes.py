"""Misbehaving stores get the documented behaviour: the mode, a refusal, an error, a report.

Each wrapper of ``qo.testing.stores`` breaks one thing the way a real
S3-compatible service does; none may end in a silent stall or a duplicate run.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import Counter

import pytest

from qo.app import App
from qo.errors import ListingStalled, NotSupported, PreconditionFailed, StoreRefused
from qo.models import Status
from qo.protocol import leases
from qo.queue import Queue
from qo.settings import Settings
from qo.store import capabilities, failures
from qo.store.base import Store
from qo.store.faulty import FaultyStore
from qo.store.memory import MemoryStore
from qo.store.modes import UnconditionalDeletes
from qo.store.url import open_store
from qo.testing.stores import (
    DeniesDeletes,
    IgnoresConditions,
    RefusesConditionalDelete,
    RepeatsPage,
)
from qo.worker import Worker, WorkerOptions


def leftovers(store: Store) -> dict[str, list[str]]:
    return {p: [i.key for i in store.list(p)] for p in ("ready/", "delayed/", "leases/")}


def run_tasks(queue: Queue, n: int, concurrency: int = 4) -> Counter[int]:
    """Submit ``n`` tasks and work them in burst mode; returns runs per input."""
    runs: Counter[int] = Counter()
    lock = threading.Lock()
    app = App(queue)

    @app.task
    def count(i: int) -> int:
        with lock:
            runs[i] += 1
        return i

    queue.submit_many([{"type": "count", "input": {"i": i}} for i in range(n)])
    Worker(app, queue, WorkerOptions(concurrency=concurrency, burst=True, poll_max=0.2)).run()
    return runs


# -- capabilities -------------------------------------------------------------------


def test_memory_and_local_stores_are_trusted_without_a_request(tmp_path) -> None:
    store = MemoryStore()
    assert capabilities.require(store) is store
    assert store.counts.snapshot() == {}
    assert capabilities.declared(FaultyStore(store))  # faults are transient: same contract
    assert not capabilities.declared(IgnoresConditions(store))


def test_the_check_costs_one_get_once_another_process_checked() -> None:
    inner = MemoryStore()
    first = RefusesConditionalDelete(inner)
    caps = capabilities.check(first)
    assert caps.source == "probe" and not caps.has(capabilities.CONDITIONAL_DELETE)
    assert inner.counts["LIST"] == 6 and inner.counts["PUT"] == 14  # 13 probe + the cache
    assert [i.key for i in inner.list("")] == [capabilities.CACHE_KEY]  # probe keys removed
    inner.counts.reset()
    again = RefusesConditionalDelete(inner)  # another process: a new store object
    assert capabilities.check(again).features == caps.features
    assert inner.counts.snapshot() == {"GET": 1}
    assert capabilities.check(again) is capabilities.check(again)
    assert inner.counts.snapshot() == {"GET": 1}  # then free in this process


def test_a_store_that_ignores_conditions_is_refused_at_start() -> None:
    store = IgnoresConditions(MemoryStore())
    with pytest.raises(StoreRefused) as refused:
        capabilities.require(store)
    message = str(refused.value)
    assert "\n" not in message and "memory://" in message and "create-only PUT" in message
    caps = capabilities.check(store)
    assert caps.missing == [capabilities.CREATE_ONLY, capabilities.IF_MATCH,
                            capabilities.CONDITIONAL_DELETE]
    queue = Queue(store)
    with pytest.raises(StoreRefused):
        queue.submit("t", {})
    assert list(store.list("tasks/")) == [] and list(store.list("ready/")) == []


def test_the_check_refuses_a_store_whose_tasks_were_submitted_earlier() -> None:
    inner = MemoryStore()
    Queue(inner).submit("count", {"i": 1})  # submitted while the store still behaved
    queue = Queue(IgnoresConditions(inner))
    with pytest.raises(StoreRefused):
        queue.check_store()
    assert [i.key for i in inner.list("leases/")] == []


def cli(*args: str):
    from typer.testing import CliRunner

    from qo.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_cli_worker_refuses_the_store_with_one_line(monkeypatch) -> None:
    monkeypatch.setattr("qo.queue.open_store",
                        lambda url=None: IgnoresConditions(MemoryStore(name="naive")))
    result = cli("--queue", "memory://naive", "worker", "--app", "tests.apps.demo_app:app",
                 "--burst")
    err = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert "create-only PUT is missing" in err[0] and "memory://naive" in err[0]


# -- the unconditional delete mode ----------------------------------------------------


def test_501_to_conditional_delete_selects_the_unconditional_mode() -> None:
    raw = RefusesConditionalDelete(MemoryStore())
    store = capabilities.require(raw)
    assert isinstance(store, UnconditionalDeletes) and store.url.endswith("?delete=unconditional")
    etag = store.put("k", b"1")
    newer = store.put("k", b"2", if_match=etag)
    with pytest.raises(PreconditionFailed):
        store.delete("k", if_match=etag)  # stale: refused by the HEAD check
    store.delete("k", if_match=newer)
    assert store.get("k") is None
    assert raw.refused == 1  # only the probe ever sent If-Match on a DELETE


def test_explicit_conditional_mode_refuses_instead() -> None:
    raw = RefusesConditionalDelete(MemoryStore())
    raw.delete_mode = "conditional"
    with pytest.raises(StoreRefused, match="conditional DELETE"):
        capabilities.require(raw)


def test_queue_url_selects_the_mode() -> None:
    assert isinstance(open_store("memory://m1?delete=unconditional"), UnconditionalDeletes)
    assert open_store("memory://m1?delete=conditional").delete_mode == "conditional"
    with pytest.raises(Exception, match="invalid option"):
        open_store("memory://m1?delete=sometimes")


def test_queue_on_a_store_without_conditional_delete_runs_each_task_once() -> None:
    inner = MemoryStore()
    queue = Queue(RefusesConditionalDelete(inner))
    runs = run_tasks(queue, 60)
    assert isinstance(queue.store, UnconditionalDeletes)
    assert sorted(runs) == list(range(60)) and set(runs.values()) == {1}
    assert all(v.status == Status.SUCCEEDED for v in queue.ls(limit=100))
    assert leftovers(inner) == {"ready/": [], "delayed/": [], "leases/": []}


def test_a_lease_is_released_through_a_tombstone() -> None:
    inner = MemoryStore()
    store = UnconditionalDeletes(inner)
    held = leases.acquire(store, "q", "t1", owner="w", kind="run", seconds=60, now=store.now())
    assert held is not None
    inner.counts.reset()
    assert held.release(store) is True
    assert inner.counts.snapshot() == {"PUT": 1, "DELETE": 1}  # tombstone CAS, then DELETE
    assert inner.get("leases/q/t1") is None


def test_a_release_that_lost_its_lease_deletes_nothing() -> None:
    store = UnconditionalDeletes(MemoryStore())
    held = leases.acquire(store, "q", "t1", owner="w", kind="run", seconds=60, now=store.now())
    assert held is not None
    other = store.put("leases/q/t1", b'{"reaped": 1}', if_match=held.etag)  # a reaper took it
    assert held.release(store) is False
    got = store.get("leases/q/t1")
    assert got is not None and got.etag == other


def test_a_tombstone_left_behind_is_taken_over_once_settled() -> None:
    now = [1000.0]
    inner = MemoryStore(clock=lambda: now[0])
    store = DeniesDeletes(inner)  # the DELETE after the tombstone fails
    mode = UnconditionalDeletes(store)
    held = leases.acquire(mode, "q", "t1", owner="a", kind="run", seconds=60, now=now[0])
    assert held is not None and held.release(mode) is False  # tombstone written, DELETE denied
    tomb = leases.read(mode, "leases/q/t1")
    assert tomb is not None and leases.is_released(tomb.value)
    assert leases.acquire(mode, "q", "t1", owner="b", kind="run", seconds=60,
                          now=now[0] + 1) is None  # fresh: still settling
    now[0] += leases.RELEASE_SETTLE + 1
    taken = leases.acquire(mode, "q", "t1", owner="b", kind="run", seconds=60, now=now[0])
    assert taken is not None and taken.value.owner == "b"
    assert leases.acquire(mode, "q", "t1", owner="c", kind="run", seconds=60,
                          now=now[0]) is None  # b holds it now


# -- listing ----------------------------------------------------------------------------


def test_a_listing_that_repeats_a_page_raises_instead_of_looping() -> None:
    inner = MemoryStore()
    for i in range(10):
        inner.put(f"ready/q/{i:03d}", b"")
    store = RepeatsPage(inner, page=2)
    with pytest.raises(ListingStalled, match="does not sort after") as stalled:
        list(itertools.islice(store.list("ready/", page_size=3), 1000))
    assert "ready/" in str(stalled.value) and "\n" not in str(stalled.value)
    assert store.requests == 2  # stopped at the first repeated page
    with pytest.raises(StoreRefused, match="listing order"):
        capabilities.require(RepeatsPage(MemoryStore(), page=2))


def test_paginate_refuses_a_repeated_token_and_endless_empty_pages() -> None:
    from qo.store.base import paginate

    with pytest.raises(ListingStalled):
        list(paginate(lambda token, n: ([], "same"), where="x"))
    counter = itertools.count()
    with pytest.raises(ListingStalled):
        list(paginate(lambda token, n: ([], f"t{next(counter)}"), where="x"))


# -- failed deletes are loud -----------------------------------------------------------


def test_a_store_that_denies_deletes_is_refused_at_start() -> None:
    with pytest.raises(StoreRefused, match="DELETE is missing.*AccessDenied"):
        capabilities.require(DeniesDeletes(MemoryStore()))


def test_deletes_denied_later_are_logged_counted_reported_and_run_nothing_twice(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [1_000_000.0]
    inner = MemoryStore(clock=lambda: now[0])
    store = DeniesDeletes(inner, active=False)
    queue = Queue(store, Settings())
    queue.check_store()  # passes: the policy changes afterwards
    store.active = True
    before = failures.delete_failures.count(store)
    with caplog.at_level(logging.WARNING, logger="qo.store"):
        runs = run_tasks(queue, 20, concurrency=1)
        assert sorted(runs) == list(range(20)) and set(runs.values()) == {1}
        assert {v.status for v in queue.ls(limit=100)} == {Status.SUCCEEDED}
        assert failures.delete_failures.count(store) - before >= 40  # a marker + a lease each
        now[0] += 3600  # every lease left behind has expired: reapers and claimers meet them
        queue.sweep()
        app = App(queue)
        app.task(lambda i: runs.update([i]), name="count")
        Worker(app, queue, WorkerOptions(concurrency=2, burst=True, poll_max=0.2)).run()
    assert set(runs.values()) == {1}  # nothing ran twice
    warnings = [r for r in caplog.records if "could not delete" in r.getMessage()]
    assert 1 <= len(warnings) <= 4  # rate-limited: one per kind of key and minute
    assert "AccessDenied" in warnings[0].getMessage()
    failures.delete_failures.flush(store)  # as at exit; while failing: once a minute
    summary = failures.summary(inner)
    assert summary.count >= 40 and "AccessDenied" in summary.last_error
    assert "failed delete" in summary.line()


def test_stats_and_doctor_show_failed_deletes() -> None:
    from qo.doctor import Level, diagnose

    store = MemoryStore.named("deletes-denied")
    failures.delete_failures.record(store, "ready/q/x", NotSupported("no DELETE here"))
    result = cli("--queue", "memory://deletes-denied", "stats", "--json")
    assert result.exit_code == 0 and '"delete_failures":1' in result.stdout.replace(" ", "")
    human = cli("--queue", "memory://deletes-denied", "stats")
    assert "1 failed delete(s)" in human.stderr and "no DELETE here" in human.stderr
    check = next(c for c in diagnose(store=store).checks if c.name == "stuck deletes")
    assert check.level == Level.WARN and "no DELETE here" in check.detail


def test_a_task_given_back_while_deletes_fail_is_claimed_again_once() -> None:
    from qo.protocol.claim import Claimer

    now = [2_000_000.0]
    inner = MemoryStore(clock=lambda: now[0])
    store = DeniesDeletes(inner, active=False)
    queue = Queue(store, Settings())
    task = queue.submit("count", {"i": 1})
    store.active = True
    first = Claimer(store, queue.settings, queues=["default"], task_types=None, owner="a")
    claim = first.claim()
    assert claim is not None and claim.task_id == task.id
    from qo.protocol import outcome

    outcome.release(store, claim)  # graceful shutdown: marker again, then the lease goes
    tomb = leases.read(store, f"leases/default/{task.id}")
    assert tomb is not None and leases.is_released(tomb.value)  # its DELETE was denied
    second = Claimer(store, queue.settings, queues=["default"], task_types=None, owner="b")
    assert second.claim() is None  # the tombstone is settling: still reads as held
    now[0] += leases.RELEASE_SETTLE + 1
    second.forget()
    again = Claimer(store, queue.settings, queues=["default"], task_types=None, owner="c")
    taken = again.claim()
    assert taken is not None and taken.task_id == task.id and taken.lease.value.owner == "c"
    assert Claimer(store, queue.settings, queues=["default"], task_types=None,
                   owner="d").claim() is None  # one holder at a time


def test_doctor_drops_a_cached_result_that_no_longer_holds() -> None:
    from qo.doctor import diagnose

    inner = MemoryStore()
    capabilities.check(RefusesConditionalDelete(inner))  # cached: no conditional DELETE
    assert inner.get(capabilities.CACHE_KEY) is not None
    report = diagnose(store=_Plain(inner))  # the store was fixed meanwhile
    assert next(c for c in report.checks if c.name == "conditional DELETE").level == "ok"
    assert inner.get(capabilities.CACHE_KEY) is None  # the next start probes again
    assert capabilities.check(_Plain(inner)).has(capabilities.CONDITIONAL_DELETE)


class _Plain(RefusesConditionalDelete):
    """The same store once its conditional DELETE works (not CONFORMING: probed)."""

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        self.inner.delete(key, if_match=if_match)


def test_a_stale_cache_is_probed_again() -> None:
    now = [1_000.0]
    inner = MemoryStore(clock=lambda: now[0])
    capabilities.check(RefusesConditionalDelete(inner), clock=lambda: now[0])
    now[0] += capabilities.MAX_AGE + 1
    inner.counts.reset()
    caps = capabilities.check(_Plain(inner), clock=lambda: now[0])
    assert caps.source == "probe" and caps.has(capabilities.CONDITIONAL_DELETE)
    assert inner.counts["LIST"] == 6


def test_on_s3_the_first_submit_of_a_process_costs_one_get_more(s3_server) -> None:
    from qo.store.metrics import diff
    from qo.store.s3 import S3Store

    from .conftest import new_bucket_name

    bucket = new_bucket_name()
    first = S3Store(bucket, "p", endpoint_url=s3_server.endpoint_url)
    first.create_bucket()
    assert capabilities.require(first) is first  # moto has every feature: probed, cached
    queue = Queue(S3Store(bucket, "p", endpoint_url=s3_server.endpoint_url))  # a new process
    before = s3_server.counts.snapshot()
    queue.submit("t", {"n": 1})
    queue.submit("t", {"n": 2})
    spent = {k: v for k, v in diff(s3_server.counts.snapshot(), before).items()
             if not k.startswith("BUCKET_")}
    # the cached check once, the registry's LIST of types/ once (an empty registry), then
    # 2 PUT per submit
    assert spent == {"GET": 1, "LIST": 1, "PUT": 4}


def test_week_old_failure_reports_are_removed_by_the_summary() -> None:
    import orjson

    store = MemoryStore()
    old = {"count": 3, "at": 1_000.0, "last_key": "ready/x", "last_error": "e"}
    store.put(f"{failures.PREFIX}gone-1.json", orjson.dumps(old))
    store.put(f"{failures.PREFIX}recent-2.json", orjson.dumps(old | {"at": 2_000_000.0}))
    found = failures.summary(store, now=2_000_100.0)
    assert found.count == 3 and found.processes == 1
    assert [i.key for i in store.list(failures.PREFIX)] == [f"{failures.PREFIX}recent-2.json"]
