"""``qo schedule``: the schedule commands end to end through typer's CliRunner.

Each test runs against a local directory store and a named memory store.
Slots are made due without sleeping: either the store's clock is a
``FakeClock`` moved by hand (``memory://`` URLs share one ``MemoryStore`` per
name in-process), or a schedule's ``next_slot`` is rewritten into the past.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from qo import scheduler
from qo.cli import common
from qo.models import dumps
from qo.queue import Queue
from qo.store.memory import MemoryStore

from .helpers import FakeClock, sigterm_when_ready
from .test_cli import ROOT, as_json, assert_one_line_error, ok, qo

pytestmark = pytest.mark.timeout(120)

START = datetime(2026, 6, 1, 12, 0, tzinfo=ZoneInfo("UTC")).timestamp()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # never the real default store
    for name in ("QO_QUEUE", "QO_DEBUG", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE",
                 "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=["file", "memory"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'queue'}"
    return f"memory://cli-schedule-{uuid.uuid4().hex[:12]}"


def clocked(start: float = START) -> tuple[str, MemoryStore, FakeClock]:
    """A ``memory://`` URL whose shared store runs on a clock the test moves."""
    name = f"cli-schedule-{uuid.uuid4().hex[:12]}"
    store = MemoryStore.named(name)
    clock = FakeClock(start)
    store.clock = clock
    return f"memory://{name}", store, clock


def stored_schedules(url: str) -> list[str]:
    return [o.key for o in Queue.from_url(url).store.list("schedules/")]


def task_ids(url: str) -> list[str]:
    return [o.key for o in Queue.from_url(url).store.list("tasks/")]


def sq(url: str, *args: str, input: str | None = None) -> Any:
    """``qo -q URL schedule ARGS``."""
    return qo("-q", url, "schedule", *args, input=input)


# -- round trip ---------------------------------------------------------------------


def test_add_list_show_pause_resume_trigger_remove(url: str, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    added = as_json(sq(url, "add", "tick", "--task", "add", "--every", "5m",
                       "--input", '{"x": 1, "y": 2}', "--json"))
    assert added["name"] == "tick" and added["task_type"] == "add" and added["every"] == 300
    assert added["input"] == {"x": 1, "y": 2} and added["cron"] is None
    assert added["next_slot"] % 300 == 0 and added["paused"] is False
    assert added["description"] == "every 5m"
    path = tmp_path / "in.json"
    path.write_text('{"x": 5, "y": 5}')
    line = ok(sq(url, "add", "paris", "--task", "add", "--cron", "0 9 * * 1-5",
                 "--tz", "Europe/Paris", "--input", f"@{path}")).stdout
    assert line.startswith("added schedule paris: cron 0 9 * * 1-5 (Europe/Paris), next run ")
    assert stored_schedules(url) == ["schedules/paris.json", "schedules/tick.json"]

    listing = as_json(sq(url, "list", "--json"))["schedules"]
    assert [s["name"] for s in listing] == ["paris", "tick"]
    assert listing[0]["input"] == {"x": 5, "y": 5} and listing[0]["tz"] == "Europe/Paris"
    assert all(s["last_status"] is None for s in listing)
    table = ok(sq(url, "list")).stdout
    assert "cron 0 9 * * 1-5 (Europe/Paris)" in table and "every 5m" in table
    assert "\x1b[" not in table

    shown = as_json(sq(url, "show", "tick", "--json"))
    ups = shown["upcoming"]
    assert len(ups) == 5 and ups[0] == added["next_slot"]
    assert [b - a for a, b in itertools.pairwise(ups)] == [300] * 4
    paris = as_json(sq(url, "show", "paris", "--json"))["upcoming"]
    for ts in paris:  # 09:00 on weekdays, Paris time, whatever the offset that day
        local = datetime.fromtimestamp(ts, ZoneInfo("Europe/Paris"))
        assert (local.hour, local.minute) == (9, 0) and local.weekday() < 5
    human = ok(sq(url, "show", "paris")).stdout
    assert "next 5 runs (Europe/Paris)" in human and "T09:00:00+0" in human
    assert "no runs yet" in human

    assert ok(sq(url, "pause", "tick")).stdout.strip() == "paused schedule tick"
    assert as_json(sq(url, "show", "tick", "--json"))["paused"] is True
    assert "yes" in ok(sq(url, "list")).stdout
    assert "resumed schedule tick" in ok(sq(url, "resume", "tick")).stdout
    assert as_json(sq(url, "resume", "tick", "--json"))["paused"] is False

    task_id = ok(sq(url, "trigger", "tick")).stdout.strip()
    task = as_json(qo("-q", url, "show", task_id, "--json"))
    assert task["type"] == "add" and task["input"] == {"x": 1, "y": 2}
    assert task["tags"] == {"schedule": "tick"} and task["status"] == "pending"
    shown = as_json(sq(url, "show", "tick", "--json"))
    assert [(h["task_id"], h["kind"], h["status"]) for h in shown["history"]] == [
        (task_id, "trigger", "pending")]
    assert task_id in ok(sq(url, "show", "tick")).stdout
    tick = next(s for s in as_json(sq(url, "list", "--json"))["schedules"] if s["name"] == "tick")
    assert tick["last_status"] == "pending"
    assert "pending" in ok(sq(url, "list")).stdout
    second = as_json(sq(url, "trigger", "tick", "--json"))
    assert second["id"] != task_id and second["schedule"] == "tick"

    assert_one_line_error(sq(url, "remove", "tick"), code=2, contains="--yes")
    monkeypatch.setattr(common, "is_interactive", lambda: True)
    refused = sq(url, "remove", "tick", input="n\n")
    assert refused.exit_code == 2 and "remove cancelled" in refused.stderr
    assert "schedules/tick.json" in stored_schedules(url)
    assert "removed schedule tick" in ok(sq(url, "remove", "tick", input="y\n")).stdout
    assert ok(sq(url, "remove", "paris", "--yes")).stdout.strip() == "removed schedule paris"
    assert stored_schedules(url) == []
    assert_one_line_error(sq(url, "show", "tick"), code=4, contains="no schedule named 'tick'")
    assert as_json(sq(url, "list", "--json")) == {"schedules": [], "invalid": []}
    assert "no schedules" in ok(sq(url, "list")).stderr
    assert as_json(qo("-q", url, "show", task_id, "--json"))["id"] == task_id  # tasks stay


def test_add_records_every_option(url: str) -> None:
    data = as_json(sq(
        url, "add", "report", "--task", "shout", "--input", '{"text": "hi"}',
        "--cron", "0 9 * * *", "--tz", "Europe/Paris", "--priority", "200",
        "--queue-name", "reports", "--max-attempts", "5", "--timeout", "90",
        "--catchup", "all", "--catchup-limit", "4", "--misfire-grace", "5m",
        "--start", "2031-01-01T00:00:00+01:00", "--end", "2031-02-01T00:00:00Z",
        "--jitter", "30s", "--json"))
    assert data["priority"] == 200 and data["queue"] == "reports" and data["max_attempts"] == 5
    assert data["timeout"] == 90 and data["catchup"] == "all" and data["catchup_limit"] == 4
    assert data["misfire_grace"] == 300 and data["jitter"] == 30
    start = datetime(2031, 1, 1, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    assert data["start_at"] == start
    assert data["end_at"] == datetime(2031, 2, 1, tzinfo=ZoneInfo("UTC")).timestamp()
    assert data["next_slot"] == start + 9 * 3600  # the first 09:00 in Paris after the start
    ups = as_json(sq(url, "show", "report", "--json"))["upcoming"]
    assert ups == [start + 9 * 3600 + d * 86_400 for d in range(5)]
    human = ok(sq(url, "show", "report")).stdout
    assert "2031-01-01T09:00:00+01:00" in human and "all (limit 4)" in human
    assert "reports" in human and "30s" in human


def test_add_twice_needs_replace_which_keeps_history(url: str) -> None:
    ok(sq(url, "add", "s", "--task", "add", "--every", "1m"))
    task_id = ok(sq(url, "trigger", "s")).stdout.strip()
    ok(sq(url, "pause", "s"))
    result = sq(url, "add", "s", "--task", "shout", "--every", "1h")
    assert_one_line_error(result, code=3, contains="exists")
    assert result.stdout == ""
    assert as_json(sq(url, "show", "s", "--json"))["task_type"] == "add"

    out = ok(sq(url, "add", "s", "--task", "shout", "--cron", "0 * * * *", "--replace")).stdout
    assert out.startswith("replaced schedule s: cron 0 * * * * (UTC)") and "(paused)" in out
    data = as_json(sq(url, "show", "s", "--json"))
    assert data["task_type"] == "shout" and data["cron"] == "0 * * * *" and data["every"] is None
    assert [h["task_id"] for h in data["history"]] == [task_id] and data["paused"] is True


# -- bad input ----------------------------------------------------------------------

ADD = ["add", "x", "--task", "add"]
BAD_INPUTS = [
    (ADD + ["--cron", "61 * * * *"], 2, "cron expression"),
    (ADD + ["--cron", "* * * *"], 2, "5 fields"),
    (ADD + ["--cron", "0 0 30 2 *"], 2, "never fire"),
    (ADD + ["--cron", "* * * * *", "--tz", "Nowhere/City"], 2, "unknown time zone"),
    (ADD + ["--cron", "* * * * *", "--tz", "../../etc/passwd"], 2, "unknown time zone"),
    (ADD + ["--every", "soon"], 2, "--every"),
    (ADD + ["--every", "0"], 2, "--every"),
    (ADD + ["--every", "0.5s"], 2, "--every"),
    (ADD + ["--every", "-5m"], 2, "--every"),
    (ADD + ["--every", "5m", "--cron", "* * * * *"], 2, "exactly one of --cron or --every"),
    (ADD, 2, "exactly one of --cron or --every"),
    (ADD + ["--every", "5m", "--tz", "Europe/Paris"], 2, "--tz"),
    (["add", "../x", "--task", "add", "--every", "5m"], 2, "schedule name"),
    (["add", "a/b", "--task", "add", "--every", "5m"], 2, "schedule name"),
    (["add", "a\x01b", "--task", "add", "--every", "5m"], 2, "schedule name"),
    (["add", "a\nb", "--task", "add", "--every", "5m"], 2, "schedule name"),
    (["add", "", "--task", "add", "--every", "5m"], 2, "schedule name"),
    (["add", "x", "--task", "../t", "--every", "5m"], 2, "task type"),
    (["add", "x", "--every", "5m"], 2, "--task"),
    (ADD + ["--every", "5m", "--queue-name", "a/b"], 2, "queue name"),
    (ADD + ["--every", "5m", "--input", "{bad json"], 2, "malformed JSON"),
    (ADD + ["--every", "5m", "--input", "@/nonexistent/in.json"], 2, "cannot read"),
    (ADD + ["--every", "5m", "--start", "2031-02-01T00:00:00Z", "--end", "2031-01-01T00:00:00Z"],
     2, "--end must be after --start"),
    (ADD + ["--every", "5m", "--start", "2031-01-01T00:00:00"], 2, "time zone"),
    (ADD + ["--every", "5m", "--end", "next week"], 2, "--end"),
    (ADD + ["--every", "5m", "--catchup", "some"], 2, "--catchup"),
    (ADD + ["--every", "5m", "--catchup-limit", "0"], 2, "--catchup-limit"),
    (ADD + ["--every", "5m", "--catchup-limit", "21"], 2, "--catchup-limit"),
    (ADD + ["--every", "5m", "--priority", "300"], 2, "--priority"),
    (ADD + ["--every", "5m", "--max-attempts", "0"], 2, "--max-attempts"),
    (ADD + ["--every", "5m", "--jitter", "2d"], 2, "jitter"),
    (ADD + ["--every", "5m", "--timeout", "8d"], 2, "timeout"),
    (ADD + ["--every", "5m", "--misfire-grace", "later"], 2, "--misfire-grace"),
    (["show", "nope"], 4, "no schedule named 'nope'"),
    (["show", "../x"], 2, "schedule name"),
    (["pause", "nope"], 4, "no schedule"),
    (["resume", "nope"], 4, "no schedule"),
    (["trigger", "nope"], 4, "no schedule"),
    (["trigger", "a/b"], 2, "schedule name"),
    (["remove", "nope", "--yes"], 4, "no schedule"),
    (["remove", "nope"], 4, "no schedule"),
    (["run", "--refresh", "0"], 2, "--refresh"),
    (["run", "--refresh", "soon"], 2, "--refresh"),
    (["run", "--log-format", "xml"], 2, "--log-format"),
    (["bogus"], 2, "bogus"),
]


@pytest.mark.parametrize("args,code,contains", BAD_INPUTS, ids=lambda v: repr(v)[:60])
def test_bad_input_is_one_line_error_and_stores_nothing(url: str, args: list[str], code: int,
                                                        contains: str) -> None:
    result = sq(url, *args)
    assert_one_line_error(result, code=code, contains=contains)
    assert result.stdout == ""
    assert stored_schedules(url) == []
    assert task_ids(url) == []


def test_bad_replace_keeps_the_schedule(url: str) -> None:
    ok(sq(url, "add", "s", "--task", "add", "--every", "5m"))
    before = Queue.from_url(url).store.get("schedules/s.json")
    assert before is not None
    assert_one_line_error(sq(url, "add", "s", "--task", "add", "--cron", "bad", "--replace"),
                          code=2, contains="cron")
    after = Queue.from_url(url).store.get("schedules/s.json")
    assert after is not None and after.etag == before.etag


def test_an_end_in_the_past_is_refused_like_a_cron_that_never_fires(url: str) -> None:
    result = sq(url, "add", "old", "--task", "add", "--every", "1h", "--end", "2001-01-01T00:00:00Z")
    assert_one_line_error(result, code=2, contains="would never fire: its end time is past")
    assert stored_schedules(url) == []


def test_an_empty_time_zone_is_refused_not_read_as_utc(url: str) -> None:
    result = sq(url, "add", "x", "--task", "add", "--cron", "* * * * *", "--tz", "")
    assert_one_line_error(result, code=2, contains="--tz is empty")
    assert stored_schedules(url) == []
    with pytest.raises(scheduler.InvalidSchedule, match="unknown time zone"):
        scheduler.add(Queue.from_url(url), "x", "add", cron="* * * * *", tz="")
    assert stored_schedules(url) == []


# -- the daemon ---------------------------------------------------------------------


def test_run_fires_a_due_slot_exactly_once() -> None:
    url, store, clock = clocked()
    queue = Queue(store)
    scheduler.add(queue, "tick", "add", every="5m", input={"x": 1, "y": 1})
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    ok(sq(url, "run", "--max-rounds", "1"))
    assert task_ids(url) == []  # a new schedule fires at its next slot, never at once

    clock.advance(300)
    result = ok(sq(url, "run", "--max-rounds", "1", "--log-format", "json"))
    assert result.stdout.strip() == "scheduler stopped after 1 round(s)"
    expected = scheduler.slot_task_id("tick", START + 300)
    assert task_ids(url) == [f"tasks/{expected}.json"]
    events = [orjson.loads(line) for line in result.stderr.splitlines()]
    fired = [e for e in events if e.get("event") == "schedule_fired"]
    assert [(e["schedule"], e["task_id"]) for e in fired] == [("tick", expected)]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before

    ok(sq(url, "run", "--max-rounds", "1"))  # a second daemon: nothing new
    ok(sq(url, "run", "--max-rounds", "3", "--refresh", "0.05"))
    assert task_ids(url) == [f"tasks/{expected}.json"]
    listing = as_json(sq(url, "list", "--json"))["schedules"]
    assert listing[0]["last_status"] == "pending" and listing[0]["next_slot"] == START + 600
    history = as_json(sq(url, "show", "tick", "--json"))["history"]
    assert [(h["task_id"], h["kind"], h["slot"]) for h in history] == [
        (expected, "slot", START + 300)]

    clock.advance(300)
    ok(sq(url, "run", "--max-rounds", "1"))
    assert len(task_ids(url)) == 2


def test_run_fires_a_slot_written_into_the_past(url: str) -> None:
    ok(sq(url, "add", "weekly", "--task", "add", "--every", "1w", "-i", '{"x": 2, "y": 2}'))
    queue = Queue.from_url(url)
    loaded = scheduler.load(queue, "weekly")
    slot = queue.store.now() - 10  # due, and within the misfire grace
    moved = loaded.value.model_copy(update={"next_slot": slot})
    queue.store.put("schedules/weekly.json", dumps(moved), if_match=loaded.etag)

    ok(sq(url, "run", "--max-rounds", "1"))
    expected = scheduler.slot_task_id("weekly", slot)
    assert task_ids(url) == [f"tasks/{expected}.json"]
    ok(sq(url, "run", "--max-rounds", "1"))
    assert task_ids(url) == [f"tasks/{expected}.json"]
    assert as_json(qo("-q", url, "show", expected, "--json"))["input"] == {"x": 2, "y": 2}
    data = as_json(sq(url, "show", "weekly", "--json"))
    assert data["next_slot"] > slot and data["history"][0]["status"] == "pending"


def test_run_skips_paused_schedules() -> None:
    url, store, clock = clocked()
    scheduler.add(Queue(store), "tick", "add", every="1m")
    ok(sq(url, "pause", "tick"))
    clock.advance(120)
    ok(sq(url, "run", "--max-rounds", "1"))
    assert task_ids(url) == []


@pytest.mark.slow  # a real process
def test_run_stops_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "QO_QUEUE": f"file://{tmp_path / 'q'}"}
    env.pop("QO_DEBUG", None)
    code, out, err = sigterm_when_ready(
        [sys.executable, "-m", "qo", "schedule", "run", "--refresh", "1"],
        env, "scheduler started", ROOT)
    assert code == 0, err
    assert out.startswith("scheduler stopped after") and "Traceback" not in err
    assert "scheduler stopped" in err
