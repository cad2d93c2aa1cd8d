"""``qo submit``: one task, or a batch from a file or stdin, with the app's declared options."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError

from qo.app import App
from qo.cli import common
from qo.cli.common import (
    CliError,
    JsonOption,
    QueueOption,
    as_param,
    emit_json,
    note,
    say,
)
from qo.errors import QoError, shorten
from qo.protocol.registry import UnregisteredType
from qo.protocol.submit import InvalidBatchItem, SubmitRequest, prepare_batch, submit_all
from qo.queue import Queue, TaskHandle

#: Batches are written in chunks of this many tasks, for progress and memory.
BATCH_CHUNK = 256


# -- submit -------------------------------------------------------------------------


def read_json_arg(value: str, what: str) -> Any:
    """``--input`` text: inline JSON, ``@file.json``, or ``-`` for stdin."""
    source = what
    if value == "-":
        text = sys.stdin.read()
        source = f"{what} (stdin)"
    elif value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot read {what} file {shorten(str(path))}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise CliError(f"{what} file {shorten(str(path))} is not UTF-8 text") from None
        source = f"{what} file {shorten(str(path))}"
    else:
        text = value
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"malformed JSON in {source}: {exc}") from None


def parse_tags(tags: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for tag in tags or []:
        name, sep, value = tag.partition("=")
        if not sep or not name:
            raise CliError(f"invalid tag {shorten(tag)}: expected NAME=VALUE")
        out[name] = value
    return out


def read_batch(source: str) -> list[dict[str, Any]]:
    """A JSON array of objects, or one JSON object per line."""
    if source == "-":
        text, where = sys.stdin.read(), "batch (stdin)"
    else:
        path = Path(source).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise CliError(f"cannot read batch file {shorten(str(path))}: {reason}") from None
        where = f"batch file {shorten(str(path))}"
    stripped = text.strip()
    if not stripped:
        raise CliError(f"{where} is empty")
    items: list[Any]
    if stripped.startswith("["):
        try:
            items = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            raise CliError(f"malformed JSON in {where}: {exc}") from None
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise CliError(f"malformed JSON on line {n} of {where}: {exc}") from None
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise CliError(f"item {n} of {where} is not a JSON object")
    return items


def app_defaults(app: App, task_type: str) -> dict[str, Any]:
    """What ``App.submit`` would fill in for this type (for batches with ``--app``)."""
    return app.submit_defaults(app.definition(task_type))


def submit(
    ctx: typer.Context,
    task_type: Annotated[str | None, typer.Argument(
        metavar="TYPE", help="Task type (a handler name of the app).", show_default=False)] = None,
    input: Annotated[str | None, typer.Option(
        "--input", "-i", metavar="JSON|@FILE|-",
        help="Task input: inline JSON, @file.json, or - for stdin.")] = None,
    priority: Annotated[int | None, typer.Option(
        min=0, max=255, help="0-255, higher runs first (default: 128).")] = None,
    delay: Annotated[float | None, typer.Option(
        parser=as_param(common.parse_duration), metavar="DURATION",
        help="Run after this long: 90 (seconds), 30s, 5m, 1h, 2d.")] = None,
    at: Annotated[datetime | None, typer.Option(
        parser=as_param(common.parse_datetime), metavar="ISO8601",
        help="Run at this time, with a time zone (2030-01-31T09:00:00Z).")] = None,
    key: Annotated[str | None, typer.Option(
        help="Idempotency key: resubmitting it returns the existing task.")] = None,
    key_scope: Annotated[str | None, typer.Option(
        metavar="type|queue|global|NAME", help="Where the key is unique (default: type).")] = None,
    queue_name: Annotated[str | None, typer.Option(
        "--queue-name", metavar="NAME", help="Queue to submit to (default: default).")] = None,
    max_attempts: Annotated[int | None, typer.Option(
        min=1, help="Attempts before the task is dead (default: 3).")] = None,
    timeout: Annotated[float | None, typer.Option(
        parser=as_param(common.parse_duration), metavar="SECONDS",
        help="Per-attempt time limit.")] = None,
    tag: Annotated[list[str] | None, typer.Option(
        metavar="NAME=VALUE", help="A tag (repeatable).")] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", metavar="NAME[=VALUE]",
        help="A label a worker needs to run it (repeatable; default: the type's).")] = None,
    app_spec: Annotated[str | None, typer.Option(
        "--app", metavar="MODULE:OBJ",
        help="Use this App's task defaults and refuse types it does not know.")] = None,
    after: Annotated[list[str] | None, typer.Option(
        "--after", metavar="ID",
        help="Wait for this task to end first (repeatable): the task is blocked until then.")
    ] = None,
    trigger: Annotated[str | None, typer.Option(
        metavar="all_success|all_done|none_failed|always",
        help="When it runs once its --after tasks end (default: all_success).")] = None,
    batch: Annotated[str | None, typer.Option(
        metavar="FILE|-",
        help="Submit many: a JSON array or JSON lines of submit requests.")] = None,
    unregistered: Annotated[bool, typer.Option(
        "--unregistered",
        help="Submit a type no worker has published yet (its workers are not deployed).")
    ] = False,
    help_input: Annotated[bool, typer.Option(
        "--help-input", help="Show the input the type's handler takes, and submit nothing.")
    ] = False,
    queue: QueueOption = None,
    json: JsonOption = False,
) -> None:
    """Submit a task (or a batch); prints the task id(s).

    Without --app, the type's options and input schema come from the registry
    its workers published (``qo types``); an unknown type is refused.
    """
    if delay is not None and at is not None:
        raise CliError("give either --delay or --at, not both")
    app = common.bind_app(ctx, queue, common.load_app(app_spec)) if app_spec else None
    target = app.queue if app is not None else common.open_queue(ctx, queue)
    if help_input:
        if task_type is None:
            raise CliError("--help-input needs a TYPE")
        show_input(target, app, task_type, as_json=json)
        return
    options: dict[str, Any] = {
        "priority": priority, "delay": delay, "at": at, "key": key, "key_scope": key_scope,
        "queue": queue_name, "max_attempts": max_attempts, "timeout": timeout,
        "tags": parse_tags(tag) or None, "labels": label or None,
        "depends_on": after or None, "trigger": trigger,
    }
    if trigger is not None and not after:
        raise CliError("--trigger needs at least one --after ID")
    options = {k: v for k, v in options.items() if v is not None}
    if batch is not None:
        if task_type is not None or input is not None or options:
            raise CliError("--batch takes every field from the file; give no TYPE or task options")
        handles = _submit_batch(target, app, read_batch(batch), unregistered)
    elif task_type is None:
        raise CliError("missing TYPE (or --batch FILE)")
    else:
        payload = read_json_arg(input, "--input") if input is not None else None
        if app is not None:
            handles = [app.submit(task_type, payload, **options)]
        else:
            handles = [target.submit(task_type, payload, allow_unregistered=unregistered,
                                     **options)]
    _print_submitted(handles, json, single=batch is None)


def _submit_batch(queue: Queue, app: App | None, items: list[dict[str, Any]],
                  unregistered: bool = False) -> list[TaskHandle]:
    """Validate every request, then write them in chunks (with a progress bar on a TTY)."""
    reqs = []
    for n, item in enumerate(items, 1):
        fields = dict(item)
        try:
            if app is not None:
                fields = app_defaults(app, str(fields.get("type"))) | fields
            else:
                fields = queue.resolve(fields, allow_unregistered=unregistered)
            reqs.append(SubmitRequest(**fields))
        except (ValidationError, QoError) as exc:
            raise CliError(f"batch item {n}: {_reason(exc)}") from None
    now = queue.store.now()
    try:  # sizes, delay+at...: refuse before writing anything
        prepared = prepare_batch(reqs, queue.settings, now, queue.aging_of())
    except InvalidBatchItem as exc:
        raise CliError(f"batch item {exc.index + 1}: {_reason(exc.error)}") from None
    queue.check_store()  # the first submit refuses a store that cannot keep qo's guarantees
    queue.admit(prepared)  # QueueFull past a queue's max_depth: nothing is written
    handles: list[TaskHandle] = []
    with common.progress(len(prepared), "submitting") as advance:
        for start in range(0, len(prepared), BATCH_CHUNK):
            chunk = prepared[start : start + BATCH_CHUNK]
            done = submit_all(queue.store, chunk, queue.settings, now, hooks=queue.hooks)
            handles += [TaskHandle(queue, d.id, d.created) for d in done]
            advance(len(chunk))
    return handles


def show_input(queue: Queue, app: App | None, task_type: str, *, as_json: bool) -> None:
    """``--help-input``: the type's published definition (or the app's), for people or JSON."""
    if app is not None:
        definition = app.definition(task_type).published(app.default_queue)
    else:
        found = queue.registry.definition(task_type)
        if found is None:
            known = ", ".join(queue.registry.listing().types()) or "none"
            raise UnregisteredType(f"unknown task type {shorten(task_type)}: no worker "
                                   f"published it; registered: {known}")
        definition = found
    schema = definition.input_schema
    if as_json:
        emit_json({"type": definition.name, "version": definition.version,
                   "doc": definition.doc, "input_schema": schema})
        return
    say(f"{definition.name} (version {definition.version}, queue {definition.queue})")
    if definition.doc:
        say("")
        for line in definition.doc.splitlines():
            say(f"  {line}")
    say("")
    if schema is None:
        say("input: not described (the handler's hints have no JSON schema)")
        return
    props: dict[str, Any] = schema.get("properties") or {}
    if not props:
        say("input: none")
        return
    required = set(schema.get("required") or ())
    say("input (a JSON object):")
    for name, prop in props.items():
        kind = _schema_type(prop)
        extra = "required" if name in required else f"default {orjson.dumps(prop.get('default')).decode()}"
        say(f"  {name}: {kind} ({extra})")
    if len(props) == 1:
        say(f"or the value of {next(iter(props))} alone")


def _schema_type(prop: dict[str, Any]) -> str:
    if "type" in prop:
        kind = prop["type"]
        if kind == "array" and isinstance(prop.get("items"), dict):
            return f"array of {_schema_type(prop['items'])}"
        return " or ".join(kind) if isinstance(kind, list) else str(kind)
    if "enum" in prop:
        return "one of " + ", ".join(orjson.dumps(v).decode() for v in prop["enum"])
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return " or ".join(_schema_type(p) for p in prop[key] if isinstance(p, dict))
    return "any"


def _reason(exc: ValidationError | QoError) -> str:
    return common.describe_validation(exc) if isinstance(exc, ValidationError) else str(exc)


def _print_submitted(handles: list[TaskHandle], as_json: bool, single: bool) -> None:
    rows = []
    for h in handles:
        row: dict[str, Any] = {"id": h.id, "created": h.created}
        if not h.created:
            row["status"] = h.status().value  # one GET, only for duplicates
        rows.append(row)
    if as_json:
        emit_json(rows[0] if single else rows)
        return
    for row in rows:
        say(row["id"])
        if not row["created"]:
            note(f"existing task {row['id']} (status {row['status']}): "
                 "the idempotency key matched, nothing new was submitted")
    if not single:
        created = sum(r["created"] for r in rows)
        note(f"submitted {created} task(s), {len(rows) - created} existing")


