"""Tunables shared by every component of a queue, with safe defaults."""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Settings:
    #: A run lease lives this long without a heartbeat (store clock).
    lease_seconds: float = 60.0
    #: Leases taken by reapers and admin commands: long enough for a few writes.
    repair_lease_seconds: float = 30.0
    #: Inputs and results larger than this are stored as separate objects.
    inline_limit: int = 256 * KiB
    #: Inputs and results larger than this are refused with a clear error.
    max_payload: int = 16 * MiB
    #: A ready marker whose record is still missing after this long is stale
    #: (its submitter died between its two writes).
    orphan_grace: float = 600.0
    #: How long an idempotency key keeps deduplicating after its task ended.
    idempotency_retention: float = 86_400.0
    default_queue: str = "default"
    #: How long a submitter trusts its listing of the task-type registry (types/).
    registry_ttl: float = 30.0
    #: Whoever sweeps writes the fleet statistics snapshot at most this often (0: never).
    stats_interval: float = 300.0
    #: How long a submitter trusts its count of a bounded queue's ready tasks
    #: (``max_depth``, qo/protocol/backpressure.py), its own submits added.
    depth_ttl: float = 1.0
