"""The JSON schema of a handler's input, as pydantic derives it from the signature.

Workers publish it in the task-type registry (``qo.protocol.registry``) so that
submitters without the app can check an input (``qo.protocol.input_schema``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pydantic import ConfigDict, create_model


def input_schema(fn: Callable[..., Any]) -> dict[str, Any] | None:
    """The handler's keyword arguments as the JSON schema pydantic derives, or None.

    None when pydantic cannot describe them (unresolvable hints, types with no
    JSON form): submitters then check nothing, and the worker validates as always.
    """
    try:
        sig = inspect.signature(fn, eval_str=True)
    except Exception:  # noqa: BLE001 - unresolvable hints: nothing to publish
        return None
    fields: dict[str, Any] = {}
    extra = "forbid"
    for name, p in sig.parameters.items():
        if name == "ctx" or p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            extra = "allow"
            continue
        annotation = Any if p.annotation is inspect.Parameter.empty else p.annotation
        fields[name] = (annotation, ... if p.default is inspect.Parameter.empty else p.default)
    try:
        config = ConfigDict(extra=extra, arbitrary_types_allowed=True)  # type: ignore[typeddict-item]
        model = create_model(f"{fn.__name__}_input", __config__=config, **fields)
        schema: dict[str, Any] = model.model_json_schema()
    except Exception:  # noqa: BLE001 - pydantic cannot describe it: publish no schema
        return None
    return schema
