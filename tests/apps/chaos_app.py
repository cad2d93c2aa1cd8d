"""Handlers for the chaos tests: every run leaves a trace the harness can count."""

from __future__ import annotations

import os
import random
import time
import uuid
from pathlib import Path

from qo import App

app = App()


@app.task(max_attempts=50)
def work(ctx, n: int) -> dict:
    """Sleep a little (so kills land mid-task) and record this run in a file."""
    runs = Path(os.environ["QO_CHAOS_RUNS"])
    run_id = uuid.uuid4().hex
    (runs / f"{ctx.task_id}.{ctx.attempt}.{run_id}").touch()
    time.sleep(random.uniform(0, 0.03))
    return {"n": n, "run": run_id, "attempt": ctx.attempt}
