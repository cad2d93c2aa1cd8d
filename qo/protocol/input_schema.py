"""Checking a task's input against the JSON schema its handler published, without the handler.

A worker publishes, for each task type, the JSON schema pydantic derives from
the handler's signature (``qo.protocol.registry``). A submitter that does not
import the app checks an input against it here, so that an input the handler
would refuse is refused at submit, with the reason, instead of failing at
run time.

This is the subset of JSON Schema that pydantic writes: ``type``,
``properties``, ``required``, ``additionalProperties``, ``items``,
``prefixItems``, ``enum``, ``const``, ``anyOf``/``oneOf``/``allOf``,
``$ref`` into ``$defs``, numeric and length bounds and ``pattern``. A keyword
it does not know is ignored: a check may accept what the handler then
refuses, never the other way round. Scalars are accepted as pydantic's lax
mode accepts them (``"5"`` for an integer, ``5.0`` for an integer, ``"true"``
for a boolean), since the handler validates in that mode.
"""

from __future__ import annotations

import math
import re
from typing import Any

_MAX_DEPTH = 64
#: String formats pydantic also reads from a JSON number (epoch seconds, seconds).
_NUMERIC_FORMATS = {"date-time", "date", "time", "duration"}
_BOOL_WORDS = {"1", "true", "yes", "on", "y", "t", "0", "false", "no", "off", "n", "f"}


def check(schema: dict[str, Any], value: Any) -> str | None:
    """None if ``value`` fits ``schema``, else one line saying where and why it does not."""
    return _check(schema, value, schema, "", 0)


def check_call(schema: dict[str, Any], payload: Any) -> str | None:
    """Check a task input as ``qo.app.TaskDef.call`` passes it to the handler.

    ``schema`` is the handler's keyword arguments as an object. An object input
    is the keyword arguments; no input is fine when no argument is required; any
    other input is the single argument of a one-argument handler.
    """
    props: dict[str, Any] = schema.get("properties") or {}
    if isinstance(payload, dict):
        return check(schema, payload)
    if payload is None and not schema.get("required"):
        return None
    if len(props) == 1:
        (name, sub), = props.items()
        return _check(sub, payload, schema, name, 0)
    return (f"the input must be a JSON object of the arguments {sorted(props)}, "
            f"got {_json_type(payload)}")


#: JSON type names, in the order to test them (bool before int: it is one).
_JSON_TYPES = ((type(None), "null"), (bool, "boolean"), (int, "integer"), (float, "number"),
               (str, "string"), (list, "array"), (dict, "object"))


def _json_type(value: Any) -> str:
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)),
                type(value).__name__)


def _number(value: Any) -> float | None:
    """The number pydantic would read from ``value`` in lax mode (a bool is 0 or 1), else None."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _fits_type(kind: str, value: Any) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        if isinstance(value, str):
            return value.strip().lower() in _BOOL_WORDS
        return isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))
    if kind == "integer":
        n = _number(value)
        return n is not None and math.isfinite(n) and n == int(n)
    if kind == "number":
        return _number(value) is not None
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    return True  # a type this check does not know: accept


def _at(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


def _check(schema: Any, value: Any, root: dict[str, Any], where: str, depth: int) -> str | None:
    if schema is False:
        return _at(where, "no value is allowed here")
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None  # True, or a schema this check cannot read: accept
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = (root.get("$defs") or {}).get(ref[len("#/$defs/"):])
        reason = _check(target, value, root, where, depth + 1)
        if reason:
            return reason
    for sub in schema.get("allOf") or ():
        reason = _check(sub, value, root, where, depth + 1)
        if reason:
            return reason
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        reasons = [_check(sub, value, root, where, depth + 1) for sub in options]
        if all(reasons):
            mismatch = _at(where, "expected ")
            deeper = [r for r in reasons if r and not r.startswith(mismatch)]
            if len(deeper) == 1 or len(reasons) == 1:
                return (deeper or reasons)[0]  # the one form the value was meant to have
            kinds = [r[len(mismatch):].split(", got")[0] for r in reasons if r]
            return _at(where, f"expected {' or '.join(kinds)}, got {_json_type(value)}"
                       if not deeper else f"matches none of the allowed forms ({reasons[0]})")
    if "const" in schema and value != schema["const"]:
        return _at(where, f"must be {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"] and _number(value) not in [
            e for e in schema["enum"] if isinstance(e, (int, float)) and not isinstance(e, bool)]:
        allowed = ", ".join(repr(v) for v in schema["enum"][:10])
        return _at(where, f"must be one of {allowed}")
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if isinstance(kind, str) else []
    if kinds == ["string"] and schema.get("format") in _NUMERIC_FORMATS and \
            isinstance(value, (int, float)):  # (a bool too: pydantic reads it as 0 or 1)
        return None  # pydantic reads a datetime, date, time or timedelta from a number too
    if kinds and not any(_fits_type(k, value) for k in kinds):
        return _at(where, f"expected {' or '.join(kinds)}, got {_json_type(value)}")
    return _bounds(schema, value, where) or _structure(schema, value, root, where, depth)


def _bounds(schema: dict[str, Any], value: Any, where: str) -> str | None:
    n = None if isinstance(value, str) and schema.get("type") == "string" else _number(value)
    if n is not None and not isinstance(value, (list, dict)):
        for key, ok, word in (("minimum", lambda b: n >= b, "at least"),
                              ("maximum", lambda b: n <= b, "at most"),
                              ("exclusiveMinimum", lambda b: n > b, "more than"),
                              ("exclusiveMaximum", lambda b: n < b, "less than")):
            bound = schema.get(key)
            if isinstance(bound, (int, float)) and not ok(bound):
                return _at(where, f"must be {word} {bound:g}")
    if isinstance(value, str):
        if isinstance(schema.get("minLength"), int) and len(value) < schema["minLength"]:
            return _at(where, f"must have at least {schema['minLength']} characters")
        if isinstance(schema.get("maxLength"), int) and len(value) > schema["maxLength"]:
            return _at(where, f"must have at most {schema['maxLength']} characters")
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            try:
                if re.search(pattern, value) is None:
                    return _at(where, f"must match {pattern!r}")
            except re.error:
                pass  # a pattern Python cannot read: accept
    if isinstance(value, list):
        if isinstance(schema.get("minItems"), int) and len(value) < schema["minItems"]:
            return _at(where, f"must have at least {schema['minItems']} items")
        if isinstance(schema.get("maxItems"), int) and len(value) > schema["maxItems"]:
            return _at(where, f"must have at most {schema['maxItems']} items")
    return None


def _structure(schema: dict[str, Any], value: Any, root: dict[str, Any], where: str,
               depth: int) -> str | None:
    def inner(name: str | int) -> str:
        return f"{where}.{name}" if where else str(name)

    if isinstance(value, dict):
        props: dict[str, Any] = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                return _at(inner(name), "field required")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                reason = _check(props[name], item, root, inner(name), depth + 1)
            elif extra is False:
                reason = _at(inner(name), "unexpected field")
            else:
                reason = _check(extra, item, root, inner(name), depth + 1)
            if reason:
                return reason
    if isinstance(value, list):
        prefix = schema.get("prefixItems") or []
        for n, item in enumerate(value):
            sub = prefix[n] if n < len(prefix) else schema.get("items", True)
            reason = _check(sub, item, root, inner(n), depth + 1)
            if reason:
                return reason
    return None
