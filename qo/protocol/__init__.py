"""The storage protocol: every key qo writes and every transition between them.

Modules here talk to a `qo.store.base.Store` and nothing above it: no queue,
app, worker, CLI or serverless code. `docs/protocol.md` describes each module's
keys, transitions, linearization points and request costs;
`tests/test_layers.py` holds the layering.
"""
