"""``python -m bench --only deps`` counts exactly what an edge adds (bench/deps.py)."""

from __future__ import annotations

from bench import deps


def test_requests_per_edge_of_a_fan_in_are_the_documented_ones() -> None:
    row = deps.requests_per_edge("fan_in", 10)
    # per edge: the edge, the parent's flag, its done marker; the validation GET; the
    # parent's LIST of its edges and of the join's arrivals. Per join: its CAS and marker
    # (instead of the marker at submit), its GET, and one more LIST of the ready queue.
    assert row["per_edge"] == {"PUT": 3.1, "GET": 1.1, "LIST": 2.1, "PUT_412": 0.0}
    assert row["billable_per_edge"] == 6.3


def test_the_markdown_table_has_a_row_per_shape() -> None:
    result = {"deps": {"requests": [deps.requests_per_edge("chain", 3)], "release": []}}
    text = deps.markdown(result)
    assert text.count("\n") == 3 and "| chain | 3 | 2 |" in text
