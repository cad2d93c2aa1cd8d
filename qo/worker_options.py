"""What a ``qo.worker.Worker`` is told: its queues, slots, polling, shutdown and upkeep
(``qo worker``'s options; ``qo.worker`` re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass

from qo.runner import TaskTimeout, WorkerDeadline


@dataclass
class WorkerOptions:
    queues: list[str] | None = None  # default: the queues of the app's tasks
    concurrency: int = 4
    burst: bool = False  # exit once no task is ready
    poll_min: float = 0.05
    poll_max: float = 20.0  # idle polling backs off to this, with jitter
    grace: float = 30.0  # on SIGTERM, how long in-flight tasks may finish
    #: Once stopped, how long handlers told to stop may take to return
    #: before they count as abandoned.
    cancel_wait: float = 5.0
    sweep_interval: float = 60.0  # promote and reap at most this often when idle
    heartbeat_interval: float = 300.0  # worker record refresh (for inspection only)
    worker_id: str | None = None
    #: A ``time.monotonic()`` instant no handler may run past (e.g. a Lambda
    #: invocation's end); a task stopped by it fails with ``deadline_error``.
    deadline: float | None = None
    deadline_error: type[TaskTimeout] = WorkerDeadline
    #: Slot threads (each claims, and runs a sync handler itself); default:
    #: ``qo.aio_runner.slot_threads`` (async handlers run on the worker's loop).
    threads: int | None = None
    #: Capability labels (``--label gpu``): it claims only tasks needing a subset of them.
    labels: list[str] | None = None
    #: Apply rate and concurrency limits (``qo.limiter``); default: if the app declares any.
    limits: bool | None = None
    #: Finished tasks (and workflows) older than this are deleted by the fleet's sweep
    #: turns (``qo.protocol.retention``), as the Lambda sweeper does; 0 keeps them.
    retention: float = 7 * 86_400.0
