"""What a store can do, checked once and cached in the store itself.

qo's guarantees rest on a few features of the store. ``check`` finds out
which of them a store has; ``require`` refuses a store that cannot keep qo's
guarantees, with one line naming the missing feature and the store, and
switches a store without conditional DELETE to the unconditional mode
(qo/store/modes.py) unless its URL says ``?delete=conditional``.

============================  ========  =====================================================
feature                       required  why
============================  ========  =====================================================
``create-only PUT``           yes       one lease per task, one record per id (412 if present)
``If-Match PUT``              yes       every state change is a compare-and-swap
``conditional DELETE``        no        without it: the unconditional mode (weaker, see docs)
``DELETE``                    yes       markers and leases must go once used
``listing order``             yes       the index is the listing: byte order, pages advance
``listing keys with ':'``     no        else names with ':' may be skipped when paging: warn
============================  ========  =====================================================

Cost. Workers, the scheduler daemon, the Lambda functions and the first
submit of a process call ``require`` at start:

* once per process and store object, then free (an in-process cache);
* 1 GET of ``meta/capabilities.json`` when any process checked the store in
  the last ``MAX_AGE`` seconds;
* otherwise the probe, on keys under ``meta/probe-{token}/``: 13 PUT,
  6 LIST, 1 HEAD, 12 DELETE, then 1 PUT of the cache object. ``qo doctor`` always
  probes afresh (and drops a cached result that disagrees with it).

Stores we implement ourselves and test against the contract (memory, local
directory) declare ``CONFORMING = True`` and are never probed; a wrapper that
only injects faults names what to probe instead (``capability_source``).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from qo.errors import (
    AccessDenied,
    ListingStalled,
    NotSupported,
    PreconditionFailed,
    StoreError,
    StoreRefused,
)
from qo.ids import new_token
from qo.protocol import keys
from qo.store.base import Store
from qo.store.modes import UnconditionalDeletes, delete_mode

log = logging.getLogger("qo.store")

CACHE_KEY = f"{keys.META}capabilities.json"
PROBE_PREFIX = f"{keys.META}probe-"
VERSION = 1
MAX_AGE = 86_400.0  # seconds a cached result is trusted

CREATE_ONLY = "create-only PUT"
IF_MATCH = "If-Match PUT"
CONDITIONAL_DELETE = "conditional DELETE"
DELETE = "DELETE"
LISTING = "listing order"
COLON_LISTING = "listing keys with ':'"
FEATURES = (CREATE_ONLY, IF_MATCH, CONDITIONAL_DELETE, DELETE, LISTING, COLON_LISTING)
REQUIRED = (CREATE_ONLY, IF_MATCH, DELETE, LISTING)

#: Listing probe: one key per character qo puts in keys, written in reverse order.
_LISTING_CHARS = ("!", "-", "0", "A", "_", "a")
#: LocalStack 2026.3 compares URL-encoded keys when paging: ':' (%3A) sorts early.
_COLON_KEYS = ("q1/0", "q:/0", "qA/0")


@dataclass(frozen=True)
class Capabilities:
    """Which features a store has (``features``), and why not (``details``)."""

    url: str
    features: dict[str, bool]
    details: dict[str, str] = field(default_factory=dict)
    checked_at: float = 0.0
    source: str = "probe"  # "probe", "cache" or "declared"

    @classmethod
    def full(cls, url: str, source: str = "declared") -> Capabilities:
        return cls(url, dict.fromkeys(FEATURES, True), {}, time.time(), source)

    def has(self, feature: str) -> bool:
        return self.features.get(feature, False)

    @property
    def missing(self) -> list[str]:
        return [f for f in FEATURES if not self.has(f)]

    def to_json(self) -> bytes:
        return orjson.dumps({"version": VERSION, "checked_at": self.checked_at,
                             "features": self.features, "details": self.details})

    @classmethod
    def from_json(cls, url: str, body: bytes) -> Capabilities | None:
        try:
            data = orjson.loads(body)
            if data.get("version") != VERSION:
                return None
            features = {f: bool(data["features"][f]) for f in FEATURES}
            details = {str(k): str(v) for k, v in dict(data.get("details") or {}).items()}
            return cls(url, features, details, float(data["checked_at"]), "cache")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None


_known: weakref.WeakKeyDictionary[Any, Capabilities] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def source(store: Store) -> Store:
    """The store whose behaviour is checked: wrappers may name an inner one."""
    fn: Callable[[Any], Store] | None = getattr(type(store), "capability_source", None)
    return source(fn(store)) if fn is not None else store


def declared(store: Store) -> bool:
    """The class itself (not a subclass, which may break the contract) says CONFORMING."""
    return vars(type(source(store))).get("CONFORMING") is True


def check(store: Store, *, fresh: bool = False, clock: Callable[[], float] = time.time
          ) -> Capabilities:
    """The store's capabilities: in-process cache, else the store's cache, else a probe.

    ``fresh`` skips both caches (``qo doctor``). A probe that cannot run at all
    (the store is down, or refuses writes) raises its ``StoreError``.
    """
    target = source(store)
    if declared(target):
        return Capabilities.full(target.url)
    if not fresh:
        with _lock:
            known = _known.get(target)
        if known is not None:
            return known
        cached = _read_cache(target, clock())
        if cached is not None:
            _remember(target, cached)
            return cached
    caps = probe(target, clock)
    if not fresh:
        try:
            target.put(CACHE_KEY, caps.to_json())
        except StoreError as exc:
            log.debug("could not cache the capabilities of %s: %s", target.url, exc)
    _remember(target, caps)
    return caps


def reconcile(store: Store, fresh: Capabilities) -> None:
    """After a fresh probe (``qo doctor``): drop a cached result that disagrees.

    1 GET, + 1 DELETE when the cache was stale; never writes a cache itself.
    """
    target = source(store)
    if declared(target):
        return
    obj = target.get(CACHE_KEY)
    cached = Capabilities.from_json(target.url, obj.body) if obj is not None else None
    if cached is not None and cached.features != fresh.features:
        forget(target)


def forget(store: Store) -> None:
    """Drop the cached result, here and in the store (best effort)."""
    target = source(store)
    with _lock:
        _known.pop(target, None)
    try:
        target.delete(CACHE_KEY)
    except StoreError as exc:
        log.debug("could not drop the cached capabilities of %s: %s", target.url, exc)


def remember(store: Store, caps: Capabilities) -> None:
    """Tell this process what ``store`` can do (a result probed earlier, e.g. in tests)."""
    _remember(source(store), caps)


def _remember(store: Store, caps: Capabilities) -> None:
    try:
        with _lock:
            _known[store] = caps
    except TypeError:  # not weak-referenceable: the store's own cache still serves
        pass


def _read_cache(store: Store, now: float) -> Capabilities | None:
    """The cached result, unless missing, unreadable or older than MAX_AGE."""
    obj = store.get(CACHE_KEY)
    if obj is None:
        return None
    caps = Capabilities.from_json(store.url, obj.body)
    if caps is None or now - caps.checked_at > MAX_AGE:
        return None
    return caps


def refusal(store: Store, caps: Capabilities) -> str | None:
    """The one line that refuses ``store``, or None if qo can run on it."""
    where = source(store).url
    for feature in REQUIRED:
        if not caps.has(feature):
            why = caps.details.get(feature, "")
            return (f"store {where} cannot carry a qo queue: {feature} is missing"
                    + (f" ({why})" if why else "") + "; run `qo doctor` for the full report")
    if not caps.has(CONDITIONAL_DELETE) and delete_mode(store) == "conditional":
        why = caps.details.get(CONDITIONAL_DELETE, "")
        return (f"store {where} does not support {CONDITIONAL_DELETE}"
                + (f" ({why})" if why else "")
                + " and the queue URL says ?delete=conditional; use ?delete=unconditional")
    return None


def require(store: Store) -> Store:
    """The store to use: ``store`` itself, or wrapped for unconditional deletes.

    Raises ``StoreRefused`` (one line naming the missing feature and the store)
    when qo's guarantees cannot hold on it. See the module docstring for the cost.
    """
    caps = check(store)
    problem = refusal(store, caps)
    if problem is not None:
        raise StoreRefused(problem)
    if not caps.has(COLON_LISTING):
        log.warning("store %s: %s; do not use ':' in queue, task type or schedule names "
                    "on it", store.url, caps.details.get(COLON_LISTING, "pagination is broken"))
    if caps.has(CONDITIONAL_DELETE) or delete_mode(store) == "unconditional":
        return store
    log.info("store %s has no conditional DELETE (%s): using the unconditional mode",
             store.url, caps.details.get(CONDITIONAL_DELETE, ""))
    return UnconditionalDeletes(store)


# -- the probe --------------------------------------------------------------------


def probe(store: Store, clock: Callable[[], float] = time.time) -> Capabilities:
    """Try each feature on throwaway keys; always deletes them (best effort).

    Requests: 13 PUT, 6 LIST, 1 HEAD, 12 DELETE (see the module docstring).
    """
    base = f"{PROBE_PREFIX}{new_token()}/"
    features: dict[str, bool] = {}
    details: dict[str, str] = {}
    written: list[str] = []
    try:
        _probe_writes(store, base + "cas", features, details, written)
        _probe_listing(store, base + "l/", [base + "l/x" + c for c in _LISTING_CHARS],
                       LISTING, 2, features, details, written)
        _probe_listing(store, base + "c/", [base + "c/" + k for k in _COLON_KEYS],
                       COLON_LISTING, 1, features, details, written)
    finally:
        for key in written:
            try:
                store.delete(key)
            except StoreError as exc:
                if DELETE not in details:
                    features[DELETE] = False
                    details[DELETE] = _why(exc)
    features.setdefault(DELETE, True)
    return Capabilities(store.url, {f: features.get(f, False) for f in FEATURES},
                        details, clock(), "probe")


def _why(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _probe_writes(store: Store, key: str, features: dict[str, bool],
                  details: dict[str, str], written: list[str]) -> None:
    def fail(feature: str, why: str) -> None:
        features[feature] = False
        details.setdefault(feature, why)

    written.append(key)
    first = store.put(key, f"1 {key}".encode(), if_none_match=True)
    current = first
    try:
        current = store.put(key, f"2 {key}".encode(), if_none_match=True)
        fail(CREATE_ONLY, "a create-only PUT replaced an existing object")
    except PreconditionFailed:
        features[CREATE_ONLY] = True
    except NotSupported as exc:
        fail(CREATE_ONLY, _why(exc))
    stale = current
    try:
        current = store.put(key, f"3 {key}".encode(), if_match=current)
        try:
            current = store.put(key, f"4 {key}".encode(), if_match=stale)
            fail(IF_MATCH, "a PUT with a stale If-Match was accepted")
        except PreconditionFailed:
            features.setdefault(IF_MATCH, True)
    except PreconditionFailed:
        fail(IF_MATCH, "a PUT with the current ETag (If-Match) was refused")
    except NotSupported as exc:
        fail(IF_MATCH, _why(exc))
    if stale == current:  # If-Match PUT never moved the object: no stale version to try
        fail(CONDITIONAL_DELETE, "not tried: If-Match PUT does not work")
        return
    try:
        store.delete(key, if_match=stale)
        if store.head(key) is None:
            fail(CONDITIONAL_DELETE, "a DELETE with a stale If-Match was accepted")
            return
        fail(CONDITIONAL_DELETE, "a DELETE with a stale If-Match answered success")
    except PreconditionFailed:
        pass
    except NotSupported as exc:
        fail(CONDITIONAL_DELETE, _why(exc))
        return
    except AccessDenied as exc:
        fail(DELETE, _why(exc))
        fail(CONDITIONAL_DELETE, "not tried: DELETE is denied")
        return
    try:
        store.delete(key, if_match=current)
        if store.head(key) is not None:
            fail(CONDITIONAL_DELETE, "a DELETE with the current If-Match left the object")
        else:
            features.setdefault(CONDITIONAL_DELETE, True)
    except PreconditionFailed:
        fail(CONDITIONAL_DELETE, "a DELETE with the current ETag (If-Match) was refused")
    except NotSupported as exc:
        fail(CONDITIONAL_DELETE, _why(exc))


def _probe_listing(store: Store, prefix: str, wanted: list[str], feature: str, page_size: int,
                   features: dict[str, bool], details: dict[str, str],
                   written: list[str]) -> None:
    """Write ``wanted`` in reverse order; list them back in pages of ``page_size``."""
    for key in reversed(wanted):
        written.append(key)
        store.put(key, b"")
    try:
        got = [info.key for info in store.list(prefix, page_size=page_size)]
    except ListingStalled as exc:
        features[feature] = False
        details[feature] = _why(exc)
        return
    expected = sorted(wanted, key=lambda k: k.encode())
    if got == expected:
        features[feature] = True
        return
    features[feature] = False
    shown = [k[len(prefix):] for k in got]
    details[feature] = (f"listed {shown} in pages of {page_size}, expected "
                        f"{[k[len(prefix):] for k in expected]} (UTF-8 byte order)")


def summary(caps: Capabilities) -> str:
    """One line for logs and ``qo doctor``."""
    if not caps.missing:
        return "all of " + ", ".join(FEATURES)
    return "missing: " + ", ".join(caps.missing)


__all__ = ["CACHE_KEY", "FEATURES", "Capabilities", "check", "forget", "probe", "refusal",
           "require"]
