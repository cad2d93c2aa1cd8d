"""Task dependencies: a task waits, ``blocked``, until its trigger rule is decided.

See docs/protocol.md section 10. No object is shared by many tasks: every edge
is its own small object, and the one CAS point of a transition is the
dependent's own record.

* ``deps/out/{parent}/{child}/{n}``: the edge, created by the child's submit
  before its record (``n``: how many dependencies the child has).
* ``deps/done/{child}/{parent}/{status}``: the parent has ended so; created
  (create-only, idempotent) by the parent's outcome follow-up, or by the child
  when it finds the parent already ended.
* ``TaskRecord.has_dependents``: set once on a parent (a CAS, by its first
  dependent's submit, while the parent is not terminal): only then does the
  parent's end cost anything (a task with no dependents pays nothing).

**Linearization point** of a dependent's release: the CAS of its record from
``blocked`` to ``pending``/``scheduled`` (run), ``dead`` (``UpstreamFailed``)
or ``skipped``. Any number of evaluators may race; one CAS wins and the others
read a record that is no longer blocked and stop.

Request cost per edge (section 10 has the table): child's submit 1 PUT (edge)
+ 2 GET (validation, re-check) + 1 PUT (the flag, only for a parent's first
dependent); parent's end 1 PUT (done marker) + 1 LIST per 1,000 dependents,
+ 1 LIST of the child's done markers when it has several dependencies; the
evaluator that sees the last one: 1 GET + 1 PUT (CAS) + 1 PUT (marker).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from qo.errors import DependencyError, PreconditionFailed, StoreError
from qo.models import TERMINAL, WAITING, CorruptRecord, ErrorInfo, Status, TaskRecord
from qo.names import check_task_id
from qo.protocol import index, keys, records
from qo.protocol.cas import delete_quietly, put_if_absent
from qo.protocol.triggers import (
    FAILED_STATUSES,
    MISSING,
    NODE_TAG,
    RUN,
    UPSTREAM,
    UPSTREAM_FAILED,
    UPSTREAM_SKIPPED,
    DependencyOutcome,
    Verdict,
    decide,
)
from qo.protocol.versioned import Versioned
from qo.store.base import Store

log = logging.getLogger("qo.protocol.deps")

#: How far ahead of this reader's clock a released task may be due and still count as
#: due now (claimers accept as much: ``qo.protocol.claim.CLOCK_TOLERANCE``).
CLOCK_TOLERANCE = 1.0


def _index(store: Store, record: TaskRecord, now: float) -> None:
    """The marker a decided record needs: a ``pending`` one is due now (its ready key)."""
    index.ensure_indexed(store, record, max(now, record.available_at)
                         if record.status == Status.PENDING else now)


#: Parallel requests of one fan-out (like ``submit_all``'s batches).
THREADS = 32
#: CAS attempts on one record before giving up (each loser re-reads; the sweep repairs).
MAX_CAS = 10

T = TypeVar("T")
R = TypeVar("R")


def _each(items: list[T], fn: Callable[[T], R]) -> list[R]:
    """``fn`` over ``items``, ``THREADS`` at a time (in this thread for one item)."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(min(THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


# -- reading the edges ------------------------------------------------------------------


def arrived(store: Store, child_id: str) -> dict[str, str]:
    """The dependencies of ``child_id`` that ended, and how (1 LIST per 1,000). Two
    markers of one dependency (a retry whose re-arm died before deleting the old one):
    the newer one says how it ended last."""
    newest: dict[str, tuple[float, str]] = {}
    for info in store.list(keys.done_prefix(child_id)):
        parsed = keys.parse_done_key(info.key)
        if parsed is not None and info.last_modified >= newest.get(parsed[1], (-1.0, ""))[0]:
            newest[parsed[1]] = (info.last_modified, parsed[2])
    return {parent: status for parent, (_, status) in newest.items()}


def edges(store: Store, parent_id: str) -> list[tuple[str, int]]:
    """(child, number of its dependencies) for each task waiting on ``parent_id`` (1 LIST)."""
    out = []
    for info in store.list(keys.edges_prefix(parent_id)):
        parsed = keys.parse_edge_key(info.key)
        if parsed is not None:
            out.append((parsed[1], parsed[2]))
    return out


def dependents_of(store: Store, task_id: str) -> list[str]:
    """The ids of the tasks that depend on ``task_id`` (1 LIST per 1,000)."""
    return [child for child, _ in edges(store, task_id)]


# -- the child's side: submit -----------------------------------------------------------


def ids_of(depends_on: Iterable[Any]) -> list[str]:
    """Task ids from ids or handles (anything with an ``id``), in order, without repeats."""
    out: list[str] = []
    for dep in depends_on:
        task_id = dep if isinstance(dep, str) else getattr(dep, "id", dep)
        check_task_id(task_id)
        if task_id not in out:
            out.append(task_id)
    return out


def validate(store: Store, task_id: str, depends_on: list[str]) -> dict[str, Versioned[TaskRecord]]:
    """Read each dependency (1 GET each, in parallel): an unknown one is refused before any
    write, with ``DependencyError``."""
    if task_id in depends_on:
        raise DependencyError(f"task {task_id} cannot depend on itself")
    found = dict(zip(depends_on, _each(depends_on, lambda p: records.read(store, p)), strict=True))
    missing = [p for p, cur in found.items() if cur is None]
    if missing:
        raise DependencyError(f"unknown dependency {missing[0]}: no task with that id"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return {p: cur for p, cur in found.items() if cur is not None}


def write_edges(store: Store, record: TaskRecord) -> None:
    """Before the child's record: one create-only PUT per edge (a repeat is a no-op)."""
    n = len(record.depends_on)
    _each(record.depends_on, lambda p: put_if_absent(
        store, keys.edge_key(p, record.id, n), index.marker_body()))


def arm(store: Store, record: TaskRecord, now: float,
        seen: dict[str, Versioned[TaskRecord]] | None = None) -> None:
    """After the child's record is written: make sure each dependency's end reaches it.

    For each dependency: terminal, write its done marker ourselves; else set its
    ``has_dependents`` flag by a CAS (skipped when a read made after our record was
    written shows it set). Either the flag lands before the parent's terminal CAS
    (whose follow-up then sees our edge and record), or our read sees the parent
    terminal. ``seen``: the validation reads, whose etags save a GET when the
    flag is still to be set.
    """
    seen = seen or {}
    ended = [s for s in _each(record.depends_on,
                              lambda p: _flag(store, p, seen.get(p), record.workflow))
             if s is not None]
    for parent, status in ended:
        put_if_absent(store, keys.done_key(record.id, parent, status), index.marker_body())
    if ended:  # listed after every marker we wrote: the parent that ends last sees ours
        decided = settle(store, record.id, now)
        if decided is not None and decided.terminal and decided.has_dependents:
            on_terminal(store, decided, now)


def _flag(store: Store, parent: str, current: Versioned[TaskRecord] | None,
          workflow: str | None = None) -> tuple[str, str] | None:
    """(parent, status) if it has ended; otherwise it is flagged as having dependents.

    A missing dependency of a workflow node is one its workflow has still to write
    (flagged from the start, qo/protocol/workflow.py): nothing to do.
    """
    fresh = current is None
    for _ in range(MAX_CAS):
        if current is None or (current.value.has_dependents and not fresh):
            current, fresh = records.read(store, parent), True
        if current is None:
            return None if workflow is not None else (parent, MISSING)
        if current.value.terminal:
            return parent, current.value.status.value
        if current.value.has_dependents:
            return None  # read after our record was written, still running: it will tell us
        try:
            records.replace(store, current.value.model_copy(update={"has_dependents": True}),
                            current.etag)
            return None
        except PreconditionFailed:
            current = None
    raise PreconditionFailed(f"task {parent} kept changing while a dependent was submitted")


# -- the parent's side: its end ---------------------------------------------------------


def follow_up(store: Store, record: TaskRecord, now: float) -> None:
    """The outcome follow-up (qo/protocol/outcome.py): free unless ``record.has_dependents``."""
    if record.has_dependents and record.terminal:
        on_terminal(store, record, now)


def on_terminal(store: Store, record: TaskRecord, now: float, *, repair: bool = False) -> int:
    """``record`` has ended: tell each dependent, transitively; how many were decided.

    Idempotent, so a reaper (``repair``: also index a readied dependent whose
    marker a crash left unwritten) or a second canceller may run it again.
    """
    decided, todo = 0, [record]
    while todo:
        parent = todo.pop()
        children = edges(store, parent.id)
        ended = _each(children, functools.partial(_tell, store, parent, now=now, repair=repair))
        for child in ended:
            if child is not None:
                decided += 1
                if child.terminal and child.has_dependents:
                    todo.append(child)
    return decided


def _tell(store: Store, parent: TaskRecord, edge: tuple[str, int], *, now: float,
          repair: bool) -> TaskRecord | None:
    child_id, n = edge
    status = parent.status.value
    put_if_absent(store, keys.done_key(child_id, parent.id, status), index.marker_body())
    if n == 1:
        return settle(store, child_id, now, {parent.id: status}, repair=repair)
    done = arrived(store, child_id)
    if len(done) >= n or status in FAILED_STATUSES:
        return settle(store, child_id, now, done, repair=repair)
    return None


def _first_failure(store: Store, verdict: Verdict, done: dict[str, str]) -> str:
    """The reason, naming the first failure of a chain (1 GET of the failed dependency)."""
    if verdict.error != UPSTREAM_FAILED:
        return verdict.reason
    failed = verdict.reason.split()[1]
    try:
        cur = records.read(store, failed)
    except (StoreError, CorruptRecord):  # the reason is advice; never fail the transition
        return verdict.reason
    err = cur.value.error if cur is not None else None
    if err is not None and err.type == UPSTREAM_FAILED:
        root = err.message.split("; first failure: ")[-1].removeprefix("dependency ")
        return f"{verdict.reason}; first failure: {root}"
    return verdict.reason


def settle(store: Store, child_id: str, now: float, done: dict[str, str] | None = None,
           *, repair: bool = False) -> TaskRecord | None:
    """Apply the trigger rule of a blocked task: the record as this call decided it, or None.

    1 GET; when decided, 1 PUT (the CAS, the linearization point) and 1 PUT (its
    ready, delayed or dead marker). ``done``: the arrivals, listed if not given.
    """
    # ``now`` may be the finisher's, taken before this child was submitted, or another
    # process's clock (up to CLOCK_TOLERANCE behind): a child with no delay of its own
    # must not look "due later" and wait for a sweep to promote it.
    now = max(now, store.now())
    for _ in range(MAX_CAS):
        current = records.read(store, child_id)
        if current is None:
            return None  # its submit is still writing (it re-checks), or it never finished
        rec = current.value
        if rec.status != Status.BLOCKED:
            if repair and rec.status in WAITING and rec.depends_on:
                _index(store, rec, now)  # a crash between the CAS and the marker
            return None
        if done is None or len(done) < len(rec.depends_on):
            done = arrived(store, child_id)
        verdict = decide(rec.trigger, rec.depends_on, done)
        if verdict is None:
            return None
        if verdict.status == Status.PENDING:
            due = rec.available_at <= now + CLOCK_TOLERANCE
            status = Status.PENDING if due else Status.SCHEDULED
            new = rec.model_copy(update={"status": status})
        else:
            reason = _first_failure(store, verdict, done)
            new = rec.model_copy(update={
                "status": verdict.status, "finished_at": now,
                "error": ErrorInfo(type=verdict.error or UPSTREAM_FAILED, message=reason,
                                   attempt=rec.attempt, retryable=False)})
        try:
            records.replace(store, new, current.etag)
        except PreconditionFailed:
            continue  # another evaluator won, or a dependent flagged it: read again
        _index(store, new, now)
        log.info("task %s: %s (%s)", child_id, new.status,
                 new.error.message if new.error else "its dependencies allow it",
                 extra={"event": "dependency_settled", "task_id": child_id})
        return new
    return None


# -- repairs: the sweep, a retry --------------------------------------------------------


def repair_blocked(store: Store, record: TaskRecord, now: float) -> bool:
    """The audit's repair of a blocked task (its submit may have died before ``arm``):
    arm it again. Cost: 1 GET per dependency, + 1 LIST and the decision when some ended."""
    if record.status != Status.BLOCKED:
        return False
    arm(store, record, now)
    current = records.read(store, record.id)
    return current is not None and current.value.status != Status.BLOCKED


def rearm(store: Store, parent: TaskRecord, old_status: Status, now: float) -> list[str]:
    """``parent`` was retried: forget how it ended, and put back to ``blocked`` the
    dependents (transitively) that ended because of it. The ids re-armed.

    Runs under the parent's admin lease, before the parent can be claimed again.
    """
    rearmed: list[str] = []
    todo: list[tuple[str, str]] = [(parent.id, old_status.value)]
    while todo:
        parent_id, status = todo.pop()
        for child_id, _ in edges(store, parent_id):
            delete_quietly(store, keys.done_key(child_id, parent_id, status))
            child = _unblock(store, child_id)
            if child is not None:
                rearmed.append(child_id)
                todo.append((child_id, child))
                settle(store, child_id, now)  # another dependency may decide it again
    return rearmed


def _unblock(store: Store, child_id: str) -> str | None:
    """CAS a dependent that a dependency ended back to ``blocked``; its old status, or None."""
    for _ in range(MAX_CAS):
        current = records.read(store, child_id)
        if current is None:
            return None
        rec = current.value
        if rec.status not in (Status.DEAD, Status.SKIPPED) or rec.error is None \
                or rec.error.type not in (UPSTREAM_FAILED, UPSTREAM_SKIPPED):
            return None
        new = rec.model_copy(update={"status": Status.BLOCKED, "finished_at": None,
                                     "error": None})
        try:
            records.replace(store, new, current.etag)
        except PreconditionFailed:
            continue
        delete_quietly(store, keys.dead_key(rec.queue, rec.id))
        return rec.status.value
    return None


def forget(store: Store, record: TaskRecord) -> None:
    """Retention deleted ``record``: its arrivals and its edges go too (1 LIST each
    of those it has, DELETEs free). A dependent still waiting keeps its own arrival."""
    prefixes = ([keys.done_prefix(record.id)] if record.depends_on else []) + (
        [keys.edges_prefix(record.id)] if record.has_dependents else [])
    for prefix in prefixes:
        for info in store.list(prefix):
            delete_quietly(store, info.key)


# -- what a handler sees ------------------------------------------------------------------


def outcomes(store: Store, record: TaskRecord) -> list[DependencyOutcome]:
    """Each dependency's outcome and result (1 GET each, + 1 per large result)."""
    def one(task_id: str) -> DependencyOutcome:
        cur = records.read(store, task_id)
        if cur is None:
            return DependencyOutcome(task_id, "", MISSING)
        rec = cur.value
        result = records.load_result(store, rec) if rec.status == Status.SUCCEEDED else None
        return DependencyOutcome(rec.id, rec.type, rec.status.value, result, rec.error,
                                 rec.tags.get(NODE_TAG))
    return _each(record.depends_on, one)


__all__ = ["MISSING", "NODE_TAG", "RUN", "TERMINAL", "UPSTREAM", "UPSTREAM_FAILED",
           "UPSTREAM_SKIPPED", "DependencyOutcome", "Verdict", "arm", "decide", "follow_up",
           "on_terminal", "outcomes", "rearm", "settle", "validate", "write_edges"]
