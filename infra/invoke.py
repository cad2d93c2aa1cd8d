"""Invoke qo's Lambda handlers in this process, with synthetic events.

Point the environment at a queue first (``infra/local-s3`` prints it), and
name the app: ``export QO_APP=qo.examples.demo:app``. Then::

    python infra/invoke.py api POST /tasks '{"type": "add", "input": {"x": 1, "y": 2}}'
    python infra/invoke.py worker              # one S3 event per ready marker, as S3 sends
    python infra/invoke.py worker --kick       # drain the queue (the sweeper's kick)
    python infra/invoke.py sweeper             # the per-minute EventBridge schedule
    python infra/invoke.py api GET /tasks/ID

Each prints the handler's return value as JSON. ``--timeout`` sets the
invocation's time budget (seconds, default 300).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from qo.protocol import keys
from qo.protocol.keys import parse_ready_key
from qo.serverless import runtime
from qo.serverless.events import (
    KICK_EVENT,
    LocalContext,
    function_url_event,
    s3_event,
    scheduled_event,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infra/invoke.py", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=300.0, help="invocation budget, s")
    sub = parser.add_subparsers(dest="function", required=True)
    worker = sub.add_parser("worker", help="the worker, with S3 events for the ready markers")
    worker.add_argument("--kick", action="store_true", help="send the sweeper's kick instead")
    worker.add_argument("--limit", type=int, default=100, help="at most this many events")
    sub.add_parser("sweeper", help="the sweeper, with a scheduled event")
    api = sub.add_parser("api", help="the API, with a Function URL request")
    api.add_argument("method")
    api.add_argument("path")
    api.add_argument("body", nargs="?", help="JSON body (or @file)")
    args = parser.parse_args(argv)

    context = LocalContext(args.timeout, f"qo-{args.function}")
    if args.function == "worker":
        from qo.serverless.worker import handler

        result = handler(KICK_EVENT if args.kick else _ready_events(args.limit), context)
    elif args.function == "sweeper":
        from qo.serverless.sweeper import handler

        result = handler(scheduled_event(), context)
    else:
        from qo.serverless.api import handler

        body = args.body
        if body is not None and body.startswith("@"):
            body = Path(body[1:]).read_text(encoding="utf-8")
        path, _, query = args.path.partition("?")
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        result = handler(function_url_event(args.method, path, body, query=params or None),
                         context)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2, default=str).decode())
    sys.stdout.write("\n")
    return 0


def _ready_events(limit: int) -> dict:
    """The notification S3 would have sent for the ready markers that exist now."""
    store = runtime().queue.store
    bucket = getattr(store, "bucket", "local")
    prefix = getattr(store, "prefix", "")
    root = f"{prefix}/" if prefix else ""
    found = [i.key for i in store.list(keys.READY, limit=limit) if parse_ready_key(i.key)]
    return s3_event(bucket, [root + k for k in found])


if __name__ == "__main__":
    sys.exit(main())
