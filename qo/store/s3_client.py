"""The boto3 side of the S3 store: the client qo configures and botocore's errors as qo's.

``make_client`` builds the client (retries, timeouts, pool size, path-style
addressing for endpoint overrides). ``translate`` turns any botocore failure
into one one-line ``qo.errors`` exception naming the bucket, so nothing above
``qo.store.s3`` ever sees botocore. The predicates (``is_missing``,
``lost_condition``) are the answers the store methods treat as results
rather than failures.
"""

from __future__ import annotations

import os
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
    QoError,
    StoreError,
    StoreUnavailable,
)

DEFAULT_REGION = "us-east-1"

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


# -- the client ---------------------------------------------------------------------


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
        raise ConfigError(f"cannot configure the S3 client: {one_line(exc)}") from exc


# -- answers that are results -------------------------------------------------------


def is_missing(exc: ClientError) -> bool:
    """No such key (or, for a HEAD, a bare 404)."""
    return error_code(exc) in _MISSING_KEY_CODES


def lost_condition(exc: ClientError) -> bool:
    """A conditional write lost: its precondition failed or a rival write was in flight."""
    return error_code(exc) in _PRECONDITION_CODES or http_status(exc) == 412


# -- failures as qo errors ----------------------------------------------------------


def translate(exc: Exception, action: str, *, bucket: str, url: str) -> QoError:
    """One botocore failure as one qo exception, naming the bucket."""
    where = f"S3 bucket {bucket!r}"
    if isinstance(exc, ClientError):
        code, status = error_code(exc), http_status(exc)
        message = one_line(exc.response.get("Error", {}).get("Message") or "")
        detail = f"{code}: {message}" if message else code
        if code == "NoSuchBucket":
            return BucketNotFound(f"{where} does not exist ({action})")
        if code == "AccessDenied" or status == 403:
            return AccessDenied(f"access denied to {url} ({action}): {detail}")
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
            f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY ({one_line(exc)})"
        )
    if isinstance(exc, _NETWORK_ERRORS):
        return StoreUnavailable(f"{where} unreachable ({action}): {one_line(exc)}")
    return StoreError(f"{where}: {action} failed: {one_line(exc)}")


def _unsupported(code: str, status: int, message: str) -> bool:
    """501, or a 400 that says a header (e.g. If-Match) is not supported."""
    if status == 501 or code in _UNSUPPORTED_CODES:
        return True
    text = message.lower()
    return status == 400 and any(h in text for h in _CONDITIONAL_HEADERS) and (
        "not supported" in text or "not implemented" in text or "unsupported" in text)


def error_code(exc: ClientError) -> str:
    """The S3 error code, or the bare HTTP status when the response had no body."""
    return str(exc.response.get("Error", {}).get("Code") or http_status(exc))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def one_line(value: object) -> str:
    return " ".join(str(value).split())
