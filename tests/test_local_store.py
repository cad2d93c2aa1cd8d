"""What is specific to LocalStore: paths, on-disk layout, cross-process CAS.

The cross-backend conformance suite covers the generic Store semantics.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import threading
from multiprocessing.queues import Queue
from pathlib import Path

import pytest

from qo.errors import ConfigError, InvalidName, PreconditionFailed
from qo.store.local import LocalStore
from qo.store.memory import MemoryStore
from qo.store.url import open_store

TIMEOUT = 60  # seconds; bounds every cross-process wait

TRICKY_KEYS = [
    "100%/done",
    "%2E%2E/x",
    "~/home~",
    "a~/b+",
    "a..b/c..",
    "..a/.b/c.",
    ".qo-locks/00",
    ".qo-tmp-x",
    "tâche/ü",
    "名前/キー",
    "sp ace/q?u#e&r=y",
    "back\\slash/x",
    "emoji/\U0001f600",
    "x" * 1024,  # one segment far longer than NAME_MAX
    "é" * 500 + "/" + "." * 20,  # 1021 bytes, escapes spread over several names
    "/".join(["seg"] * 256),  # 1023 bytes, deep
    "." + "." * 300,  # over-long, every chunk would start with "."
]


def all_paths(top: Path) -> list[Path]:
    return [Path(d) / n for d, dirs, files in os.walk(top) for n in dirs + files]


def test_tricky_keys_round_trip_inside_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = LocalStore(root)
    bodies = {key: f"body of {key}".encode() for key in TRICKY_KEYS}
    for key, body in bodies.items():
        store.put(key, body)
    for key, body in bodies.items():
        obj = store.get(key)
        assert obj is not None and obj.body == body, key
    assert [i.key for i in store.list("")] == sorted(bodies)
    for key in bodies:  # prefixes that end inside, or right after, a chunked segment
        assert next(store.list(key)).key == key
        assert next(store.list(key[: len(key) // 2])).key <= key
    assert [i.key for i in store.list("x" * 500)] == ["x" * 1024]
    assert [i.key for i in store.list("é" * 500 + "/")] == ["é" * 500 + "/" + "." * 20]
    # Nothing outside the root; no component longer than NAME_MAX; no symlinks.
    assert os.listdir(tmp_path) == ["root"]
    for path in all_paths(root):
        assert path.resolve().is_relative_to(root.resolve())
        assert len(os.fsencode(path.name)) <= 255
        assert not path.is_symlink()
    # Encoded names never start with "." (reserved for locks and temp files).
    names = [p.name for p in all_paths(root) if ".qo-locks" not in p.parts]
    assert names and not any(name.startswith(".") for name in names)


@pytest.mark.parametrize("key", ["../x", "a/../b", "/abs", "a//b", "./a", "a/\x00", "é" * 513])
def test_unsafe_keys_are_refused_and_write_nothing(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "root")
    with pytest.raises(InvalidName):
        store.put(key, b"x")
    with pytest.raises(InvalidName):
        store.get(key)
    assert [p.name for p in all_paths(tmp_path)] == ["root", ".qo-locks"]


def test_objects_and_directories_coexist(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    keys = ["a/b/c", "a", "a-c", "a/b", "a~", "a/b~"]
    for key in keys:
        store.put(key, key.encode())
    assert [i.key for i in store.list("")] == sorted(keys)
    assert [i.key for i in store.list("a/")] == ["a/b", "a/b/c", "a/b~"]
    assert [i.key for i in store.list("a/b")] == ["a/b", "a/b/c", "a/b~"]
    store.delete("a/b")
    store.delete("a")
    assert store.get("a/b/c").body == b"a/b/c"  # type: ignore[union-attr]
    assert [i.key for i in store.list("a")] == ["a-c", "a/b/c", "a/b~", "a~"]
    store.delete("a/b/c")
    assert [i.key for i in store.list("a/")] == ["a/b~"]  # empty directories are skipped
    store.put("a/b", b"again")  # ...and reused
    assert store.get("a/b").body == b"again"  # type: ignore[union-attr]


def random_keys(rng: random.Random, n: int) -> list[str]:
    alphabet = ["a", "b", "B", "-", ".", "~", "%", "+", " ", "é", "/", "z", "0", "\uffff"]
    keys: set[str] = set()
    while len(keys) < n:
        key = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7)))
        if all(s not in ("", ".", "..") for s in key.split("/")):
            keys.add(key)
    return sorted(keys)


def test_listing_matches_memory_store(tmp_path: Path) -> None:
    """MemoryStore is the reference: same keys, prefixes, start_after and limits."""
    rng = random.Random(7)
    local, memory = LocalStore(tmp_path), MemoryStore()
    keys = random_keys(rng, 400)
    for key in keys:
        local.put(key, key.encode())
        memory.put(key, key.encode())
    prefixes = ["", "a", "a/", "a/b", "é", "~", "%", "a.", "b-", "z/"] + rng.sample(keys, 20)
    prefixes += [k + "/" for k in rng.sample(keys, 10)]
    afters = [None, "", "a", "a/", "b~", "zzzz"] + rng.sample(keys, 10)
    for prefix in prefixes:
        for after in afters:
            for limit in (None, 0, 1, 5):
                got = [i.key for i in local.list(prefix, start_after=after, limit=limit)]
                want = [i.key for i in memory.list(prefix, start_after=after, limit=limit)]
                assert got == want, (prefix, after, limit)


def test_pagination_over_many_keys(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    keys = sorted(f"ready/q/{i:05d}" for i in range(1500))
    for key in keys:
        store.put(key, b"")
    store.put("ready/qq", b"")
    store.put("ready/q", b"")
    assert [i.key for i in store.list("ready/q/")] == keys
    assert [i.key for i in store.list("ready/q/", page_size=7)] == keys
    assert [i.key for i in store.list("ready/q/", start_after=keys[999], limit=1000)] == keys[1000:]
    # Resuming page by page, as a caller would with start_after.
    seen: list[str] = []
    while True:
        page = store.list("ready/q/", start_after=seen[-1] if seen else None, limit=400)
        if not (keys_in_page := [i.key for i in page]):
            break
        seen += keys_in_page
    assert seen == keys


def test_info_fields_and_etags(tmp_path: Path) -> None:
    now = [1000.5]
    store = LocalStore(tmp_path, clock=lambda: now[0])
    body = b'qo1 "fake" 1\n\x00\xff\n'  # looks like a header: must not confuse the reader
    e1 = store.put("k", body)
    now[0] = 2000.25
    e2 = store.put("k", body)
    assert e1 != e2 and e1.startswith('"') and e1.endswith('"')
    obj = store.get("k")
    assert obj is not None and (obj.body, obj.etag, obj.last_modified) == (body, e2, 2000.25)
    assert store.head("k") == obj.info == next(store.list("k"))
    assert obj.info.size == len(body)
    store.put("empty", b"")
    assert store.get("empty").body == b""  # type: ignore[union-attr]
    assert store.head("empty").size == 0  # type: ignore[union-attr]
    assert store.now() == 2000.25


def test_reopen_reads_writes_and_etags(tmp_path: Path) -> None:
    first = LocalStore(tmp_path)
    etag = first.put("jobs/tâche", b"v1")
    second = open_store(f"file://{tmp_path}")
    assert isinstance(second, LocalStore) and second.url == f"file://{tmp_path}"
    obj = second.get("jobs/tâche")
    assert obj is not None and (obj.body, obj.etag) == (b"v1", etag)
    new = second.put("jobs/tâche", b"v2", if_match=etag)
    with pytest.raises(PreconditionFailed):
        first.put("jobs/tâche", b"v3", if_match=etag)
    with pytest.raises(PreconditionFailed):
        first.delete("jobs/tâche", if_match=etag)
    first.delete("jobs/tâche", if_match=new)
    assert second.get("jobs/tâche") is None


def test_foreign_and_temp_files_are_ignored(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("q/a", b"1")
    (tmp_path / "q~" / ".qo-tmp-leftover").write_bytes(b"half a write")
    (tmp_path / "q~" / "not%encoded%zz").write_bytes(b"?")
    (tmp_path / "q~" / "b%7e").write_bytes(b"lowercase escape is not canonical")
    (tmp_path / "q~" / "%FF").write_bytes(b"not UTF-8")
    (tmp_path / "q~" / "dir-without-suffix").mkdir()
    os.symlink(tmp_path / "q~" / "a", tmp_path / "q~" / "link")
    assert [i.key for i in store.list("")] == ["q/a"]


def test_bad_roots_are_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        LocalStore(tmp_path / "file")
    with pytest.raises(ConfigError):
        LocalStore(tmp_path / "file" / "sub")
    store = LocalStore(tmp_path / "new" / "deep")  # parents are created
    assert store.url == f"file://{tmp_path}/new/deep"
    monkeypatch.chdir(tmp_path)
    assert LocalStore(Path("rel").joinpath("..", "x")).url == f"file://{tmp_path}/x"


def test_read_only_root_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod cannot stop root (CI runs as root), so simulate what the OS would answer
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path
                        else real_access(p, mode, **kw))
    with pytest.raises(ConfigError, match="not writable"):
        LocalStore(tmp_path)


def test_threads_increment_exactly(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("n", b"0")
    threads = [threading.Thread(target=increment, args=(store, "n", 25, None)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert store.get("n").body == b"200"  # type: ignore[union-attr]


# -- cross-process races (spawned workers must be module-level) -------------


def increment(store: LocalStore, key: str, n: int, barrier: threading.Barrier | None) -> None:
    if barrier is not None:
        barrier.wait(TIMEOUT)
    done = 0
    while done < n:
        obj = store.get(key)
        assert obj is not None
        try:
            store.put(key, str(int(obj.body) + 1).encode(), if_match=obj.etag)
        except PreconditionFailed:
            continue
        done += 1


def increment_worker(root: str, n: int, barrier: threading.Barrier) -> None:
    increment(LocalStore(root), "counter", n, barrier)


def create_worker(root: str, me: int, barrier: threading.Barrier, results: Queue) -> None:
    store = LocalStore(root)
    barrier.wait(TIMEOUT)
    try:
        results.put((me, store.put("lock", str(me).encode(), if_none_match=True)))
    except PreconditionFailed:
        results.put((me, None))


def run_all(procs: list[multiprocessing.process.BaseProcess]) -> None:
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(TIMEOUT)
        assert [p.exitcode for p in procs] == [0] * len(procs)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()


@pytest.mark.slow
def test_processes_increment_exactly(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    LocalStore(tmp_path).put("counter", b"0")
    nprocs, n = 8, 30
    barrier = ctx.Barrier(nprocs)
    args = (str(tmp_path), n, barrier)
    run_all([ctx.Process(target=increment_worker, args=args) for _ in range(nprocs)])
    obj = LocalStore(tmp_path).get("counter")
    assert obj is not None and obj.body == str(nprocs * n).encode()


@pytest.mark.slow
def test_processes_race_create_only_one_wins(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    nprocs = 16
    barrier, results = ctx.Barrier(nprocs), ctx.Queue()
    procs = [
        ctx.Process(target=create_worker, args=(str(tmp_path), i, barrier, results))
        for i in range(nprocs)
    ]
    run_all(procs)
    outcomes = dict(results.get(timeout=TIMEOUT) for _ in range(nprocs))
    winners = {me: etag for me, etag in outcomes.items() if etag is not None}
    assert len(outcomes) == nprocs and len(winners) == 1
    ((me, etag),) = winners.items()
    obj = LocalStore(tmp_path).get("lock")
    assert obj is not None and (obj.body, obj.etag) == (str(me).encode(), etag)
