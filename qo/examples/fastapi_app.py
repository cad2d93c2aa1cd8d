"""A FastAPI service in front of qo: submit answers 202, results are awaited with a timeout.

Needs the ``fastapi`` extra (``pip install 'qo-queue[fastapi]'``) and an ASGI
server; the worker runs the same app::

    uvicorn 'qo.examples.fastapi_app:create_api' --factory
    qo worker --app qo.examples.fastapi_app:app --concurrency 200

- ``POST /thumbnails`` submits a task and answers ``202 Accepted`` with the
  task's URL (also in ``Location``);
- ``GET /tasks/{id}`` answers the task's status;
- ``GET /tasks/{id}/result?timeout=10`` awaits the result for up to
  ``timeout`` seconds (at most ``MAX_WAIT``): 200 with the result, 202 if it
  is still running, 409 if it failed or was cancelled, 404 if no such task;
- ``GET /metrics`` answers the fleet statistics snapshot as Prometheus text
  (one GET of the bucket; needs ``prometheus_client``, the ``metrics`` extra).

Waiting requests cost no thread each: they share the queue's poller.
"""

from __future__ import annotations

import asyncio
from typing import Any

try:
    from fastapi import FastAPI, HTTPException, Response
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError(
        "the FastAPI example needs FastAPI: pip install 'qo-queue[fastapi]'") from exc
from pydantic import BaseModel, Field

from qo import App, AsyncQueue, QoError, fleet_metrics
from qo.protocol.admin import TaskNotFound
from qo.queue import ResultTimeout, TaskCancelled, TaskFailed

#: The longest a result request may wait, in seconds.
MAX_WAIT = 30.0

app = App()  # QO_QUEUE, or the local default


@app.task(timeout=60)
async def thumbnail(url: str, size: int = 128) -> dict[str, Any]:
    """Stands for I/O-bound work: fetch, resize, upload."""
    await asyncio.sleep(0.01)
    return {"url": url, "size": size, "thumbnail": f"{url}.{size}.png"}


class ThumbnailRequest(BaseModel):
    url: str = Field(min_length=1, max_length=2048)
    size: int = Field(128, ge=16, le=1024)


def create_api(tasks: App = app) -> FastAPI:
    """The HTTP API over ``tasks`` (an App whose queue the workers serve)."""
    api = FastAPI(title="qo example")
    queue = AsyncQueue(tasks)

    @api.post("/thumbnails", status_code=202)
    async def submit(body: ThumbnailRequest, response: Response) -> dict[str, str]:
        handle = await queue.submit("thumbnail", body.model_dump())
        url = f"/tasks/{handle.id}"
        response.headers["Location"] = url
        return {"id": handle.id, "url": url, "result": f"{url}/result"}

    @api.get("/tasks/{task_id}")
    async def status(task_id: str) -> dict[str, Any]:
        try:
            view = await queue.get(task_id)
        except TaskNotFound:
            raise HTTPException(404, f"no task with id {task_id}") from None
        except QoError as exc:  # e.g. an id that is not one
            raise HTTPException(400, str(exc)) from None
        return {"id": task_id, "status": view.status.value, "attempt": view.record.attempt}

    @api.get("/tasks/{task_id}/result")
    async def result(task_id: str, response: Response, timeout: float = 10.0) -> dict[str, Any]:
        wait = min(max(timeout, 0.0), MAX_WAIT)
        try:
            value = await queue.handle(task_id).result(timeout=wait)
        except ResultTimeout:
            response.status_code = 202
            return {"id": task_id, "status": "not finished", "retry": f"/tasks/{task_id}/result"}
        except TaskNotFound:
            raise HTTPException(404, f"no task with id {task_id}") from None
        except (TaskFailed, TaskCancelled) as exc:
            raise HTTPException(409, str(exc)) from None
        except QoError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"id": task_id, "status": "succeeded", "result": value}

    @api.get("/metrics")
    async def metrics() -> Response:
        q = tasks.queue  # the snapshot whoever sweeps wrote; one computed now if none yet
        snap = await asyncio.to_thread(lambda: q.fleet_stats() or q.fleet_stats(fresh=True))
        assert snap is not None
        return Response(fleet_metrics.exposition(snap, q.store.now()),
                        media_type=fleet_metrics.CONTENT_TYPE)

    return api
