"""A create whose answer is lost is not sent again in the same attempt: it may have made a (billed) job.

The create activity runs in temporalio's ActivityEnvironment against a real local HTTP server.
"""

from __future__ import annotations

import time

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import integrations.shared.activities as activities
from dev.stack import free_port
from integrations.fangzhou_video.client import ArkClient
from tests.conftest import LoopbackHTTP, QuietHandler


@pytest.fixture
def ark(monkeypatch):
    """A server that takes the create and answers too late (or drops the connection); the creates it saw."""
    seen: list[str] = []

    class Handler(QuietHandler):
        def do_POST(self):
            seen.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if "drop" in self.server.mode:
                self.connection.close()
                return
            time.sleep(1.0)

    http = LoopbackHTTP(Handler)
    server = http.server
    server.mode = ""
    monkeypatch.setattr(activities, "provider_settings", lambda namespace: {
        "baseUrl": f"{http.url}/api/v3", "apiKey": "k", "model": "m"})
    monkeypatch.setattr(ArkClient, "create_timeout", (1.0, 0.2))
    activities.throttle.cache_clear()
    yield server, seen
    http.close()
    activities.throttle.cache_clear()


@pytest.mark.parametrize("mode", ["late", "drop"])
def test_a_create_sent_and_unanswered_fails_the_attempt_without_a_retry(ark, mode):
    server, seen = ark
    server.mode = mode
    create = activities.job_activities("fangzhouVideoGeneration", ArkClient).create
    with pytest.raises(ApplicationError) as caught:
        ActivityEnvironment().run(create, activities.CreateInput("task-1", 1, {"prompt": "a heron"}))
    assert caught.value.type == activities.CREATE_UNANSWERED and caught.value.non_retryable
    assert len(seen) == 1


def test_a_create_that_never_connected_is_retried(monkeypatch):
    """Connection refused: nothing reached the provider, so Temporal may send it again (a transient error)."""
    monkeypatch.setattr(activities, "provider_settings", lambda namespace: {
        "baseUrl": f"http://127.0.0.1:{free_port()}/api/v3", "apiKey": "k", "model": "m"})
    activities.throttle.cache_clear()
    create = activities.job_activities("fangzhouVideoGeneration", ArkClient).create
    with pytest.raises(ApplicationError) as caught:
        ActivityEnvironment().run(create, activities.CreateInput("task-1", 1, {"prompt": "a heron"}))
    assert caught.value.type == activities.TRANSIENT and not caught.value.non_retryable
