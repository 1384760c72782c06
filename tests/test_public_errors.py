"""Users see a clean error; operators keep the full detail.

The stored `error` of a failed task is for operators (CLI `tasks show`, the
dashboard, the logs). Users get what integrations/shared/public_errors.py makes
of it: the provider's own words, "The provider is unavailable; retrying" while
the task will run again, or "The task failed: <short reason>". The texts come
from the real producers here: the provider clients over real HTTP, the
reconciler's check, the stuck sweep, and (slow tests) the polling workflows on
the real worker and the processor against a real Temporal.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from markupsafe import escape

from dev.stack import fake_provider, free_port, python_process
from integrations import load_integrations
from integrations.fangzhou_video.client import ArkClient
from integrations.nanobanana2_image.client import NanoBananaClient
from integrations.shared import public_errors as pe
from integrations.shared.providers import ProviderBlocked, ProviderError, ProviderRejected, ProviderTransient
from integrations.shared.public_errors import UNAVAILABLE_RETRYING, public_error
from reconciler import Reconciler, ReconcilerSettings
from settings import load_config
from tests.conftest import AUTH, IMAGE, TOKEN, VIDEO, both_backends, wait_until
from tests.test_report_origin import Listener
from web import current, db, public, task_store

SENSITIVE = "The request failed because the input text may contain sensitive information."
ARK_TASKS = "/api/v3/contents/generations/tasks"


# -- the contract, as a table --

CONTRACT = [
    # (stored text, will the task run again?, what users see)
    (f"{pe.REJECTED}Ark 400 InputTextSensitiveContentDetected{pe.PROVIDER_MESSAGE}{SENSITIVE}", False,
     f"Provider rejected the request: {SENSITIVE}"),
    (f"{pe.REJECTED}Nano Banana 401: You do not have access permissions", False,
     "The task failed: the provider refused the request"),
    (f"{pe.REJECTED}Ark create answered without a task id: <html>proxy error at 10.0.0.7</html>", False,
     "The task failed: the provider refused the request"),
    (f"{pe.JOB_FAILED}Ark task failed: OutputVideoSensitiveContentDetected{pe.PROVIDER_MESSAGE}The output video "
     "may contain sensitive information.", True,
     "Provider job failed: The output video may contain sensitive information; retrying"),
    (f"{pe.JOB_FAILED}Nano Banana job fail: 500{pe.PROVIDER_MESSAGE}Image generation failed.", False,
     "Provider job failed: Image generation failed."),
    (f"{pe.JOB_FAILED}Ark task expired", True, UNAVAILABLE_RETRYING),
    (f"{pe.JOB_FAILED}Ark task cancelled", False, "The task failed: the provider's job failed"),
    (f"{pe.CREATE_FAILED}POST http://10.1.2.3:18081{ARK_TASKS} failed: ConnectionError: [Errno 111] "
     "Connection refused", True, UNAVAILABLE_RETRYING),
    (f"{pe.CREATE_FAILED}Ark 500 InternalServiceError: The service encountered an unexpected internal error.", False,
     "The task failed: the provider was unavailable"),
    (f"{pe.JOB_TIMED_OUT}cgt-1 did not finish within the deadline of 1800s", True,
     "The provider did not finish within the deadline of 1800s; retrying"),
    (f"{pe.JOB_TIMED_OUT}cgt-1 did not finish within the deadline of 0.5s", False,
     "The task failed: the provider did not finish within the deadline of 0.5s"),
    (f"{pe.POLL_FAILED}cgt-1: Ark 404 ResourceNotFound: The specified task cgt-1 is not found.", True,
     UNAVAILABLE_RETRYING),
    (f"{pe.POLL_FAILED}cgt-1: Ark 401 AuthenticationError: bad key", False,
     "The task failed: the provider was unavailable"),
    (f"{pe.START_FAILED}RPCError: Namespace no-such-namespace is not found.", True, UNAVAILABLE_RETRYING),
    (f"{pe.START_FAILED}RPCError: Namespace no-such-namespace is not found.", False,
     "The task failed: it could not be started"),
    (f"{pe.WORKFLOW_GONE}{VIDEO}:t1 was not found in Temporal (task processing at attempt 1; the reconciler failed "
     "it so it runs again)", True, UNAVAILABLE_RETRYING),
    (f"{pe.WORKFLOW_GONE}{VIDEO}:t1 is terminated without a final report", False,
     "The task failed: it was interrupted"),
    ("Attempt 5 of 5 made no progress within 300s of its claim; no attempts left", False,
     "The task failed: it could not be started"),
    # Texts with no known prefix: from before this release, an operator's reason, anything else.
    ("Ark task failed: InternalServiceError The video generation failed", True, UNAVAILABLE_RETRYING),
    ("Provider job cgt-1 did not finish within the deadline of 1800s", False, "The task failed: an internal error"),
    ("workflow terminated in the UI", False, "The task failed: an internal error"),
    ("failed (no message given)", True, UNAVAILABLE_RETRYING),
    # The provider's words are read only in a kind that may carry them, and only after the marker.
    (f"{pe.CREATE_FAILED}Ark 400 X{pe.PROVIDER_MESSAGE}words for users, but the create was not refused", True,
     UNAVAILABLE_RETRYING),
    (f"Ark 400 X{pe.PROVIDER_MESSAGE}an old text with a marker but no prefix", False,
     "The task failed: an internal error"),
]


@pytest.mark.parametrize("stored, will_retry, shown", CONTRACT)
def test_each_stored_error_has_its_public_message(stored, will_retry, shown):
    assert public_error(stored, will_retry) == shown


def test_no_error_stays_none():
    assert public_error(None, True) is None and public_error(None, False) is None


def test_prefixes_are_distinct_so_each_text_has_one_kind():
    prefixes = [kind.prefix for kind in pe.KINDS]
    assert len(set(prefixes)) == len(prefixes)
    assert not [(a, b) for a in prefixes for b in prefixes if a != b and b.startswith(a)]
    assert all(prefix.endswith(": ") for prefix in prefixes)


def test_provider_words_are_cleaned_and_bounded():
    words = "bad\x1b[2J\x1b]0;owned\x07 prompt\r\n\u202eevil  " + "y" * 500
    hostile = f"{pe.REJECTED}Ark 400 X{pe.PROVIDER_MESSAGE}{words}"
    shown = public_error(hostile, False)
    assert shown.startswith("Provider rejected the request: bad [2J ]0;owned prompt evil y")
    assert not [c for c in shown if ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or c == "\u202e"]
    assert len(shown) <= len("Provider rejected the request: ") + pe.MAX_PROVIDER_WORDS
    assert public_error(f"{pe.REJECTED}Ark 400 X{pe.PROVIDER_MESSAGE} \x1b ", False) == (
        "The task failed: the provider refused the request")


# -- the clients put the marker before the provider's words only where users may read them (real HTTP) --

def ark_error(status, code, message):
    return status, {"error": {"code": code, "message": message, "param": "", "type": "BadRequest"}}


def banana(code, msg, data=None, http=200):
    return http, {"code": code, "msg": msg, "data": data}


@pytest.fixture
def provider():
    """A real HTTP listener answering as a provider would; `provider(answer)` gives its base URL."""
    made: list[Listener] = []

    def serve(answer) -> str:
        made.append(Listener(answer=answer))
        return made[-1].url

    yield serve
    for listener in made:
        listener.close()


def ark_create(url) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        ArkClient(url + "/api/v3", "key").create_job("model", {"prompt": "a fox"})
    return caught.value


def banana_create(url) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        NanoBananaClient(url, "key").create_job("nano-banana-2", {"prompt": "a pear"})
    return caught.value


@pytest.mark.parametrize("create, answer, words", [
    (ark_create, ark_error(400, "InputTextSensitiveContentDetected", SENSITIVE), SENSITIVE),
    (banana_create, banana(400, "Your prompt was flagged by the content policy", http=400),
     "Your prompt was flagged by the content policy"),
    (banana_create, banana(422, "input.aspect_ratio is invalid"), "input.aspect_ratio is invalid"),  # in an HTTP 200
], ids=["ark-400", "kie-400", "kie-422-in-200"])
def test_a_refused_request_shows_the_providers_own_words(provider, create, answer, words):
    error = create(provider(lambda method, path: answer))
    assert isinstance(error, ProviderRejected)
    assert public_error(pe.REJECTED + str(error), False) == f"Provider rejected the request: {words}"


@pytest.mark.parametrize("create, answer, detail", [
    (ark_create, ark_error(401, "AuthenticationError", "The API key in the request is missing or invalid."),
     "Ark 401 AuthenticationError: The API key in the request is missing or invalid."),
    (ark_create, ark_error(404, "InvalidEndpointOrModel.NotFound", "The model doubao-x does not exist."),
     "Ark 404 InvalidEndpointOrModel.NotFound: The model doubao-x does not exist."),
    (banana_create, banana(402, "Insufficient credits on account acct-42"),
     "Nano Banana 402: Insufficient credits on account acct-42"),
    (banana_create, (403, "<html>forbidden by proxy 10.0.0.7</html>"), "forbidden by proxy 10.0.0.7"),
], ids=["ark-401", "ark-404", "kie-402", "html-403"])
def test_a_refusal_about_our_account_or_setup_shows_no_provider_words(provider, create, answer, detail):
    """Such a refusal blocks the integration (docs/design.md §3.4): the task waits, its text is the operator's.
    Had one ever failed a task, users would still see no provider words."""
    error = create(provider(lambda method, path: answer))
    assert isinstance(error, ProviderBlocked)
    assert detail in str(error)  # for operators
    assert public_error(pe.REJECTED + str(error), False) == "The task failed: the provider refused the request"


def test_a_failed_job_shows_the_providers_own_words(provider):
    ark = provider(lambda method, path: (200, {"id": "cgt-1", "status": "failed", "error": {
        "code": "OutputVideoSensitiveContentDetected", "message": "The output video may be sensitive."}}))
    job = ArkClient(ark + "/api/v3", "key").look("cgt-1")
    assert job.finished and not job.succeeded
    stored = pe.JOB_FAILED + job.error
    assert public_error(stored, True) == "Provider job failed: The output video may be sensitive; retrying"
    assert public_error(stored, False) == "Provider job failed: The output video may be sensitive."

    kie = provider(lambda method, path: banana(200, "success", {"taskId": "nb2-1", "state": "fail", "failCode": "501",
                                                                "failMsg": "Image generation failed."}))
    job = NanoBananaClient(kie, "key").look("nb2-1")
    assert public_error(pe.JOB_FAILED + job.error, False) == "Provider job failed: Image generation failed."


def slow_answer(method, path):
    time.sleep(1.0)
    return 200, {"id": "cgt-late"}


@pytest.mark.parametrize("answer", [
    ark_error(500, "InternalServiceError", "The service encountered an unexpected internal error."),
    ark_error(429, "RateLimitExceeded.EndpointRPMExceeded", "Request rate limit exceeded"),
    None,  # nothing listens: connection refused
    slow_answer,  # no answer within the read timeout
], ids=["5xx", "429", "refused", "timeout"])
def test_a_transient_create_failure_says_unavailable_retrying(provider, monkeypatch, answer):
    monkeypatch.setattr(ArkClient, "create_timeout", (1.0, 0.2))
    if answer is None:
        url = f"http://127.0.0.1:{free_port()}"
    else:
        url = provider(answer if callable(answer) else lambda method, path: answer)
    error = ark_create(url)
    assert isinstance(error, ProviderTransient)
    stored = pe.CREATE_FAILED + str(error)
    assert public_error(stored, True) == UNAVAILABLE_RETRYING
    assert public_error(stored, False) == "The task failed: the provider was unavailable"


# -- the web process: users get the public message, the CLI and the dashboard the full detail --

class FlaskSession:
    """requests.Session's post(), served by the app's test client: the reconciler reports into the real app."""

    def __init__(self, client):
        self.client = client

    def post(self, url, json=None, timeout=None):
        answer = self.client.post(urlsplit(url).path, json=json, headers=AUTH)
        return SimpleNamespace(status_code=answer.status_code, text=answer.get_data(as_text=True),
                               json=lambda: answer.json)


class Counters:
    def labels(self, *names):
        return self

    def inc(self, amount=1):
        pass


class GoneBridge:
    """Temporal, as the reconciler's describe sees it: no run of that workflow."""

    def call(self, coroutine, timeout=None):
        coroutine.close()
        return "NOT_FOUND"


def pull_config(namespace=VIDEO):
    config = load_config(overrides={"INTERNAL_API_TOKEN": TOKEN, "MAIN_ENDPOINT": "http://web.test"})
    return next(i.get_pull_mode_config() for i in load_integrations(config) if i.namespace == namespace)


def claim(tasks, task_id, namespace=VIDEO):
    """Claim the task as a processor does; the new attempt."""
    answer = tasks.report(task_id, "queued", namespace)
    assert answer.status_code == 200, answer.json
    return answer.json["attempt"]


def failed_task(tasks, stored, *, retryable=True, last_attempt=False, namespace=VIDEO):
    """A task failed with `stored` by a report at its attempt: the first of 5, or the last (`last_attempt`)."""
    task_id = tasks.put(namespace, attempts=4 if last_attempt else 0)
    attempt = claim(tasks, task_id, namespace)
    answer = tasks.report(task_id, "failed", namespace, attempt=attempt, error=stored, retryable=retryable)
    assert answer.status_code == 200, answer.json
    return task_id


def seen(app, client, task_id):
    """(the public task, its public events, CLI `tasks show`, the dashboard's page) of a task."""
    with app.app_context():
        integration, task = current.find_task(task_id)
        shown = public.task(integration, task)
        events = public.events(task_store.list_events(db.get_db(), task_id), task)
    cli = app.test_cli_runner().invoke(args=["tasks", "show", task_id])
    assert cli.exit_code == 0, cli.output
    page = client.get(f"/tasks/{task_id}")
    assert page.status_code == 200
    return shown, events, cli.output, page.get_data(as_text=True)


def assert_public_and_detail(app, client, task_id, stored, expected):
    shown, events, cli, page = seen(app, client, task_id)
    assert shown["error"] == expected
    assert [e["error"] for e in events if e["status"] == "failed"][-1] == expected
    assert [e["error"] for e in events if e["status"] != "failed"] == [None] * (len(events) - 1)
    assert f"error:         {stored}" in cli  # operators: the whole stored text
    assert str(escape(stored)) in page


def rejected_text(provider):
    return pe.REJECTED + str(ark_create(provider(lambda m, p: ark_error(400, "InputTextSensitiveContentDetected",
                                                                          SENSITIVE))))


def job_failed_text(provider):
    url = provider(lambda m, p: (200, {"id": "cgt-9", "status": "failed", "error": {
        "code": "InternalServiceError", "message": "The video generation failed."}}))
    return pe.JOB_FAILED + ArkClient(url + "/api/v3", "key").look("cgt-9").error


def refused_text(provider):
    return pe.CREATE_FAILED + str(ark_create(f"http://127.0.0.1:{free_port()}"))


def server_error_text(provider):
    return pe.CREATE_FAILED + str(ark_create(provider(lambda m, p: ark_error(500, "InternalServiceError", "boom"))))


def start_failed_text(provider):
    # processor.py's text for a start Temporal refused (the slow test below gets it from a real processor)
    return f"{pe.START_FAILED}RPCError: Namespace no-such-namespace is not found."


@pytest.mark.parametrize("make, retryable, last_attempt, expected", [
    (rejected_text, False, False, f"Provider rejected the request: {SENSITIVE}"),
    (job_failed_text, True, False, "Provider job failed: The video generation failed; retrying"),
    (job_failed_text, True, True, "Provider job failed: The video generation failed."),
    (refused_text, True, False, UNAVAILABLE_RETRYING),
    (server_error_text, True, False, UNAVAILABLE_RETRYING),
    (refused_text, True, True, "The task failed: the provider was unavailable"),
    (start_failed_text, True, False, UNAVAILABLE_RETRYING),
    (start_failed_text, True, True, "The task failed: it could not be started"),
    (lambda provider: "Ark task failed: InternalServiceError The video generation failed (an old text)", True, True,
     "The task failed: an internal error"),
], ids=["rejected", "job-failed", "job-failed-last", "connection-refused", "5xx", "refused-last", "start-failed",
        "start-failed-last", "old-text"])
@both_backends
def test_users_see_the_public_message_operators_the_detail(app, client, tasks, provider, make, retryable,
                                                            last_attempt, expected):
    stored = make(provider)
    task_id = failed_task(tasks, stored, retryable=retryable, last_attempt=last_attempt)
    assert tasks.row(task_id)["error"] == stored  # stored whole
    assert_public_and_detail(app, client, task_id, stored, expected)


@both_backends
def test_the_reconcilers_failure(app, client, tasks):
    task_id = tasks.put(VIDEO)
    attempt = claim(tasks, task_id)
    tasks.report(task_id, "processing", attempt=attempt, taskId="cgt-5")
    reconciler = Reconciler(ReconcilerSettings(), GoneBridge(), [pull_config()], lambda: FlaskSession(client),
                            SimpleNamespace(reconcile_checks=Counters(), reconciled=Counters()), None)
    assert reconciler.check(pull_config(), {"id": task_id, "status": "processing", "attempts": attempt}) == "NOT_FOUND"
    stored = tasks.row(task_id)["error"]
    assert stored.startswith(f"{pe.WORKFLOW_GONE}{VIDEO}:{task_id} was not found in Temporal")
    assert_public_and_detail(app, client, task_id, stored, UNAVAILABLE_RETRYING)


@both_backends
def test_the_stuck_sweeps_failure(app, client, tasks):
    task_id = tasks.put(VIDEO, status="queued", attempts=5, started_at=int(time.time()) - 3600)
    assert tasks.fetch().status_code == 200  # the sweep runs first
    stored = tasks.row(task_id)["error"]
    assert pe.STUCK.match(stored), stored
    with app.app_context():
        integration, task = current.find_task(task_id)
        assert public.task(integration, task)["error"] == "The task failed: it could not be started"
        [event] = [e for e in public.events(task_store.list_events(db.get_db(), task_id), task)
                   if e["status"] == "failed"]
    assert event["error"] == "The task failed: it could not be started"
    assert stored in app.test_cli_runner().invoke(args=["tasks", "show", task_id]).output


@both_backends
def test_an_earlier_failure_that_was_retried_says_retrying(app, client, tasks):
    """The events keep each failure: one followed by the next claim was retried, whatever came after."""
    task_id = tasks.put(VIDEO)
    first = claim(tasks, task_id)
    tasks.report(task_id, "failed", attempt=first, error=f"{pe.START_FAILED}RPCError: deadline", retryable=True)
    second = claim(tasks, task_id)
    tasks.report(task_id, "failed", attempt=second, error=rejected_like(), retryable=False)
    with app.app_context():
        integration, task = current.find_task(task_id)
        events = public.events(task_store.list_events(db.get_db(), task_id), task)
    assert [(e["status"], e["error"]) for e in events if e["status"] == "failed"] == [
        ("failed", UNAVAILABLE_RETRYING), ("failed", f"Provider rejected the request: {SENSITIVE}")]


def rejected_like():
    return f"{pe.REJECTED}Ark 400 InputTextSensitiveContentDetected{pe.PROVIDER_MESSAGE}{SENSITIVE}"


@pytest.mark.parametrize("stored, retryable, expected", [
    (rejected_like(), False, f"Provider rejected the request: {SENSITIVE}"),
    (f"{pe.CREATE_FAILED}POST http://10.1.2.3:18081{ARK_TASKS} failed: ConnectionError: refused", True,
     UNAVAILABLE_RETRYING),
    (f"{pe.START_FAILED}RPCError: Namespace no-such-namespace is not found.", True, UNAVAILABLE_RETRYING),
    ("an old text from before this release", False, "The task failed: an internal error"),
], ids=["rejected", "transient", "start-failed", "old-text"])
@both_backends
def test_the_user_api_shows_the_public_message(app, client, tasks, stored, retryable, expected):
    task_id = failed_task(tasks, stored, retryable=retryable)
    task = client.get(f"/api/tasks/{task_id}").json
    events = client.get(f"/api/tasks/{task_id}/events").json["events"]
    assert task["error"] == expected
    assert [e["error"] for e in events] == [None, None, expected]  # pending, queued, failed
    assert f"error:         {stored}" in app.test_cli_runner().invoke(args=["tasks", "show", task_id]).output
    assert str(escape(stored)) in client.get(f"/tasks/{task_id}").get_data(as_text=True)


# -- slow: the texts as the real workflows (on the real worker) and the real processor write them --

ARK_KEY, BANANA_KEY = "ark-key-public-errors", "banana-key-public-errors"


@pytest.fixture
def stack(web, temporal, tmp_path):
    """A web process, the two fakes, and a worker told the web process's URL (MAIN_ENDPOINT)."""
    app = web()
    suffix = uuid.uuid4().hex[:8]
    with fake_provider("ark", tmp_path / "ark.log", ARK_KEY) as ark, \
            fake_provider("nanobanana", tmp_path / "banana.log", BANANA_KEY) as kie:
        env = {"INTERNAL_API_TOKEN": TOKEN, "TEMPORAL_ADDRESS": temporal, "MAIN_ENDPOINT": app.url,
               "FANGZHOU_BASE_URL": f"{ark}/api/v3", "FANGZHOU_API_KEY": ARK_KEY,
               "NANOBANANA_BASE_URL": kie, "NANOBANANA_API_KEY": BANANA_KEY,
               "FANGZHOU_TASK_QUEUE": f"pe-video-{suffix}", "NANOBANANA_TASK_QUEUE": f"pe-image-{suffix}",
               "FANGZHOU_POLL_INTERVAL_SECONDS": "0.2", "NANOBANANA_POLL_INTERVAL_SECONDS": "0.2",
               "FANGZHOU_DEADLINE_SECONDS": "2", "NANOBANANA_DEADLINE_SECONDS": "60"}
        with python_process(["workflows.py"], tmp_path / "worker.log", env):
            yield SimpleNamespace(app=app, env=env, temporal=temporal, worker_log=tmp_path / "worker.log")


def run_workflow(stack, namespace, prompt, main_endpoint=None):
    """Create and claim a task, start its workflow as the processor does, wait for it to close: the task's row."""
    from processor import start_workflow

    app = stack.app
    task_id = app.create(namespace, prompt)
    attempt = app.report(task_id, "queued", namespace).json()["attempt"]
    config = load_config(overrides={**stack.env, "MAIN_ENDPOINT": main_endpoint or app.url})
    pull = next(i.get_pull_mode_config() for i in load_integrations(config) if i.namespace == namespace)

    async def go():
        from temporalio.client import Client

        client = await Client.connect(stack.temporal)
        await start_workflow(client, pull, {"id": task_id, "requestParams": {"prompt": prompt}}, attempt)
        try:
            await asyncio.wait_for(client.get_workflow_handle(pull.build_workflow_id({"id": task_id})).result(), 60)
            return "COMPLETED"
        except TimeoutError:
            raise
        except Exception:
            return "FAILED"

    return asyncio.run(go()), app.rows(namespace)[task_id]


def public_of(row):
    return public_error(row["error"], row["status"] == "failed" and bool(row["retryable"]))


@pytest.mark.slow
@both_backends
def test_the_workflows_write_the_prefixes_users_messages_are_made_from(stack):
    ended, row = run_workflow(stack, VIDEO, f"forbidden {uuid.uuid4().hex[:6]} [reject]")
    assert ended == "FAILED" and row["error"].startswith(pe.REJECTED + "Ark 400 InputTextSensitiveContentDetected")
    assert public_of(row) == f"Provider rejected the request: {SENSITIVE}"

    ended, row = run_workflow(stack, IMAGE, "doomed [fail]")
    assert ended == "FAILED" and row["error"].startswith(pe.JOB_FAILED + "Nano Banana job fail: 500")
    assert public_of(row) == "Provider job failed: Image generation failed (fake); retrying"

    ended, row = run_workflow(stack, VIDEO, "forever [hang]")
    assert ended == "FAILED" and row["error"].startswith(pe.JOB_TIMED_OUT + "cgt-")
    assert public_of(row) == "The provider did not finish within the deadline of 2s; retrying"
    assert "Traceback" not in stack.worker_log.read_text()


@pytest.mark.slow
@both_backends
def test_the_worker_sends_no_report_to_a_foreign_report_url(stack):
    """A workflow started with another reportUrl (anyone on the task queue can): no request, the run fails."""
    foreign = Listener()
    try:
        ended, row = run_workflow(stack, VIDEO, "a fox", main_endpoint=foreign.url)
        assert ended == "FAILED" and foreign.seen == []
    finally:
        foreign.close()
    assert row["status"] == "queued"  # nothing reached the web process either
    log = wait_until(lambda: (text := stack.worker_log.read_text()) and "report not sent" in text and text,
                     message="the worker's refusal line")
    [line] = [line for line in log.splitlines() if "report not sent" in line]
    assert f'report_origin={foreign.url}' in line and f"main_endpoint={stack.app.url}" in line


@pytest.mark.slow
@both_backends
def test_the_processors_start_failure(web, temporal):
    from processor import ProcessorSettings, TaskProcessor

    app = web()
    task_id = app.create()
    config = load_config(overrides={"MAIN_ENDPOINT": app.url, "INTERNAL_API_TOKEN": TOKEN, "TEMPORAL_ADDRESS": temporal,
                                    "POLL_INTERVAL_MS": 100, "TEMPORAL_NAMESPACE": "no-such-namespace"})
    processor = TaskProcessor(ProcessorSettings.from_config(config, instance_id="public-errors"))
    processor.load([i.get_pull_mode_config() for i in load_integrations(config)])
    try:
        processor.run_once()
    finally:
        processor.stop()
    row = app.rows()[task_id]
    assert row["error"].startswith(pe.START_FAILED) and "no-such-namespace" in row["error"]
    assert public_of(row) == UNAVAILABLE_RETRYING
