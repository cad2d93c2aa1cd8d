"""An app with a rate limit, for the Lambda worker's limit test (``QO_APP``)."""

from __future__ import annotations

from qo.app import App

app = App()
RAN: list[str] = []


@app.task(rate="1/h", burst=2, rate_key="customer")
def call_api(customer: str) -> None:
    RAN.append(customer)
