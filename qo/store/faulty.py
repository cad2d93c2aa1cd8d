"""A store wrapper that injects failures, to prove the core loses nothing.

Three kinds of fault, on any operation:

- ``before``: the call raises ``StoreUnavailable`` and is not applied;
- ``after``: the call is applied, then raises ``StoreUnavailable`` (the
  caller cannot tell it happened, exactly like a timeout on a real network);
- ``slow``: the call sleeps ``delay`` seconds before being applied.

Faults are either planned (``inject``: the next N matching calls) or random
(``rates``: a probability per kind), with a seeded generator.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from qo.errors import StoreUnavailable
from qo.store.base import LIST_PAGE_SIZE, ObjectInfo, Store, StoredObject

T = TypeVar("T")
Op = Literal["get", "head", "put", "delete", "list"]
Mode = Literal["before", "after", "slow"]
OPS: tuple[Op, ...] = ("get", "head", "put", "delete", "list")


@dataclass
class Fault:
    """A planned fault: applies to the next ``times`` calls that match."""

    op: Op
    mode: Mode
    key_prefix: str = ""
    times: int = 1
    delay: float = 0.0
    when: Callable[[str], bool] | None = None
    hits: int = field(default=0)

    def matches(self, op: str, key: str) -> bool:
        if self.op != op or self.hits >= self.times or not key.startswith(self.key_prefix):
            return False
        return self.when is None or self.when(key)


class InjectedFault(StoreUnavailable):
    """Raised by FaultyStore; a subclass so tests can tell it from real ones."""


class FaultyStore:
    """Wraps any Store; see the module docstring."""

    def __init__(
        self,
        inner: Store,
        *,
        rates: dict[Mode, float] | None = None,
        ops: tuple[Op, ...] = OPS,
        slow_delay: float = 0.05,
        seed: int = 0,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.rates = dict(rates or {})
        self.ops = ops
        self.slow_delay = slow_delay
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._planned: list[Fault] = []
        self.injected: list[tuple[str, str, str]] = []  # (op, mode, key) log

    def capability_source(self) -> Store:
        """Faults are transient: the capabilities are those of the wrapped store."""
        return self.inner

    def inject(self, op: Op, mode: Mode, *, key_prefix: str = "", times: int = 1,
               delay: float = 0.0, when: Callable[[str], bool] | None = None) -> Fault:
        fault = Fault(op, mode, key_prefix, times, delay, when)
        with self._lock:
            self._planned.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._planned.clear()
            self.rates.clear()

    def _choose(self, op: str, key: str) -> tuple[Mode | None, float]:
        with self._lock:
            for fault in self._planned:
                if fault.matches(op, key):
                    fault.hits += 1
                    self.injected.append((op, fault.mode, key))
                    return fault.mode, fault.delay or self.slow_delay
            if op in self.ops:
                for mode, rate in self.rates.items():
                    if rate and self._random.random() < rate:
                        self.injected.append((op, mode, key))
                        return mode, self.slow_delay
        return None, 0.0

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        mode, delay = self._choose(op, key)
        if mode == "before":
            raise InjectedFault(f"injected fault before {op} {key}")
        if mode == "slow":
            time.sleep(delay)
        result = fn()
        if mode == "after":
            raise InjectedFault(f"injected fault after {op} {key}")
        return result

    def get(self, key: str) -> StoredObject | None:
        return self._call("get", key, lambda: self.inner.get(key))

    def head(self, key: str) -> ObjectInfo | None:
        return self._call("head", key, lambda: self.inner.head(key))

    def put(self, key: str, body: bytes, *, if_match: str | None = None,
            if_none_match: bool = False) -> str:
        return self._call(
            "put", key,
            lambda: self.inner.put(key, body, if_match=if_match, if_none_match=if_none_match),
        )

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        self._call("delete", key, lambda: self.inner.delete(key, if_match=if_match))

    def list(self, prefix: str, *, start_after: str | None = None, limit: int | None = None,
             page_size: int = LIST_PAGE_SIZE) -> Iterator[ObjectInfo]:
        items = self._call("list", prefix, lambda: list(self.inner.list(
            prefix, start_after=start_after, limit=limit, page_size=page_size)))
        return iter(items)

    def now(self) -> float:
        return self.inner.now()

    def close(self) -> None:
        self.inner.close()
