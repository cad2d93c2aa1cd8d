"""What ``qo types`` shows: each task type, its versions, who serves it and what waits for it.

Built from the registry (``qo.protocol.registry``), the live workers' records
(``qo.protocol.fleet``) and the ready and delayed indexes, never from task
records. Cost: 1 LIST of ``types/`` + 1 GET per type (its highest version),
1 LIST of ``workers/`` + 1 GET per worker record, and 1 LIST per 1,000
ready and per 1,000 delayed markers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from qo.models import WorkerInfo
from qo.protocol import fleet, keys, registry
from qo.protocol.keys import parse_delayed_key, parse_ready_key
from qo.store.base import Store


@dataclass
class TypeRow:
    """One task type: registered or only seen in the indexes."""

    name: str
    versions: list[int] = field(default_factory=list)  # registered versions, ascending
    queue: str | None = None  # its highest version's queue
    doc: str | None = None  # the first line of its docstring
    workers: list[str] = field(default_factory=list)  # live workers serving a waiting version
    ready: int = 0
    delayed: int = 0
    #: Versions tasks wait for that no live worker serves (the flag of ``unserved``).
    unserved_versions: list[int] = field(default_factory=list)

    @property
    def registered(self) -> bool:
        return bool(self.versions)

    @property
    def unserved(self) -> bool:
        """Tasks wait for it and no live worker serves it."""
        return bool(self.unserved_versions)

    def as_dict(self) -> dict[str, object]:
        return {"type": self.name, "versions": self.versions, "registered": self.registered,
                "queue": self.queue, "doc": self.doc, "workers": self.workers,
                "ready": self.ready, "delayed": self.delayed, "unserved": self.unserved,
                "unserved_versions": self.unserved_versions}


def overview(store: Store) -> list[TypeRow]:
    """Every registered type, and every type tasks wait for, by name."""
    rows: dict[str, TypeRow] = {}
    for (name, version) in sorted(registry.list_types(store)):
        rows.setdefault(name, TypeRow(name)).versions.append(version)
    for row in rows.values():
        definition = registry.read_definition(store, row.name, row.versions[-1])
        if definition is not None:
            row.queue = definition.queue
            row.doc = definition.doc.splitlines()[0] if definition.doc else None
    waiting: Counter[tuple[str, str, int]] = Counter()  # (queue, type, version)
    for info in store.list(keys.READY):
        marker = parse_ready_key(info.key)
        if marker is not None:
            rows.setdefault(marker.task_type, TypeRow(marker.task_type)).ready += 1
            waiting[(marker.queue, marker.task_type, marker.version)] += 1
    for info in store.list(keys.DELAYED):
        marker = parse_delayed_key(info.key)
        if marker is not None:
            rows.setdefault(marker.task_type, TypeRow(marker.task_type)).delayed += 1
            waiting[(marker.queue, marker.task_type, marker.version)] += 1
    workers = fleet.live_workers(store)
    for row in rows.values():
        wanted = {(q, v) for q, t, v in waiting if t == row.name}
        if not wanted and row.queue and row.versions:
            wanted = {(row.queue, row.versions[-1])}
        serving = {w.id for w in workers for q, v in wanted if _serves(w, q, row.name, v)}
        row.workers = sorted(serving)
        row.unserved_versions = sorted({v for q, t, v in waiting if t == row.name
                                        and not any(_serves(w, q, t, v) for w in workers)})
    return sorted(rows.values(), key=lambda r: r.name)


def _serves(worker: WorkerInfo, queue: str, name: str, version: int) -> bool:
    return fleet.serves(worker, queue, keys.handler_name(name, version))
