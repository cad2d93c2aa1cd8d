"""An app for ``qo types --publish`` tests."""

from __future__ import annotations

from qo.app import App

app = App()


@app.task
def echo(text: str) -> str:
    """Return the text."""
    return text
