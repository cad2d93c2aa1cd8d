"""Sweeper function: an EventBridge schedule, every minute (see template.yaml)."""

from qo.serverless.sweeper import handler  # noqa: F401
