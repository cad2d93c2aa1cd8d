"""Validation of every user-supplied name that ends up inside a store key.

A name is one key segment: it can never contain ``/``, be ``.``/``..``, hold
control characters, or be long enough to break S3's 1,024-byte key limit.
"""

from __future__ import annotations

import re
import unicodedata

from qo.errors import InvalidName, shorten

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_TASK_ID = re.compile(r"[0-9a-z]{8,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(value: object, what: str = "name") -> str:
    """Queue, task type, schedule and tag names: ``[A-Za-z0-9][A-Za-z0-9_.:-]*``."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise InvalidName(
            f"invalid {what} {shorten(value)}: use 1-128 letters, digits, '_', '.', ':' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return value


_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}(=[A-Za-z0-9_.:-]{1,64})?")
MAX_LABELS = 8
MAX_LABELS_LENGTH = 256  # with one separator each: a marker key stays under 1,024 bytes


def check_label(value: object) -> str:
    """A capability label (``gpu``, ``region=eu``): a name, optionally ``=value``; it goes
    into marker keys, so it is a name's characters and ``=`` only."""
    if not isinstance(value, str) or not _LABEL.fullmatch(value) or ".." in value:
        raise InvalidName(
            f"invalid label {shorten(value)}: use NAME or NAME=VALUE, each 1-64 letters, "
            "digits, '_', '.', ':' or '-', the name starting with a letter or digit")
    return value


def check_labels(values: object) -> list[str]:
    """At most ``MAX_LABELS`` labels, sorted and without repeats."""
    if isinstance(values, str) or not isinstance(values, (list, tuple, set, frozenset)):
        raise InvalidName(f"labels must be a list of labels, not {type(values).__name__}")
    labels = sorted({check_label(v) for v in values})
    if len(labels) > MAX_LABELS:
        raise InvalidName(f"at most {MAX_LABELS} labels, got {len(labels)}")
    if sum(len(label) + 1 for label in labels) > MAX_LABELS_LENGTH:  # they end marker keys
        raise InvalidName(f"labels too long: at most {MAX_LABELS_LENGTH} characters together")
    return labels


def check_task_id(value: object) -> str:
    if not isinstance(value, str) or not _TASK_ID.fullmatch(value):
        raise InvalidName(f"invalid task id {shorten(value)}: expected 8-64 lowercase letters or digits")
    return value


def check_free_text(value: object, what: str, max_len: int = 256) -> str:
    """Free text that is hashed or stored in a body, never used raw in a key.

    It must be valid Unicode (no lone surrogates, which UTF-8 cannot encode);
    it is returned in NFC, so that two spellings of one text are one value.
    """
    if (
        not isinstance(value, str)
        or not value
        or len(value) > max_len
        or _CONTROL.search(value)
        or not _encodable(value)
    ):
        raise InvalidName(
            f"invalid {what} {shorten(value)}: 1-{max_len} characters of valid Unicode, "
            "no control characters"
        )
    return unicodedata.normalize("NFC", value)


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
