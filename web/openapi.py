"""The OpenAPI 3.1 description of every endpoint, served at GET /openapi.json (open, like /healthz).

The document is web/openapi.json (edit it with the code it describes); tests/test_openapi.py keeps it
true: every route is in it, everything in it is routed, and a fuzzer
(schemathesis) checks every answer of a running web process against it.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response

DOCUMENT = Path(__file__).with_name("openapi.json").read_bytes()

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi():
    return Response(DOCUMENT, mimetype="application/json")
