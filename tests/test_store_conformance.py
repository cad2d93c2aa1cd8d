"""One behaviour suite for the Store contract, run unchanged on every backend."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from qo.errors import InvalidName, PreconditionFailed
from qo.store.base import Store


def keys(store: Store, prefix: str, **kw) -> list[str]:
    return [o.key for o in store.list(prefix, **kw)]


def test_get_and_head_of_missing_key_return_none(store: Store) -> None:
    assert store.get("nope/x") is None
    assert store.head("nope/x") is None


def test_put_then_get_round_trips_binary_and_empty_bodies(store: Store) -> None:
    binary = bytes(range(256)) * 3
    e1 = store.put("bin/a", binary)
    e2 = store.put("bin/empty", b"")
    got = store.get("bin/a")
    assert got is not None and got.body == binary and got.etag == e1
    empty = store.get("bin/empty")
    assert empty is not None and empty.body == b"" and empty.etag == e2
    info = store.head("bin/a")
    assert info is not None and info.etag == e1 and info.size == len(binary)
    assert abs(info.last_modified - store.now()) < 120


def test_create_only_put_refuses_an_existing_key(store: Store) -> None:
    etag = store.put("k", b"one", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"two", if_none_match=True)
    got = store.get("k")
    assert got is not None and got.body == b"one" and got.etag == etag


def test_update_cas_needs_the_current_etag(store: Store) -> None:
    e1 = store.put("k", b"1")
    e2 = store.put("k", b"2", if_match=e1)
    assert e2 != e1
    with pytest.raises(PreconditionFailed):
        store.put("k", b"3", if_match=e1)  # stale etag
    got = store.get("k")
    assert got is not None and got.body == b"2"
    with pytest.raises(PreconditionFailed):
        store.put("missing", b"x", if_match=e2)
    assert store.get("missing") is None


def test_etag_changes_on_every_write(store: Store) -> None:
    seen = set()
    etag = store.put("e", b"0")
    seen.add(etag)
    for i in range(1, 6):
        etag = store.put("e", str(i).encode(), if_match=etag)
        seen.add(etag)
    assert len(seen) == 6


def test_conditional_delete(store: Store) -> None:
    e1 = store.put("d", b"1")
    e2 = store.put("d", b"2", if_match=e1)
    with pytest.raises(PreconditionFailed):
        store.delete("d", if_match=e1)
    assert store.get("d") is not None
    store.delete("d", if_match=e2)
    assert store.get("d") is None
    store.delete("d", if_match=e2)  # missing: no-op
    store.delete("d")  # unconditional on missing: no-op


def test_listing_is_in_byte_order_with_prefix_isolation(store: Store) -> None:
    names = ["a", "a/b", "a-c", "a/b/c", "a/ü", "a/Z", "a/0", "ab", "b/1", "a/b~", "a/b%"]
    for name in names:
        store.put(name, name.encode())
    assert keys(store, "") == sorted(names, key=lambda k: k.encode())
    assert keys(store, "a/") == sorted((n for n in names if n.startswith("a/")),
                                       key=lambda k: k.encode())
    assert keys(store, "a/b") == ["a/b", "a/b%", "a/b/c", "a/b~"]
    assert keys(store, "zz") == []
    infos = list(store.list("b/"))
    assert [(i.key, i.size) for i in infos] == [("b/1", 3)]
    assert infos[0].etag == store.head("b/1").etag  # type: ignore[union-attr]


@pytest.mark.slow
def test_start_after_limit_and_pagination_over_1000_keys(store: Store) -> None:
    all_keys = [f"p/{i:05d}" for i in range(1105)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, b""), all_keys))
    store.put("p0", b"")  # outside the prefix, sorts right after it
    assert keys(store, "p/") == all_keys
    assert keys(store, "p/", start_after="p/00999") == all_keys[1000:]
    assert keys(store, "p/", start_after="p/00010", limit=5) == all_keys[11:16]
    assert keys(store, "p/", limit=1003) == all_keys[:1003]
    assert keys(store, "p/", start_after="p/", page_size=300, limit=650) == all_keys[:650]
    assert keys(store, "p/", start_after="q") == []


def test_invalid_keys_are_refused_everywhere(store: Store) -> None:
    for bad in ["", "/abs", "a//b", "a/../b", "..", "a/./b", "tab\there", "nl\n", "a/"]:
        with pytest.raises(InvalidName):
            store.put(bad, b"x")
        with pytest.raises(InvalidName):
            store.get(bad)
    assert keys(store, "") == []


@pytest.mark.slow
def test_16_threads_read_modify_write_end_with_the_exact_count(store: Store) -> None:
    store.put("counter", b"0")
    per_thread = 5
    start = threading.Barrier(16)
    deadline = time.monotonic() + 120

    def worker() -> int:
        start.wait(timeout=30)
        conflicts = 0
        done = 0
        while done < per_thread:
            assert time.monotonic() < deadline, "race test did not converge"
            obj = store.get("counter")
            assert obj is not None
            try:
                store.put("counter", str(int(obj.body) + 1).encode(), if_match=obj.etag)
                done += 1
            except PreconditionFailed:
                conflicts += 1
        return conflicts

    with ThreadPoolExecutor(16) as pool:
        conflicts = sum(pool.map(lambda _: worker(), range(16)))
    final = store.get("counter")
    assert final is not None and int(final.body) == 16 * per_thread
    assert conflicts >= 0


def test_16_racers_on_a_create_only_put_produce_one_winner(store: Store) -> None:
    for round_ in range(3):
        start = threading.Barrier(16)
        key = f"race/{round_}"

        def racer(i: int, start: threading.Barrier = start, key: str = key) -> bool:
            start.wait(timeout=30)
            try:
                store.put(key, str(i).encode(), if_none_match=True)
                return True
            except PreconditionFailed:
                return False

        with ThreadPoolExecutor(16) as pool:
            wins = [i for i, won in enumerate(pool.map(racer, range(16))) if won]
        assert len(wins) == 1
        got = store.get(key)
        assert got is not None and got.body == str(wins[0]).encode()
