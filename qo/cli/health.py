"""``qo health``: ask a running worker's health server, for ``exec`` probes and scripts."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from qo.cli import common
from qo.cli.common import say
from qo.probes import probe


class Check(StrEnum):
    ready = "ready"
    live = "live"


def register(app: typer.Typer) -> None:
    app.command()(health)


def health(
    port: Annotated[int, typer.Option(
        min=1, max=65535, metavar="PORT", help="The worker's --health-port.",
        show_default=False)],
    host: Annotated[str, typer.Option(metavar="HOST", help="The worker's --metrics-host.")
                    ] = "127.0.0.1",
    check: Annotated[Check, typer.Option(
        case_sensitive=False, help="ready: /readyz (serving tasks); live: /livez (not stuck).")
    ] = Check.ready,
    timeout: Annotated[float, typer.Option(
        parser=common.as_param(common.parse_duration), metavar="SECONDS",
        help="How long to wait for the answer.")] = 5.0,
) -> None:
    """Check a running worker (qo worker --health-port): exit 0 and one line if healthy,
    else one error: line and exit code 5."""
    say(probe(host, port, check.value, timeout))
