"""Task identity (issue 16): ``@app.task(identity=...)`` derives the idempotency key."""

from __future__ import annotations

import pytest

from qo.app import App
from qo.models import Status
from qo.protocol import identity
from qo.protocol.identity import InvalidIdentity
from qo.protocol.submit import IdempotencyConflict
from qo.queue import Queue
from qo.store.memory import MemoryStore
from qo.testing import FakeClock

pytestmark = pytest.mark.timeout(60)


def test_identity_by_fields_makes_one_task_per_distinct_fields() -> None:
    queue = Queue(MemoryStore())
    app = App(queue)
    app.task(name="charge", identity=["order"])(lambda order, note="": order)
    a = app.submit("charge", {"order": 7, "note": "x"})
    b = app.submit("charge", {"order": 7, "note": "x"})
    c = app.submit("charge", {"order": 8})
    assert a.id == b.id and a.created and not b.created and c.id != a.id
    record = queue.get(a.id).record
    assert record.idempotency_key == identity.derive_key(["order"], {"order": 7}, "charge")
    with pytest.raises(IdempotencyConflict):  # same identity, another input: refused
        app.submit("charge", {"order": 7, "note": "other"})


def test_identity_by_the_whole_input_a_callable_or_an_explicit_key() -> None:
    queue = Queue(MemoryStore())
    app = App(queue)
    app.task(name="whole", identity="input")(lambda **kw: kw)
    app.task(name="custom", identity=lambda p: f"user-{p['user']}")(lambda user: user)
    app.task(name="random")(lambda x: x)
    assert app.submit("whole", {"a": 1, "b": 2}).id == app.submit("whole", {"b": 2, "a": 1}).id
    assert app.submit("whole", {"a": 1}).id != app.submit("whole", {"a": 2}).id
    first = app.submit("custom", {"user": 5})
    assert queue.get(first.id).record.idempotency_key == "user-5"
    assert app.submit("custom", {"user": 5}).id == first.id
    assert app.submit("custom", {"user": 5}, key="mine").id != first.id  # the caller's key wins
    assert app.submit("random", {"x": 1}).id != app.submit("random", {"x": 1}).id  # default


def test_the_uniqueness_window_is_the_types() -> None:
    clock = FakeClock()
    queue = Queue(MemoryStore(clock=clock))
    app = App(queue)
    app.task(name="t", identity="input", unique_for=60)(lambda n: n)
    first = app.submit("t", {"n": 1})
    record = queue.get(first.id).record
    assert record.idempotency_expires_at == pytest.approx(record.available_at + 60)
    queue.cancel(first.id)  # terminal, then the window passes: the identity is free again
    clock.advance(61)
    again = app.submit("t", {"n": 1})
    assert again.id == first.id and again.created
    assert queue.get(again.id).record.status == Status.PENDING


def test_a_submitter_without_the_app_derives_the_same_identity() -> None:
    store = MemoryStore()
    app = App(Queue(store))
    app.task(name="charge", identity=["order"], unique_for=3600)(lambda order: order)
    app.task(name="custom", identity=lambda p: "k")(lambda: None)
    app.publish(store, owner="w")
    queue = Queue(store)
    mine = app.submit("charge", {"order": 1})
    theirs = queue.submit("charge", {"order": 1})
    assert theirs.id == mine.id and not theirs.created
    assert queue.registry.definition("custom").identity is None  # a callable stays in-process


def test_invalid_identities_are_refused() -> None:
    app = App(Queue(MemoryStore()))
    for bad in ("whole", [], [""], 5):
        with pytest.raises(InvalidIdentity, match="invalid identity"):
            app.task(name=f"t{len(app.tasks)}", identity=bad)(lambda: None)
    app.task(name="fields", identity=["a"])(lambda a=None: a)
    with pytest.raises(InvalidIdentity, match="must be a JSON object"):
        app.submit("fields", [1])
    app.task(name="fn", identity=lambda p: 3)(lambda: None)
    with pytest.raises(InvalidIdentity, match="returned int"):
        app.submit("fn")
