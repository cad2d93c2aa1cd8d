"""Amazon S3 (or any S3-compatible endpoint) as a qo store.

S3 already has the contract qo needs: create-only puts (``If-None-Match: *``),
compare-and-swap puts and deletes (``If-Match``), lexicographic listing and a
clock (the ``Date`` header of every response). This module only maps the
contract onto boto3 calls and every botocore failure onto a one-line
``qo.errors`` exception, so nothing above it ever sees botocore.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    TokenRetrievalError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from qo.errors import (
    AccessDenied,
    BucketNotFound,
    ConfigError,
    NotSupported,
    PreconditionFailed,
    QoError,
    StoreError,
    StoreUnavailable,
)
from qo.store.base import (
    LIST_PAGE_SIZE,
    ObjectInfo,
    Page,
    StoredObject,
    check_key,
    check_prefix,
    paginate,
)

DEFAULT_REGION = "us-east-1"

#: The clock estimate keeps the largest Date-header offset sample of the last
#: one to two windows (seconds, on the monotonic clock); older ones are dropped.
_OFFSET_WINDOW = 30.0
#: S3 answers 412 when a precondition fails, and 409 when another conditional
#: write on the same key is in flight: for the caller, both mean "you lost".
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
#: HEAD responses have no body, so botocore reports the bare status as code.
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_UNAVAILABLE_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling"}
)
_CREDENTIAL_ERRORS = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    TokenRetrievalError,
    ProfileNotFound,
    NoRegionError,
)
_NETWORK_ERRORS = (BotoConnectionError, HTTPClientError)
#: Codes a store uses for "I do not implement what you asked": never an outage.
_UNSUPPORTED_CODES = frozenset({"NotImplemented", "NotSupported", "UnsupportedOperation"})
#: A 400 whose message names one of these is about an unsupported header.
_CONDITIONAL_HEADERS = ("if-match", "if-none-match", "ifmatch", "ifnonematch", "header")


def _unsupported(code: str, status: int, message: str) -> bool:
    """501, or a 400 that says a header (e.g. If-Match) is not supported."""
    if status == 501 or code in _UNSUPPORTED_CODES:
        return True
    text = message.lower()
    return status == 400 and any(h in text for h in _CONDITIONAL_HEADERS) and (
        "not supported" in text or "not implemented" in text or "unsupported" in text)


def configured_endpoint() -> str | None:
    """The endpoint override botocore will pick up from the environment, if any."""
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def make_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    max_pool_connections: int = 64,
    max_attempts: int = 5,
) -> Any:
    """A boto3 S3 client configured for qo (retries, timeouts, pool size).

    A fresh Session per client, because Sessions are not thread safe while
    clients are. Any endpoint override (argument or ``AWS_ENDPOINT_URL*``)
    gets path-style addressing: local servers (moto, MinIO) cannot resolve
    ``bucket.localhost``, and S3-compatible services all accept path style.
    """
    options: dict[str, Any] = {
        "retries": {"mode": "standard", "max_attempts": max_attempts},
        "max_pool_connections": max_pool_connections,
        "connect_timeout": 5,
        "read_timeout": 30,
    }
    if endpoint_url or configured_endpoint():
        options["s3"] = {"addressing_style": "path"}
    try:
        session = boto3.session.Session()
        kwargs: dict[str, Any] = {
            "region_name": region or session.region_name or DEFAULT_REGION,
            "config": Config(**options),
        }
        if endpoint_url:
            kwargs["endpoint_url"] = endpoint_url
        return session.client("s3", **kwargs)
    except (BotoCoreError, ValueError) as exc:
        raise ConfigError(f"cannot configure the S3 client: {_one_line(exc)}") from exc


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
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._s3_key(key))
            with resp["Body"] as stream:
                body = stream.read()
        except ClientError as exc:
            if _code(exc) in _MISSING_KEY_CODES:
                return None
            raise self._error(exc, f"get {key!r}") from exc
        except BotoCoreError as exc:
            raise self._error(exc, f"get {key!r}") from exc
        return StoredObject(key, body, resp["ETag"], resp["LastModified"].timestamp())

    def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=self._s3_key(key))
        except ClientError as exc:
            # A HEAD on a missing bucket is also a bare 404 on real S3: None.
            if _code(exc) in _MISSING_KEY_CODES:
                return None
            raise self._error(exc, f"head {key!r}") from exc
        except BotoCoreError as exc:
            raise self._error(exc, f"head {key!r}") from exc
        return ObjectInfo(
            key, resp["ETag"], resp["ContentLength"], resp["LastModified"].timestamp()
        )

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
            code = _code(exc)
            # If-Match on a missing key: S3 (and moto) answer 404 NoSuchKey.
            if (
                code in _PRECONDITION_CODES
                or _status(exc) == 412
                or (if_match is not None and code in _MISSING_KEY_CODES)
            ):
                raise PreconditionFailed(f"conditional put on {key!r} lost") from None
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
            code = _code(exc)
            if code in _MISSING_KEY_CODES:
                return  # conditional delete of a missing key: nothing to do
            if code in _PRECONDITION_CODES or _status(exc) == 412:
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
            if _code(exc) == "BucketAlreadyOwnedByYou":
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
                if isinstance(exc, ClientError) and _status(exc) == 404:
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

    def _error(self, exc: Exception, action: str) -> QoError:
        """One botocore failure as one qo exception, naming the bucket."""
        where = f"S3 bucket {self.bucket!r}"
        if isinstance(exc, ClientError):
            code, status = _code(exc), _status(exc)
            message = _one_line(exc.response.get("Error", {}).get("Message") or "")
            detail = f"{code}: {message}" if message else code
            if code == "NoSuchBucket":
                return BucketNotFound(f"{where} does not exist ({action})")
            if code == "AccessDenied" or status == 403:
                return AccessDenied(f"access denied to {self.url} ({action}): {detail}")
            if _unsupported(code, status, message):
                return NotSupported(
                    f"{where} does not support this request ({action}): {detail} "
                    f"(HTTP {status})")
            if code in _UNAVAILABLE_CODES or status >= 500:
                return StoreUnavailable(f"{where} unavailable ({action}): {detail}")
            return StoreError(f"{where}: {action} failed with {detail} (HTTP {status})")
        if isinstance(exc, _CREDENTIAL_ERRORS):
            return ConfigError(
                f"no AWS credentials found for {where}: set AWS_PROFILE or "
                f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY ({_one_line(exc)})"
            )
        if isinstance(exc, _NETWORK_ERRORS):
            return StoreUnavailable(f"{where} unreachable ({action}): {_one_line(exc)}")
        return StoreError(f"{where}: {action} failed: {_one_line(exc)}")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or _status(exc))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _one_line(value: object) -> str:
    return " ".join(str(value).split())
