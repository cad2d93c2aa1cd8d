"""The README demo: two tiny handlers on the default local store.

Run ``qo worker --app qo.examples.demo:app`` to work them off.
"""

from __future__ import annotations

from qo import App

app = App()


@app.task
def add(x: int, y: int) -> int:
    """Add two numbers."""
    return x + y


@app.task(max_attempts=2)
def shout(text: str) -> str:
    if not text:
        raise ValueError("nothing to shout")
    return text.upper() + "!"
