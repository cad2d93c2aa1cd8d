"""Can this store carry a qo queue? Checks a URL the way qo will use it.

qo's safety rests on the store: conditional writes that really refuse a
lost race, and a clock close to the workers'. A store that silently accepts
a stale ``If-Match`` (some S3-compatible services, old proxies) would let two
workers run one task, so ``diagnose`` tries exactly those requests on a
throwaway key under ``doctor/`` and always deletes it afterwards. It never
raises for a store problem: every failure is a check in the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from qo.errors import PreconditionFailed, QoError
from qo.ids import new_token
from qo.protocol import audit, fleet, keys, leases
from qo.settings import Settings
from qo.store import capabilities, failures
from qo.store.base import Store
from qo.store.capabilities import Capabilities
from qo.store.modes import delete_mode
from qo.store.url import open_store, resolve_url

PREFIX = keys.DOCTOR
SKEW_WARN = 2.0  # seconds: leases and schedules absorb this much
SKEW_FAIL = 30.0  # seconds: half a default lease; workers would misjudge expiry
NOT_ENFORCED = "conditional writes are NOT enforced: qo cannot run safely on this store"


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass
class Check:
    name: str
    level: Level
    detail: str


@dataclass
class DoctorReport:
    """The outcome of every check, in order; ``ok`` unless one failed."""

    url: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.level == Level.FAIL]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.level == Level.WARN]

    def add(self, name: str, level: Level, detail: str) -> Check:
        check = Check(name, level, detail)
        self.checks.append(check)
        return check

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ok": self.ok,
            "checks": [{"name": c.name, "status": c.level.value, "detail": c.detail}
                       for c in self.checks],
        }


@dataclass
class _Probe:
    """State shared by the checks of one run."""

    store: Store
    clock: Callable[[], float]
    key: str
    cas_key: str
    written_at: tuple[float, float, float] | None = None  # (before, after, last_modified)
    touched: set[str] = field(default_factory=set)  # keys we may have written
    caps: Capabilities | None = None  # the fresh capability probe, once run


CHECKS = ("queue URL", "reachable", "writable", "conditional writes", "clock", "quarantine",
          capabilities.CONDITIONAL_DELETE, capabilities.LISTING, capabilities.COLON_LISTING,
          "stuck deletes", "workers", "stranded tasks", "leases", "cleanup")


def diagnose(
    url: str | None = None,
    *,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> DoctorReport:
    """Run every check against ``url`` (or an open ``store``); never raises QoError."""
    report = DoctorReport(store.url if store is not None else resolve_url(url))
    if store is None:
        try:
            store = open_store(url)
        except QoError as exc:
            report.add("queue URL", Level.FAIL, str(exc))
            _skip_rest(report, "the queue URL is unusable")
            return report
    report.url = store.url
    report.add("queue URL", Level.OK, f"{store.url} ({type(store).__name__})")
    token = new_token()
    probe = _Probe(store, clock, f"{PREFIX}{token}", f"{PREFIX}{token}-cas")
    steps: list[tuple[str, Callable[[_Probe], tuple[Level, str]], bool]] = [
        ("reachable", _reachable, True),  # (name, check, later checks need it)
        ("writable", _writable, True),
        ("conditional writes", _conditional, False),
        ("clock", _clock, False),
        ("quarantine", _quarantine, False),
        (capabilities.CONDITIONAL_DELETE, _conditional_delete, False),
        (capabilities.LISTING, _listing, False),
        (capabilities.COLON_LISTING, _colon_listing, False),
        ("stuck deletes", _delete_failures, False),
        ("workers", _workers, False),
        ("stranded tasks", _stranded, False),
        ("leases", _leases, False),
    ]
    try:
        for name, step, essential in steps:
            level, detail = _run(step, probe)
            report.add(name, level, detail)
            if level == Level.FAIL and essential:
                _skip_rest(report, f"{name} failed", keep_cleanup=True)
                break
    finally:
        report.add("cleanup", *_cleanup(probe))
    return report


def _skip_rest(report: DoctorReport, why: str, keep_cleanup: bool = False) -> None:
    done = {c.name for c in report.checks}
    for name in CHECKS:
        if name not in done and not (keep_cleanup and name == "cleanup"):
            report.add(name, Level.SKIP, f"not run: {why}")


def _run(step: Callable[[_Probe], tuple[Level, str]], probe: _Probe) -> tuple[Level, str]:
    try:
        return step(probe)
    except QoError as exc:
        return Level.FAIL, str(exc)
    except Exception as exc:  # noqa: BLE001 - a backend bug is a finding, not a crash
        return Level.FAIL, f"unexpected {type(exc).__name__}: {exc}"


def _quarantine(p: _Probe) -> tuple[Level, str]:
    """Task records workers could not read: parked under quarantine/ by claimers."""
    found = list(p.store.list(keys.QUARANTINE, limit=101))
    if not found:
        return Level.OK, "no unreadable task records"
    samples = []
    for info in found[:3]:
        obj = p.store.get(info.key)
        reason = ""
        if obj is not None:
            try:
                reason = str(orjson.loads(obj.body).get("reason", ""))
            except (orjson.JSONDecodeError, AttributeError):
                reason = "?"
        samples.append(f"{info.key[len(keys.QUARANTINE):]}: {reason}")
    count = "over 100" if len(found) > 100 else str(len(found))
    return Level.WARN, f"{count} unreadable task record(s) quarantined; " + "; ".join(samples)


def _workers(p: _Probe) -> tuple[Level, str]:
    """Ready task types that no running worker serves (``qo.protocol.fleet``)."""
    found = fleet.coverage(p.store, limit=10_000)
    problem = found.describe()
    if problem is not None:
        return Level.WARN, problem
    if not found.workers:
        return Level.OK, "no ready task is waiting for a worker"
    return Level.OK, f"{len(found.workers)} running worker(s); every ready task type is served"


#: How many task records and leases ``qo doctor`` reads at most.
AUDIT_LIMIT = 10_000


def _stranded(p: _Probe) -> tuple[Level, str]:
    """Waiting records with no marker and no lease (``qo.protocol.audit``): nothing would run them."""
    found, _, listed = audit.scan(p.store, Settings(), limit=AUDIT_LIMIT)
    scope = f"the first {AUDIT_LIMIT:,} records" if listed >= AUDIT_LIMIT else "every record"
    if found.stranded:
        shown = ", ".join(found.stranded[:5])
        return Level.WARN, (f"{len(found.stranded)} waiting task(s) with no marker and no "
                            f"lease: {shown}; the next sweep's audit indexes them again "
                            "(or run `qo sweep`)")
    return Level.OK, f"no stranded task among {scope} ({found.examined:,} older than 5 min)"


def _leases(p: _Probe) -> tuple[Level, str]:
    """Leases whose body claims more than the cap, or cannot be read (both are reaped)."""
    found = audit.scan_leases(p.store, limit=AUDIT_LIMIT)
    odd = [*found.outliers, *found.unreadable]
    if odd:
        return Level.WARN, (f"{len(found.outliers)} lease(s) claim more than "
                            f"{leases.MAX_LEASE_SECONDS:.0f} s and {len(found.unreadable)} "
                            f"cannot be read: {', '.join(odd[:5])}; they are capped, and "
                            "reaped once expired")
    return Level.OK, f"{found.examined:,} lease(s), none over the cap"


def _reachable(p: _Probe) -> tuple[Level, str]:
    started = time.monotonic()
    next(iter(p.store.list(PREFIX, limit=1)), None)
    return Level.OK, f"LIST answered in {(time.monotonic() - started) * 1000:.0f} ms"


def _writable(p: _Probe) -> tuple[Level, str]:
    body = f"qo doctor {p.key}".encode()
    before = p.clock()
    p.touched.add(p.key)
    etag = p.store.put(p.key, body)
    after = p.clock()
    got = p.store.get(p.key)
    if got is None:
        return Level.FAIL, f"wrote {p.key} but could not read it back"
    if got.body != body:
        return Level.FAIL, f"read {p.key} back with a different body"
    if got.etag != etag:
        return Level.FAIL, f"read {p.key} back with ETag {got.etag}, the put returned {etag}"
    p.written_at = (before, after, got.last_modified)
    p.store.delete(p.key)
    if p.store.get(p.key) is not None:
        return Level.FAIL, f"deleted {p.key} but it can still be read"
    return Level.OK, f"put, get and delete of {p.key} worked"


def _conditional(p: _Probe) -> tuple[Level, str]:
    """Create-only PUT and If-Match PUT (conditional DELETE has its own check)."""
    s, key = p.store, p.cas_key
    p.touched.add(key)
    first = s.put(key, f"1 {key}".encode(), if_none_match=True)
    violations = []
    try:
        s.put(key, f"2 {key}".encode(), if_none_match=True)
        violations.append("a create-only put replaced an existing object")
    except PreconditionFailed:
        pass
    try:
        s.put(key, f"3 {key}".encode(), if_match=first)
    except PreconditionFailed:
        if not violations:
            return Level.FAIL, "a put with the current ETag (If-Match) was refused"
    try:
        s.put(key, f"4 {key}".encode(), if_match=first)
        violations.append("a put with a stale If-Match was accepted")
    except PreconditionFailed:
        pass
    if violations:
        return Level.FAIL, f"{NOT_ENFORCED} ({'; '.join(violations)})"
    return Level.OK, "create-only PUT and If-Match PUT refuse stale versions"


def _caps(p: _Probe) -> Capabilities:
    """Probe afresh once per run; drop a cached result that disagrees with it."""
    if p.caps is None:
        p.caps = capabilities.probe(capabilities.source(p.store), p.clock)
        capabilities.reconcile(p.store, p.caps)  # a stale cache: the next start probes again
    return p.caps


def _conditional_delete(p: _Probe) -> tuple[Level, str]:
    caps = _caps(p)
    feature = capabilities.CONDITIONAL_DELETE
    if caps.has(feature):
        return Level.OK, "a DELETE with a stale If-Match is refused, with the current one works"
    why = caps.details.get(feature, "not supported")
    mode = delete_mode(p.store)
    if mode == "unconditional":
        return Level.OK, (f"not supported ({why}); the queue URL selects the unconditional "
                          "mode (see docs/protocol.md)")
    if mode == "conditional":
        return Level.FAIL, f"not supported ({why}) and the queue URL says ?delete=conditional"
    return Level.WARN, (f"not supported ({why}): qo switches to the unconditional mode, "
                        "whose guarantees are weaker (docs/protocol.md)")


def _listing(p: _Probe) -> tuple[Level, str]:
    caps = _caps(p)
    if caps.has(capabilities.LISTING):
        return Level.OK, "keys come back in UTF-8 byte order, page after page"
    return Level.FAIL, caps.details.get(capabilities.LISTING, "broken")


def _colon_listing(p: _Probe) -> tuple[Level, str]:
    caps = _caps(p)
    if caps.has(capabilities.COLON_LISTING):
        return Level.OK, "pages advance across keys containing ':'"
    return Level.WARN, (caps.details.get(capabilities.COLON_LISTING, "broken")
                        + ": do not use ':' in queue, task type or schedule names here")


def _delete_failures(p: _Probe) -> tuple[Level, str]:
    found = failures.summary(p.store)
    if found.count:
        return Level.WARN, found.line()
    return Level.OK, "no process reported a delete it could not make in the last 24 h"


def _clock(p: _Probe) -> tuple[Level, str]:
    """Compare the store's clock (``now``) and object timestamps with ours.

    S3 timestamps have one-second resolution, so ``last_modified`` may trail
    the write by up to a second without any skew.
    """
    now_skew = p.store.now() - p.clock()
    parts = [f"store clock {now_skew:+.1f} s"]
    skews = [now_skew]
    if p.written_at is not None:
        before, after, modified = p.written_at
        if modified > after:
            lm_skew = modified - after
        elif modified < before - 1.0:
            lm_skew = modified - (before - 1.0)
        else:
            lm_skew = 0.0
        skews.append(lm_skew)
        parts.append(f"object timestamps {lm_skew:+.1f} s")
    worst = max(skews, key=abs)
    detail = ", ".join(parts) + " from this machine"
    if abs(worst) > SKEW_FAIL:
        return Level.FAIL, f"{detail}: over {SKEW_FAIL:g} s, leases and schedules would misfire"
    if abs(worst) > SKEW_WARN:
        return Level.WARN, f"{detail}: over {SKEW_WARN:g} s, check NTP on this machine"
    return Level.OK, detail


def _cleanup(p: _Probe) -> tuple[Level, str]:
    if not p.touched:
        return Level.OK, "nothing was written"
    left = []
    for key in sorted(p.touched):
        try:
            p.store.delete(key)
        except QoError as exc:
            left.append(f"{key} ({exc})")
        except Exception as exc:  # noqa: BLE001
            left.append(f"{key} ({type(exc).__name__}: {exc})")
    if left:
        return Level.WARN, f"could not delete {', '.join(left)}"
    return Level.OK, f"no {PREFIX} key left behind"
