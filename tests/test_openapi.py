"""The OpenAPI document (web/openapi.json, served at GET /openapi.json) is valid, complete and true.

* valid: OpenAPI 3.1 (schemathesis validates it), every schema is JSON Schema 2020-12, every $ref resolves;
* complete: every route of the app is documented, and everything documented is routed;
* true: the request schemas say what the validators enforce (the integrations' field specs, the internal
  API's limits), and a fuzzer (schemathesis) sends valid and invalid requests of every operation to a
  real web process under gunicorn: no answer is a 5xx, and every answer conforms to the document
  (status code, content type, headers, body), valid input is accepted and invalid input refused.

The fuzz is deterministic (a fixed seed, so CI never flakes on a new draw); set OPENAPI_FUZZ_SEED to
draw other examples, OPENAPI_FUZZ_EXAMPLES for more of them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from dev import dbaccess
from integrations.shared.media import LocalStore
from integrations.shared.validation import Field
from settings import ROOT
from tests.conftest import (
    AUTH,
    BACKENDS,
    CLIENT_KEY,
    DASHBOARD,
    DASHBOARD_LOGIN,
    IMAGE,
    REPORT,
    SECRETS,
    TOKEN,
    USER,
    VIDEO,
    both_backends,
    db_config,
)
from web import internal_api, task_store

DOCUMENT_PATH = ROOT / "web" / "openapi.json"
DOCUMENT = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
METRICS_TOKEN = "test-metrics-token-0123"
MP4 = (ROOT / "fakes" / "media" / "video.mp4").read_bytes()  # a stored video for the media routes


def resolve(node, document=DOCUMENT):
    """`node`, following a local `$ref` (only the ones this document uses: #/components/...)."""
    while isinstance(node, dict) and "$ref" in node:
        target = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def operations(document=DOCUMENT):
    """(METHOD, path template, operation) for every documented operation."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


# -- (a) valid -----------------------------------------------------------------------------------------------------

def test_the_document_is_valid_openapi_3_1():
    import jsonschema_rs

    assert DOCUMENT["openapi"].startswith("3.1.")
    schema = schemathesis.openapi.from_dict(DOCUMENT)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    loaded = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in loaded), [r for r in loaded if not isinstance(r, Ok)]
    assert len(loaded) == len(list(operations()))

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                resolve(node)  # a KeyError if it points nowhere
            if isinstance(node.get("schema"), dict):  # a parameter's or a media type's
                jsonschema_rs.meta.validate(node["schema"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(DOCUMENT)
    for name, definition in DOCUMENT["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(definition), name


def test_it_is_served_open_at_openapi_json(client):
    answer = client.get("/openapi.json")
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    assert answer.get_data() == DOCUMENT_PATH.read_bytes()


# -- (b) complete: the routes and the document name the same operations ----------------------------------------------

RULE_ARGUMENT = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
# The app's own converters (app.py) each match one name per integration.
NAME_OF = {"kind": "short_name", "integration": "namespace", "report": "report_api_name"}


def route_urls(app):
    """(METHOD, a concrete URL, rule) for every route but static files.

    A segment of one of the app's converters is filled with each integration's name in turn, all
    segments of a URL from the same integration (another integration's report name under an integration
    is routed, but its view answers 404: docs/design.md §5); any other segment with "x".
    """
    integrations = list(app.extensions["integrations"].values())
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        urls = {RULE_ARGUMENT.sub(lambda m, i=i: getattr(i, NAME_OF[m[1]]) if m[1] in NAME_OF else "x", rule.rule)
                for i in integrations}
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for url in sorted(urls):
                yield method, url, rule.rule


def documented_pattern(path, operation, document=DOCUMENT):
    """A regex matching the URLs of a documented path: an enum parameter matches its values only."""
    parameters = {p["name"]: p for p in map(resolve, operation.get("parameters", [])) if p["in"] == "path"}

    def segment(match):
        schema = resolve(parameters[match[1]]["schema"], document)
        if "enum" in schema:
            return "(?:" + "|".join(re.escape(value) for value in schema["enum"]) + ")"
        return "[^/]+"

    return re.compile(re.sub(r"\\\{(\w+)\\\}", segment, re.escape(path)) + r"\Z")


def documented_urls(path, operation, document=DOCUMENT):
    """Concrete URLs of a documented path: each value of an enum parameter, "x" for any other."""
    parameters = {p["name"]: p for p in map(resolve, operation.get("parameters", [])) if p["in"] == "path"}
    urls = [path]
    for name, parameter in parameters.items():
        values = resolve(parameter["schema"], document).get("enum", ["x"])
        urls = [url.replace("{" + name + "}", value) for url in urls for value in values]
    return urls


def undocumented_routes(app, document=DOCUMENT):
    """Routes (method, URL) no documented operation matches."""
    patterns = [(method, documented_pattern(path, op, document)) for method, path, op in operations(document)]
    return [(method, url, rule) for method, url, rule in route_urls(app)
            if not any(m == method and pattern.match(url) for m, pattern in patterns)]


def unrouted_operations(app, document=DOCUMENT):
    """Documented operations (method, URL) the app does not route to a view (a 404 or 405 from routing)."""
    from werkzeug.exceptions import HTTPException

    adapter = app.url_map.bind("localhost")
    missing = []
    for method, path, operation in operations(document):
        for url in documented_urls(path, operation, document):
            try:
                endpoint, _ = adapter.match(url, method=method)
            except HTTPException:
                missing.append((method, url))
                continue
            if endpoint == "static" or endpoint.endswith(".static"):
                missing.append((method, url))
    return missing


def test_every_route_is_documented_and_everything_documented_is_routed(app):
    assert undocumented_routes(app) == []
    assert unrouted_operations(app) == []


def test_a_route_missing_from_the_document_fails_the_check(app):
    """The check above is not vacuous: a new route, or a documented path that lost its route, is reported."""
    app.add_url_rule("/api/<integration:name>/somethingNew", "new", lambda name: "", methods=["POST"])
    assert ("POST", f"/api/{VIDEO}/somethingNew", "/api/<integration:name>/somethingNew") in undocumented_routes(app)
    document = json.loads(json.dumps(DOCUMENT))
    document["paths"]["/api/tasks/{taskId}"]["delete"] = document["paths"]["/api/tasks/{taskId}"]["get"]
    document["paths"]["/api/{integration}/fetchPendingTasks"]["get"]["parameters"][0] = {
        "name": "integration", "in": "path", "required": True, "schema": {"enum": [VIDEO, "retiredIntegration"]}}
    assert unrouted_operations(app, document) == [("DELETE", "/api/tasks/x"),
                                                  ("GET", "/api/retiredIntegration/fetchPendingTasks")]
    del document["paths"]["/metrics"]
    assert ("GET", "/metrics", "/metrics") in undocumented_routes(app, document)


# -- (b) true: the request schemas are the validators' ----------------------------------------------------------------

def request_schema(path, method="post"):
    return resolve(DOCUMENT["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"])


def flatten(schema):
    """A schema with its $refs resolved and its allOf merged (this document's shapes only)."""
    schema = dict(resolve(schema))
    for part in schema.pop("allOf", []):
        for key, value in flatten(part).items():
            schema.setdefault(key, value)
    return schema


def expected_field(field: Field) -> dict:
    """What the document must say about one field of an integration's REQUEST spec."""
    names = {str: "string", int: "integer", bool: "boolean", list: "array"}
    kinds = field.kind if isinstance(field.kind, tuple) else (field.kind,)
    expected = {}
    if field.choices is not None:
        expected["enum"] = sorted([*field.choices, *([] if field.required else [None])], key=str)
    else:
        types = sorted(names[k] for k in kinds)
        expected["type"] = types[0] if field.required and len(types) == 1 else sorted([*types, "null"])
    for keyword, value in (("minimum", field.low), ("maximum", field.high), ("maxLength", field.max_chars),
                           ("maxItems", field.max_items)):
        if value is not None:
            expected[keyword] = value
    return expected


@pytest.mark.parametrize("namespace", [VIDEO, IMAGE])
def test_the_create_schemas_are_the_integrations_field_specs(app, namespace):
    integration = app.extensions["integrations"][namespace]
    schema = request_schema(integration.user_path)
    assert schema["additionalProperties"] is False  # unknown fields are refused
    assert set(schema["properties"]) == set(integration.request_fields)
    assert sorted(schema["required"]) == sorted(n for n, f in integration.request_fields.items() if f.required)
    for name, field in integration.request_fields.items():
        documented = flatten(schema["properties"][name])
        if "enum" in documented:
            documented["enum"] = sorted(documented["enum"], key=str)
        if isinstance(documented.get("type"), list):
            documented["type"] = sorted(documented["type"])
        shown = {k: documented[k] for k in ("enum", "type", "minimum", "maximum", "maxLength", "maxItems")
                 if k in documented}
        assert shown == expected_field(field), name


def test_the_internal_schemas_are_the_internal_apis_limits():
    schemas = DOCUMENT["components"]["schemas"]
    claim = schemas["ClaimRequest"]["properties"]
    assert (claim["limit"]["maximum"], claim["waitMs"]["maximum"], claim["dispatched"]["maxItems"]) == (
        internal_api.MAX_LIMIT, internal_api.MAX_WAIT_MS, internal_api.MAX_LIMIT)
    for variant in ("ClaimOrConfirm", "Renewal", "Progress"):
        assert set(schemas[variant]["properties"]) == set(internal_api.REPORT_FIELDS)
        assert schemas[variant]["additionalProperties"] is False
    statuses = [schemas["ClaimOrConfirm"]["properties"]["status"]["const"],
                schemas["Renewal"]["properties"]["status"]["const"],
                *schemas["Progress"]["properties"]["status"]["enum"]]
    assert sorted(statuses) == sorted(internal_api.REPORTABLE)
    assert schemas["TaskRef"]["maxLength"] == schemas["ExternalId"]["maxLength"] == internal_api.MAX_ID_CHARS
    assert schemas["ReportError"]["maxLength"] == internal_api.MAX_ERROR_CHARS
    assert resolve(schemas["Reports"]["oneOf"][1])["maxItems"] == internal_api.MAX_LIMIT
    for path in ("/api/{integration}/fetchPendingTasks", "/api/{integration}/fetchDispatchedTasks"):
        limit = next(p for p in DOCUMENT["paths"][path]["get"]["parameters"] if p.get("name") == "limit")
        assert limit["schema"]["maximum"] == internal_api.MAX_LIMIT


def test_the_enums_are_the_codes(app):
    schemas, integrations = DOCUMENT["components"]["schemas"], list(app.extensions["integrations"].values())
    assert schemas["Status"]["enum"] == list(task_store.STATUSES)
    assert sorted(schemas["Integration"]["enum"]) == sorted(i.namespace for i in integrations)
    filters = {p["name"]: p["schema"]["enum"] for p in DOCUMENT["paths"]["/"]["get"]["parameters"]}
    assert filters == {"status": ["", *task_store.STATUSES], "integration": ["", *sorted(i.short_name for i in
                                                                                         integrations)]}
    reports = {path.rsplit("/", 1)[1]: path.split("/")[2] for path in DOCUMENT["paths"] if "/report" in path}
    assert reports == {i.report_api_name: i.namespace for i in integrations}


@both_backends
def test_every_success_answer_conforms_in_process(app, tasks):
    """Every operation once, through the app itself: a quick check of the success answers (no gunicorn; the
    fuzz below is the thorough one), so a new field without its line in the document fails here too."""
    completed, failed, pending = tasks.create(VIDEO), tasks.create(IMAGE), tasks.create(VIDEO)
    cancelled = tasks.create(IMAGE)
    app.extensions["media"].put(completed, "video.mp4", [MP4])
    stored = {"videoUrl": "u", "media": {"videoUrl": "video.mp4"}}
    for task_id, namespace, outcome in ((completed, VIDEO, {"status": "completed", "data": stored}),
                                        (failed, IMAGE, {"status": "failed", "error": "no"})):
        attempt = tasks.report(task_id, "queued", namespace).json["attempt"]
        assert tasks.report(task_id, "processing", namespace, attempt=attempt, taskId="job").status_code == 200
        assert tasks.report(task_id, namespace=namespace, attempt=attempt, **outcome).status_code == 200
    report = f"POST /api/{VIDEO}/{REPORT[VIDEO]}"
    calls = [
        ("POST /api/video/generate", {"body": {"prompt": "a cat", "duration": 5}}),
        ("POST /api/image/generate", {"body": {"prompt": "a cat", "imageInput": ["https://example.com/a.png"]}}),
        *[("GET /api/tasks/{taskId}", {"path_parameters": {"taskId": t}}) for t in (completed, failed, pending)],
        *[("GET /api/tasks/{taskId}/events", {"path_parameters": {"taskId": t}}) for t in (completed, failed)],
        ("POST /api/tasks/{taskId}/cancel", {"path_parameters": {"taskId": cancelled}}),
        ("GET /api/{integration}/fetchPendingTasks", {"path_parameters": {"integration": VIDEO}}),
        ("POST /api/{integration}/claimPendingTasks", {"path_parameters": {"integration": VIDEO},
                                                       "body": {"limit": 1}}),
        ("GET /api/{integration}/fetchDispatchedTasks", {"path_parameters": {"integration": IMAGE},
                                                         "query": {"olderThanSeconds": 0}}),
        (report, {"body": {"apiCallId": completed, "status": "completed", "attempt": 1}}),  # a duplicate
        (report, {"body": [{"apiCallId": pending, "status": "queued", "attempt": 9}, {"apiCallId": "none",
                                                                                      "status": "queued"}]}),
        (f"POST /api/{IMAGE}/{REPORT[IMAGE]}", {"body": {"apiCallId": failed, "status": "failed", "attempt": 1}}),
        ("GET /healthz", {}), ("GET /metrics", {}), ("GET /openapi.json", {}),
        ("GET /", {"query": {"status": "failed"}}), ("GET /tasks/{taskId}", {"path_parameters": {"taskId": failed}}),
        ("GET /api/tasks/{taskId}/media/{name}", {"path_parameters": {"taskId": completed, "name": "video.mp4"}}),
        ("GET /dashboard/media/{taskId}/{name}", {"path_parameters": {"taskId": completed, "name": "video.mp4"},
                                                  "headers": {"Range": "bytes=0-9"}}),
    ]
    labels = {label for label, _ in calls}
    assert labels | FORM_POSTS == {f"{method} {path}" for method, path, _ in operations()}
    sign_in = {"clientKey": USER, "internalToken": AUTH, "dashboardLogin": DASHBOARD}
    for label, fields in calls:
        method, path = label.split(" ", 1)
        case = FUZZ[path][method].Case(**fields)
        schemes = [name for requirement in DOCUMENT["paths"][path][method.lower()]["security"] for name in requirement]
        answer = case.call(app=app, headers=sign_in.get(schemes[0]) if schemes else None)
        assert 200 <= answer.status_code < 300, (label, answer.status_code, answer.text[:300])
        case.validate_response(answer, checks=[status_code_conformance, content_type_conformance,
                                               response_headers_conformance, response_schema_conformance])


@both_backends
def test_numbers_and_bodies_are_read_as_the_document_says(client):
    """What the fuzz found at the edge (web/edge.py): JSON Schema's `integer` admits 5.0, so every integer
    field takes it; a number no float holds (1e400) would be stored as Infinity, which no JSON answer can
    carry, so it is refused; and a `null` claim body is not an empty one."""
    created = client.post("/api/video/generate", json={"prompt": "a cat", "duration": 5.0, "seed": 1e3})
    assert created.status_code == 201, created.json
    params = client.get(f"/api/tasks/{created.json['taskId']}").json["requestParams"]
    assert params == {"prompt": "a cat", "duration": 5, "seed": 1000} and type(params["duration"]) is int
    claim = client.post(f"/api/{VIDEO}/claimPendingTasks", json={"limit": 1.0, "waitMs": 0.0}, headers=AUTH)
    assert claim.status_code == 200 and claim.json["tasks"][0]["attempt"] == 1
    task_id = claim.json["tasks"][0]["id"]
    report = {"apiCallId": task_id, "status": "completed", "attempt": 1.0}
    huge = client.post(f"/api/{VIDEO}/{REPORT[VIDEO]}", headers={**AUTH, "Content-Type": "application/json"},
                       data=json.dumps({**report, "data": {"score": 1}}).replace('"score": 1', '"score": 1e400'))
    assert huge.status_code == 400 and "too large" in huge.json["error"]
    done = client.post(f"/api/{VIDEO}/{REPORT[VIDEO]}", json={**report, "data": {"score": 0.5, "frames": 24.0}},
                       headers=AUTH)
    assert done.status_code == 200, done.json
    assert client.get(f"/api/tasks/{task_id}").json["result"] == {"score": 0.5, "frames": 24}
    for body in ("null", " null "):
        refused = client.post(f"/api/{VIDEO}/claimPendingTasks", data=body, headers={**AUTH,
                              "Content-Type": "application/json"})
        assert refused.status_code == 400 and "null" in refused.json["error"]
    assert client.post(f"/api/{VIDEO}/claimPendingTasks", data="", headers=AUTH).status_code == 200


# -- (c) the fuzz: schemathesis against gunicorn -------------------------------------------------------------------

SEED = int(os.environ.get("OPENAPI_FUZZ_SEED", "20261128"))
EXAMPLES = int(os.environ.get("OPENAPI_FUZZ_EXAMPLES", "100"))
FUZZ = schemathesis.openapi.from_dict(DOCUMENT, config=schemathesis.Config.from_dict({
    "seed": SEED,
    "suppress-health-check": ["all"],  # a slow CI machine must not fail the fuzz for drawing slowly
    "request-timeout": 20,
    "generation": {"max-examples": EXAMPLES, "database": "none"},
    # A query string past gunicorn's request-line limit is refused before the app (414, documented where an
    # operation takes query parameters): a rejection of bad input like any 4xx.
    "checks": {"negative_data_rejection": {"expected-statuses": [
        "400", "401", "403", "404", "405", "406", "409", "414", "415", "422", "428", "429", "5xx"]}},
    "auth": {"openapi": {
        "clientKey": {"bearer": CLIENT_KEY},
        "internalToken": {"bearer": TOKEN},
        "dashboardLogin": {"username": DASHBOARD_LOGIN[0], "password": DASHBOARD_LOGIN[1]},
        "metricsToken": {"bearer": METRICS_TOKEN},
    }},
}))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, positive_data_acceptance, negative_data_rejection, missing_required_header,
          unsupported_method, allow_header_conformance, ignored_auth]
# The tasks the document's examples name, seeded in these states (the examples phase reads real tasks).
EXAMPLE_IDS = {name: example["value"]
               for name, example in DOCUMENT["components"]["parameters"]["TaskId"]["examples"].items()}
CLAIM = "POST /api/{integration}/claimPendingTasks"


# Known nonconformances whose fix belongs in a file these tests do not own: operation -> the inputs that
# show it. The fuzz leaves those inputs out (it checks everything else), and an xfail test below sends one
# and expects the conformant answer, so the fix turns it into an XPASS (strict: remove it then).
# The dashboard's form posts: their success needs the session cookie of the page the form is on (its CSRF
# token), so the fuzz only meets their refusals; tests/test_dashboard.py covers their success (a 303).
FORM_POSTS = {"POST /tasks/{taskId}/cancel", "POST /tasks/{taskId}/retry"}
KNOWN: dict = {}


def decided_by_the_model(case) -> bool:
    """A video create whose fate the configured model decides (FANGZHOU_MODEL; integrations/fangzhou_video
    model_limits): a duration below 2 (-1 is Seedance 1.5's "the model chooses", refused by 1.0) or `adaptive`
    without a first frame (refused by 1.0). One static document cannot say it for every model; the
    integration's tests cover it (tests/test_provider_clients.py)."""
    body = case.body if isinstance(case.body, dict) else {}
    duration = body.get("duration")
    short = isinstance(duration, (int, float)) and not isinstance(duration, bool) and duration < 2
    return short or (body.get("ratio") == "adaptive" and not body.get("firstFrameUrl"))


MODEL_DECIDES = {"POST /api/video/generate": decided_by_the_model}


def fresh_idempotency_key(case) -> None:
    """A well-formed Idempotency-Key becomes a new one: the fuzz repeats keys with other bodies, which is a
    correct 422 (the key was used for another request), not the acceptance the check expects of valid
    input. Keyed behaviour has its own tests (tests/test_idempotency.py)."""
    import re
    import uuid

    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and re.fullmatch(r"[\x21-\x7e]{1,255}", key):
        headers["Idempotency-Key"] = uuid.uuid4().hex
SEEN: dict[str, set[int]] = {}  # operation -> the statuses its fuzz got (checked by a test after the fuzz)


@pytest.fixture(scope="module", params=BACKENDS)
def live(request, tmp_path_factory):
    """The web process under gunicorn (2 workers, METRICS_TOKEN set), seeded with tasks in every state; once on
    each task store (PostgreSQL: a schema of its own on the session's cluster)."""
    from dev.stack import gunicorn

    folder = tmp_path_factory.mktemp("openapi")
    db_path = target = str(folder / "app.db")
    if request.param == "postgres":
        admin, url_for = request.getfixturevalue("pg_server")
        schema = f"openapi_{secrets.token_hex(6)}"
        dbaccess.execute(admin, f"CREATE SCHEMA {schema}")
        target = url_for(schema)
    try:
        seed(db_path, target)
        with gunicorn(db_path, folder / "gunicorn.log", workers=2,
                      env={**SECRETS, **db_config(target), "METRICS_TOKEN": METRICS_TOKEN}) as url:
            yield url
    finally:
        if target != db_path:
            from web import pg

            pg.close_pools(target)
            dbaccess.close(target)
            dbaccess.execute(admin, f"DROP SCHEMA {schema} CASCADE")
    log = (folder / "gunicorn.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def seed(db_path: str, target: str) -> None:
    """The tasks the document's examples name (completed, failed, pending, processing), and a backlog.

    Made through the API (in process, before gunicorn opens the database), under the examples' ids.
    """
    import uuid
    from unittest import mock

    from app import create_app

    client = create_app({"DATABASE_PATH": db_path, **db_config(target), **SECRETS}).test_client()

    def call(path, headers, body):
        answer = client.post(path, json=body, headers=headers)
        assert answer.status_code < 300, (path, answer.status_code, answer.get_data(as_text=True))
        return answer.json

    def create(namespace, name="backlog"):
        kind = "video" if namespace == VIDEO else "image"
        given = uuid.UUID(EXAMPLE_IDS[name]) if name in EXAMPLE_IDS else uuid.uuid4()
        with mock.patch.object(uuid, "uuid4", return_value=given):
            return call(f"/api/{kind}/generate", USER, {"prompt": f"a cat, {name}"})["taskId"]

    def report(namespace, task_id, status, **fields):
        return call(f"/api/{namespace}/{REPORT[namespace]}", AUTH, {"apiCallId": task_id, "status": status, **fields})

    states = {"completed": VIDEO, "failed": IMAGE, "processing": VIDEO, "pending": VIDEO}
    ids = {name: create(namespace, name) for name, namespace in states.items()}
    assert ids == EXAMPLE_IDS
    for name in ("completed", "failed", "processing"):
        namespace, task_id = states[name], ids[name]
        attempt = report(namespace, task_id, "queued")["attempt"]
        report(namespace, task_id, "queued", attempt=attempt)  # its workflow is started
        report(namespace, task_id, "processing", attempt=attempt, taskId=f"job-{name}")
    LocalStore(Path(db_path).parent / "media").put(ids["completed"], "video.mp4", [MP4])  # MEDIA_DIR's default
    report(VIDEO, ids["completed"], "completed", attempt=1,
           data={"videoUrl": "https://example.com/v.mp4", "media": {"videoUrl": "video.mp4"}})
    report(IMAGE, ids["failed"], "failed", attempt=1, error="prompt blocked", retryable=False)
    for namespace in (VIDEO, IMAGE) * 3:
        create(namespace)


def bounded_wait(case) -> None:
    """A valid `waitMs` is cut to 20 ms: a long poll with no work would hold the fuzz for up to 30 s.

    (Long polls have their own tests: test_fetch_pending_tasks.py, test_claim_pending_tasks.py.)
    """
    for where in (case.query, case.body):
        if not isinstance(where, dict) or "waitMs" not in where:
            continue
        value = where["waitMs"]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 20 < value <= internal_api.MAX_WAIT_MS:
            where["waitMs"] = 20 if isinstance(value, int) or value.is_integer() else value  # 2.0 is the integer 2
        elif isinstance(value, str) and value.isascii() and value.isdigit() and 20 < int(value):
            where["waitMs"] = "20"


@pytest.mark.slow
@FUZZ.parametrize()
def test_every_answer_conforms_to_the_document(case: schemathesis.Case, live: str):
    if any(shows(case) for shows in KNOWN.get(case.operation.label, ())):
        return
    if MODEL_DECIDES.get(case.operation.label, lambda case: False)(case):
        return
    fresh_idempotency_key(case)
    bounded_wait(case)
    response = case.call_and_validate(base_url=live, checks=CHECKS)
    if response.request.method == case.operation.method.upper():  # not a probe with another method
        SEEN.setdefault(case.operation.label, set()).add(response.status_code)


@pytest.mark.slow
def test_the_fuzz_reached_every_operations_success():
    """Each fuzzed operation got a 2xx, so its success answer was checked too, not only its refusals
    (with a wrong credential in the fuzz's configuration, every answer would be a conforming 401)."""
    if not SEEN:
        pytest.skip("the fuzz did not run")
    failing = {label: sorted(statuses) for label, statuses in SEEN.items()
               if not any(200 <= status < 300 for status in statuses) and label not in FORM_POSTS}
    assert failing == {}


def secured_operations():
    for method, path, operation in operations():
        schemes = [name for requirement in operation.get("security", []) for name in requirement]
        if schemes:
            yield pytest.param(method, path, id=f"{method} {path}")


@pytest.mark.slow
@pytest.mark.parametrize("method, path", list(secured_operations()))
def test_every_refusal_of_a_credential_conforms(live, method, path):
    """No credential, or a wrong one (bearer and basic), on every secured operation: a 401 as documented."""
    from schemathesis.specs.openapi.checks import status_code_conformance as status

    operation = FUZZ[path][method]
    parameters = {"integration": VIDEO, "taskId": EXAMPLE_IDS["completed"], "name": "video.mp4"}
    url = live + re.sub(r"\{(\w+)\}", lambda m: parameters[m[1]], path)
    for headers in ({}, {"Authorization": "Bearer not-the-right-token-0123"},
                    {"Authorization": "Basic YWRtaW46bm90LXRoZS1yaWdodC1wYXNzd29yZA=="}):
        answer = requests.request(method, url, headers=headers, json={} if method == "POST" else None, timeout=10)
        assert answer.status_code == 401, (headers, answer.status_code, answer.text)
        case = operation.Case(path_parameters={k: v for k, v in parameters.items() if "{" + k + "}" in path})
        case.validate_response(answer, checks=[status, content_type_conformance, response_headers_conformance,
                                               response_schema_conformance])


@pytest.mark.slow
@pytest.mark.parametrize("method, path", [(m, p) for m, p, op in operations()
                                          if "requestBody" in op and f"{m} {p}" not in FORM_POSTS])
def test_every_refusal_of_a_body_conforms(live, method, path):
    """What the fuzz never draws: a body over 256 KiB (413), and one that is not JSON (415), as documented."""
    operation, sign_in = FUZZ[path][method], {"clientKey": USER, "internalToken": AUTH}
    requirement = DOCUMENT["paths"][path][method.lower()]["security"][0]
    url = live + path.replace("{integration}", VIDEO)
    for body, content_type, code in ((b'{"prompt": "' + b"p" * 300_000 + b'"}', "application/json", 413),
                                     (b"prompt=a+cat", "application/x-www-form-urlencoded", 415)):
        answer = requests.request(method, url, data=body, timeout=10,
                                  headers={**sign_in[next(iter(requirement))], "Content-Type": content_type})
        assert answer.status_code == code, (answer.status_code, answer.text)
        case = operation.Case(path_parameters={"integration": VIDEO} if "{integration}" in path else {})
        case.validate_response(answer, checks=[status_code_conformance, content_type_conformance,
                                               response_headers_conformance, response_schema_conformance])


def test_the_fuzz_skips_nothing_it_knows_of():
    """Every known failure names a documented operation (a stale entry would hide nothing, silently)."""
    labels = {f"{method} {path}" for method, path, _ in operations()}
    assert set(KNOWN) <= labels


@pytest.mark.slow
def test_a_confirmation_needs_its_attempt(live):
    answer = requests.post(f"{live}/api/{VIDEO}/claimPendingTasks", headers=AUTH, timeout=10,
                           json={"limit": 1, "dispatched": [{"apiCallId": "no-such-task", "attempt": None}]})
    assert answer.status_code == 400, answer.text


def test_paths_are_unique_after_their_parameters():
    """No two documented paths match the same URL (a fuzz of one would test the other)."""
    seen = {}
    for method, path, operation in operations():
        for url in documented_urls(path, operation):
            assert (method, url) not in seen, (path, seen.get((method, url)))
            seen[(method, url)] = path
