"""Async handlers for the process tests: chaos, SIGTERM drain, hand-back."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from pathlib import Path

from qo import App
from qo.context import Context

app = App()


@app.task(max_attempts=50)
async def work(ctx: Context, n: int) -> dict:
    """Await a little (so kills land mid-task) and record this run in a file."""
    runs = Path(os.environ["QO_CHAOS_RUNS"])
    run_id = uuid.uuid4().hex
    (runs / f"{ctx.task_id}.{ctx.attempt}.{run_id}").touch()
    await asyncio.sleep(random.uniform(0, 0.03))
    return {"n": n, "run": run_id, "attempt": ctx.attempt}


@app.task(max_attempts=1)
async def gated(gate: str) -> str:
    """Finish once the file ``gate`` exists."""
    while not Path(gate).exists():
        await asyncio.sleep(0.02)
    return "opened"


@app.task(max_attempts=1)
async def stubborn(seconds: float) -> str:
    """Swallows the cancellation once, then sleeps on."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        await asyncio.sleep(seconds)
    return "ignored"
