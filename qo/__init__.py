"""qo: a serverless task queue whose only infrastructure is an object store."""

from qo.app import App, Fatal, TaskFunction
from qo.context import Context, StopReason
from qo.errors import QoError
from qo.models import RetryPolicy, Status
from qo.protocol.submit import IdempotencyConflict, SubmitRequest
from qo.queue import Queue, TaskCancelled, TaskFailed, TaskHandle
from qo.settings import Settings

__all__ = [
    "App",
    "Context",
    "Fatal",
    "IdempotencyConflict",
    "QoError",
    "Queue",
    "RetryPolicy",
    "Settings",
    "Status",
    "StopReason",
    "SubmitRequest",
    "TaskCancelled",
    "TaskFailed",
    "TaskFunction",
    "TaskHandle",
]

__version__ = "0.1.0"
