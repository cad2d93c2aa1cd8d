"""The observability tests' workload: 3 succeed (one after a retry), 1 dies.

It has no URL of its own: the CLI binds it to ``--queue``; tests bind it with
``App(queue)`` through ``workload``.
"""

from __future__ import annotations

import logging

from qo.app import App
from qo.context import Context

app = App()
log = logging.getLogger("metrics_app")  # the program's own logger, not qo's


def define(app: App) -> App:
    @app.task
    def ok(ctx: Context) -> str:
        ctx.log.info("working on it")
        log.info("my own line")
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
