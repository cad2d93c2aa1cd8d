"""The key layout, in one place. See docs/protocol.md for what each key means.

::

    tasks/{id}.json                                  record: the truth
    ready/{queue}/{255-prio:03d}/{avail_us:016d}-{id}-{type}[@{version}][~{label}...][!{lkey}]   claimable now
    ready/{queue}/!paused                            queue is paused (sorts first)
    ready/{queue}/aged/{eff_us:016d}-{255-prio:03d}-{aging}-{id}-{type}[@{version}][~{label}...]
                                                     claimable now, in an aging queue (§12)
    delayed/{due_us:016d}/{queue}/{255-prio:03d}/{id}-{type}[@{version}][~{label}...]   later
    leases/{queue}/{id}                              who works on a task
    dead/{queue}/{id}                                dead-letter index
    payloads/{id}/input, payloads/{id}/result-{n}    large bodies
    workers/{worker_id}.json                         worker heartbeats
    quarantine/{queue}/{id}                          unreadable records, for qo doctor
    schedules/{name}.json                            a schedule and its state
    types/{type}/{version}.json                      a published task type (registry)
    types/!queues/{queue}/settings.json              a queue's max_depth and aging (§12)
    sweep/turn, sweep/retention-cursor, sweep/audit-cursor   housekeeping state
    stats/fleet.json                                 fleet statistics snapshot
    doctor/...                                       qo doctor's scratch objects
    meta/capabilities.json, meta/delete-failures/*   store checks and failure reports
    limits/{name}.json                               a rate/concurrency limit's settings
    buckets/{name}/{lkey}/{shard}.json               a token bucket (qo/protocol/limits.py)
    slots/{name}/{lkey}/{n}                          a concurrency slot (qo/protocol/slots.py)
    deps/out/{parent}/{child}/{n}                    an edge: child waits on parent (n parents)
    deps/done/{child}/{parent}/{status}              parent ended so (qo/protocol/deps.py)
    workflows/{id}.json, workflows-pending/{id}      workflow manifests (qo/protocol/workflow.py)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

TASKS = "tasks/"
READY = "ready/"
DELAYED = "delayed/"
LEASES = "leases/"
DEAD = "dead/"
PAYLOADS = "payloads/"
WORKERS = "workers/"
QUARANTINE = "quarantine/"
SCHEDULES = "schedules/"
#: Task type definitions workers publish (qo/protocol/registry.py).
TYPES = "types/"
#: Queue settings (max_depth, priority aging; qo/protocol/backpressure.py). They sit
#: under ``types/`` so that the registry's one LIST per TTL, which every submitter
#: makes anyway, shows them: learning a queue's settings costs a submit nothing.
QUEUE_SETTINGS = f"{TYPES}!queues/"
DOCTOR = "doctor/"  # qo doctor's scratch objects, deleted after each check
#: Which worker swept last (qo/protocol/sweep.py: take_sweep_turn).
SWEEP_TURN = "sweep/turn"
#: Where retention (qo/protocol/retention.py) resumes its pass over tasks/.
RETENTION_CURSOR = "sweep/retention-cursor"
#: Where the audit (qo/protocol/audit.py) resumes its pass over tasks/.
AUDIT_CURSOR = "sweep/audit-cursor"
#: The fleet statistics snapshot whoever sweeps writes (qo/protocol/fleetstats.py).
STATS = "stats/fleet.json"
META = "meta/"  # store capabilities cache, probe keys, delete-failure reports
PAUSED_MARK = "!paused"
#: The ready directory of an aging queue's markers: after every ``{255-prio:03d}``.
AGED_DIR = "aged"
SCHEDULE_INPUTS = "schedule-inputs/"  # {name}/{sha256 of the input}: large schedule inputs
#: Limits (docs/protocol.md section 11): settings, token buckets, concurrency slots.
LIMITS = "limits/"
BUCKETS = "buckets/"
SLOTS = "slots/"
#: The limit key of a task that has none (a global or per-type limit's one bucket).
NO_LIMIT_KEY = "_"


def limit_key(name: str) -> str:
    return f"{LIMITS}{name}.json"


def limit_name_of(key: str) -> str | None:
    """The limit a ``limits/{name}.json`` key names, or None."""
    if key.startswith(LIMITS) and key.endswith(".json") and "/" not in key[len(LIMITS):]:
        return key[len(LIMITS):-len(".json")] or None
    return None


def bucket_key(name: str, lkey: str, shard: int) -> str:
    return f"{BUCKETS}{name}/{lkey or NO_LIMIT_KEY}/{shard}.json"


def slots_prefix(name: str, lkey: str) -> str:
    return f"{SLOTS}{name}/{lkey or NO_LIMIT_KEY}/"


def hash_limit_key(value: str) -> str:
    """The limit key a marker carries for a task's rate/concurrency key value: 16 hex
    digits of its SHA-256 (any value is safe in a key, and keys stay short)."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]


#: Dependency edges and arrivals (qo/protocol/deps.py): one small object per edge.
DEPS_OUT = "deps/out/"
DEPS_DONE = "deps/done/"
#: Workflow manifests, and the ones whose nodes are not all written yet (workflow.py).
WORKFLOWS = "workflows/"
WORKFLOWS_PENDING = "workflows-pending/"


def edges_prefix(parent_id: str) -> str:
    """``deps/out/{parent}/``: one key per task waiting on ``parent_id``."""
    return f"{DEPS_OUT}{parent_id}/"


def edge_key(parent_id: str, child_id: str, parents: int) -> str:
    """The edge ``child`` waits on ``parent``; ``parents``: how many the child has."""
    return f"{DEPS_OUT}{parent_id}/{child_id}/{parents}"


def _three_under(prefix: str, key: str) -> tuple[str, str, str] | None:
    """The three segments of ``key`` after ``prefix`` (two segments, e.g. ``deps/out/``)."""
    parts = key.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}/" != prefix:
        return None
    return parts[2], parts[3], parts[4]


def parse_edge_key(key: str) -> tuple[str, str, int] | None:
    """(parent, child, number of the child's parents) of an edge key, or None."""
    found = _three_under(DEPS_OUT, key)
    if found is None or not found[2].isdigit():
        return None
    return found[0], found[1], int(found[2])


def done_prefix(child_id: str) -> str:
    """``deps/done/{child}/``: one key per dependency of ``child_id`` that has ended."""
    return f"{DEPS_DONE}{child_id}/"


def done_key(child_id: str, parent_id: str, status: str) -> str:
    return f"{DEPS_DONE}{child_id}/{parent_id}/{status}"


def parse_done_key(key: str) -> tuple[str, str, str] | None:
    """(child, parent, the parent's terminal status) of a done key, or None."""
    return _three_under(DEPS_DONE, key)


def workflow_key(workflow_id: str) -> str:
    return f"{WORKFLOWS}{workflow_id}.json"


def workflow_pending_key(workflow_id: str) -> str:
    return f"{WORKFLOWS_PENDING}{workflow_id}"


def micros(ts: float) -> int:
    return round(ts * 1_000_000)


def task_key(task_id: str) -> str:
    return f"{TASKS}{task_id}.json"


def task_id_from_key(key: str) -> str | None:
    if key.startswith(TASKS) and key.endswith(".json"):
        return key[len(TASKS) : -len(".json")]
    return None


def ready_prefix(queue: str) -> str:
    return f"{READY}{queue}/"


def paused_key(queue: str) -> str:
    return f"{READY}{queue}/{PAUSED_MARK}"


def queue_settings_key(queue: str) -> str:
    return f"{QUEUE_SETTINGS}{queue}/settings.json"


def queue_of_settings_key(key: str) -> str | None:
    """The queue a ``types/!queues/{queue}/settings.json`` key names, or None."""
    parts = key[len(QUEUE_SETTINGS):].split("/") if key.startswith(QUEUE_SETTINGS) else []
    return parts[0] if len(parts) == 2 and parts[0] and parts[1] == "settings.json" else None


def lease_key(queue: str, task_id: str) -> str:
    return f"{LEASES}{queue}/{task_id}"


def dead_key(queue: str, task_id: str) -> str:
    return f"{DEAD}{queue}/{task_id}"


def quarantine_key(queue: str, task_id: str) -> str:
    return f"{QUARANTINE}{queue}/{task_id}"


def worker_key(worker_id: str) -> str:
    return f"{WORKERS}{worker_id}.json"


def worker_id_of(key: str) -> str | None:
    """The worker id a ``workers/{id}.json`` key names, or None."""
    if not (key.startswith(WORKERS) and key.endswith(".json")):
        return None
    worker_id = key[len(WORKERS):-len(".json")]
    return worker_id if worker_id and "/" not in worker_id else None


def type_key(task_type: str, version: int) -> str:
    return f"{TYPES}{task_type}/{version}.json"


def parse_type_key(key: str) -> tuple[str, int] | None:
    """The (task type, version) a ``types/{type}/{version}.json`` key names, or None."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != TYPES[:-1] or not parts[2].endswith(".json"):
        return None
    version = parts[2][: -len(".json")]
    if not parts[1] or not version.isdigit() or not 1 <= int(version) <= 1_000_000:
        return None
    return parts[1], int(version)


def input_key(task_id: str) -> str:
    return f"{PAYLOADS}{task_id}/input"


def result_key(task_id: str, attempt: int) -> str:
    return f"{PAYLOADS}{task_id}/result-{attempt}"


def handler_name(task_type: str, version: int = 1) -> str:
    """What a worker serves, as markers and worker records name it: ``type``, or
    ``type@N`` for handler version N > 1 (``@`` never occurs in a task type)."""
    return task_type if version == 1 else f"{task_type}@{version}"


def split_handler_name(name: str) -> tuple[str, int]:
    """``handler_name`` read back: ``(type, version)``; a malformed suffix stays in the type."""
    base, sep, version = name.rpartition("@")
    if sep and base and version.isdigit() and version[0] != "0" and int(version) > 1:
        return base, int(version)
    return name, 1


@dataclass(frozen=True, slots=True)
class Marker:
    """What an index key says about a task, parsed without reading the record."""

    queue: str
    priority: int
    available_at: float
    task_id: str
    task_type: str
    version: int = 1  # the handler version the task was submitted for
    labels: tuple[str, ...] = ()  # capabilities a worker needs to run it, sorted
    #: Seconds of waiting worth one priority level (0: strict priority). An aging
    #: marker sorts by ``available_at + (255 - priority) * aging`` (section 12).
    aging: int = 0
    limit_key: str = ""  # the hashed rate/concurrency key (``hash_limit_key``), if any

    @property
    def handler(self) -> str:
        """What a worker must serve to run it (``handler_name``)."""
        return handler_name(self.task_type, self.version)

    @property
    def needs(self) -> str:
        """The handler and its required labels, as the key ends: ``type[@N][~label...]``."""
        tail = self.handler + "".join(LABEL_SEP + label for label in self.labels)
        return tail + LIMIT_KEY_SEP + self.limit_key if self.limit_key else tail

    def runnable_with(self, labels: frozenset[str] | None) -> bool:
        """Does a worker with these labels have what it needs (None: no labels checked)?"""
        return labels is None or labels.issuperset(self.labels)

    @property
    def effective_us(self) -> int:
        """What an aging marker sorts by, in microseconds (its ready time for a strict one)."""
        return micros(self.available_at) + (255 - self.priority) * self.aging * 1_000_000

    @property
    def ready_key(self) -> str:
        if self.aging:
            return (
                f"{READY}{self.queue}/{AGED_DIR}/{self.effective_us:016d}-"
                f"{255 - self.priority:03d}-{self.aging}-{self.task_id}-{self.needs}"
            )
        return (
            f"{READY}{self.queue}/{255 - self.priority:03d}/"
            f"{micros(self.available_at):016d}-{self.task_id}-{self.needs}"
        )

    @property
    def delayed_key(self) -> str:
        level = f"{255 - self.priority:03d}" + (f".{self.aging}" if self.aging else "")
        return (
            f"{DELAYED}{micros(self.available_at):016d}/{self.queue}/"
            f"{level}/{self.task_id}-{self.needs}"
        )


#: Separates required labels in a marker key (it never occurs in a type or a label).
LABEL_SEP = "~"
#: Precedes a marker's limit key (it never occurs in a type, a label or a hash).
LIMIT_KEY_SEP = "!"


def split_needs(tail: str) -> tuple[str, int, tuple[str, ...]]:
    """A key's ``type[@N][~label...]`` (its ``!lkey`` cut off) read back as (type, version,
    labels); ``limit_key_of`` reads the limit key."""
    head, *labels = tail.partition(LIMIT_KEY_SEP)[0].split(LABEL_SEP)
    task_type, version = split_handler_name(head)
    return task_type, version, tuple(labels)


def limit_key_of(tail: str) -> str:
    """The limit key a key's ``...[!lkey]`` tail ends with ("" if none)."""
    return tail.partition(LIMIT_KEY_SEP)[2]


def parse_ready_key(key: str) -> Marker | None:
    """The marker a ready key encodes, or None for anything else (e.g. !paused)."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != READY[:-1]:
        return None
    _, queue, inv, rest = parts
    if inv == AGED_DIR:
        return _parse_aged(queue, rest)
    fields = rest.split("-", 2)
    if len(fields) != 3 or not inv.isdigit() or not fields[0].isdigit():
        return None
    return Marker(queue, 255 - int(inv), int(fields[0]) / 1_000_000, fields[1],
                  *split_needs(fields[2]), limit_key=limit_key_of(fields[2]))


def _parse_aged(queue: str, rest: str) -> Marker | None:
    """``{eff_us}-{255-prio}-{aging}-{id}-{needs}`` read back (section 12)."""
    fields = rest.split("-", 4)
    if len(fields) != 5 or not all(f.isdigit() for f in fields[:3]):
        return None
    eff, inv, aging = int(fields[0]), int(fields[1]), int(fields[2])
    if not (0 <= inv <= 255 and aging >= 1):
        return None
    available_us = eff - inv * aging * 1_000_000
    return Marker(queue, 255 - inv, available_us / 1_000_000, fields[3], *split_needs(fields[4]),
                  aging=aging, limit_key=limit_key_of(fields[4]))


def parse_delayed_key(key: str) -> Marker | None:
    parts = key.split("/")
    if len(parts) != 5 or parts[0] != DELAYED[:-1]:
        return None
    _, due, queue, level, rest = parts
    inv, dot, aging = level.partition(".")  # ``{255-prio}`` or, aging, ``{255-prio}.{aging}``
    fields = rest.split("-", 1)
    if len(fields) != 2 or not inv.isdigit() or not due.isdigit():
        return None
    if dot and not (aging.isdigit() and int(aging) >= 1):
        return None
    return Marker(queue, 255 - int(inv), int(due) / 1_000_000, fields[0],
                  *split_needs(fields[1]), aging=int(aging) if dot else 0,
                  limit_key=limit_key_of(fields[1]))
