"""Every optional part of an index key together: version, labels, aging and limit key.

Aging (section 12) and limit keys (section 11) were added to the marker by
separate changes; each key form must still parse back to the marker it came from.
"""

from __future__ import annotations

import itertools

import pytest

from qo.protocol.keys import Marker, parse_delayed_key, parse_ready_key

FORMS = list(itertools.product((1, 3), ((), ("gpu",), ("a", "b")), (0, 60), ("", "0123456789abcdef")))


@pytest.mark.parametrize(("version", "labels", "aging", "limit_key"), FORMS)
def test_ready_and_delayed_keys_parse_back(version: int, labels: tuple[str, ...],
                                           aging: int, limit_key: str) -> None:
    marker = Marker("q", 100, 1_700_000_000.25, "fe5ce7a3afff3a41af62ac", "t", version=version,
                    labels=labels, aging=aging, limit_key=limit_key)
    assert parse_ready_key(marker.ready_key) == marker
    assert parse_delayed_key(marker.delayed_key) == marker


def test_an_aging_queue_still_sorts_its_keys_by_effective_time() -> None:
    old_low = Marker("q", 10, 1000.0, "a", "t", aging=60, limit_key="0123456789abcdef")
    new_high = Marker("q", 250, 1000.0 + 245 * 60 + 1, "b", "t", aging=60)
    assert old_low.ready_key < new_high.ready_key  # waited its priority gap: it goes first
