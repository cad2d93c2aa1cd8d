"""The trigger rules of task dependencies, and what a handler sees of them (pure).

``decide`` is the one decision (docs/protocol.md section 10, "Trigger rules"):
given a blocked task's rule, its dependencies and those of them that ended,
run it, end it (``dead`` with ``UpstreamFailed``, ``skipped`` with
``UpstreamSkipped``), or keep it waiting. ``qo.protocol.deps`` applies it;
the model-based test checks it against a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qo.models import ErrorInfo, Status, Trigger

#: The error type of a dependent that will never run because a dependency failed.
UPSTREAM_FAILED = "UpstreamFailed"
#: The error type (the reason) of a dependent skipped by its trigger rule.
UPSTREAM_SKIPPED = "UpstreamSkipped"
UPSTREAM = frozenset({UPSTREAM_FAILED, UPSTREAM_SKIPPED})
#: The status a done marker gives a dependency that no longer exists.
MISSING = "missing"
FAILED_STATUSES = frozenset({Status.DEAD.value, Status.CANCELLED.value, MISSING})
#: The tag naming a task's node in its workflow (qo/protocol/workflow.py).
NODE_TAG = "qo.node"


@dataclass(frozen=True)
class Verdict:
    """What a trigger rule decided for a blocked task: run it, or end it and why."""

    status: Status  # PENDING (run), DEAD or SKIPPED
    error: str | None = None  # UPSTREAM_FAILED or UPSTREAM_SKIPPED
    reason: str = ""


RUN = Verdict(Status.PENDING)


def decide(trigger: Trigger, parents: list[str], done: dict[str, str]) -> Verdict | None:
    """The verdict for a task waiting on ``parents`` of which ``done`` ended (id -> status),
    or None while it must still wait. A failure decides at once; the rest when all ended."""
    failed = [p for p in parents if done.get(p) in FAILED_STATUSES]
    if failed and trigger in (Trigger.ALL_SUCCESS, Trigger.NONE_FAILED):
        return Verdict(Status.DEAD, UPSTREAM_FAILED, f"dependency {failed[0]} is {done[failed[0]]}")
    if any(p not in done for p in parents):
        return None
    skipped = [p for p in parents if done[p] == Status.SKIPPED.value]
    if skipped and trigger == Trigger.ALL_SUCCESS:
        return Verdict(Status.SKIPPED, UPSTREAM_SKIPPED, f"dependency {skipped[0]} was skipped")
    return RUN


@dataclass(frozen=True)
class DependencyOutcome:
    """How one dependency ended, as a handler sees it (``ctx.dependencies``)."""

    id: str
    type: str
    status: str
    result: Any = None
    error: ErrorInfo | None = None
    node: str | None = None  # its name in a workflow

    @property
    def succeeded(self) -> bool:
        return self.status == Status.SUCCEEDED.value
