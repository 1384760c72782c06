"""Bad input gets a 4xx JSON error and changes nothing in the database."""

import json

import pytest

from tests.conftest import AUTH, BACKENDS, DASHBOARD, USER, VIDEO, snapshot

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)  # the same assertions on both stores

DASHBOARD_HEADERS = DASHBOARD

REPORT_URL = "/api/fangzhouVideoGeneration/reportFangzhouVideoResult"
FETCH_URL = "/api/fangzhouVideoGeneration/fetchPendingTasks"
CLAIM_URL = "/api/fangzhouVideoGeneration/claimPendingTasks"
SQL_ID = "x'; DROP TABLE video_tasks; --\" OR 1=1"

# name -> (method, url, raw body or JSON, headers, expected status, message fragment)
CASES = {
    "non-JSON body": ("POST", REPORT_URL, b"not json {", {}, 400, "not valid JSON"),
    "JSON array of non-objects": ("POST", REPORT_URL, [1, 2], {}, 400, "Report 0: Body must be a JSON object"),
    "empty body": ("POST", REPORT_URL, b"", {}, 400, "not valid JSON"),
    "missing apiCallId": ("POST", REPORT_URL, {"status": "queued"}, {}, 400, "apiCallId"),
    "apiCallId a number": ("POST", REPORT_URL, {"apiCallId": 7, "status": "queued"}, {}, 400, "apiCallId"),
    "apiCallId empty": ("POST", REPORT_URL, {"apiCallId": "", "status": "queued"}, {}, 400, "apiCallId"),
    "apiCallId too long": ("POST", REPORT_URL, {"apiCallId": "a" * 201, "status": "queued"}, {}, 400, "apiCallId"),
    "unknown status": ("POST", REPORT_URL, {"apiCallId": "TASK", "status": "done"}, {}, 400, "status must be one of"),
    "status pending": ("POST", REPORT_URL, {"apiCallId": "TASK", "status": "pending"}, {}, 400, "status"),
    "status a list": ("POST", REPORT_URL, {"apiCallId": "TASK", "status": ["queued"]}, {}, 400, "status"),
    "attempt a string": ("POST", REPORT_URL, {"apiCallId": "TASK", "status": "processing", "attempt": "1"},
                         {}, 400, "attempt"),
    "attempt a bool": ("POST", REPORT_URL, {"apiCallId": "TASK", "status": "processing", "attempt": True},
                       {}, 400, "attempt"),
    "attempt zero": ("POST", REPORT_URL, {"apiCallId": "TASK", "status": "processing", "attempt": 0},
                     {}, 400, "attempt"),
    "attempt missing on a progress report": ("POST", REPORT_URL, {"apiCallId": "TASK", "status": "completed"},
                                             {}, 400, "attempt is required"),
    "retryable a string": ("POST", REPORT_URL, {"apiCallId": "TASK", "status": "failed", "attempt": 1,
                                                "retryable": "no"}, {}, 400, "retryable"),
    "error a dict": ("POST", REPORT_URL, {"apiCallId": "TASK", "status": "failed", "attempt": 1,
                                          "error": {"m": 1}}, {}, 400, "error"),
    "data a string": ("POST", REPORT_URL, {"apiCallId": "TASK", "status": "completed", "attempt": 1,
                                           "data": "x"}, {}, 400, "data"),
    "unknown field": ("POST", REPORT_URL, {"apiCallId": "TASK", "status": "queued", "sql": 1}, {}, 400, "Unknown"),
    "1 MB body": ("POST", REPORT_URL, {"apiCallId": "TASK", "status": "completed", "attempt": 1,
                                       "data": {"blob": "x" * 1_000_000}}, {}, 413, "too large"),
    "id full of quotes and SQL (claim)": ("POST", REPORT_URL, {"apiCallId": SQL_ID, "status": "queued"},
                                          {}, 404, "Task not found"),
    "id full of quotes and SQL (read)": ("GET", "/api/tasks/" + "x'%20OR%20'1'='1", None, {}, 404, "not found"),
    "id with a NUL (read)": ("GET", "/api/tasks/a%00b", None, {}, 404, "Task not found"),
    "id with a NUL (events)": ("GET", "/api/tasks/%00/events", None, {}, 404, "Task not found"),
    "id with a NUL (cancel)": ("POST", "/api/tasks/a%00/cancel", None, {}, 404, "Task not found"),
    "limit 0": ("GET", FETCH_URL + "?limit=0", None, {}, 400, "limit must be an integer from 1 to 100"),
    "limit 101": ("GET", FETCH_URL + "?limit=101", None, {}, 400, "limit"),
    "limit abc": ("GET", FETCH_URL + "?limit=abc", None, {}, 400, "limit"),
    "limit negative": ("GET", FETCH_URL + "?limit=-1", None, {}, 400, "limit"),
    "limit with SQL": ("GET", FETCH_URL + "?limit=1;DROP%20TABLE%20video_tasks", None, {}, 400, "limit"),
    "batch with one bad item": ("POST", REPORT_URL, [{"apiCallId": "TASK", "status": "queued"},
                                                     {"apiCallId": "TASK", "status": "nope"}], {}, 400, "Report 1:"),
    "empty batch": ("POST", REPORT_URL, [], {}, 400, "A batch holds 1 to 100 reports"),
    "batch of 101": ("POST", REPORT_URL, [{"apiCallId": "TASK", "status": "processing", "attempt": 1}] * 101,
                     {}, 400, "A batch holds"),
    "waitMs too long": ("GET", FETCH_URL + "?waitMs=30001", None, {}, 400, "waitMs must be an integer"),
    "waitMs not a number": ("GET", FETCH_URL + "?waitMs=soon", None, {}, 400, "waitMs"),
    "claim body not JSON": ("POST", CLAIM_URL, b"limit=3", {}, 400, "not valid JSON"),
    "claim body a list": ("POST", CLAIM_URL, [{"limit": 1}], {}, 400, "JSON object"),
    "claim limit 0": ("POST", CLAIM_URL, {"limit": 0}, {}, 400, "limit must be an integer from 1 to 100"),
    "claim limit 101": ("POST", CLAIM_URL, {"limit": 101}, {}, 400, "limit"),
    "claim limit a string": ("POST", CLAIM_URL, {"limit": "5"}, {}, 400, "limit"),
    "claim limit a bool": ("POST", CLAIM_URL, {"limit": True}, {}, 400, "limit"),
    "claim unknown field": ("POST", CLAIM_URL, {"limit": 1, "ids": ["TASK"]}, {}, 400, "Unknown field(s): ids"),
    "claim dispatched not a list": ("POST", CLAIM_URL, {"dispatched": {"apiCallId": "TASK"}}, {}, 400,
                                    "dispatched must be a list"),
    "claim dispatched without attempt": ("POST", CLAIM_URL, {"dispatched": [{"apiCallId": "TASK"}]}, {}, 400,
                                         "dispatched[0] must be an object with exactly apiCallId and attempt"),
    "claim dispatched attempt zero": ("POST", CLAIM_URL, {"dispatched": [{"apiCallId": "TASK", "attempt": 0}]},
                                      {}, 400, "dispatched[0]: attempt must be a positive integer"),
    "claim dispatched of 101": ("POST", CLAIM_URL, {"dispatched": [{"apiCallId": "TASK", "attempt": 1}] * 101},
                                {}, 400, "at most 100"),
    "claim without token": ("POST", CLAIM_URL, {"limit": 1}, {"Authorization": "Bearer nope"}, 401, "token"),
    "claim by GET": ("GET", CLAIM_URL, None, {}, 405, ""),
    "wrong method": ("GET", REPORT_URL, None, {}, 405, ""),
    "no token": ("POST", REPORT_URL, {"apiCallId": "TASK", "status": "queued"}, {"Authorization": ""}, 401, "token"),
    "prompt missing": ("POST", "/api/video/generate", {}, {}, 400, "'prompt' is required"),
    "prompt empty": ("POST", "/api/image/generate", {"prompt": "   "}, {}, 400, "must not be empty"),
    "prompt a number": ("POST", "/api/video/generate", {"prompt": 5}, {}, 400, "must be a string"),
    "prompt oversized": ("POST", "/api/video/generate", {"prompt": "p" * 4001}, {}, 400, "too long"),
    "video duration a string": ("POST", "/api/video/generate", {"prompt": "p", "duration": "5"},
                                {}, 400, "'duration' must be an integer"),
    "video ratio unknown": ("POST", "/api/video/generate", {"prompt": "p", "ratio": "2:1"}, {}, 400, "ratio"),
    "image unknown field": ("POST", "/api/image/generate", {"prompt": "p", "size": 3}, {}, 400, "Unknown field"),
    "image input not URLs": ("POST", "/api/image/generate", {"prompt": "p", "imageInput": [1]}, {}, 400, "imageInput"),
    "create body not JSON": ("POST", "/api/image/generate", b"prompt=cat", {}, 400, "not valid JSON"),
    "create as a form post": ("POST", "/api/image/generate", b"prompt=cat",
                              {"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    "create as text/plain": ("POST", "/api/video/generate", b'{"prompt": "cat"}', {"Content-Type": "text/plain"},
                             415, "application/json"),
    "report as text/plain": ("POST", REPORT_URL, b'{"apiCallId": "x", "status": "queued"}',
                             {"Content-Type": "text/plain"}, 415, "application/json"),
    "deep nesting on create": ("POST", "/api/video/generate", b'{"prompt": ' + b"[" * 20000 + b"]" * 20000 + b"}",
                               {}, 400, "nests deeper"),
    "deep nesting in report data": ("POST", REPORT_URL, b'{"apiCallId": "x", "status": "completed", "attempt": 1, '
                                    b'"data": ' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}", {}, 400, "nests deeper"),
    "lone surrogate in apiCallId": ("POST", REPORT_URL, b'{"apiCallId": "\\ud800", "status": "queued"}', {}, 400,
                                    "lone surrogate"),
    "lone surrogate in a prompt": ("POST", "/api/video/generate", b'{"prompt": "a \\udfff cat"}', {}, 400,
                                   "lone surrogate"),
    "invalid UTF-8": ("POST", "/api/video/generate", b'{"prompt": "\xff\xfe"}', {}, 400, "not valid JSON"),
    "NaN in report data": ("POST", REPORT_URL, b'{"apiCallId": "TASK", "status": "completed", "attempt": 1, '
                           b'"data": {"score": NaN}}', {}, 400, "NaN is not JSON"),
    "Infinity in a claim": ("POST", CLAIM_URL, b'{"limit": Infinity}', {}, 400, "Infinity is not JSON"),
    "waitMs in superscript digits": ("GET", FETCH_URL + "?waitMs=%C2%B2", None, {}, 400, "waitMs"),
    "limit in Arabic-Indic digits": ("GET", FETCH_URL + "?limit=%D9%A3", None, {}, 400, "limit"),
}
USER_PATHS = ("/api/video/", "/api/image/", "/api/tasks/")


@pytest.mark.parametrize("method, url, body, headers, code, message", CASES.values(), ids=CASES.keys())
def test_bad_input_is_refused_and_changes_nothing(tasks, db_target, method, url, body, headers, code, message):
    task_id = tasks.create()
    tasks.report(task_id, "queued")
    tasks.create()  # pending: a claim that slipped through would take it
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    if body is not None:
        body = body.replace(b'"TASK"', json.dumps(task_id).encode())
    before = snapshot(db_target)

    sign_in = USER if url.startswith(USER_PATHS) else AUTH
    response = tasks.client.open(url, method=method, data=body,
                                 headers={"Content-Type": "application/json", **sign_in, **headers})

    assert response.status_code == code
    assert response.is_json, response.data[:200]
    assert response.json["success"] is False
    assert message in response.json["error"]
    assert snapshot(db_target) == before


@pytest.mark.slow
def test_bad_input_over_http_is_a_4xx_never_a_500(web, tmp_path):
    """The same edge, through gunicorn: chunked bodies, deep nesting, lone surrogates, odd digits, NaN."""
    import requests

    from tests.conftest import USER

    app = web()
    task_id = app.create()
    user = {**USER, "Content-Type": "application/json"}
    internal = {**AUTH, "Content-Type": "application/json"}

    def chunks(total: int, size: int = 65536):
        yield b'{"prompt": "'
        for _ in range(total // size):
            yield b"p" * size
        yield b'"}'

    cases = [
        ("POST", "/api/video/generate", user, chunks(300_000), 413),  # chunked, over the limit: never cut and kept
        ("POST", "/api/video/generate", user, chunks(1_000), 400),  # chunked, under it: judged as usual (too long)
        ("POST", "/api/video/generate", user, b'{"prompt": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", 400),
        ("POST", "/api/image/generate", user, b'{"prompt": "\\ud800"}', 400),
        ("POST", f"/api/{VIDEO}/reportFangzhouVideoResult", internal,
         b'{"apiCallId": "\\udfff", "status": "queued"}', 400),
        ("POST", f"/api/{VIDEO}/reportFangzhouVideoResult", internal,
         json.dumps({"apiCallId": task_id, "status": "completed", "attempt": 1}).encode()[:-1] + b', "data": [NaN]}',
         400),
        ("GET", f"/api/{VIDEO}/fetchPendingTasks?waitMs=%C2%B2", AUTH, None, 400),
        ("GET", f"/api/{VIDEO}/fetchDispatchedTasks?after=1.5,%ED%A0%80", AUTH, None, 200),
        ("GET", "/api/tasks/%ED%A0%80", USER, None, 404),
        ("GET", "/tasks/%00", DASHBOARD_HEADERS, None, 404),
    ]
    before = snapshot(app.db_path)
    for method, path, headers, body, code in cases:
        answer = requests.request(method, app.url + path, headers=headers, data=body, timeout=30)
        assert answer.status_code == code, (path, answer.status_code, answer.text[:200])
        assert answer.headers["Content-Type"].startswith("application/json")
    assert snapshot(app.db_path) == before
    assert "Traceback" not in (app_log := (tmp_path / "gunicorn.log").read_text()), app_log[-2000:]
