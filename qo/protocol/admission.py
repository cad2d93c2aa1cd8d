"""The admission seam of the claim path: may this claimer run this task now?

An admission check is called once per claim, after the lease is taken and
before the record is read (so a refusal never costs a GET), with the marker
(queue, priority, type, id), the held lease and the store time. Returning a
``Refusal`` releases the lease (1 free DELETE) and skips the key until
``retry_at``. Rate limits, concurrency limits and capability routing plug in
here; see ``Claimer(admission=[...])`` and docs/protocol.md section 8.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


__all__ = ["Admission", "Refusal", "first_refusal"]
