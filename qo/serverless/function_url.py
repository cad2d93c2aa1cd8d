"""The HTTP side of the API function: Function URL events in, Lambda responses out.

A ``Request`` is the part of a payload format 2.0 event the routes read (method,
path, query, a body bounded by ``QO_API_MAX_BODY``). Errors become
``{"error": CODE, "message": TEXT}`` bodies whose status and code are those of
the error's kind (``qo.errors.ErrorKind``); ``refusal`` does that for a
``QoError``, ``HttpError`` for an answer the API chooses itself (405, a
malformed body). Nothing here knows a route: that is ``qo.serverless.api``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from qo.errors import ErrorKind, QoError, shorten_values

#: The API's logger: plumbing and routes log under one name.
log = logging.getLogger("qo.serverless.api")

JSON_HEADERS = {"content-type": "application/json"}


class HttpError(Exception):
    """An error answered as is: status, machine-readable code, one-line message."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    @classmethod
    def of(cls, kind: ErrorKind, message: str) -> HttpError:
        """The answer for an error of ``kind``: its status and code."""
        return cls(kind.http_status, kind.code, message)


def bad_request(message: str) -> HttpError:
    return HttpError.of(ErrorKind.INVALID, message)


def too_large(limit: int) -> HttpError:
    return HttpError.of(ErrorKind.TOO_LARGE, f"request body is over the limit of {limit:,} bytes")


class Request:
    """The parts of a Function URL event the routes use."""

    def __init__(self, event: dict[str, Any], max_body: int) -> None:
        context = event.get("requestContext")
        http = context.get("http") if isinstance(context, dict) else None
        if not isinstance(http, dict) or not isinstance(http.get("method"), str):
            raise bad_request("not a Function URL request (payload format 2.0)")
        self.method = http["method"].upper()
        path = event.get("rawPath") or http.get("path") or "/"
        if not isinstance(path, str):
            raise bad_request("invalid request path")
        self.path = path.rstrip("/") or "/"
        query = event.get("queryStringParameters")
        self.query: dict[str, str] = query if isinstance(query, dict) else {}
        self.raw = self._body(event, max_body)
        self.params: dict[str, str] = {}

    @staticmethod
    def _body(event: dict[str, Any], max_body: int) -> bytes:
        body = event.get("body")
        if body is None or body == "":
            return b""
        if not isinstance(body, str):
            raise bad_request("request body must be text")
        if len(body) > 2 * max_body + 16:  # refuse before decoding anything huge
            raise too_large(max_body)
        if event.get("isBase64Encoded"):
            try:
                raw = base64.b64decode(body, validate=True)
            except (binascii.Error, ValueError):
                raise bad_request("request body is not valid base64") from None
        else:
            raw = body.encode("utf-8", "surrogatepass")
        if len(raw) > max_body:
            raise too_large(max_body)
        return raw

    def json(self, *, required: bool = True) -> Any:
        if not self.raw.strip():
            if required:
                raise bad_request("request body is empty: send a JSON object")
            return None
        try:
            return orjson.loads(self.raw)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"malformed JSON in request body: {exc}") from None

    def json_object(self, *, required: bool = True) -> dict[str, Any] | None:
        data = self.json(required=required)
        if data is None and not required:
            return None
        if not isinstance(data, dict):
            raise bad_request(f"request body must be a JSON object, not {json_type(data)}")
        return data


def json_type(value: Any) -> str:
    """What a decoded JSON value is, for a message: "an object", "null", ..."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def describe_validation(exc: ValidationError, where: str = "") -> str:
    """A pydantic error as one line: ``field: problem; other: problem``."""
    parts = []
    errors = exc.errors(include_url=False)
    for err in errors[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        loc = f"{where}.{loc}" if where and loc else (where or loc)
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = len(errors) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# -- errors as answers ------------------------------------------------------------------


def answer_error(exc: Exception, request_id: str) -> tuple[int, dict[str, str], dict[str, str]]:
    """Status, body and extra headers for an exception a route raised.

    Unexpected exceptions are logged with their traceback and answered
    without detail but the request id.
    """
    if isinstance(exc, HttpError):
        return exc.status, error_body(exc.code, exc.message), exc.headers
    if isinstance(exc, ValidationError):
        kind = ErrorKind.INVALID
        return kind.http_status, error_body(kind.code, describe_validation(exc)), {}
    if isinstance(exc, QoError):
        status, body = refusal(exc, request_id)
        retry_after = getattr(exc, "retry_after", None)  # e.g. QueueFull: when to try again
        if isinstance(retry_after, (int, float)) and retry_after >= 0:
            return status, body, {"Retry-After": str(max(1, math.ceil(retry_after)))}
        return status, body, {}
    log.error("request %s failed", request_id, exc_info=exc)
    status, body = internal_error(request_id)
    return status, body, {}


def refusal(exc: QoError, request_id: str) -> tuple[int, dict[str, str]]:
    """The status and body for a ``QoError``: both are its kind's; only the wording varies.

    Internal errors are logged with their traceback and answered without
    detail; configuration errors are logged and name what to check.
    """
    kind = exc.kind
    if kind is ErrorKind.INTERNAL:
        log.error("request %s failed", request_id, exc_info=exc)
        return internal_error(request_id)
    if kind in (ErrorKind.MISCONFIGURED, ErrorKind.UNSUPPORTED_STORE):  # retrying cannot help
        log.error("request %s: misconfigured: %s", request_id, exc,
                  extra={"event": "api_misconfigured"})
        message = (f"the API is misconfigured: {exc}; check the function's QO_QUEUE, "
                   "its role and its bucket")
    elif kind is ErrorKind.UNAVAILABLE:
        log.warning("request %s: unavailable: %s", request_id, exc)
        message = f"temporarily unavailable, try again: {exc}"
    else:
        message = str(exc)
    return kind.http_status, error_body(kind.code, message)


def internal_error(request_id: str) -> tuple[int, dict[str, str]]:
    kind = ErrorKind.INTERNAL
    return kind.http_status, error_body(kind.code, f"internal error (request {request_id})")


def error_body(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": shorten_values(" ".join(message.split()))}


# -- the response -----------------------------------------------------------------------


@dataclass(frozen=True)
class TextBody:
    """A route's answer that is not JSON (``GET /metrics``): sent as it is."""

    text: str
    content_type: str


def response(status: int, body: Any, headers: dict[str, str]) -> dict[str, Any]:
    """A Lambda (payload format 2.0) response with a JSON body (or a ``TextBody``)."""
    if isinstance(body, TextBody):
        return {"statusCode": status, "headers": {"content-type": body.content_type, **headers},
                "body": body.text, "isBase64Encoded": False}
    return {
        "statusCode": status,
        "headers": {**JSON_HEADERS, **headers},
        "body": orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS, default=str).decode(),
        "isBase64Encoded": False,
    }


def method_and_path(event: Any) -> tuple[str, str]:
    """The request's method and path for the access log, whatever the event is."""
    try:
        return str(event["requestContext"]["http"]["method"]), str(event.get("rawPath"))[:200]
    except (KeyError, TypeError):
        return "?", "?"


__all__ = ["HttpError", "Request", "TextBody", "bad_request", "describe_validation", "refusal",
           "response"]
