"""Input at the edge: the one JSON body reader and query-integer parser of the HTTP APIs.

A client's mistake or attack is a clear 4xx and changes nothing: a body that is
not `application/json` is 415 (so no cross-site form post reaches a write), one
over the limit is 413 even when chunked, and malformed JSON, NaN or Infinity
(also a number too large for a float, such as 1e400), nesting deeper than
MAX_DEPTH, lone surrogates (which SQLite cannot store) and NUL characters are 400.

A JSON number is a number, however it is spelled: `5.0` and `5e0` are read as the
integer 5 (as JSON Schema's `integer` says; web/openapi.json documents integers),
so an integer field takes them; a fraction stays a float.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flask import abort, request

MAX_BODY_BYTES = 256 * 1024
MAX_DEPTH = 32
EXACT_FLOAT_INTEGERS = 2**53  # beyond this a float no longer spells every integer


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _number(literal: str) -> int | float:
    """A JSON number written with a fraction or an exponent: a whole one is an int, an overflow is refused."""
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"the number {literal[:50]} is too large")
    if value.is_integer() and abs(value) <= EXACT_FLOAT_INTEGERS:
        return int(value)
    return value


def json_body(allow_empty: bool = False) -> Any:
    """The request's JSON body, checked; with `allow_empty`, an empty body is None (and JSON `null` a 400)."""
    raw = read_body()
    if not raw and allow_empty:
        return None
    if request.mimetype != "application/json":
        abort(415, "Send the body as JSON with Content-Type: application/json")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_number)
    except RecursionError:
        abort(400, f"Body nests deeper than {MAX_DEPTH} levels")
    except (UnicodeDecodeError, ValueError) as exc:
        abort(400, f"Body is not valid JSON: {str(exc)[:200]}")
    if value is None and allow_empty:  # else `null` would read as "no body"
        abort(400, "Body is JSON null: send no body, or a JSON object")
    check_value(value)
    return value


def read_body() -> bytes:
    """The raw body, at most MAX_BODY_BYTES, whether sent with Content-Length or chunked (413 beyond)."""
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        abort(413)
    body = request.environ["wsgi.input"].read(MAX_BODY_BYTES + 1) if length is None else request.get_data()
    if len(body) > MAX_BODY_BYTES:
        abort(413)
    return body


def check_value(value: Any) -> None:
    """400 for nesting deeper than MAX_DEPTH or a string (or key) that is not valid Unicode text."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            abort(400, f"Body nests deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            text(item, "A string in the body")
        elif isinstance(item, dict):
            for key, child in item.items():
                text(key, "A key in the body")
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def text(value: str, what: str) -> str:
    """`value`, unless it holds a lone surrogate or a NUL (400)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        abort(400, f"{what} holds a lone surrogate (not valid Unicode)")
    if "\x00" in value:
        abort(400, f"{what} holds a NUL character")
    return value


def query_int(name: str, low: int, high: int, default: int) -> int:
    """An integer query parameter in low..high written in ASCII digits (400 otherwise), or `default`."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not low <= int(raw) <= high:
        abort(400, f"{name} must be an integer from {low} to {high}, got {raw[:50]!r}")
    return int(raw)
