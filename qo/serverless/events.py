"""Lambda event shapes: reading the worker's events, and building events locally.

The worker is triggered by "object created" notifications for the queue's
ready index (``{prefix}/ready/...``). They arrive as

* S3 event notifications (``{"Records": [{"eventSource": "aws:s3", ...}]}``),
  whose object keys are URL-encoded with ``+`` for spaces;
* EventBridge "Object Created" events from S3 (keys not encoded), the way to
  wire a bucket that another stack owns;
* either of those wrapped by SQS or SNS;
* ``{"qo": "kick"}``, sent by the sweeper when ready work sits unclaimed.

S3 delivers at least once, sometimes late or out of order, so a parsed
marker is only a hint: the claim (lease, then record) decides. Anything that
is not a ready marker of this queue is logged and ignored, never raised.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import orjson

from qo.errors import InvalidName
from qo.names import check_name, check_task_id
from qo.protocol.keys import Marker, parse_ready_key
from qo.store.base import check_key

log = logging.getLogger("qo.serverless.events")

KICK_EVENT: dict[str, str] = {"qo": "kick"}
_MAX_DEPTH = 3


@dataclass(frozen=True)
class ReadyEvent:
    """One ready marker an event names: the store key (prefix stripped) and when it appeared."""

    key: str
    marker: Marker
    event_time: float | None = None


@dataclass
class WorkerEvent:
    """What an invocation's event asks for."""

    markers: list[ReadyEvent] = field(default_factory=list)
    records: int = 0  # records seen, including ignored ones
    ignored: int = 0
    kick: bool = False

    def best_first(self) -> list[ReadyEvent]:
        """The distinct markers, best first (priority, then age), as a claimer lists them."""
        unique = {m.key: m for m in self.markers}
        return [unique[k] for k in sorted(unique)]


def parse_worker_event(event: Any, *, bucket: str | None, prefix: str) -> WorkerEvent:
    """The ready markers of this queue (``bucket``, ``prefix``) that ``event`` names.

    ``bucket=None`` accepts any bucket (a store that is not S3, in local runs).
    """
    parser = _Parser(bucket, prefix.strip("/"))
    parser.walk(event, 0)
    return parser.out


class _Parser:
    def __init__(self, bucket: str | None, prefix: str) -> None:
        self.bucket = bucket
        self.root = f"{prefix}/" if prefix else ""
        self.out = WorkerEvent()

    def ignore(self, reason: str, detail: object = None, level: int = logging.WARNING) -> None:
        self.out.ignored += 1
        shown = "" if detail is None else f": {str(detail)[:300]}"
        log.log(level, "ignored event record (%s)%s", reason, shown,
                extra={"event": "record_ignored", "reason": reason})

    def walk(self, obj: Any, depth: int) -> None:
        if depth > _MAX_DEPTH:
            self.out.records += 1
            self.ignore("nested too deep")
            return
        if not isinstance(obj, dict):
            self.out.records += 1
            self.ignore("not a JSON object", type(obj).__name__)
            return
        if obj.get("qo") == "kick":
            self.out.kick = True
            return
        if "Records" in obj:
            records = obj["Records"]
            if not isinstance(records, list):
                self.out.records += 1
                self.ignore("Records is not a list")
                return
            for record in records:
                self.record(record, depth)
            return
        self.out.records += 1
        if obj.get("source") == "aws.s3" and "detail" in obj:
            self.eventbridge(obj)
        elif obj.get("Event") == "s3:TestEvent":
            self.ignore("S3 test event", level=logging.INFO)
        else:
            self.ignore("unknown event shape", sorted(obj)[:10])

    def record(self, record: Any, depth: int) -> None:
        if not isinstance(record, dict):
            self.out.records += 1
            self.ignore("record is not a JSON object", type(record).__name__)
            return
        source = record.get("eventSource") or record.get("EventSource")
        try:
            if source == "aws:sqs":
                self.walk(orjson.loads(record["body"]), depth + 1)
                return
            if source == "aws:sns":
                self.walk(orjson.loads(record["Sns"]["Message"]), depth + 1)
                return
        except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
            self.out.records += 1
            self.ignore(f"malformed {source} record", exc)
            return
        self.out.records += 1
        if source != "aws:s3":
            self.ignore("not an S3 record", source)
            return
        name = record.get("eventName")
        if not isinstance(name, str) or not name.startswith("ObjectCreated:"):
            self.ignore("not an ObjectCreated event", name, level=logging.INFO)
            return
        found = self.bucket_and_key(record, "s3", "S3 record")
        if found is not None:
            bucket, raw_key = found
            self.accept(bucket, unquote_plus(raw_key), record.get("eventTime"))

    def eventbridge(self, event: dict[str, Any]) -> None:
        if event.get("detail-type") != "Object Created":
            self.ignore("not an Object Created event", event.get("detail-type"),
                        level=logging.INFO)
            return
        found = self.bucket_and_key(event, "detail", "EventBridge S3 event")
        if found is not None:
            bucket, key = found
            self.accept(bucket, key, event.get("time"))

    def bucket_and_key(self, event: dict[str, Any], part: str,
                       what: str) -> tuple[str, str] | None:
        """``event[part]``'s bucket name and object key, or None (ignored as malformed)."""
        try:
            bucket = event[part]["bucket"]["name"]
            key = event[part]["object"]["key"]
        except (KeyError, TypeError) as exc:
            self.ignore(f"malformed {what}", f"missing {exc}")
            return None
        if not isinstance(bucket, str) or not isinstance(key, str):
            self.ignore(f"malformed {what}", "bucket or key is not a string")
            return None
        return bucket, key

    def accept(self, bucket: str, s3_key: str, when: Any) -> None:
        if self.bucket is not None and bucket != self.bucket:
            self.ignore("another bucket", bucket)
            return
        if not s3_key.startswith(self.root):
            self.ignore("outside the queue's prefix", s3_key)
            return
        key = s3_key[len(self.root):]
        marker = parse_ready_key(key)
        if marker is None:
            # e.g. ready/{queue}/!paused: expected, not a task
            self.ignore("not a ready marker", key, level=logging.INFO)
            return
        try:
            check_key(key)
            check_name(marker.queue, "queue name")
            check_task_id(marker.task_id)
            check_name(marker.task_type, "task type")
        except InvalidName as exc:
            self.ignore("invalid ready marker", exc)
            return
        self.out.markers.append(ReadyEvent(key, marker, parse_time(when)))


def parse_time(value: Any) -> float | None:
    """An ISO 8601 event time (``2024-05-01T12:00:00.000Z``) as epoch seconds, or None."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def iso_time(ts: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- building events (local runs, tests) ------------------------------------------------


def s3_record(bucket: str, s3_key: str, *, event_time: float | None = None,
              event_name: str = "ObjectCreated:Put", region: str = "us-east-1") -> dict[str, Any]:
    """One S3 notification record, shaped as S3 sends it (the key URL-encoded)."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": iso_time(event_time),
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAQOLOCALEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {
            "x-amz-request-id": secrets.token_hex(8).upper(),
            "x-amz-id-2": secrets.token_hex(32),
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "qo-ready",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "AQOLOCALEXAMPLE"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": {
                "key": quote_plus(s3_key, safe="/"),
                "size": 0,
                "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                "sequencer": f"{time.time_ns():018X}",
            },
        },
    }


def s3_event(bucket: str, s3_keys: list[str], **options: Any) -> dict[str, Any]:
    return {"Records": [s3_record(bucket, k, **options) for k in s3_keys]}


def scheduled_event(rule: str = "qo-sweeper", region: str = "us-east-1") -> dict[str, Any]:
    """An EventBridge "Scheduled Event", as the sweeper's schedule sends it."""
    return {
        "version": "0",
        "id": secrets.token_hex(16),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": iso_time().split(".")[0] + "Z",
        "region": region,
        "resources": [f"arn:aws:events:{region}:123456789012:rule/{rule}"],
        "detail": {},
    }


def function_url_event(method: str, path: str, body: str | bytes | None = None, *,
                       query: dict[str, str] | None = None, base64: bool = False,
                       headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A Lambda Function URL request (payload format 2.0)."""
    import base64 as b64

    raw = body.encode() if isinstance(body, str) else body
    text = None
    if raw is not None:
        text = b64.b64encode(raw).decode() if base64 else raw.decode("utf-8", "replace")
    query_string = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in (query or {}).items())
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query_string,
        "headers": {"content-type": "application/json", "host": "qo.lambda-url.example",
                    **(headers or {})},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "qolocal",
            "domainName": "qo.lambda-url.example",
            "domainPrefix": "qo",
            "http": {"method": method.upper(), "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "qo-local"},
            "requestId": secrets.token_hex(16),
            "routeKey": "$default",
            "stage": "$default",
            "time": datetime.now(UTC).strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(time.time() * 1000),
        },
        "isBase64Encoded": base64,
    }
    if query:
        event["queryStringParameters"] = dict(query)
    if text is not None:
        event["body"] = text
    return event


class LocalContext:
    """A stand-in for the Lambda context object: a deadline and a few names."""

    def __init__(self, timeout: float = 900.0, function_name: str = "qo-local") -> None:
        self._deadline = time.monotonic() + timeout
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 512
        self.aws_request_id = secrets.token_hex(16)
        self.invoked_function_arn = (
            f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}")

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
