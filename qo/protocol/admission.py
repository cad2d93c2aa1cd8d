"""The admission seam of the claim path: may this claimer run this task now?

An admission check is called once per claim, after the lease is taken and
before the record is read (so a refusal never costs a GET), with the marker
(queue, priority, type, id), the held lease and the store time. Returning a
``Refusal`` releases the lease (1 free DELETE) and skips the key until
``retry_at``. Rate limits, concurrency limits and capability routing plug in
here; see ``Claimer(admission=[...])`` and docs/protocol.md section 8.

A ``Gate`` is the same question asked *before* the lease, so that a task that
would be refused costs nothing: the claimer passes over every candidate whose
``check`` says "not before T" (no request), asks ``enter`` of the one it is
about to lease, and calls ``leave`` when that claim comes to nothing (the
lease was lost, the record was stale, an admission check refused it). The
limiter is one (``qo.limiter``; docs/protocol.md section 11).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from qo.protocol.keys import Marker
from qo.protocol.leases import HeldLease


@dataclass(frozen=True, slots=True)
class Refusal:
    """An admission check's "not now": the task is skipped until ``retry_at`` (store time)."""

    retry_at: float
    reason: str


#: An admission check (see the module docstring).
Admission = Callable[[Marker, HeldLease, float], "Refusal | None"]

log = logging.getLogger("qo.protocol.claim")


class Gate(Protocol):
    """Before the lease (see the module docstring); times are store times."""

    def check(self, marker: Marker, now: float) -> float | None:
        """None if ``marker``'s task may be tried now, else when it may be: no request."""

    def enter(self, marker: Marker, now: float) -> float | None:
        """Let the task about to be leased through (None), or say when to look again."""

    def leave(self, marker: Marker) -> None:
        """The claim of a task let through came to nothing: give back what it held."""


def first_refusal(checks: Sequence[Admission], marker: Marker, held: HeldLease,
                  now: float) -> Refusal | None:
    """Ask each admission check, in order; the first refusal wins."""
    for check in checks:
        refusal = check(marker, held, now)
        if refusal is not None:
            log.debug("task %s refused until %.3f: %s", marker.task_id, refusal.retry_at,
                      refusal.reason)
            return refusal
    return None


__all__ = ["Admission", "Gate", "Refusal", "first_refusal"]
