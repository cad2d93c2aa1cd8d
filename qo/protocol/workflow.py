"""Workflows: a named graph of tasks, checked whole, then written so that a crash
midway leaves either the whole graph or one the audit completes.

See docs/protocol.md section 10, "Workflows". Writes, in order:

1. PUT ``workflows/{id}.json``, create-only: the manifest (every node's request,
   its dependencies by name, its task id). Nothing runs yet.
2. PUT ``workflows-pending/{id}``, create-only: "nodes still to write".
3. The nodes, by height (sinks first, roots last; each level in parallel): a
   node is written only after every node that depends on it, with its edges
   and its ``dependents`` flag set from the start, so nothing is armed and no
   node can run before the whole graph below it exists.
4. DELETE the pending marker. **Linearization point** of "the workflow is whole".

Node ids derive from (workflow id, node name) like idempotency keys, so writing
the nodes again (the audit's ``complete_pending``, a cancel) is idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from qo.errors import (
    DependencyCycle,
    DependencyError,
    ErrorKind,
    PreconditionFailed,
    QoError,
    StoreError,
)
from qo.ids import idempotent_task_id, new_token
from qo.models import TERMINAL, CorruptRecord, Status, TaskRecord, dumps, loads
from qo.names import check_name
from qo.protocol import deps, keys, records
from qo.protocol.cas import delete_quietly, get_retrying, put_checked
from qo.protocol.submit import (
    IdempotencyConflict,
    Prepared,
    SubmitRequest,
    prepare,
    submit_prepared,
)
from qo.settings import Settings
from qo.store.base import Store

log = logging.getLogger("qo.protocol.workflow")
#: Nodes per workflow (each is a task; the manifest holds them all).
MAX_NODES = 10_000
#: A pending workflow younger than this may still be being written by its submitter.
GRACE = 300.0
THREADS = 32

T = TypeVar("T")
R = TypeVar("R")


class WorkflowNotFound(QoError):
    """No workflow with that id."""

    kind = ErrorKind.NOT_FOUND


class NodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    task_id: str
    after: list[str] = Field(default_factory=list)
    request: dict[str, Any]


class Manifest(BaseModel):
    """Body of ``workflows/{id}.json``."""

    model_config = ConfigDict(extra="forbid")

    v: int = 1
    id: str
    name: str | None = None
    created_at: float
    nodes: list[NodeSpec]
    rev: str | None = None

    def node(self, name: str) -> NodeSpec:
        return next(n for n in self.nodes if n.name == name)


def find_cycle(after: dict[str, list[str]]) -> list[str] | None:
    """A cycle of ``after`` (node -> its dependencies) as ``[a, b, ..., a]``, or None."""
    color: dict[str, int] = {}
    for start in after:
        if color.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                color[node] = 1
                path.append(node)
            deps_of = after.get(node, [])
            if i < len(deps_of):
                stack.append((node, i + 1))
                nxt = deps_of[i]
                if color.get(nxt) == 1:
                    return [*path[path.index(nxt):], nxt][::-1]
                if not color.get(nxt):
                    stack.append((nxt, 0))
            else:
                color[node] = 2
                path.pop()
    return None


def heights(after: dict[str, list[str]]) -> dict[str, int]:
    """0 for a node nothing depends on, else 1 + the highest of its dependents (acyclic)."""
    children: dict[str, list[str]] = {n: [] for n in after}
    for node, parents in after.items():
        for p in parents:
            children[p].append(node)
    memo: dict[str, int] = {}
    for root in after:
        stack = [root]
        while stack:
            node = stack[-1]
            pending = [c for c in children[node] if c not in memo]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            memo[node] = 1 + max((memo[c] for c in children[node]), default=-1)
    return memo


def node_id(workflow_id: str, name: str) -> str:
    return idempotent_task_id(f"custom:{scope(workflow_id)}", name)


def scope(workflow_id: str) -> str:
    return f"wf-{workflow_id}"


def plan(workflow_id: str, name: str | None, nodes: list[tuple[str, SubmitRequest, list[str]]],
         settings: Settings, now: float, aging: Callable[[str], int | None] | None = None
         ) -> tuple[Manifest, dict[str, Prepared]]:
    """Check a whole graph (names, unknown dependencies, cycles, every request) before
    any write; the manifest and each node's prepared record. ``aging``: queue -> its
    priority aging (``Queue.aging_of``)."""
    if not nodes:
        raise DependencyError("a workflow needs at least one node")
    if len(nodes) > MAX_NODES:
        raise DependencyError(f"a workflow has at most {MAX_NODES:,} nodes, not {len(nodes):,}")
    after: dict[str, list[str]] = {}
    for node, _, parents in nodes:
        check_name(node, "workflow node name")
        if node in after:
            raise DependencyError(f"workflow node {node!r} is named twice")
        after[node] = list(dict.fromkeys(parents))
    for node, parents in after.items():
        for p in parents:
            if p not in after:
                raise DependencyError(f"workflow node {node!r} depends on unknown node {p!r}")
    cycle = find_cycle(after)
    if cycle is not None:
        raise DependencyCycle("workflow has a cycle: " + " -> ".join(cycle))
    has_children = {p for parents in after.values() for p in parents}
    specs, prepared = [], {}
    for node, req, _ in nodes:
        ids = [node_id(workflow_id, p) for p in after[node]]
        fixed = req.model_copy(update={"key": node, "key_scope": scope(workflow_id),
                                       "depends_on": ids,
                                       "tags": {**req.tags, deps.NODE_TAG: node}})
        try:
            ready = prepare(fixed, settings, now, aging=aging(
                fixed.queue or settings.default_queue) if aging else None)
        except QoError as exc:
            exc.args = (f"workflow node {node!r}: {exc}",)
            raise
        record = ready.record.model_copy(update={"has_dependents": node in has_children,
                                                 "workflow": workflow_id})
        prepared[node] = Prepared(fixed, record, ready.encoded_input, records.body(record))
        specs.append(NodeSpec(name=node, task_id=record.id, after=after[node],
                              request=req.model_dump(mode="json", exclude_unset=True)))
    return Manifest(id=workflow_id, name=name, created_at=now, nodes=specs), prepared


def _each(items: list[T], fn: Callable[[T], R]) -> list[R]:
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(min(THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def submit(store: Store, manifest: Manifest, prepared: dict[str, Prepared], settings: Settings,
           now: float) -> None:
    """Steps 1-4 of the module docstring."""
    body = dumps(manifest.model_copy(update={"rev": new_token()}))
    put_checked(store, keys.workflow_key(manifest.id), body, if_none_match=True)
    put_checked(store, keys.workflow_pending_key(manifest.id), new_token().encode(),
                if_none_match=True)
    write_nodes(store, manifest, prepared, settings, now)
    delete_quietly(store, keys.workflow_pending_key(manifest.id))


def write_nodes(store: Store, manifest: Manifest, prepared: dict[str, Prepared],
                settings: Settings, now: float) -> None:
    """Every node, sinks first; a node already written is left as it is."""
    height = heights({n.name: n.after for n in manifest.nodes})
    for level in range(max(height.values()) + 1):
        names = [n.name for n in manifest.nodes if height[n.name] == level]
        _each(names, lambda name: _write_node(store, prepared[name], settings, now))


def _write_node(store: Store, p: Prepared, settings: Settings, now: float) -> None:
    record = p.record
    if not record.depends_on:
        submit_prepared(store, p, settings, now)  # marker, then record (a repeat: the same task)
        return
    deps.write_edges(store, record)
    try:
        records.create(store, record, p.body)
    except PreconditionFailed:
        current = records.read(store, record.id)
        if current is not None and current.value.input_hash != record.input_hash:
            raise IdempotencyConflict(f"task {record.id} exists with another input") from None


def read(store: Store, workflow_id: str) -> Manifest:
    obj = get_retrying(store, keys.workflow_key(workflow_id))
    if obj is None:
        raise WorkflowNotFound(f"no workflow with id {workflow_id}")
    return loads(Manifest, obj.body, f"workflow {workflow_id}")


def _prepared_again(manifest: Manifest, settings: Settings) -> dict[str, Prepared]:
    nodes = [(n.name, SubmitRequest(**n.request), n.after) for n in manifest.nodes]
    return plan(manifest.id, manifest.name, nodes, settings, manifest.created_at)[1]


def complete(store: Store, manifest: Manifest, settings: Settings, now: float) -> None:
    """Write whatever nodes a crashed submit left unwritten, then drop the pending marker."""
    write_nodes(store, manifest, _prepared_again(manifest, settings), settings, now)
    delete_quietly(store, keys.workflow_pending_key(manifest.id))


def complete_pending(store: Store, settings: Settings, now: float, grace: float = GRACE) -> int:
    """The audit's repair: complete every workflow pending for longer than ``grace``
    (1 LIST; per such workflow 1 GET and the writes of its missing nodes)."""
    done = 0
    for info in store.list(keys.WORKFLOWS_PENDING):
        if info.last_modified > now - grace:
            continue
        workflow_id = info.key[len(keys.WORKFLOWS_PENDING):]
        try:
            manifest = read(store, workflow_id)
        except WorkflowNotFound:
            delete_quietly(store, info.key)  # the manifest never landed: nothing was acknowledged
            continue
        except (StoreError, CorruptRecord) as exc:
            log.warning("workflow %s: %s", workflow_id, exc)
            continue
        complete(store, manifest, settings, now)
        log.error("workflow %s was left half-written; wrote its missing nodes", workflow_id,
                  extra={"event": "workflow_completed", "workflow_id": workflow_id})
        done += 1
    return done


@dataclass
class WorkflowView:
    manifest: Manifest
    records: dict[str, TaskRecord | None]  # node name -> its record (None: not written)
    pending: bool  # nodes are still being written

    @property
    def status(self) -> str:
        """``running`` until every node ended; then ``succeeded``, ``cancelled`` or ``failed``."""
        found = [r.status for r in self.records.values() if r is not None]
        if self.pending or len(found) < len(self.records) or any(s not in TERMINAL
                                                                  for s in found):
            return "running"
        if all(s in (Status.SUCCEEDED, Status.SKIPPED) for s in found):
            return "succeeded"
        return "cancelled" if Status.CANCELLED in found else "failed"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records.values():
            key = "unwritten" if r is None else r.status.value
            out[key] = out.get(key, 0) + 1
        return out


def view(store: Store, workflow_id: str) -> WorkflowView:
    """The manifest and every node's record: 1 GET + 1 HEAD + 1 GET per node (in parallel)."""
    manifest = read(store, workflow_id)
    pending = store.head(keys.workflow_pending_key(workflow_id)) is not None

    def one(spec: NodeSpec) -> TaskRecord | None:
        cur = records.read(store, spec.task_id)
        return None if cur is None else cur.value

    found = _each(manifest.nodes, one)
    return WorkflowView(manifest, {n.name: r for n, r in zip(manifest.nodes, found, strict=True)},
                        pending)


def cancel(store: Store, settings: Settings, workflow_id: str, reason: str,
           cancel_one: Callable[[str, str], object]) -> int:
    """Complete it if half-written, then cancel every node that has not ended, sinks
    first (so each says ``cancelled`` itself); how many were cancelled."""
    from qo.protocol.admin import InvalidTransition, TaskNotFound

    manifest = read(store, workflow_id)
    if store.head(keys.workflow_pending_key(workflow_id)) is not None:
        complete(store, manifest, settings, store.now())
    height = heights({n.name: n.after for n in manifest.nodes})
    cancelled = 0
    for spec in sorted(manifest.nodes, key=lambda n: height[n.name]):
        try:
            cancel_one(spec.task_id, reason)
            cancelled += 1
        except (InvalidTransition, TaskNotFound):
            continue  # already ended (or ended by a dependency just cancelled)
    return cancelled
