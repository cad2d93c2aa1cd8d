"""qo: a serverless task queue whose only infrastructure is an object store."""

from qo.aio import AsyncQueue, AsyncTaskHandle
from qo.app import App, Fatal, TaskFunction
from qo.context import Context, Skip, StopReason
from qo.errors import QoError, RateLimited
from qo.hooks import Event, Kind
from qo.middleware import AsyncNext, Next, TaskCall
from qo.models import RetryPolicy, Status
from qo.protocol.submit import IdempotencyConflict, SubmitRequest
from qo.queue import Queue, TaskCancelled, TaskFailed, TaskHandle
from qo.results import wait
from qo.retry import Retry, RetryDecision
from qo.settings import Settings
from qo.workflow import Workflow, WorkflowRun

__all__ = [
    "App",
    "AsyncNext",
    "AsyncQueue",
    "AsyncTaskHandle",
    "Context",
    "Event",
    "Fatal",
    "IdempotencyConflict",
    "Kind",
    "Next",
    "QoError",
    "Queue",
    "RateLimited",
    "Retry",
    "RetryDecision",
    "RetryPolicy",
    "Settings",
    "Skip",
    "Status",
    "StopReason",
    "SubmitRequest",
    "TaskCall",
    "TaskCancelled",
    "TaskFailed",
    "TaskFunction",
    "TaskHandle",
    "Workflow",
    "WorkflowRun",
    "wait",
]

__version__ = "0.1.0"
