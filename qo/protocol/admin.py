"""Inspecting and repairing tasks: show, ls, stats, cancel, retry, dead letters, pause.

Reads are cheap LISTs of the indexes plus a GET per task shown. Writes follow
the protocol: cancel is one CAS to a terminal state; everything that brings
a task back to life (retry) runs under the task's lease, like a worker would.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

from qo.errors import ErrorKind, PreconditionFailed, QoError, StoreError
from qo.hooks import NO_HOOKS, Hooks, Kind
from qo.models import TERMINAL, CorruptRecord, Lease, Status, TaskRecord
from qo.names import check_name, check_task_id
from qo.protocol import deps, index, keys, leases, records
from qo.protocol.cas import delete_quietly, put_if_absent
from qo.protocol.keys import parse_delayed_key, parse_ready_key
from qo.settings import Settings
from qo.store.base import Store


class TaskNotFound(QoError):
    kind = ErrorKind.NOT_FOUND


class InvalidTransition(QoError):
    kind = ErrorKind.CONFLICT


@dataclass
class TaskView:
    """A record plus what only the indexes know (is it running, and where)."""

    record: TaskRecord
    status: Status
    lease: Lease | None = None

    def as_dict(self) -> dict[str, Any]:
        data = self.record.model_dump(mode="json")
        data["status"] = self.status.value
        if self.lease is not None:
            data["lease"] = self.lease.model_dump(mode="json")
        return data


def show(store: Store, task_id: str) -> TaskView:
    check_task_id(task_id)
    current = records.read(store, task_id)
    if current is None:
        raise TaskNotFound(f"no task with id {task_id}")
    return _view(store, current.value)


def _view(store: Store, record: TaskRecord) -> TaskView:
    if record.terminal:
        return TaskView(record, record.status)
    held = None
    try:
        held = leases.read(store, keys.lease_key(record.queue, record.id))
    except CorruptRecord:
        pass
    if held is not None and held.value.kind == "run":
        return TaskView(record, Status.RUNNING, held.value)
    return TaskView(record, record.status)


def cancel(store: Store, task_id: str, reason: str = "cancelled by user",
           *, hooks: Hooks = NO_HOOKS) -> TaskView:
    """One CAS to ``cancelled`` (emits CANCELLED); a running handler learns it at its next
    heartbeat."""
    check_task_id(task_id)
    for _ in range(10):
        current = records.read(store, task_id)
        if current is None:
            raise TaskNotFound(f"no task with id {task_id}")
        record = current.value
        if record.terminal:
            raise InvalidTransition(f"task {task_id} is already {record.status}; nothing to cancel")
        now = store.now()
        new = record.model_copy(update={
            "status": Status.CANCELLED, "finished_at": now, "cancel_reason": reason})
        try:
            records.replace(store, new, current.etag)
        except PreconditionFailed:
            continue
        index.drop_markers(store, record)
        if new.has_dependents:  # their trigger rules decide now (a crash here: the audit)
            deps.on_terminal(store, new, now)
        hooks.emit(Kind.CANCELLED, task_id, queue=record.queue, task_type=record.type,
                   reason=reason)
        return TaskView(new, Status.CANCELLED)
    raise StoreError(f"task {task_id} kept changing; try again")


def retry(store: Store, settings: Settings, task_id: str) -> TaskView:
    """Run a dead, cancelled or waiting-to-retry task again now, with fresh attempts."""
    check_task_id(task_id)
    current = records.read(store, task_id)
    if current is None:
        raise TaskNotFound(f"no task with id {task_id}")
    record = current.value
    if record.status not in (Status.DEAD, Status.CANCELLED, Status.FAILED, Status.SCHEDULED,
                             Status.SKIPPED):
        raise InvalidTransition(
            f"task {task_id} is {_view(store, record).status}; only dead, cancelled, "
            "skipped, failed or scheduled tasks can be retried")
    now = store.now()
    held = leases.acquire(store, record.queue, task_id, owner="admin", kind="admin",
                          seconds=settings.repair_lease_seconds, now=now)
    if held is None:
        raise InvalidTransition(f"task {task_id} is running or being repaired; try later")
    try:
        current = records.read(store, task_id)  # the lease is ours: read the truth again
        if current is None:
            raise TaskNotFound(f"no task with id {task_id}")
        old = current.value
        upstream = old.error is not None and old.error.type in deps.UPSTREAM
        new = old.model_copy(update={
            "status": Status.BLOCKED if upstream else Status.PENDING, "available_at": now,
            "attempt": 0, "finished_at": None, "cancel_reason": None,
            **({"error": None} if upstream else {})})
        records.replace(store, new, current.etag)
        if old.has_dependents and old.terminal:  # still under the lease: nobody claims it yet
            deps.rearm(store, new, old.status, now)
        if upstream:  # ended by a dependency: its trigger rule decides again
            delete_quietly(store, keys.dead_key(old.queue, old.id))
            decided = deps.settle(store, task_id, now)
            return TaskView(decided or new, (decided or new).status)
        index.ensure_indexed(store, new, now)
        index.drop_markers(store, old)
        delete_quietly(store, keys.dead_key(old.queue, old.id))
        return TaskView(new, Status.PENDING)
    finally:
        held.release(store)


def purge_dead(store: Store, settings: Settings, queue: str | None = None) -> int:
    """Delete dead tasks for good (record, payloads, index); returns how many."""
    purged = 0
    for info in store.list(keys.DEAD + (f"{check_name(queue, 'queue name')}/" if queue else "")):
        task_id = info.key.rsplit("/", 1)[1]
        current = records.read(store, task_id)
        if current is not None and current.value.status == Status.DEAD:
            try:
                store.delete(keys.task_key(task_id), if_match=current.etag)
            except PreconditionFailed:
                continue  # retried meanwhile
            for payload in store.list(f"{keys.PAYLOADS}{task_id}/"):
                delete_quietly(store, payload.key)
            purged += 1
        delete_quietly(store, info.key, if_match=info.etag)
    return purged


def pause(store: Store, queue: str) -> None:
    put_if_absent(store, keys.paused_key(check_name(queue, "queue name")), b"")


def resume(store: Store, queue: str) -> None:
    delete_quietly(store, keys.paused_key(check_name(queue, "queue name")))


def paused_queues(store: Store) -> list[str]:
    return [i.key.split("/")[1] for i in store.list(keys.READY) if i.key.endswith(keys.PAUSED_MARK)]


def stats(store: Store) -> dict[str, dict[str, int]]:
    """Counts by queue and status from the indexes only: a few LISTs, no GETs.

    Finished tasks (succeeded, cancelled) have no index; ``ls`` finds them.
    """
    counts: dict[str, Counter[str]] = {}

    def bump(queue: str, status: str) -> None:
        counts.setdefault(queue, Counter())[status] += 1

    for info in store.list(keys.READY):
        m = parse_ready_key(info.key)
        if m is not None:
            bump(m.queue, "pending")
        elif info.key.endswith(keys.PAUSED_MARK):
            counts.setdefault(info.key.split("/")[1], Counter())
    for info in store.list(keys.DELAYED):
        m = parse_delayed_key(info.key)
        if m is not None:
            bump(m.queue, "scheduled")
    for info in store.list(keys.LEASES):
        bump(info.key.split("/")[1], "running")
    for info in store.list(keys.DEAD):
        bump(info.key.split("/")[1], "dead")
    return {q: dict(c) for q, c in sorted(counts.items())}


#: Statuses ``ls`` lists from the ``tasks/`` prefix, where ``after`` pages by task id.
PAGED_BY_ID = (None, Status.SUCCEEDED, Status.CANCELLED)

#: Records ``ls`` reads at once (bounded threads, as ``submit_many`` writes).
LS_THREADS = 32
#: At most this many candidates per round of reads (a LIST page).
LS_ROUND = 1000


@dataclass
class Page:
    """One page of ``ls``: the views, and whether another matching task follows."""

    views: list[TaskView]
    more: bool


def ls(
    store: Store,
    *,
    status: Status | None = None,
    queue: str | None = None,
    limit: int = 20,
    after: str | None = None,
) -> list[TaskView]:
    """Tasks newest first (by id), filtered; indexes serve the live statuses."""
    return ls_page(store, status=status, queue=queue, limit=limit, after=after).views


def ls_page(
    store: Store,
    *,
    status: Status | None = None,
    queue: str | None = None,
    limit: int = 20,
    after: str | None = None,
) -> Page:
    """Up to ``limit`` tasks, and whether there are more.

    Cost: the LISTs of one index (or of ``tasks/``), then 1 GET per candidate
    record (plus 1 GET of the lease for a live one), ``LS_THREADS`` at a time,
    in rounds of as many candidates as matches are still missing (at most
    ``LS_ROUND``). One match more than ``limit`` is read, to know whether
    another page exists.
    """
    if queue is not None:
        check_name(queue, "queue name")
    if after is not None:
        check_task_id(after)
    candidates = _unique(_candidate_ids(store, status, queue, after))
    views: list[TaskView] = []
    with ThreadPoolExecutor(LS_THREADS) as pool:
        while len(views) <= limit:
            batch = list(islice(candidates, min(limit + 1 - len(views), LS_ROUND)))
            if not batch:
                break
            for view in pool.map(lambda task_id: _read_view(store, task_id), batch):
                if view is None:
                    continue
                if queue is not None and view.record.queue != queue:
                    continue
                if status is not None and view.status != status:
                    continue
                views.append(view)
    return Page(views[:limit], more=len(views) > limit)


def _read_view(store: Store, task_id: str) -> TaskView | None:
    try:
        current = records.read(store, task_id)
    except CorruptRecord:
        return None
    return None if current is None else _view(store, current.value)


def _unique(ids: Iterator[str]) -> Iterator[str]:
    seen: set[str] = set()
    for task_id in ids:
        if task_id not in seen:
            seen.add(task_id)
            yield task_id


def _candidate_ids(
    store: Store, status: Status | None, queue: str | None, after: str | None
) -> Iterator[str]:
    qpart = f"{queue}/" if queue else ""
    if status == Status.PENDING:
        for info in store.list(keys.READY + qpart):
            m = parse_ready_key(info.key)
            if m is not None:
                yield m.task_id
    elif status in (Status.SCHEDULED, Status.FAILED):
        for info in store.list(keys.DELAYED):
            m = parse_delayed_key(info.key)
            if m is not None and (queue is None or m.queue == queue):
                yield m.task_id
    elif status == Status.RUNNING:
        for info in store.list(keys.LEASES + qpart):
            yield info.key.rsplit("/", 1)[1]
    elif status == Status.DEAD:
        for info in store.list(keys.DEAD + qpart):
            yield info.key.rsplit("/", 1)[1]
    else:
        start = keys.task_key(after) if after else None
        for info in store.list(keys.TASKS, start_after=start):
            task_id = keys.task_id_from_key(info.key)
            if task_id is not None:
                yield task_id


__all__ = ["TERMINAL", "Page", "TaskNotFound", "TaskView", "cancel", "ls", "ls_page", "retry", "show",
           "stats"]
