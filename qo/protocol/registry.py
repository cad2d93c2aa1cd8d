"""The task-type registry: definitions workers publish, read by submitters without the app.

Each worker publishes, for every (task type, version) it has a handler for,
one object ``types/{type}/{version}.json`` (``TypeDefinition``): the queue,
priority, attempts, retry policy, timeout, required labels, docstring and
the JSON schema pydantic derives from the handler's signature. A submitter
that does not import the app (``Queue.submit``, ``qo submit`` without
``--app``, the HTTP API, ``qo schedule add``) looks the type up in a
``Registry``: the declared options fill in what the caller left unset, an
input that fails the schema is refused (``InvalidInput``), and an unknown
type is refused with the list of known ones (``UnregisteredType``) unless the
caller allows it.

**No registry at all** (no key under ``types/``: a bucket no worker of this
qo has published to yet) is permissive: every type is accepted, no option is
applied, exactly as before the registry existed.

Publish (``publish``), per definition: 1 GET; when the stored one differs
(or is missing), 1 conditional PUT through ``cas`` (create-only, or
``If-Match`` the etag read). **Linearization point:** that PUT. A 412 reads
the key back (``cas``); if it now holds the same definition, done, else it
tries again (3 times, then the definition is reported as contested: two
workers publish different definitions of one version, and the last writer
wins until they agree). A crash anywhere leaves the old or the new
definition, both whole: the next start compares again.

Lookup (``Registry``), per process: 1 LIST of ``types/`` at the first
submit, then at most once per ``ttl`` seconds (default 30), and only when a
submit happens; 1 GET per definition used, once per etag seen in the
listing. A submit within the ``ttl`` of the last LIST costs nothing extra.
The same LIST shows the queues' settings (``types/!queues/``,
qo/protocol/backpressure.py): 1 GET per queue with settings, once per etag.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from qo.errors import ErrorKind, QoError, shorten
from qo.ids import new_token
from qo.models import CorruptRecord, FutureSchema, RetryPolicy, dumps, loads
from qo.protocol import identity, input_schema, keys
from qo.protocol.backpressure import QueueSettings, read_settings
from qo.protocol.cas import Lost, get_retrying, put_or_current
from qo.protocol.submit import SubmitRequest
from qo.store.base import Store, StoredObject

log = logging.getLogger("qo.protocol.registry")

#: Seconds a submitter trusts its listing of ``types/`` (``Settings.registry_ttl``).
DEFAULT_TTL = 30.0
PUBLISH_TRIES = 3


class UnregisteredType(QoError):
    """The registry does not know this task type (and the caller did not allow that)."""

    kind = ErrorKind.INVALID


class InvalidInput(QoError):
    """The input does not fit the schema the type's handler published."""

    kind = ErrorKind.INVALID


class TypeDefinition(BaseModel):
    """Body of ``types/{type}/{version}.json``: one handler version, as a submitter needs it."""

    model_config = ConfigDict(extra="forbid")
    #: Not part of the definition: who wrote it, when, and a fresh token (unique bodies).
    bookkeeping: ClassVar[frozenset[str]] = frozenset({"v", "published_by", "published_at",
                                                       "rev"})

    v: int = 1
    name: str
    version: int = Field(1, ge=1, le=1_000_000)
    queue: str
    priority: int = Field(128, ge=0, le=255)
    max_attempts: int = Field(3, ge=1, le=1000)
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = Field(None, gt=0)
    #: The handler's keyword arguments as a JSON schema object (None: not derivable).
    input_schema: dict[str, Any] | None = None
    labels: list[str] = Field(default_factory=list)
    doc: str | None = None
    #: How a task's key is derived from its input (``qo.protocol.identity``), and for how
    #: long it stays unique; None: a random id unless the caller gives a key.
    identity: str | list[str] | None = None
    unique_for: float | None = Field(None, gt=0, le=366 * 86_400)
    published_by: str | None = None
    published_at: float | None = None
    rev: str | None = None

    @property
    def key(self) -> str:
        return keys.type_key(self.name, self.version)

    def same_as(self, other: TypeDefinition) -> bool:
        """The same definition, whoever published it and whenever."""
        skip = set(self.bookkeeping)
        return self.model_dump(exclude=skip) == other.model_dump(exclude=skip)

    def submit_defaults(self) -> dict[str, Any]:
        """The ``SubmitRequest`` fields this definition fills in when the caller did not."""
        defaults: dict[str, Any] = {"queue": self.queue, "priority": self.priority,
                                    "max_attempts": self.max_attempts, "retry": self.retry,
                                    "version": self.version, "labels": self.labels}
        if self.timeout is not None:
            defaults["timeout"] = self.timeout
        return defaults

    def check_input(self, payload: Any) -> None:
        """Raise ``InvalidInput`` with the reason if the handler would refuse ``payload``."""
        if self.input_schema is None:
            return
        reason = input_schema.check_call(self.input_schema, payload)
        if reason is not None:
            raise InvalidInput(f"invalid input for task type {self.name!r} "
                               f"(version {self.version}): {reason}")


@dataclass
class PublishReport:
    written: list[str] = field(default_factory=list)  # keys this call wrote
    unchanged: int = 0
    contested: list[str] = field(default_factory=list)  # keys others kept changing


def _read(store: Store, key: str) -> tuple[TypeDefinition | None, str | None, bool]:
    """The stored definition, its etag, and whether it is readable (False: newer or corrupt)."""
    return _parse(key, get_retrying(store, key))


def _parse(key: str, obj: StoredObject | None) -> tuple[TypeDefinition | None, str | None, bool]:
    if obj is None:
        return None, None, True
    try:
        return loads(TypeDefinition, obj.body, f"task type definition {key}"), obj.etag, True
    except FutureSchema:
        return None, obj.etag, False
    except CorruptRecord:
        return None, obj.etag, True  # unreadable: replaced by ours


def publish(store: Store, definitions: Iterable[TypeDefinition], *, owner: str,
            now: float | None = None) -> PublishReport:
    """Write each definition that differs from the stored one (see the module docstring)."""
    report = PublishReport()
    when = store.now() if now is None else now
    for definition in definitions:
        ours = definition.model_copy(update={"published_by": owner, "published_at": when})
        key = ours.key
        current = _read(store, key)
        for _ in range(PUBLISH_TRIES):
            stored, etag, readable = current
            if not readable:
                log.warning("%s was written by a newer qo; left as it is", key)
                break
            if stored is not None and stored.same_as(ours):
                report.unchanged += 1
                break
            body = dumps(ours.model_copy(update={"rev": new_token()}))
            result = put_or_current(store, key, body, if_match=etag, if_none_match=etag is None)
            if not isinstance(result, Lost):
                report.written.append(key)
                break
            # Another worker wrote first (workers start together): what it wrote came
            # back with the 412, so judge that instead of reading the key again.
            current = _parse(key, result.current) if result.read else _read(store, key)
        else:
            log.warning("task type %s version %d: other workers keep publishing another "
                        "definition; the last one written wins", definition.name,
                        definition.version)
            report.contested.append(key)
    return report


@dataclass(frozen=True)
class Listing:
    """What one LIST of ``types/`` says: every (type, version) and its etag."""

    etags: dict[tuple[str, int], str]
    fetched: float
    #: queue -> etag of its settings object (qo/protocol/backpressure.py)
    queues: dict[str, str] = field(default_factory=dict)

    def types(self) -> list[str]:
        return sorted({name for name, _ in self.etags})

    def versions(self, name: str) -> list[int]:
        return sorted(v for n, v in self.etags if n == name)


def list_types(store: Store) -> dict[tuple[str, int], str]:
    """(type, version) -> etag, for every definition stored; 1 LIST per 1,000."""
    return list_catalog(store)[0]


def list_catalog(store: Store) -> tuple[dict[tuple[str, int], str], dict[str, str]]:
    """``list_types``, and queue -> etag of its settings, from the same LIST of ``types/``."""
    found: dict[tuple[str, int], str] = {}
    queues: dict[str, str] = {}
    for info in store.list(keys.TYPES):
        parsed = keys.parse_type_key(info.key)
        if parsed is not None:
            found[parsed] = info.etag
        elif (queue := keys.queue_of_settings_key(info.key)) is not None:
            queues[queue] = info.etag
    return found, queues


def read_definition(store: Store, name: str, version: int) -> TypeDefinition | None:
    """One stored definition (1 GET); None if missing, unreadable or of a newer qo."""
    definition, _, _ = _read(store, keys.type_key(name, version))
    return definition


class Registry:
    """A submitter's cached view of the registry (thread-safe; see the module docstring)."""

    def __init__(self, store: Store, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.ttl, self.clock = store, ttl, clock
        self._lock = threading.Lock()
        self._listing: Listing | None = None
        self._definitions: dict[tuple[str, int, str], TypeDefinition | None] = {}
        self._settings: dict[tuple[str, str], QueueSettings | None] = {}

    def listing(self) -> Listing:
        """The cached listing, listed again once older than ``ttl``."""
        with self._lock:
            listing = self._listing
            if listing is None or self.clock() - listing.fetched >= self.ttl:
                types, queues = list_catalog(self.store)
                listing = self._listing = Listing(types, self.clock(), queues)
                self._settings = {k: v for k, v in self._settings.items()
                                  if queues.get(k[0]) == k[1]}
                self._definitions = {k: d for k, d in self._definitions.items()
                                     if listing.etags.get((k[0], k[1])) == k[2]}
            return listing

    def forget(self) -> None:
        """Drop the cache: the next lookup lists again."""
        with self._lock:
            self._listing = None

    def queue_settings(self, queue: str) -> QueueSettings | None:
        """The settings of ``queue`` as the listing shows them (None: it has none).

        Free while the listing is fresh, plus 1 GET per etag seen.
        """
        etag = self.listing().queues.get(queue)
        if etag is None:
            return None
        with self._lock:
            if (queue, etag) in self._settings:
                return self._settings[(queue, etag)]
        try:
            found, _ = read_settings(self.store, queue)
        except CorruptRecord as exc:  # a newer qo's, or unreadable: as if unset
            log.warning("settings of queue %s ignored: %s", queue, exc)
            found = None
        with self._lock:
            self._settings[(queue, etag)] = found
        return found

    def definition(self, name: str, version: int | None = None) -> TypeDefinition | None:
        """The definition of ``name`` (its highest version unless given), or None."""
        listing = self.listing()
        versions = listing.versions(name)
        if not versions or (version is not None and version not in versions):
            return None
        chosen = versions[-1] if version is None else version
        cache_key = (name, chosen, listing.etags[(name, chosen)])
        with self._lock:
            if cache_key in self._definitions:
                return self._definitions[cache_key]
        found = read_definition(self.store, name, chosen)
        with self._lock:
            self._definitions[cache_key] = found
        return found

    def resolve(self, fields: dict[str, Any], *, allow_unregistered: bool = False
                ) -> dict[str, Any]:
        """``fields`` of a ``SubmitRequest`` with the type's declared options filled in.

        Raises ``UnregisteredType`` or ``InvalidInput``. Permissive (``fields``
        unchanged) when the bucket has no registry, or for an unknown type that
        the caller allowed.
        """
        name = fields.get("type")
        if not isinstance(name, str):
            return fields  # SubmitRequest says what is wrong with it
        listing = self.listing()
        if not listing.etags:
            return fields  # no registry in this bucket: as before it existed
        version = fields.get("version")
        definition = self.definition(name, version if isinstance(version, int) else None)
        if definition is None:
            listed = listing.versions(name)
            if allow_unregistered or (listed and (version is None or version in listed)):
                return fields  # allowed, or listed but unreadable (a newer qo's): as given
            known = listing.types()
            shown = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20
                                              else "")
            what = (f"version {version} of task type {shorten(name)}"
                    if version is not None and listing.versions(name)
                    else f"task type {shorten(name)}")
            raise UnregisteredType(
                f"unknown {what}: no worker published it; registered: {shown} "
                "(to submit it anyway: allow_unregistered=True, or --unregistered)")
        given = {k: v for k, v in fields.items() if v is not None or k == "input"}
        SubmitRequest.model_validate(given)  # the request's own fields first (ValidationError)
        definition.check_input(fields.get("input"))
        defaults = definition.submit_defaults()
        if definition.identity is not None and given.get("key") is None:
            defaults["key"] = identity.derive_key(definition.identity, fields.get("input"), name)
            if definition.unique_for is not None:
                defaults["retention"] = definition.unique_for
        return defaults | given


__all__ = ["InvalidInput", "Registry", "TypeDefinition", "UnregisteredType", "publish"]
