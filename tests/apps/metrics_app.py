"""The observability tests' workload: 3 succeed (one after a retry), 1 dies.

It has no URL of its own: the CLI binds it to ``--queue``; tests bind it with
``App(queue)`` through ``workload``.
"""

from __future__ import annotations

import logging

from qo.app import App
from qo.context import Context

app = App()
log = logging.getLogger("qo.task.metrics_app")


def define(app: App) -> App:
    @app.task
    def ok(ctx: Context) -> str:
        log.info("working on it")
        return "fine"

    @app.task(max_attempts=3, retry={"base": 0, "cap": 0})
    def flaky(ctx: Context) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return "fine at last"

    @app.task(max_attempts=1)
    def boom(ctx: Context) -> None:
        raise ValueError("always")

    return app


define(app)

#: What the workload's tasks end as, submitted in this order.
WORKLOAD = ["ok", "ok", "flaky", "boom"]
