"""The submit-side input check accepts what the handler's pydantic validation accepts."""

from __future__ import annotations

import enum
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field, ValidationError, validate_call

from qo.handler_schema import input_schema
from qo.protocol.input_schema import check, check_call


class Color(enum.IntEnum):
    RED = 1
    BLUE = 2


class Item(BaseModel):
    name: str = Field(min_length=1, max_length=5)
    qty: int = Field(ge=0, le=10)


def handler(when: datetime, day: date, wait: timedelta, price: Decimal, color: Color,
            mode: Literal["a", "b"], items: list[Item], flags: dict[str, bool],
            pair: tuple[int, str], maybe: int | None = None, ratio: float = 1.0,
            anything: Any = None) -> None:
    pass


GOOD: dict[str, Any] = {"when": "2030-01-01T00:00:00Z", "day": "2030-01-01", "wait": 5,
                        "price": "1.5", "color": 1, "mode": "a",
                        "items": [{"name": "x", "qty": 1}], "flags": {"a": True},
                        "pair": [1, "x"]}

CASES: list[dict[str, Any]] = [
    GOOD,
    {**GOOD, "when": 1_900_000_000},  # a datetime from epoch seconds
    {**GOOD, "wait": "PT5S"}, {**GOOD, "price": 2}, {**GOOD, "color": "2"},
    {**GOOD, "flags": {"a": "yes", "b": 0}}, {**GOOD, "maybe": "7"}, {**GOOD, "ratio": 2},
    {**GOOD, "items": [{"name": "x", "qty": "3"}]}, {**GOOD, "anything": [1, {"x": None}]},
    {**GOOD, "mode": "c"}, {**GOOD, "color": 3}, {**GOOD, "items": [{"name": "", "qty": 1}]},
    {**GOOD, "items": [{"name": "x", "qty": 11}]}, {**GOOD, "items": [{"qty": 1}]},
    {**GOOD, "flags": {"a": "maybe"}}, {**GOOD, "pair": ["x", "x"]}, {**GOOD, "maybe": 1.5},
    {**GOOD, "ratio": "fast"}, {**GOOD, "extra": 1}, {k: v for k, v in GOOD.items() if k != "day"},
    {**GOOD, "items": "x"}, {**GOOD, "day": []},
]


@pytest.mark.parametrize("payload", CASES)
def test_the_check_refuses_only_what_pydantic_refuses(payload: dict[str, Any]) -> None:
    schema = input_schema(handler)
    assert schema is not None
    try:
        validate_call(handler)(**payload)
        accepted = True
    except (ValidationError, TypeError):
        accepted = False
    reason = check_call(schema, payload)
    if accepted:
        assert reason is None, reason  # never refuse what the handler takes
    else:
        assert reason is not None  # and in these cases, say why


def test_a_schema_it_cannot_read_accepts() -> None:
    assert check({"type": "whatever"}, 5) is None
    assert check({"pattern": "("}, "x") is None
    assert check({"$ref": "#/$defs/missing"}, 1) is None
    open_ended = input_schema(lambda *a, **kw: None)  # **kw: any keyword is fine
    assert open_ended is not None and check_call(open_ended, {"anything": 1}) is None


def test_the_cases_cover_both_answers() -> None:
    schema = input_schema(handler)
    assert schema is not None
    answers = [check_call(schema, p) is None for p in CASES]
    assert answers.count(True) == 10 and answers.count(False) == len(CASES) - 10


def test_random_inputs_accepted_by_pydantic_are_never_refused() -> None:
    import random

    rng = random.Random(16)
    pool: list[Any] = [0, 1, 2, 3, 11, -1, 1.5, 2.0, "1", "2", "2.0", "x", "", "yes", "off",
                       True, False, None, [], [1, "x"], ["x", 1], {}, {"a": 1},
                       {"name": "x", "qty": 2}, [{"name": "ab", "qty": "4"}], "PT1S",
                       "2030-01-01", "2030-01-01T00:00:00", 1_900_000_000, "a", "b",
                       {"a": "true"}]
    schema = input_schema(handler)
    assert schema is not None
    accepted = 0
    for _ in range(3000):
        payload = {k: v for k, v in GOOD.items()}
        for name in rng.sample(sorted(GOOD), rng.randint(1, 3)):
            payload[name] = rng.choice(pool)
        try:
            validate_call(handler)(**payload)
        except (ValidationError, TypeError):
            continue
        accepted += 1
        assert check_call(schema, payload) is None, payload
    assert accepted > 100  # the property was exercised
