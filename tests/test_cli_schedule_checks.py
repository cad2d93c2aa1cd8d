"""``qo schedule``: definitions checked like a submit, large inputs, honest
messages, a listing that survives a bad object, readable daemon logs, and a
daemon stop that is safe in a signal handler.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import orjson
import pytest

from qo import scheduler
from qo.models import dumps
from qo.queue import Queue

from .test_cli import as_json, assert_one_line_error, ok, qo
from .test_cli_schedule import _clean_env, clocked, sq, stored_schedules, task_ids, url

__all__ = ["_clean_env", "url"]  # fixtures shared with test_cli_schedule

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
#: Where the daemon's sleeping and stopping happen (and where any lock would be).
WATCHED = ("schedule_daemon.py", "threading.py", "socket.py", "selectors.py")


def test_an_input_over_the_submit_limit_is_refused_and_nothing_stored(
        url: str, tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(orjson.dumps({"blob": "x" * (20 * MiB)}))
    result = sq(url, "add", "big", "--task", "add", "--every", "1m", "--input", f"@{big}")
    assert_one_line_error(result, code=2, contains="over the limit")
    assert stored_schedules(url) == []
    assert list(Queue.from_url(url).store.list("")) == []


def test_a_large_input_is_stored_apart_and_reaches_every_slot_task(tmp_path: Path) -> None:
    url, store, clock = clocked()
    value = {"blob": "y" * (300 * 1024)}  # over the 256 KiB inline limit
    path = tmp_path / "in.json"
    path.write_bytes(orjson.dumps(value))
    ok(sq(url, "add", "big", "--task", "add", "--every", "1m", "--input", f"@{path}"))
    body = store.get("schedules/big.json")
    assert body is not None and len(body.body) < 4096  # the schedule object stays small
    refs = [o.key for o in store.list("schedule-inputs/")]
    assert len(refs) == 1 and refs[0].startswith("schedule-inputs/big/")
    assert "stored in schedule-inputs/big/" in ok(sq(url, "show", "big")).stdout

    clock.advance(60)
    ok(sq(url, "run", "--max-rounds", "1"))
    (task,) = task_ids(url)
    assert as_json(qo("-q", url, "show", task[6:-5], "--json"))["input"] == value

    ok(sq(url, "add", "big", "--task", "add", "--every", "1m", "-i", '{"small": 1}', "--replace"))
    assert list(store.list("schedule-inputs/")) == []  # the replaced input is deleted
    ok(sq(url, "add", "big", "--task", "add", "--every", "1m", "--input", f"@{path}", "--replace"))
    assert len(list(store.list("schedule-inputs/"))) == 1
    ok(sq(url, "remove", "big", "--yes"))
    assert list(store.list("schedule-inputs/")) == []


def test_a_sweep_reports_a_slot_it_could_not_fire(url: str) -> None:
    ok(sq(url, "add", "s", "--task", "add", "--every", "1m"))
    queue = Queue.from_url(url)
    loaded = scheduler.load(queue, "s")
    # as an older qo stored it: an input no submit accepts, and a slot due now
    broken = loaded.value.model_copy(update={
        "input": "z" * (17 * MiB), "next_slot": queue.store.now() - 1})
    queue.store.put("schedules/s.json", dumps(broken), if_match=loaded.etag)
    report = as_json(qo("-q", url, "sweep", "--json"))
    assert len(report["errors"]) == 1 and "schedule s" in report["errors"][0]
    assert "over the limit" in report["errors"][0]
    assert task_ids(url) == []
    after = scheduler.load(queue, "s").value
    assert after.history == [] and after.next_slot == broken.next_slot  # nothing was decided
    human = ok(qo("-q", url, "sweep"))
    assert "schedule s" in human.stderr


def test_replace_of_a_missing_schedule_says_added(url: str) -> None:
    out = ok(sq(url, "add", "new", "--task", "add", "--every", "1m", "--replace")).stdout
    assert out.startswith("added schedule new")
    again = ok(sq(url, "add", "new", "--task", "add", "--every", "2m", "--replace")).stdout
    assert again.startswith("replaced schedule new")
    data = as_json(sq(url, "add", "other", "--task", "add", "--every", "1m", "--replace", "--json"))
    assert data["replaced"] is False


def test_one_invalid_schedule_object_does_not_hide_the_others(url: str) -> None:
    ok(sq(url, "add", "good", "--task", "add", "--every", "1m"))
    ok(sq(url, "add", "cronbad", "--task", "add", "--every", "1m"))
    store = Queue.from_url(url).store
    store.put("schedules/broken.json", b"{not json")
    loaded = scheduler.load(Queue.from_url(url), "cronbad")
    bad_cron = loaded.value.model_copy(update={"cron": "99 * * * *", "every": None})
    store.put("schedules/cronbad.json", dumps(bad_cron), if_match=loaded.etag)

    data = as_json(sq(url, "list", "--json"))
    assert [s["name"] for s in data["schedules"]] == ["good"]
    assert sorted(b["name"] for b in data["invalid"]) == ["broken", "cronbad"]
    assert all(b["error"] for b in data["invalid"])
    human = ok(sq(url, "list"))
    assert "good" in human.stdout and "invalid" in human.stdout and "broken" in human.stdout
    assert human.stderr.count("warning: schedule") == 2
    ok(sq(url, "remove", "broken", "--yes"))  # an unreadable object can be removed...
    ok(sq(url, "add", "cronbad", "--task", "add", "--every", "5m", "--replace"))  # ...or replaced
    assert as_json(sq(url, "list", "--json"))["invalid"] == []


def test_the_daemon_logs_slots_as_iso_times_in_the_schedules_zone() -> None:
    url, store, clock = clocked()
    scheduler.add(Queue(store), "paris", "add", cron="5 14 * * *", tz="Europe/Paris")
    clock.advance(300)  # START is 12:00 UTC, 14:00 in Paris
    text = ok(sq(url, "run", "--max-rounds", "1")).stderr
    assert "fired slot 2026-06-01T14:05:00+02:00 as task" in text
    clock.advance(86_400)
    events = [orjson.loads(line) for line in
              ok(sq(url, "run", "--max-rounds", "1", "--log-format", "json")).stderr.splitlines()]
    fired = [e for e in events if e.get("event") == "schedule_fired"]
    assert [e["slot"] for e in fired] == ["2026-06-02T14:05:00+02:00"]


def test_stop_is_safe_wherever_a_signal_interrupts_the_daemon() -> None:
    """A signal handler runs between any two lines of the main thread. Calling
    ``stop()`` there must not wait for a lock that thread holds (the old
    ``threading.Event.set()`` did: the daemon hung forever when SIGTERM came
    while ``Event.wait`` held its condition's lock). Here ``stop()`` is called
    at the n-th line event of ``run()``, for every n, like a signal would."""
    from qo.store.memory import MemoryStore

    queue = Queue(MemoryStore())
    scheduler.add(queue, "s", "t", every="1s")
    lines_seen = []
    n = 0
    while True:
        n += 1
        daemon = scheduler.SchedulerDaemon(queue, refresh=0.001)
        state = {"count": 0, "fired": False}

        def tracer(frame, event, arg, daemon=daemon, state=state, n=n):
            if (event == "line" and not state["fired"]
                    and frame.f_code.co_filename.endswith(WATCHED)):
                state["count"] += 1
                if state["count"] == n:
                    state["fired"] = True
                    daemon.stop(15)
            return tracer

        def go(daemon=daemon, tracer=tracer):
            sys.settrace(tracer)
            try:
                daemon.run(max_rounds=2)
            finally:
                sys.settrace(None)

        thread = threading.Thread(target=go, daemon=True)
        thread.start()
        thread.join(60)
        assert not thread.is_alive(), f"run() hung after stop() at line event {n}"
        if not state["fired"]:  # n passed the last line of a full run: all were covered
            break
        lines_seen.append(n)
        assert n < 5_000
    assert len(lines_seen) > 10
