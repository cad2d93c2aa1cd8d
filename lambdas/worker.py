"""Worker function: S3 "object created" events on the queue's ready index (see template.yaml)."""

from qo.serverless.worker import handler  # noqa: F401
