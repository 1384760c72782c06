"""The worker's report activity sends the internal token only to the main endpoint's origin (MAIN_ENDPOINT).

Anyone who can start a workflow on the worker's task queue chooses its input,
`reportUrl` included. The activity runs here for real (temporalio's
ActivityEnvironment) against two real HTTP listeners that record what reaches
them: the configured one, and a foreign one.
"""

from __future__ import annotations

import json
import logging

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from integrations.shared import activities
from integrations.shared.activities import REPORT_REFUSED, REPORT_URL_REFUSED, ReportInput, origin, report_target
from settings import load_config
from tests.conftest import TOKEN, VIDEO, LoopbackHTTP, QuietHandler

PATH = f"/api/{VIDEO}/reportFangzhouVideoResult"


class Listener(LoopbackHTTP):
    """A real HTTP server on a free loopback port that records every request (method, path, headers, body).

    `answer`: (status, JSON body), or a function of the request's (method, path) giving one.
    """

    def __init__(self, answer=(200, {"success": True, "status": "processing", "attempt": 1, "duplicate": False}),
                 headers=None):
        self.seen: list[dict] = []
        listener = self

        class Handler(QuietHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                listener.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                      "body": json.loads(self.rfile.read(length) or b"null")})
                status, body = answer(self.command, self.path) if callable(answer) else answer
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST

        super().__init__(Handler)


@pytest.fixture
def listeners():
    made: list[Listener] = []

    def make(**kwargs) -> Listener:
        made.append(Listener(**kwargs))
        return made[-1]

    yield make
    for listener in made:
        listener.close()


@pytest.fixture
def worker_with(monkeypatch):
    """Configure the worker's activities as `python workflows.py` would be, with this MAIN_ENDPOINT."""

    def configure(main_endpoint: str):
        config = load_config(overrides={"MAIN_ENDPOINT": main_endpoint, "INTERNAL_API_TOKEN": TOKEN})
        monkeypatch.setattr(activities, "worker_config", lambda: config)

    return configure


def report(url: str, status: str = "processing") -> dict:
    return ActivityEnvironment().run(activities.report_task_event,
                                     ReportInput(url, "task-1", 1, status, external_id="cgt-1"))


def test_the_configured_origin_gets_the_token_and_the_report(listeners, worker_with):
    main = listeners()
    worker_with(main.url)
    assert report(main.url + PATH)["success"] is True
    [seen] = main.seen
    assert seen["path"] == PATH
    assert seen["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert seen["body"] == {"apiCallId": "task-1", "status": "processing", "attempt": 1, "taskId": "cgt-1"}


def test_a_foreign_report_url_gets_no_request_and_the_activity_fails_for_good(listeners, worker_with, caplog):
    main, foreign = listeners(), listeners()
    worker_with(main.url)
    with caplog.at_level(logging.ERROR), pytest.raises(ApplicationError) as refused:
        report(foreign.url + PATH)
    assert foreign.seen == [] and main.seen == []  # nothing sent anywhere, the token least of all
    assert refused.value.non_retryable and refused.value.type == REPORT_URL_REFUSED
    assert f"reportUrl {foreign.url}" in refused.value.message and f"origin {main.url}" in refused.value.message
    assert "MAIN_ENDPOINT" in refused.value.message and TOKEN not in refused.value.message
    [line] = [r for r in caplog.records if "report not sent" in r.getMessage()]
    assert line.fields["report_origin"] == foreign.url and line.fields["main_endpoint"] == main.url
    assert line.fields["task"] == "task-1" and line.fields["attempt"] == 1


@pytest.mark.parametrize("make_url", [
    lambda main, foreign: f"http://localhost:{main.port}{PATH}",  # another host name for the same machine
    lambda main, foreign: f"https://127.0.0.1:{main.port}{PATH}",  # another scheme
    lambda main, foreign: f"http://127.0.0.1:{foreign.port}{PATH}",  # another port
    lambda main, foreign: f"http://127.0.0.1:{main.port}@127.0.0.1:{foreign.port}{PATH}",  # user info
    lambda main, foreign: f"http://127.0.0.1:{foreign.port}\\@127.0.0.1:{main.port}{PATH}",  # parsers disagree
    lambda main, foreign: f"http://127.0.0.1:{foreign.port}#@127.0.0.1:{main.port}{PATH}",
    lambda main, foreign: f" http://127.0.0.1:{main.port}{PATH}",
    lambda main, foreign: f"http://127.0.0.1:{main.port}\r\nX: y{PATH}",
    lambda main, foreign: "file:///etc/passwd",
    lambda main, foreign: "",
], ids=["host", "scheme", "port", "userinfo", "backslash", "fragment", "space", "crlf", "file", "empty"])
def test_every_other_origin_is_refused_before_sending(listeners, worker_with, make_url):
    main, foreign = listeners(), listeners()
    worker_with(main.url)
    with pytest.raises(ApplicationError) as refused:
        report(make_url(main, foreign))
    assert refused.value.type == REPORT_URL_REFUSED and refused.value.non_retryable
    assert main.seen == [] and foreign.seen == []


def test_a_redirect_is_not_followed(listeners, worker_with):
    """A 307 from the main endpoint would re-send the body (and, to a same-host redirect, the token) elsewhere."""
    foreign = listeners()
    main = listeners(answer=(307, {}), headers={"Location": foreign.url + PATH})
    worker_with(main.url)
    with pytest.raises(ApplicationError) as refused:
        report(main.url + PATH)
    assert len(main.seen) == 1 and foreign.seen == []
    assert refused.value.type == REPORT_REFUSED and refused.value.non_retryable


def test_a_misconfigured_main_endpoint_refuses_every_report(listeners, worker_with):
    main = listeners()
    worker_with(f"127.0.0.1:{main.port}")  # no scheme: not an origin at all
    with pytest.raises(ApplicationError) as refused:
        report(main.url + PATH)
    assert refused.value.type == REPORT_URL_REFUSED and main.seen == []


def test_origins_compare_scheme_host_and_port_with_default_ports():
    assert origin("HTTP://Web.Example:80/api") == origin("http://web.example/other?x=1") == ("http", "web.example", 80)
    assert origin("https://web.example/") == ("https", "web.example", 443)
    assert origin("http://[::1]:5000/x") == ("http", "::1", 5000)
    assert origin("http://web.example:99999/") is None and origin("ftp://web.example/") is None
    assert report_target("http://web.example/api/x?y=1", "HTTP://web.example:80") == "http://web.example:80/api/x?y=1"
    assert report_target("http://web.example:81/api/x", "http://web.example") is None


class ClosesTheSecondRequest(QuietHandler):
    """HTTP/1.1 with keep-alive; the server's second request ever is read, then its connection closed with no
    answer: what a client sees when the server's idle timeout closes a kept-alive connection as it is reused."""

    protocol_version = "HTTP/1.1"
    seen: list[dict] = []

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.seen.append(json.loads(self.rfile.read(length)))
        if len(self.seen) == 2:
            self.close_connection = True
            return
        data = json.dumps({"success": True, "status": "processing", "attempt": 1, "duplicate": False}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_a_kept_alive_connection_closed_as_it_is_reused_is_sent_again_on_a_new_one(worker_with):
    """The last CI's two-host run logged a report activity failing with RemoteDisconnected (gunicorn closed an
    idle kept-alive connection as the worker reused it); it was retried by Temporal, with a traceback in the
    log. The activity sends the report again at once instead: reports are idempotent."""
    ClosesTheSecondRequest.seen = []
    server = LoopbackHTTP(ClosesTheSecondRequest)
    try:
        worker_with(server.url)
        activities._session.cache_clear()  # a session of this test's own: its connection is the one reused
        assert report(server.url + PATH)["success"] is True
        assert report(server.url + PATH)["success"] is True  # the second request is closed unanswered
    finally:
        activities._session.cache_clear()
        server.close()
    assert len(ClosesTheSecondRequest.seen) == 3 and ClosesTheSecondRequest.seen[1] == ClosesTheSecondRequest.seen[2]


def test_a_refused_connection_is_not_sent_again_here(worker_with):
    """Only a connection closed without an answer is retried at once; a web process that is down is left to the
    activity's retry policy (with its backoff)."""
    from dev.stack import free_port

    url = f"http://127.0.0.1:{free_port()}"
    worker_with(url)
    with pytest.raises(ApplicationError, match="ConnectionError"):
        report(url + PATH)
