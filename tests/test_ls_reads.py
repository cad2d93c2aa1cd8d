"""``Queue.ls`` reads records concurrently, and knows whether another page follows.

Checked by request counts and by a store that makes reads meet, never by timing.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from qo.protocol import admin
from qo.protocol.submit import SubmitRequest
from qo.queue import Queue
from qo.store.memory import MemoryStore


class RendezvousStore:
    """A memory store whose first ``parties`` record GETs wait for each other.

    Sequential reads cannot all be in flight at once: the barrier then breaks
    (after ``timeout``) and ``met`` stays False. Also records the most GETs
    in flight at any moment.
    """

    def __init__(self, parties: int, timeout: float = 30.0) -> None:
        self.inner = MemoryStore()
        self.url = self.inner.url
        self.parties = parties
        self.barrier = threading.Barrier(parties, timeout=timeout)
        self._admitted = 0
        self.met = False
        self.armed = False
        self._lock = threading.Lock()
        self._in_flight = 0
        self.max_in_flight = 0

    def get(self, key: str) -> Any:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            meet = self.armed and key.startswith("tasks/") and self._admitted < self.parties
            self._admitted += meet
        try:
            if meet:
                try:
                    self.barrier.wait()
                    self.met = True
                except threading.BrokenBarrierError:
                    pass
            return self.inner.get(key)
        finally:
            with self._lock:
                self._in_flight -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _submit(queue: Queue, n: int) -> list[str]:
    handles = queue.submit_many([SubmitRequest(type="t", input={"i": i}) for i in range(n)])
    return [h.id for h in handles]


@pytest.mark.timeout(120)
def test_ls_reads_records_concurrently() -> None:
    store = RendezvousStore(parties=8)
    queue = Queue(store)  # type: ignore[arg-type]
    ids = _submit(queue, 40)
    store.armed = True
    views = queue.ls(limit=20)
    assert store.met, "8 record reads were never in flight together"
    assert store.max_in_flight >= 8
    assert [v.record.id for v in views] == sorted(ids)[:20]  # order kept


def test_ls_request_counts_and_more() -> None:
    store = MemoryStore()
    queue = Queue(store)
    ids = _submit(queue, 10)
    store.counts.reset()
    page = queue.ls_page(limit=5)
    assert [v.record.id for v in page.views] == sorted(ids)[:5] and page.more
    # 1 LIST of tasks/; 6 records (one more than the page, to know there is more) and,
    # since they are live, 6 lease GETs (404)
    assert store.counts.snapshot() == {"LIST": 1, "GET": 12}
    store.counts.reset()
    page = queue.ls_page(limit=10)
    assert len(page.views) == 10 and not page.more
    assert store.counts.snapshot() == {"LIST": 1, "GET": 20}
    rest = queue.ls_page(limit=5, after=page.views[4].record.id)
    assert [v.record.id for v in rest.views] == sorted(ids)[5:] and not rest.more


def test_ls_filters_across_rounds() -> None:
    """Candidates that do not match are skipped; the page still fills up in later rounds."""
    store = MemoryStore()
    queue = Queue(store)
    a = _submit(queue, 3)
    other = queue.submit_many([SubmitRequest(type="t", queue="other") for _ in range(5)])
    b = _submit(queue, 2)
    page = queue.ls_page(queue="default", limit=4)
    assert [v.record.id for v in page.views] == sorted(a + b)[:4] and page.more
    page = queue.ls_page(queue="other", limit=5)
    assert {v.record.id for v in page.views} == {h.id for h in other} and not page.more
    assert admin.ls(store, queue="default", limit=100) == queue.ls(queue="default", limit=100)
