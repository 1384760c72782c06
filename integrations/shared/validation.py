"""Validation of a user's create request at the edge, with messages a client can act on."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_PROMPT_CHARS = 4000
MAX_URL_CHARS = 2048
# A character that shows: not whitespace (as JSON Schema's ECMAScript `\s` counts it, written out so the
# OpenAPI document's pattern says exactly the same) and not a control character.
VISIBLE_CHAR = r"[^\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff\u0000-\u001f\u007f-\u009f]"
_VISIBLE = re.compile(VISIBLE_CHAR)


class RequestInvalid(ValueError):
    """The client's request is malformed; the message says how."""


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    required: bool = False
    choices: tuple | None = None
    low: int | None = None
    high: int | None = None
    max_chars: int | None = None
    max_items: int | None = None


def validate_fields(body: Any, spec: dict[str, Field]) -> dict:
    """Return the known fields of `body` checked against `spec`, or raise RequestInvalid."""
    if not isinstance(body, dict):
        raise RequestInvalid("Body must be a JSON object")
    unknown = sorted(set(body) - set(spec))
    if unknown:
        raise RequestInvalid(f"Unknown field(s): {', '.join(unknown)}; allowed: {', '.join(spec)}")
    params = {}
    for name, field in spec.items():
        value = body.get(name)
        if value is None:
            if field.required:
                raise RequestInvalid(f"'{name}' is required")
            continue
        params[name] = _check(name, value, field)
    return params


def _check(name: str, value: Any, field: Field) -> Any:
    kinds = field.kind if isinstance(field.kind, tuple) else (field.kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise RequestInvalid(f"'{name}' must be {expected}")
    if isinstance(value, str):
        if field.required and not _VISIBLE.search(value):
            raise RequestInvalid(f"'{name}' must not be empty")
        if field.max_chars and len(value) > field.max_chars:
            raise RequestInvalid(f"'{name}' is too long ({len(value)} characters; at most {field.max_chars})")
    if field.choices is not None and value not in field.choices:
        raise RequestInvalid(f"'{name}' must be one of {', '.join(map(str, field.choices))}")
    if isinstance(value, int) and not isinstance(value, bool):
        if field.low is not None and value < field.low or field.high is not None and value > field.high:
            raise RequestInvalid(f"'{name}' must be from {field.low} to {field.high}")
    if isinstance(value, list):
        if field.max_items is not None and len(value) > field.max_items:
            raise RequestInvalid(f"'{name}' has too many items (at most {field.max_items})")
        for item in value:
            if not isinstance(item, str) or not item or len(item) > MAX_URL_CHARS:
                raise RequestInvalid(f"'{name}' must be a list of URLs (strings of 1..{MAX_URL_CHARS} characters)")
    return value


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean", list: "a list", dict: "an object"}
