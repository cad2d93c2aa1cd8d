"""How far the order in which tasks started departs from the order they should start in.

``ideal`` lists the tasks in the order the queue promises (priority first,
then FIFO: for qo, the order of the ready listing right after submission).
``started`` lists them in the order their handlers started. Both are lists
of task identifiers; a task that ran twice counts at its first start.

* *rank inversion* of a task X: how many tasks that come before X in
  ``ideal`` had not started yet when X started. Its maximum over all tasks is
  the largest rank inversion. With S slots claiming at once, S - 1 is what
  concurrency alone can cause: S tasks start together, in any order.
* *priority inversion* of X: the same, counting only tasks of strictly
  higher priority than X.
* *displacement* of X: |start position - ideal position|.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any


class _Fenwick:
    """Prefix counts over ranks 0..n-1."""

    def __init__(self, n: int) -> None:
        self.tree = [0] * (n + 1)

    def add(self, i: int) -> None:
        i += 1
        while i < len(self.tree):
            self.tree[i] += 1
            i += i & -i

    def below(self, i: int) -> int:
        """How many added ranks are < i."""
        total = 0
        while i > 0:
            total += self.tree[i]
            i -= i & -i
        return total


def first_starts(starts: Sequence[tuple[Hashable, float]]) -> list[Hashable]:
    """Task ids in start order (ties broken by id), each at its first start."""
    seen: dict[Hashable, float] = {}
    for task, t in starts:
        if task not in seen or t < seen[task]:
            seen[task] = t
    return [task for task, _ in sorted(seen.items(), key=lambda kv: (kv[1], str(kv[0])))]


def inversions(ideal: Sequence[Hashable], started: Sequence[Hashable],
               priority: Mapping[Any, int] | None = None) -> dict[str, Any]:
    """Largest rank and priority inversions, and displacement, of ``started`` vs ``ideal``.

    Tasks of ``started`` missing from ``ideal`` are ignored; tasks of
    ``ideal`` that never started count as not started (they inflate every
    later task's inversion, as a starved task should).
    """
    rank = {task: i for i, task in enumerate(ideal)}
    order = [task for task in started if task in rank]
    fen = _Fenwick(len(ideal))
    max_rank = 0
    worst: Hashable | None = None
    worst_at = (0, 0)  # (ideal position, start position) of the worst task
    displacement = []
    higher: dict[int, int] = {}  # priority -> tasks of higher priority in ideal
    started_at_prio: dict[int, int] = {}
    levels: list[int] = []
    if priority is not None:
        levels = sorted({priority[t] for t in ideal}, reverse=True)
        seen = 0
        for p in levels:
            higher[p] = seen
            seen += sum(1 for t in ideal if priority[t] == p)
    max_prio = 0
    for pos, task in enumerate(order):
        r = rank[task]
        inv = r - fen.below(r)
        if inv > max_rank:
            max_rank, worst, worst_at = inv, task, (r, pos)
        fen.add(r)
        displacement.append(abs(pos - r))
        if priority is not None:
            p = priority[task]
            done_higher = sum(n for q, n in started_at_prio.items() if q > p)
            max_prio = max(max_prio, higher[p] - done_higher)
            started_at_prio[p] = started_at_prio.get(p, 0) + 1
    out: dict[str, Any] = {
        "tasks": len(order),
        "max_rank_inversion": max_rank,
        "worst_task": None if worst is None else str(worst),
        "worst_ideal_position": worst_at[0], "worst_start_position": worst_at[1],
        "max_displacement": max(displacement, default=0),
        "mean_displacement": round(sum(displacement) / len(displacement), 2)
        if displacement else 0.0,
    }
    if priority is not None:
        out["max_priority_inversion"] = max_prio
        out["priority_levels"] = levels
    return out
