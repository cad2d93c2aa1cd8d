"""Amazon S3 (or any S3-compatible endpoint) as a qo store.

S3 already has the contract qo needs: create-only puts (``If-None-Match: *``),
compare-and-swap puts and deletes (``If-Match``), lexicographic listing and a
clock (the ``Date`` header of every response). This module only maps the
contract onto boto3 calls and keeps the clock estimate; the client and the
translation of every botocore failure into a one-line ``qo.errors``
exception are ``qo.store.s3_client``, so nothing above them ever sees botocore.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from qo.errors import BucketNotFound, PreconditionFailed, QoError
from qo.store.base import (
    LIST_PAGE_SIZE,
    ObjectInfo,
    Page,
    StoredObject,
    check_key,
    check_prefix,
    paginate,
)
from qo.store.s3_client import (
    DEFAULT_REGION,
    configured_endpoint,
    error_code,
    http_status,
    is_missing,
    lost_condition,
    make_client,
    translate,
)

#: The clock estimate keeps the largest Date-header offset sample of the last
#: one to two windows (seconds, on the monotonic clock); older ones are dropped.
_OFFSET_WINDOW = 30.0

T = TypeVar("T")


class S3Store:
    """A bucket, or a prefix of one, as a Store.

    Store key ``k`` is S3 key ``{prefix}/{k}``, so several queues can share a
    bucket without seeing each other's keys. The client is created eagerly
    (boto3 clients are thread safe) unless one is passed in; ``max_attempts``
    bounds botocore's retries (tests lower it to fail fast).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
        max_pool_connections: int = 64,
        max_attempts: int = 5,
        delete_mode: str = "auto",
    ) -> None:
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        #: "auto": the capability check may switch to the unconditional mode;
        #: "conditional": refuse a store without conditional DELETE instead.
        self.delete_mode = delete_mode
        self._root = f"{prefix}/" if prefix else ""
        self._owns_client = client is None
        self._client = client or make_client(
            endpoint_url=endpoint_url,
            region=region,
            max_pool_connections=max_pool_connections,
            max_attempts=max_attempts,
        )
        # The store clock is estimated as monotonic() + offset, so a step of the
        # wall clock (either way) does not move it; see now() and _on_response.
        self._wall = time.time  # the local wall clock: only used while no Date was seen
        self._mono = time.monotonic
        self._offset: float | None = None  # store clock minus monotonic clock
        self._window_max: float | None = None  # largest sample of the current window
        self._window_start = 0.0
        self._previous_max: float | None = None  # largest sample of the window before
        self._probed = False
        self._last_now = 0.0
        self._clock_lock = threading.RLock()  # the probe's response re-enters it
        self._client.meta.events.register("after-call.s3", self._on_response)

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    @property
    def client(self) -> Any:
        return self._client

    # -- the Store contract ---------------------------------------------------

    def get(self, key: str) -> StoredObject | None:
        check_key(key)

        def fetch() -> StoredObject:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._s3_key(key))
            with resp["Body"] as stream:  # reading the body can fail too
                body = stream.read()
            return StoredObject(key, body, resp["ETag"], resp["LastModified"].timestamp())

        return self._unless_missing(f"get {key!r}", fetch)

    def head(self, key: str) -> ObjectInfo | None:
        check_key(key)

        def fetch() -> ObjectInfo:
            resp = self._client.head_object(Bucket=self.bucket, Key=self._s3_key(key))
            return ObjectInfo(
                key, resp["ETag"], resp["ContentLength"], resp["LastModified"].timestamp()
            )

        # A HEAD on a missing bucket is also a bare 404 on real S3: None.
        return self._unless_missing(f"head {key!r}", fetch)

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        check_key(key)
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._s3_key(key),
            "Body": bytes(body),
        }
        if if_none_match:
            params["IfNoneMatch"] = "*"
        if if_match is not None:
            params["IfMatch"] = if_match
        try:
            return self._client.put_object(**params)["ETag"]
        except ClientError as exc:
            # If-Match on a missing key: S3 (and moto) answer 404 NoSuchKey.
            if lost_condition(exc) or (if_match is not None and is_missing(exc)):
                message = f"conditional put on {key!r} lost"
                retries = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 1)
                raise (PreconditionFailed.first_try(message) if retries == 0
                       else PreconditionFailed(message)) from None
            raise self._error(exc, f"put {key!r}") from exc
        except BotoCoreError as exc:
            raise self._error(exc, f"put {key!r}") from exc

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        check_key(key)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._s3_key(key)}
        if if_match is not None:
            params["IfMatch"] = if_match
        try:
            self._client.delete_object(**params)
        except ClientError as exc:
            if is_missing(exc):
                return  # conditional delete of a missing key: nothing to do
            if lost_condition(exc):
                raise PreconditionFailed(f"conditional delete of {key!r} lost") from None
            raise self._error(exc, f"delete {key!r}") from exc
        except BotoCoreError as exc:
            raise self._error(exc, f"delete {key!r}") from exc

    def list(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        limit: int | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> Iterator[ObjectInfo]:
        """One ListObjectsV2 per page, lazily; a page that does not advance raises."""
        check_prefix(prefix)
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._root + prefix}
        if start_after:
            params["StartAfter"] = self._root + start_after

        def fetch(token: str | None, max_keys: int) -> Page:
            call = dict(params, MaxKeys=max_keys)
            if token:
                call["ContinuationToken"] = token
            try:
                resp = self._client.list_objects_v2(**call)
            except (ClientError, BotoCoreError) as exc:
                raise self._error(exc, f"list {prefix!r}") from exc
            items = [
                ObjectInfo(item["Key"][len(self._root) :], item["ETag"], item["Size"],
                           item["LastModified"].timestamp())
                for item in resp.get("Contents", [])
            ]
            more = resp.get("NextContinuationToken") if resp.get("IsTruncated") else None
            return items, more or None

        return paginate(fetch, where=f"listing {prefix!r} in {self.url}",
                        start_after=start_after or None, limit=limit,
                        page_size=max(1, min(page_size, LIST_PAGE_SIZE)))

    def now(self) -> float:
        """The store's clock: the monotonic clock plus the offset seen in ``Date`` headers.

        Every response updates the offset for free; only a store that has not
        talked to S3 yet pays one HeadBucket to learn it. The offset is the
        largest sample of the last 30-60 s (``_OFFSET_WINDOW``), measured
        against ``time.monotonic``: a step of this machine's wall clock, either
        way, does not move the estimate, and a change of the store's clock is
        followed within a minute. A store that never sent a ``Date`` (moto
        in-process) leaves the local wall clock in charge.
        """
        if self._offset is None and not self._probed:
            with self._clock_lock:
                if self._offset is None and not self._probed:
                    self._probe_clock()
        with self._clock_lock:  # never step backwards: FIFO order relies on it
            offset = self._offset
            estimate = self._wall() if offset is None else self._mono() + offset
            self._last_now = max(self._last_now, estimate)
            return self._last_now

    def close(self) -> None:
        self._client.meta.events.unregister("after-call.s3", self._on_response)
        if self._owns_client:
            self._client.close()

    # -- helpers ----------------------------------------------------------------

    def create_bucket(self) -> None:
        """Create the bucket if it does not exist yet (tests, local dev server)."""
        params: dict[str, Any] = {"Bucket": self.bucket}
        region = self._client.meta.region_name
        if region and region != "us-east-1":  # us-east-1 refuses its own name here
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**params)
        except ClientError as exc:
            if error_code(exc) == "BucketAlreadyOwnedByYou":
                return
            raise self._error(exc, "create bucket") from exc
        except BotoCoreError as exc:
            raise self._error(exc, "create bucket") from exc

    def _s3_key(self, key: str) -> str:
        return self._root + key

    def _probe_clock(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            # An error response still carries a Date (e.g. 403 on HeadBucket
            # for a prefix-scoped policy): the clock is all we wanted.
            if self._offset is None:
                if isinstance(exc, ClientError) and http_status(exc) == 404:
                    raise BucketNotFound(f"S3 bucket {self.bucket!r} does not exist") from exc
                raise self._error(exc, "read the clock (HeadBucket)") from exc
        self._probed = True  # with no Date seen, the wall clock stays in charge

    def _on_response(self, http_response: Any = None, **_: Any) -> None:
        """botocore ``after-call`` hook: sample the server clock from ``Date``."""
        date = http_response.headers.get("Date") if http_response is not None else None
        if not date:
            return
        try:
            server = parsedate_to_datetime(date)
        except (TypeError, ValueError):
            return
        if server.tzinfo is None:
            server = server.replace(tzinfo=UTC)
        # Date is truncated to the second and stamped before we receive it, so a
        # sample is a lower bound of the true offset: keep the largest recent one.
        # Two rotating windows bound "recent" to the last 30-60 s.
        with self._clock_lock:
            mono = self._mono()
            sample = server.timestamp() - mono
            age = mono - self._window_start
            if self._window_max is None or age >= _OFFSET_WINDOW:
                self._previous_max = self._window_max if age < 2 * _OFFSET_WINDOW else None
                self._window_max, self._window_start = sample, mono
            else:
                self._window_max = max(self._window_max, sample)
            previous = self._previous_max
            self._offset = self._window_max if previous is None else max(previous, self._window_max)

    def _unless_missing(self, action: str, fetch: Callable[[], T]) -> T | None:
        """``fetch()``, or None when S3 says the key is missing; other failures translated."""
        try:
            return fetch()
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise self._error(exc, action) from exc
        except BotoCoreError as exc:
            raise self._error(exc, action) from exc

    def _error(self, exc: Exception, action: str) -> QoError:
        """One botocore failure as one qo exception, naming the bucket."""
        return translate(exc, action, bucket=self.bucket, url=self.url)


__all__ = ["DEFAULT_REGION", "S3Store", "configured_endpoint", "make_client"]
