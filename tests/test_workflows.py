"""Both polling workflows through the real worker (`python workflows.py`) against the fake providers.

Each task is created in the web app (gunicorn), claimed over HTTP as the
processor would, and its workflow started with the processor's own
`start_workflow`; then the task's state and events are read back.
"""

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import pytest
import requests

from dev.stack import fake_provider, python_process
from integrations import load_integrations
from processor import start_workflow
from settings import load_config
from tests.conftest import IMAGE, TOKEN, VIDEO, wait_until

pytestmark = pytest.mark.slow

ARK_KEY = "ark-secret-key-123"
BANANA_KEY = "banana-secret-key-456"
HISTORIES = Path(__file__).with_name("histories")


@pytest.fixture(scope="module")
def providers(tmp_path_factory, temporal):
    """The two fakes and one worker serving this module's own task queues."""
    folder = tmp_path_factory.mktemp("providers")
    suffix = uuid.uuid4().hex[:8]
    with fake_provider("ark", folder / "ark.log", ARK_KEY) as ark, \
            fake_provider("nanobanana", folder / "banana.log", BANANA_KEY) as banana:
        env = {"INTERNAL_API_TOKEN": TOKEN, "TEMPORAL_ADDRESS": temporal,
               "FANGZHOU_BASE_URL": f"{ark}/api/v3", "FANGZHOU_API_KEY": ARK_KEY,
               "NANOBANANA_BASE_URL": banana, "NANOBANANA_API_KEY": BANANA_KEY,
               "FANGZHOU_TASK_QUEUE": f"video-{suffix}", "NANOBANANA_TASK_QUEUE": f"image-{suffix}",
               "FANGZHOU_POLL_INTERVAL_SECONDS": "0.2", "NANOBANANA_POLL_INTERVAL_SECONDS": "0.2",
               "FANGZHOU_DEADLINE_SECONDS": "60", "NANOBANANA_DEADLINE_SECONDS": "60"}
        with python_process(["workflows.py"], folder / "worker.log", env) as worker:
            yield Providers(ark, banana, env, temporal, worker, folder / "worker.log")


class Providers:
    def __init__(self, ark, banana, env, temporal, worker, worker_log):
        self.ark, self.banana, self.env, self.temporal = ark, banana, env, temporal
        self.worker, self.worker_log = worker, worker_log

    def pull(self, namespace, web_url, **env):
        overrides = {k: v for k, v in {**self.env, **env}.items()
                     if k not in ("TEMPORAL_ADDRESS",)}
        config = load_config(overrides={**overrides, "MAIN_ENDPOINT": web_url})
        return next(i.get_pull_mode_config() for i in load_integrations(config) if i.namespace == namespace)

    def requests_seen(self, fake):
        return requests.get(f"{fake}/_fake/requests", timeout=5).json()

    def run(self, app, namespace, prompt, timeout=60, **env):
        """Create, claim and start one task; wait for its workflow to close. Returns (task, events, run)."""
        task_id = app.create(namespace, prompt)
        attempt = app.report(task_id, "queued", namespace).json()["attempt"]
        pull = self.pull(namespace, app.url, **env)

        async def go():
            from temporalio.client import Client
            client = await Client.connect(self.temporal)
            await start_workflow(client, pull, {"id": task_id, "requestParams": {"prompt": prompt}}, attempt)
            handle = client.get_workflow_handle(pull.build_workflow_id({"id": task_id}))
            try:
                result = await asyncio.wait_for(handle.result(), timeout)
                outcome = ("COMPLETED", result)
            except TimeoutError:
                raise
            except Exception as exc:  # the workflow ended failed
                outcome = ("FAILED", str(exc.cause if getattr(exc, "cause", None) else exc))
            history = await handle.fetch_history()
            return outcome, history

        outcome, history = asyncio.run(go())
        events = [(e["status"], e["attempt"]) for e in app.events() if e["task_id"] == task_id]
        return app.task(task_id), events, outcome, history


def test_video_reports_processing_once_then_completed_never_queued(web, providers):
    app = web()
    task, events, (status, result), _ = providers.run(app, VIDEO, "a cat surfing at dawn")
    assert status == "COMPLETED"
    assert events == [("pending", 0), ("queued", 1), ("processing", 1), ("completed", 1)]
    assert task["status"] == "completed" and task["externalId"].startswith("cgt-")
    assert task["result"]["videoUrl"].endswith(f"{task['externalId']}.mp4")
    assert task["result"]["usage"]["total_tokens"] > 0
    assert result == task["result"]


def test_image_reports_processing_once_then_completed_never_queued(web, providers):
    app = web()
    task, events, (status, _), _ = providers.run(app, IMAGE, "a banana in space")
    assert status == "COMPLETED"
    assert events == [("pending", 0), ("queued", 1), ("processing", 1), ("completed", 1)]
    assert task["status"] == "completed" and task["externalId"].startswith("nb2-")
    assert task["result"]["imageUrls"] == [f"https://banana-fake.example/{task['externalId']}.png"]


@pytest.mark.parametrize("namespace", [VIDEO, IMAGE])
def test_provider_failure_fails_the_task_retryably(web, providers, namespace):
    app = web()
    task, events, (status, message), _ = providers.run(app, namespace, "doomed [fail]")
    assert status == "FAILED" and "failed" in message
    assert events == [("pending", 0), ("queued", 1), ("processing", 1), ("failed", 1)]
    assert "failed (fake)" in task["error"]
    assert app.rows(namespace)[task["id"]]["retryable"] == 1  # the processor may try again


@pytest.mark.parametrize("namespace", [VIDEO, IMAGE])
def test_rejected_request_fails_at_once_for_good(web, providers, namespace):
    app = web()
    fake = providers.ark if namespace == VIDEO else providers.banana
    prompt = f"forbidden {uuid.uuid4().hex[:6]} [reject]"
    task, events, (status, _), _ = providers.run(app, namespace, prompt)
    assert status == "FAILED"
    assert events == [("pending", 0), ("queued", 1), ("failed", 1)]
    assert task["error"].startswith("Provider rejected the request")
    assert ("sensitive" in task["error"]) if namespace == VIDEO else ("content policy" in task["error"])
    assert app.rows(namespace)[task["id"]]["retryable"] == 0  # never claimed again
    creates = [r for r in providers.requests_seen(fake) if r["method"] == "POST" and prompt in json.dumps(r["json"])]
    assert len(creates) == 1  # no retries burned on a rejection


@pytest.mark.parametrize("namespace", [VIDEO, IMAGE])
@pytest.mark.parametrize("marker, calls", [("ratelimit:2", 3), ("error500:2", 3)])
def test_transient_create_errors_are_retried_then_succeed(web, providers, namespace, marker, calls):
    app = web()
    fake = providers.ark if namespace == VIDEO else providers.banana
    prompt = f"busy {uuid.uuid4().hex[:6]} [{marker}]"
    task, events, (status, _), _ = providers.run(app, namespace, prompt)
    assert status == "COMPLETED"
    assert events == [("pending", 0), ("queued", 1), ("processing", 1), ("completed", 1)]
    creates = [r for r in providers.requests_seen(fake) if r["method"] == "POST" and prompt in json.dumps(r["json"])]
    assert len(creates) == calls


@pytest.mark.parametrize("namespace, env", [
    (VIDEO, {"FANGZHOU_DEADLINE_SECONDS": "2"}), (IMAGE, {"NANOBANANA_DEADLINE_SECONDS": "2"})])
def test_job_that_never_finishes_fails_at_the_deadline(web, providers, namespace, env):
    app = web()
    task, events, (status, _), _ = providers.run(app, namespace, "forever [hang]", **env)
    assert status == "FAILED"
    assert events == [("pending", 0), ("queued", 1), ("processing", 1), ("failed", 1)]
    assert "did not finish within the deadline of 2s" in task["error"]


def test_history_holds_no_secret(web, providers):
    app = web()
    histories = [providers.run(app, ns, f"secret check {ns}")[3] for ns in (VIDEO, IMAGE)]
    for history in histories:
        text = history.to_json()
        assert len(history.events) > 10
        for secret in (ARK_KEY, BANANA_KEY, TOKEN):
            assert secret not in text


def test_long_job_keeps_history_small(web, providers, capsys):
    """Polls are activity retries, which add no events: a job polled 10+ times has the same history
    as one polled once or twice."""
    app = web()

    def run(prompt):
        task, _, (status, _), history = providers.run(app, VIDEO, prompt)
        assert status == "COMPLETED"
        polls = [r for r in providers.requests_seen(providers.ark)
                 if r["method"] == "GET" and r["path"].endswith(task["externalId"])]
        return len(polls), len(history.events)

    short_polls, short_events = run("a short film")
    long_polls, long_events = run("a long film [slow:6]")
    assert long_polls >= 10 > short_polls
    assert long_events == short_events <= 30
    with capsys.disabled():
        print(f"\nhistory size: {short_polls} polls -> {short_events} events; "
              f"{long_polls} polls -> {long_events} events")


def test_replay_recorded_histories():
    """Recorded histories of both workflows replay against today's code (determinism)."""
    from temporalio.client import WorkflowHistory
    from temporalio.worker import Replayer

    from workflows import ImagePollingWorkflow, VideoPollingWorkflow

    files = sorted(HISTORIES.glob("*.json"))
    assert {f.name.split("-")[0] for f in files} == {"video", "image"}
    histories = [WorkflowHistory.from_json(f.stem, f.read_text()) for f in files]

    async def each():
        for history in histories:
            yield history

    async def replay():
        replayer = Replayer(workflows=[VideoPollingWorkflow, ImagePollingWorkflow])
        return await replayer.replay_workflows(each(), raise_on_replay_failure=False)

    results = asyncio.run(replay())
    assert results.replay_failures == {}


def test_worker_survives_and_keeps_serving(providers):
    assert providers.worker.poll() is None
    log = wait_until(lambda: (text := providers.worker_log.read_text()) and "serving nanobanana2" in text and text,
                     message="worker serving both task queues")
    assert "serving fangzhouVideoGeneration" in log
    assert "Traceback" not in log, log[log.find("Traceback") - 500:][:3000]


@pytest.mark.skipif(not os.environ.get("RECORD_HISTORIES"), reason="set RECORD_HISTORIES=1 to re-record")
def test_record_histories(web, providers):
    """Refresh tests/histories from real runs (after a deliberate workflow change)."""
    app = web()
    HISTORIES.mkdir(exist_ok=True)
    for ns, name in ((VIDEO, "video"), (IMAGE, "image")):
        for prompt, kind in (("record ok", "completed"), ("record [fail]", "failed"),
                             (f"record {time.time()} [reject]", "rejected")):
            history = providers.run(app, ns, prompt)[3]
            (HISTORIES / f"{name}-{kind}.json").write_text(history.to_json())
