"""Every backend says when a 412 answered a request sent once (no read-back needed)."""

from __future__ import annotations

import pytest

from qo.errors import PreconditionFailed
from qo.protocol import cas
from qo.store.base import Store
from qo.store.faulty import FaultyStore
from qo.store.memory import MemoryStore


def test_a_lost_create_only_put_sent_once_says_so(store: Store) -> None:
    store.put("k", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed) as lost:
        store.put("k", b"second", if_none_match=True)
    assert lost.value.sent_once
    etag = store.put("k", b"third", if_match=store.get("k").etag)  # type: ignore[union-attr]
    with pytest.raises(PreconditionFailed) as stale:
        store.put("k", b"fourth", if_match="\"not-the-etag\"")
    assert stale.value.sent_once and etag


def test_put_checked_reads_back_only_when_the_412_may_be_ours() -> None:
    store = MemoryStore()
    store.put("k", b"theirs")
    store.counts.reset()
    assert not cas.put_if_absent(store, "k", b"mine")  # sent once: cannot be ours
    assert store.counts.snapshot() == {"PUT": 1, "PUT_412": 1}

    faulty = FaultyStore(store)
    faulty.inject("put", "after", key_prefix="j")  # lands, then the answer is lost
    store.counts.reset()
    assert cas.put_checked(faulty, "j", b"mine", if_none_match=True)  # our own write
    assert store.counts.snapshot() == {"PUT": 2, "PUT_412": 1, "GET": 1}
