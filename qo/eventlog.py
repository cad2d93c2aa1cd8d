"""A worker's task log lines: one receiver of lifecycle events (``qo.hooks``).

The worker does not log what happened to a task itself: it connects this
receiver to its queue's hooks for as long as it runs, and each event about a
claim it holds becomes one line on the ``qo.worker`` logger, with the event
name in ``extra["event"]`` (``task_started``, ``task_succeeded``,
``task_failed``, ``task_cancelled``, ``task_fenced``, ``task_released``) for
``--log-json``. Events of other processes, or of other workers sharing the
queue in this process, are skipped by their ``worker`` detail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from qo.hooks import Event, Hooks, Kind

log = logging.getLogger("qo.worker")
KINDS = (Kind.CLAIMED, Kind.SUCCEEDED, Kind.RETRYING, Kind.DEAD, Kind.FENCED, Kind.RELEASED)


def connect(hooks: Hooks, worker: str, logger: logging.Logger = log) -> Callable[[], None]:
    """Log the events of claims owned by ``worker``; returns the disconnect function."""

    def receive(event: Event) -> None:
        if event.detail.get("worker") == worker:
            write(event, logger)

    return hooks.connect(receive, *KINDS)


def write(event: Event, logger: logging.Logger = log) -> None:
    """One line for one event."""
    d = event.detail
    extra: dict[str, Any] = {"task_id": event.task_id, "type": event.task_type,
                             "attempt": event.attempt}
    if "seconds" in d:
        extra["seconds"] = d["seconds"]
    task = event.task_id
    if event.kind is Kind.CLAIMED:
        logger.info("task %s started", task, extra={"event": "task_started", **extra})
    elif event.kind is Kind.SUCCEEDED:
        logger.info("task %s succeeded", task,
                    extra={"event": "task_succeeded", "outcome": "recorded", **extra})
    elif event.kind in (Kind.RETRYING, Kind.DEAD):
        then = (f"retry in {d['retry_in']:g} s" if event.kind is Kind.RETRYING
                else "no retry: the task is dead")
        logger.warning("task %s failed: %s: %s (%s)", task, d.get("error"), d.get("message"),
                       then, extra={"event": "task_failed", "retryable": event.kind is Kind.RETRYING,
                                    "outcome": "recorded", "status": str(d.get("status")),
                                    **extra})
    elif event.kind is Kind.FENCED and d.get("cancelled"):
        logger.info("task %s was cancelled while running; its outcome (%s) was dropped",
                    task, d.get("dropped"), extra={"event": "task_cancelled", **extra})
    elif event.kind is Kind.FENCED:
        logger.warning("task %s: lease lost; its outcome (%s) was dropped and another worker "
                       "will run it again", task, d.get("dropped"),
                       extra={"event": "task_fenced", **extra})
    elif event.kind is Kind.RELEASED:
        logger.info("task %s released", task, extra={"event": "task_released", **extra})
