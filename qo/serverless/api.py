"""The API function: a JSON API behind a Lambda Function URL (``AWS_IAM`` auth).

Requests arrive in payload format 2.0. Routes:

==========================  =================================================  ============
``POST /tasks``             submit one task: a ``SubmitRequest`` object        201, or 200
                            (``type``, ``input``, ``priority``, ``delay``,      for an
                            ``at``, ``key``, ``key_scope``, ``queue``,          idempotent
                            ``max_attempts``, ``retry``, ``timeout``, ``tags``, duplicate
                            ``version``, ``labels``, ``allow_unregistered``)
``POST /tasks/batch``       ``{"tasks": [SubmitRequest, ...]}`` (at most 1000)  201 (200 if
                                                                                none is new)
``GET /tasks``              newest tasks; ``?status=&queue=&limit=&after=``     200
``GET /tasks/{id}``         one task (``?traceback=1`` adds the error's)       200, 404
``POST /tasks/{id}/cancel`` optional ``{"reason": "..."}``                      200, 404, 409
``POST /tasks/{id}/retry``  run a dead, cancelled or failed task again         200, 404, 409
``GET /stats``              counts by queue and status                         200
``GET /stats/fleet``        the fleet statistics snapshot (``?fresh=1``: now)  200
``GET /metrics``            the same as Prometheus text (``prometheus_client``) 200
``GET /schedules``          cron schedules (when this qo has a scheduler)      200
==========================  =================================================  ============

Errors are ``{"error": CODE, "message": TEXT}``. For every ``QoError`` the
status and the code are those of its kind (``qo.errors.ErrorKind``, the table
docs/protocol.md shows), never chosen here by error class: 400
``bad_request`` for a malformed body or invalid fields (nothing is stored),
404 ``not_found`` for an unknown task, schedule or route, 409 ``conflict``
for an idempotency conflict or an impossible transition, 413
``payload_too_large`` for a body over ``QO_API_MAX_BODY`` (1 MiB) or a
payload over the queue's limit, 503 ``unavailable`` when the store is
unavailable (a retry may succeed), 500 ``misconfigured`` (or
``unsupported_store``) with the reason when the bucket is missing, access is
denied or the configuration is wrong (a retry cannot succeed, so it is not a
503 that clients would retry), and 500 ``internal_error`` otherwise; 405
for a wrong method. Responses never carry a stack trace: unexpected errors
are logged with the request id, which the response names.

With ``QO_APP`` set, submits use the app's defaults for the task type
(queue, priority, attempts, retry, timeout), like ``qo submit --app``, and
unknown task types are refused. Without it they use the task-type registry
the workers published (``qo.protocol.registry``): the same defaults, the
input checked against the handler's schema (400 with the reason), and an
unknown type refused (400, listing the known ones) unless the request says
``"allow_unregistered": true``. A warm function lists the registry at most
once per ``registry_ttl`` (30 s).

This module is the routes; reading the event and shaping the answer (errors
included) is ``qo.serverless.function_url``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from qo import fleet_metrics
from qo.errors import ErrorKind, QoError, shorten
from qo.models import Status
from qo.names import check_free_text, check_task_id
from qo.protocol import admin, deps, fleetstats, records
from qo.protocol import graph as graphs
from qo.protocol.admin import TaskView
from qo.protocol.submit import (
    InvalidBatchItem,
    SubmitRequest,
)
from qo.scheduler import list_schedules
from qo.serverless import Runtime, runtime, telemetry
from qo.serverless.function_url import (
    HttpError,
    Request,
    TextBody,
    answer_error,
    bad_request,
    describe_validation,
    json_type,
    method_and_path,
    refusal,
    response,
)
from qo.serverless.sweeper import plain

log = logging.getLogger("qo.serverless.api")

MAX_BATCH = 1000
MAX_LIST = 100


# -- routes -----------------------------------------------------------------------------

Handler = Callable[[Runtime, Request], tuple[int, Any]]
_ROUTES: list[tuple[re.Pattern[str], dict[str, Handler]]] = []


def route(pattern: str, method: str) -> Callable[[Handler], Handler]:
    regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

    def register(fn: Handler) -> Handler:
        for existing, methods in _ROUTES:
            if existing.pattern == regex.pattern:
                methods[method] = fn
                return fn
        _ROUTES.append((regex, {method: fn}))
        return fn

    return register


def _at(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


def _submit_request(rt: Runtime, fields: Any, where: str = "") -> SubmitRequest:
    app = rt.app
    if not isinstance(fields, dict):
        raise bad_request(_at(where, f"must be a JSON object, not {json_type(fields)}"))
    if "type" not in fields:
        raise bad_request(_at(where, "field 'type' is required"))
    fields = dict(fields)
    allow = fields.pop("allow_unregistered", False)
    if not isinstance(allow, bool):
        raise bad_request(_at(where, "field 'allow_unregistered' must be true or false"))
    if app is None:  # the registry its workers published: declared options, input schema
        try:
            fields = rt.queue.resolve(fields, allow_unregistered=allow)
        except ValidationError as exc:
            raise bad_request(describe_validation(exc, where)) from None
        except QoError as exc:
            raise HttpError.of(exc.kind, _at(where, str(exc))) from None
    else:
        definition = app.latest(fields["type"]) if isinstance(fields["type"], str) else None
        if definition is None:
            registered = ", ".join(app.type_names()) or "none"
            raise bad_request(_at(
                where, f"unknown task type {shorten(fields['type'])}; registered: {registered}"))
        fields = app.submit_defaults(definition) | fields
    try:
        return SubmitRequest(**fields)
    except ValidationError as exc:
        raise bad_request(describe_validation(exc, where)) from None
    except QoError as exc:
        raise HttpError.of(exc.kind, _at(where, str(exc))) from None


@route("/tasks", "POST")
def post_task(rt: Runtime, req: Request) -> tuple[int, Any]:
    # Refused before any write; QueueFull (429) past the queue's max_depth.
    done = rt.queue.submit_one(_submit_request(rt, req.json_object()))
    body = {"id": done.id, "created": done.created, "status": done.status.value}
    return (201 if done.created else 200), body


def _objects(data: dict[str, Any], field: str, noun: str, counted: str) -> list[Any]:
    """The non-empty array ``data[field]``, of at most ``MAX_BATCH`` items."""
    items = data.get(field)
    if not isinstance(items, list) or not items:
        raise bad_request(f'field "{field}" must be a non-empty array of {noun} objects')
    if len(items) > MAX_BATCH:
        raise HttpError.of(ErrorKind.TOO_LARGE, f"{len(items)} {counted}; at most {MAX_BATCH}")
    return items


@route("/tasks/batch", "POST")
def post_batch(rt: Runtime, req: Request) -> tuple[int, Any]:
    data = req.json_object()
    assert data is not None
    unknown = sorted(set(data) - {"tasks"})
    if unknown:
        raise bad_request(f"unknown field(s) {', '.join(unknown)}: send {{\"tasks\": [...]}}")
    items = _objects(data, "tasks", "task", "tasks in one batch")
    reqs = [_submit_request(rt, item, f"tasks[{n}]") for n, item in enumerate(items)]
    try:  # sizes, delay and at, then QueueFull (429): refused before anything is written
        done = rt.queue.submit_batch(reqs)
    except InvalidBatchItem as exc:  # of the kind of the item's error
        raise HttpError.of(exc.kind, f"tasks[{exc.index}]: {exc.error}") from None
    rows = [{"id": d.id, "created": d.created, "status": d.status.value} for d in done]
    return (201 if any(d.created for d in done) else 200), {"tasks": rows}


@route("/tasks", "GET")
def list_tasks(rt: Runtime, req: Request) -> tuple[int, Any]:
    status = req.query.get("status")
    if status is not None:
        try:
            status_value: Status | None = Status(status)
        except ValueError:
            choices = ", ".join(s.value for s in Status)
            raise bad_request(f"invalid status {shorten(status)}: one of {choices}") from None
    else:
        status_value = None
    raw_limit = req.query.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIST:
        raise bad_request(f"invalid limit {shorten(raw_limit)}: a number from 1 to {MAX_LIST}")
    views = admin.ls(rt.queue.store, status=status_value, queue=req.query.get("queue"),
                     limit=int(raw_limit), after=req.query.get("after"))
    return 200, {"tasks": [_view(rt, v, payloads=False, traceback=False) for v in views]}


@route("/tasks/{task_id}", "GET")
def get_task(rt: Runtime, req: Request) -> tuple[int, Any]:
    view = admin.show(rt.queue.store, check_task_id(req.params["task_id"]))
    wants = req.query.get("traceback", "").lower() in ("1", "true", "yes")
    data = _view(rt, view, payloads=True, traceback=wants)
    if view.record.has_dependents:  # 1 LIST, only for a task something depends on
        data["dependents"] = deps.dependents_of(rt.queue.store, view.record.id)
    return 200, data


@route("/tasks/{task_id}/graph", "GET")
def get_task_graph(rt: Runtime, req: Request) -> tuple[int, Any]:
    """The graph of a task (its workflow's, or its dependencies and dependents)."""
    return _graph(rt, req, req.params["task_id"])


@route("/workflows/{workflow_id}/graph", "GET")
def get_workflow_graph(rt: Runtime, req: Request) -> tuple[int, Any]:
    return _graph(rt, req, req.params["workflow_id"])


def _graph(rt: Runtime, req: Request, some_id: str) -> tuple[int, Any]:
    fmt = req.query.get("format", "mermaid")
    if fmt not in graphs.FORMATS:
        raise bad_request(f"invalid format {shorten(fmt)}: one of {', '.join(graphs.FORMATS)}")
    found = graphs.collect(rt.queue.store, check_task_id(some_id))
    return 200, {"format": fmt, "text": graphs.render(found, fmt), **found.as_dict()}


@route("/workflows", "POST")
def post_workflow(rt: Runtime, req: Request) -> tuple[int, Any]:
    """``{"name": ..., "nodes": [{"name", "type", "input", "after": [names], ...}]}``."""
    from qo.workflow import Workflow

    data = req.json_object()
    assert data is not None
    unknown = sorted(set(data) - {"name", "nodes"})
    if unknown:
        raise bad_request(f"unknown field(s) {', '.join(unknown)}: send name and nodes")
    nodes = _objects(data, "nodes", "node", "nodes")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise bad_request('field "name" must be a string')
    wf = Workflow(name)
    for n, node in enumerate(nodes):
        where = f"nodes[{n}]"
        if not isinstance(node, dict) or not isinstance(node.get("name"), str):
            raise bad_request(f"{where}: must be an object with a string field 'name'")
        fields = dict(node)
        node_name, after = fields.pop("name"), fields.pop("after", [])
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            raise bad_request(f"{where}: field 'after' must be an array of node names")
        checked = _submit_request(rt, fields, where).model_dump(exclude_unset=True)
        wf.add(node_name, checked.pop("type"), checked.pop("input", None), after=after,
               **checked)
    run = wf.submit(rt.queue, app=rt.app, allow_unregistered=True)
    return 201, {"id": run.id, "tasks": {name: h.id for name, h in run.tasks.items()}}


@route("/workflows/{workflow_id}", "GET")
def get_workflow(rt: Runtime, req: Request) -> tuple[int, Any]:
    from qo.protocol import workflow

    view = workflow.view(rt.queue.store, check_task_id(req.params["workflow_id"]))
    nodes = [{"node": n.name, "id": n.task_id, "after": n.after,
              "status": r.status.value if (r := view.records[n.name]) is not None
              else "unwritten"} for n in view.manifest.nodes]
    return 200, {"id": view.manifest.id, "name": view.manifest.name, "status": view.status,
                 "counts": view.counts(), "nodes": nodes}


@route("/workflows/{workflow_id}/cancel", "POST")
def cancel_workflow(rt: Runtime, req: Request) -> tuple[int, Any]:
    from qo.workflow import Workflow

    run = Workflow.run(rt.queue, check_task_id(req.params["workflow_id"]))
    return 200, {"id": run.id, "cancelled": run.cancel("workflow cancelled through the API")}


@route("/tasks/{task_id}/cancel", "POST")
def cancel_task(rt: Runtime, req: Request) -> tuple[int, Any]:
    task_id = check_task_id(req.params["task_id"])
    data = req.json_object(required=False) or {}
    unknown = sorted(set(data) - {"reason"})
    if unknown:
        raise bad_request(f"unknown field(s) {', '.join(unknown)}: only \"reason\" is accepted")
    reason = data.get("reason", "cancelled through the API")
    check_free_text(reason, "reason")
    view = admin.cancel(rt.queue.store, task_id, reason)
    return 200, _view(rt, view, payloads=False, traceback=False)


@route("/tasks/{task_id}/retry", "POST")
def retry_task(rt: Runtime, req: Request) -> tuple[int, Any]:
    task_id = check_task_id(req.params["task_id"])
    view = admin.retry(rt.queue.store, rt.queue.settings, task_id)
    return 200, _view(rt, view, payloads=False, traceback=False)


@route("/stats", "GET")
def get_stats(rt: Runtime, req: Request) -> tuple[int, Any]:
    return 200, {"queues": admin.stats(rt.queue.store)}


def _fleet(rt: Runtime, req: Request) -> fleetstats.FleetStats:
    """The stored snapshot (1 GET), or one computed now (not stored) with ``?fresh=1``
    or when none was written yet."""
    fresh = req.query.get("fresh", "") in ("1", "true")
    snap = None if fresh else rt.queue.fleet_stats()
    return snap or fleetstats.compute(rt.queue.store, "api")


@route("/stats/fleet", "GET")
def get_fleet_stats(rt: Runtime, req: Request) -> tuple[int, Any]:
    snap = _fleet(rt, req)
    return 200, fleetstats.as_dict(snap) | {"age": round(rt.queue.store.now() - snap.at, 3)}


@route("/metrics", "GET")
def get_metrics(rt: Runtime, req: Request) -> tuple[int, Any]:
    snap = _fleet(rt, req)
    return 200, TextBody(fleet_metrics.exposition(snap, rt.queue.store.now()),
                         fleet_metrics.CONTENT_TYPE)


@route("/schedules", "GET")
def get_schedules(rt: Runtime, req: Request) -> tuple[int, Any]:
    return 200, {"schedules": plain(list(list_schedules(rt.queue)))}


def _view(rt: Runtime, view: TaskView, *, payloads: bool, traceback: bool) -> dict[str, Any]:
    data = view.as_dict()
    record = view.record
    if payloads and record.input_ref:
        data["input"] = records.load_input(rt.queue.store, record)
    if payloads and record.result_ref:
        data["result"] = records.load_result(rt.queue.store, record)
    if not traceback and isinstance(data.get("error"), dict):
        data["error"].pop("traceback", None)
    return data


# -- dispatch ---------------------------------------------------------------------------


def _dispatch(event: Any) -> tuple[int, Any, dict[str, str]]:
    if not isinstance(event, dict):
        raise bad_request("not a Function URL request (payload format 2.0)")
    rt = runtime()
    req = Request(event, rt.config.api_max_body)
    for regex, methods in _ROUTES:
        match = regex.match(req.path)
        if match is None:
            continue
        fn = methods.get(req.method)
        if fn is None:
            allowed = ", ".join(sorted(methods))
            raise HttpError(405, "method_not_allowed",
                            f"{req.method} is not allowed on {req.path}; use {allowed}",
                            {"allow": allowed})
        req.params = match.groupdict()
        status, body = fn(rt, req)
        return status, body, {}
    raise HttpError.of(ErrorKind.NOT_FOUND, f"no route {req.method} {req.path}")


@telemetry.instrumented("qo-api")
def handler(event: Any, context: Any = None) -> dict[str, Any]:
    """The Lambda entry point of the API function."""
    request_id = str(getattr(context, "aws_request_id", None) or "local")
    try:
        status, body, headers = _dispatch(event)
    except Exception as exc:  # noqa: BLE001 - answered (and logged if unexpected), never raised
        status, body, headers = answer_error(exc, request_id)
    method, path = method_and_path(event)
    log.info("%s %s -> %d", method, path, status,
             extra={"event": "api_request", "status": status, "request_id": request_id})
    return response(status, body, headers)


__all__ = ["MAX_BATCH", "HttpError", "describe_validation", "handler", "refusal"]
