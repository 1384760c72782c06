"""Both polling workflows through the real worker (`python workflows.py`) against the fake providers.

Each task is created in the web app (gunicorn), claimed over HTTP as the
processor would, and its workflow started with the processor's own
`start_workflow`; then the task's state and events are read back.

Upgrades must be safe for runs in flight (a video job can poll for an hour):
every history under tests/histories/ (one folder per release, each frozen once
shipped) replays against today's workflow code, and a change to workflow code
ships behind `workflow.patched()`, never by re-recording. `RECORD_HISTORIES=1`
records the current release's histories, finished runs and runs cut mid-flight,
into tests/histories/$HISTORIES_RELEASE (default RECORDING_RELEASE).
"""

import asyncio
import base64
import binascii
import json
import os
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from temporalio import workflow

from dev.stack import fake_provider, gunicorn, python_process
from integrations import load_integrations
from integrations.base import WorkflowInput
from processor import start_workflow
from settings import load_config
from tests.conftest import BACKENDS, IMAGE, SECRETS, TOKEN, VIDEO, Web, wait_until
from workflows import VIDEO_ACTIVITIES, ImagePollingWorkflow, PollingRun, VideoPollingWorkflow

pytestmark = pytest.mark.slow


def pytest_generate_tests(metafunc):
    """The tests with a web process run on both task stores, with the same assertions; the replay tests
    touch no database and run once, and so does the recording of a release's histories."""
    if "web" in metafunc.fixturenames and metafunc.function.__name__ != "test_record_histories":
        metafunc.parametrize("backend", BACKENDS, indirect=True)

ARK_KEY = "ark-secret-key-123"
BANANA_KEY = "banana-secret-key-456"
HISTORIES = Path(__file__).with_name("histories")
RELEASE_1 = HISTORIES / "release-1"  # frozen: the first release's runs, finished and cut mid-flight
# Where RECORD_HISTORIES=1 writes (HISTORIES_RELEASE overrides): the release being made. A folder with a
# README.md is frozen and never written again; after freezing this one, bump the name.
RECORDING_RELEASE = "release-3"
RECORDED = sorted(HISTORIES.glob("**/*.json"))
KINDS = {VIDEO: "video", IMAGE: "image"}
REPORT = "reportTaskEvent"


@pytest.fixture(scope="module")
def providers(tmp_path_factory, temporal):
    """The two fakes, and one worker serving this module's own task queues (see Providers.serve)."""
    folder = tmp_path_factory.mktemp("providers")
    suffix = uuid.uuid4().hex[:8]
    with fake_provider("ark", folder / "ark.log", ARK_KEY) as ark, \
            fake_provider("nanobanana", folder / "banana.log", BANANA_KEY) as banana:
        env = {"INTERNAL_API_TOKEN": TOKEN, "TEMPORAL_ADDRESS": temporal,
               "FANGZHOU_BASE_URL": f"{ark}/api/v3", "FANGZHOU_API_KEY": ARK_KEY,
               "NANOBANANA_BASE_URL": banana, "NANOBANANA_API_KEY": BANANA_KEY,
               "FANGZHOU_TASK_QUEUE": f"video-{suffix}", "NANOBANANA_TASK_QUEUE": f"image-{suffix}",
               "FANGZHOU_POLL_INTERVAL_SECONDS": "0.2", "NANOBANANA_POLL_INTERVAL_SECONDS": "0.2",
               "FANGZHOU_DEADLINE_SECONDS": "60", "NANOBANANA_DEADLINE_SECONDS": "60",
               "MEDIA_DIR": str(folder / "media")}  # the worker's copies (the web processes serve none here)
        providers = Providers(ark, banana, env, temporal, folder / "worker.log")
        try:
            yield providers
        finally:
            providers.stop_worker()


class Providers:
    def __init__(self, ark, banana, env, temporal, worker_log):
        self.ark, self.banana, self.env, self.temporal = ark, banana, env, temporal
        self.worker, self.worker_log = None, worker_log
        self.main_endpoint, self._running = None, None

    def serve(self, web_url):
        """The worker, told this web process's URL as MAIN_ENDPOINT: it sends the internal token (so its
        reports) to that origin only. Each test has its own web process, so the worker follows it."""
        if self.main_endpoint == web_url and self.worker.poll() is None:
            return
        self.stop_worker()
        self._running = python_process(["workflows.py"], self.worker_log, {**self.env, "MAIN_ENDPOINT": web_url})
        self.worker, self.main_endpoint = self._running.__enter__(), web_url

    def stop_worker(self):
        if self._running is not None:
            self._running.__exit__(None, None, None)
            self._running = None

    def pull(self, namespace, web_url, **env):
        overrides = {k: v for k, v in {**self.env, **env}.items()
                     if k not in ("TEMPORAL_ADDRESS",)}
        config = load_config(overrides={**overrides, "MAIN_ENDPOINT": web_url})
        return next(i.get_pull_mode_config() for i in load_integrations(config) if i.namespace == namespace)

    def requests_seen(self, fake):
        return requests.get(f"{fake}/_fake/requests", timeout=5).json()

    def fake(self, namespace):
        """The fake provider of an integration."""
        return self.ark if namespace == VIDEO else self.banana

    def creates(self, fake, prompt):
        """The create requests `fake` saw for `prompt`."""
        return [r for r in self.requests_seen(fake) if r["method"] == "POST" and prompt in json.dumps(r["json"])]

    def start(self, app, namespace, prompt, **env):
        """Create, claim and start one task, as the processor would. Returns (task id, workflow id)."""
        self.serve(app.url)
        task_id = app.create(namespace, prompt)
        attempt = app.report(task_id, "queued", namespace).json()["attempt"]
        pull = self.pull(namespace, app.url, **env)

        async def go():
            from temporalio.client import Client
            client = await Client.connect(self.temporal)
            await start_workflow(client, pull, {"id": task_id, "requestParams": {"prompt": prompt}}, attempt)

        asyncio.run(go())
        return task_id, pull.build_workflow_id({"id": task_id})

    def run(self, app, namespace, prompt, timeout=60, **env):
        """Create, claim and start one task; wait for its workflow to close. Returns (task, events, run)."""
        task_id, workflow_id = self.start(app, namespace, prompt, **env)

        async def go():
            from temporalio.client import Client
            client = await Client.connect(self.temporal)
            handle = client.get_workflow_handle(workflow_id)
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

    def wait_for(self, workflow_id, until, timeout=30.0):
        """Watch a running workflow until `until(progress)` holds; return (its history then, the progress)."""

        async def go():
            from temporalio.client import Client
            client = await Client.connect(self.temporal)
            handle = client.get_workflow_handle(workflow_id)
            deadline = time.monotonic() + timeout
            while True:
                description = await handle.describe()
                history = await handle.fetch_history()
                progress = Progress.of(description, history)
                assert progress.status == "RUNNING", f"{workflow_id} closed before the cut: {progress}"
                if until(progress):
                    return history, progress
                assert time.monotonic() < deadline, f"{workflow_id} never reached the cut: {progress}"
                await asyncio.sleep(0.1)

        return asyncio.run(go())

    def terminate(self, workflow_id):
        """End a run cut mid-flight (if it has not ended already)."""

        async def go():
            from temporalio.client import Client
            from temporalio.service import RPCError, RPCStatusCode

            client = await Client.connect(self.temporal)
            try:
                await client.get_workflow_handle(workflow_id).terminate(reason="history recorded mid-flight")
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise

        asyncio.run(go())


@dataclass
class Progress:
    """Where a running workflow is: its steps so far ("scheduled X", "completed X") and the attempt
    each pending activity is on (an attempt above 1 means it is being retried)."""

    status: str
    steps: list[str]
    pending: dict[str, int]

    @classmethod
    def of(cls, description, history):
        names, steps = {}, []
        for event in history.events:
            if event.HasField("activity_task_scheduled_event_attributes"):
                names[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
                steps.append(f"scheduled {names[event.event_id]}")
            elif event.HasField("activity_task_completed_event_attributes"):
                steps.append(f"completed {names[event.activity_task_completed_event_attributes.scheduled_event_id]}")
        pending = {a.activity_type.name: a.attempt for a in description.raw_description.pending_activities}
        return cls(description.status.name, steps, pending)


def test_video_reports_processing_once_then_completed_never_queued(web, providers):
    app = web()
    task, events, (status, result), _ = providers.run(app, VIDEO, "a cat surfing at dawn")
    assert status == "COMPLETED"
    assert events == [("pending", 0), ("queued", 1), ("processing", 1), ("completed", 1)]
    assert task["status"] == "completed" and task["externalId"].startswith("cgt-")
    assert task["result"]["videoUrl"].endswith(f"{task['externalId']}.mp4")
    assert task["result"]["usage"]["total_tokens"] > 0
    # The media copied before `completed` (web/media.py shows them to users as URLs of ours).
    assert result["media"] == {"videoUrl": "video.mp4", "lastFrameUrl": "last-frame.png"}
    assert result == {**task["result"], "media": result["media"]}


def test_image_reports_processing_once_then_completed_never_queued(web, providers):
    app = web()
    task, events, (status, _), _ = providers.run(app, IMAGE, "a banana in space")
    assert status == "COMPLETED"
    assert events == [("pending", 0), ("queued", 1), ("processing", 1), ("completed", 1)]
    assert task["status"] == "completed" and task["externalId"].startswith("nb2-")
    assert task["result"]["imageUrls"] == [f"{providers.banana}/media/{task['externalId']}.png"]
    assert app.rows(IMAGE)[task["id"]]["result"].count('"media": {"imageUrls": ["image-1.png"]}') == 1


@pytest.mark.parametrize("namespace", [VIDEO, IMAGE])
def test_provider_failure_fails_the_task_retryably(web, providers, namespace):
    app = web()
    task, events, (status, message), _ = providers.run(app, namespace, "doomed [fail]")
    assert status == "FAILED" and "failed" in message
    assert events == [("pending", 0), ("queued", 1), ("processing", 1), ("failed", 1)]
    assert "failed (fake)" in task["error"]
    assert app.rows(namespace)[task["id"]]["retryable"] == 1  # the processor may try again


@pytest.mark.parametrize("namespace", [VIDEO, IMAGE])
def test_job_failed_by_moderation_is_not_retried(web, providers, namespace):
    """The provider ran the job and refused its output: the same prompt would meet the same refusal."""
    app = web()
    task, events, (status, _), _ = providers.run(app, namespace, f"too much {uuid.uuid4().hex[:6]} [moderated]")
    assert status == "FAILED"
    assert events == [("pending", 0), ("queued", 1), ("processing", 1), ("failed", 1)]
    assert app.rows(namespace)[task["id"]]["retryable"] == 0


def test_failed_kie_job_with_body_code_501_fails_with_its_message_not_at_the_deadline(web, providers):
    """kie.ai answers a failed job's recordInfo with body code 501 beside `state: fail`: the state is read
    first, so the task fails at once with the provider's failMsg (it used to poll until the deadline)."""
    app = web()
    began = time.monotonic()
    task, events, (status, _), _ = providers.run(app, IMAGE, f"broken {uuid.uuid4().hex[:6]} [genfail]")
    assert status == "FAILED" and time.monotonic() - began < 30  # the deadline is 60 s
    assert events[-1] == ("failed", 1)
    assert "Internal server error (fake)" in task["error"] and "deadline" not in task["error"]
    assert app.rows(IMAGE)[task["id"]]["retryable"] == 1


@pytest.mark.parametrize("namespace, marker", [(VIDEO, "quota"), (VIDEO, "credits"), (IMAGE, "credits"),
                                               (IMAGE, "disabled")])
def test_account_refusal_hands_the_claim_back(web, providers, namespace, marker):
    """An account-level refusal at create (Ark 429 QuotaExceeded, 403 AccountOverdueError; kie 402, 505):
    the workflow reports `blocked` and ends; the task is pending again, its attempt refunded, and the
    integration blocked. One create was sent: nothing retried a refusal that would not clear."""
    app = web()
    fake = providers.fake(namespace)
    prompt = f"no money {uuid.uuid4().hex[:6]} [{marker}]"
    task, events, (status, message), _ = providers.run(app, namespace, prompt)
    assert status == "FAILED"
    assert events == [("pending", 0), ("queued", 1), ("pending", 1)]
    row = app.rows(namespace)[task["id"]]
    assert (row["status"], row["attempts"], row["attempts_refunded"]) == ("pending", 1, 1)
    assert len(providers.creates(fake, prompt)) == 1
    fetched = requests.get(f"{app.url}/api/{namespace}/fetchPendingTasks", headers={"Authorization": f"Bearer {TOKEN}"},
                           timeout=10).json()
    assert fetched["tasks"] == [] and fetched["blocked"]["reason"]


@pytest.mark.parametrize("namespace", [VIDEO, IMAGE])
def test_retry_after_is_honoured(web, providers, namespace):
    """A 429 with `Retry-After: 4`: the create is tried again after 4 s, not after the policy's 1 s."""
    app = web()
    fake = providers.fake(namespace)
    prompt = f"later please {uuid.uuid4().hex[:6]} [ratelimit:1]"
    requests.post(f"{fake}/_fake/mode", json={"retry_after": 4}, timeout=5).raise_for_status()
    try:
        task, _, (status, _), _ = providers.run(app, namespace, prompt)
    finally:
        requests.post(f"{fake}/_fake/mode", json={"retry_after": None}, timeout=5).raise_for_status()
    assert status == "COMPLETED"
    first, second = [r["at"] for r in providers.creates(fake, prompt)]
    assert second - first >= 3.9


@pytest.mark.parametrize("namespace", [VIDEO, IMAGE])
def test_rejected_request_fails_at_once_for_good(web, providers, namespace):
    app = web()
    fake = providers.fake(namespace)
    prompt = f"forbidden {uuid.uuid4().hex[:6]} [reject]"
    task, events, (status, _), _ = providers.run(app, namespace, prompt)
    assert status == "FAILED"
    assert events == [("pending", 0), ("queued", 1), ("failed", 1)]
    assert task["error"].startswith("Provider rejected the request")
    assert ("sensitive" in task["error"]) if namespace == VIDEO else ("content policy" in task["error"])
    assert app.rows(namespace)[task["id"]]["retryable"] == 0  # never claimed again
    creates = providers.creates(fake, prompt)
    assert len(creates) == 1  # no retries burned on a rejection


@pytest.mark.parametrize("namespace", [VIDEO, IMAGE])
@pytest.mark.parametrize("marker, calls", [("ratelimit:2", 3), ("error500:2", 3)])
def test_transient_create_errors_are_retried_then_succeed(web, providers, namespace, marker, calls):
    app = web()
    fake = providers.fake(namespace)
    prompt = f"busy {uuid.uuid4().hex[:6]} [{marker}]"
    task, events, (status, _), _ = providers.run(app, namespace, prompt)
    assert status == "COMPLETED"
    assert events == [("pending", 0), ("queued", 1), ("processing", 1), ("completed", 1)]
    creates = providers.creates(fake, prompt)
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
    assert long_events == short_events <= 40  # 30 before the storeMedia step (its marker, activity, workflow task)
    with capsys.disabled():
        print(f"\nhistory size: {short_polls} polls -> {short_events} events; "
              f"{long_polls} polls -> {long_events} events")


def replay(path, workflows=(VideoPollingWorkflow, ImagePollingWorkflow)):
    """Replay one recorded history with `workflows`, no server needed: its failure, or None."""
    from temporalio.client import WorkflowHistory
    from temporalio.worker import Replayer

    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=list(workflows))
    return asyncio.run(replayer.replay_workflow(history, raise_on_replay_failure=False)).replay_failure


def test_release_1_is_complete_and_frozen():
    """The first release's histories stay, all of them; its README.md marks it frozen."""
    expected = {f"{kind}-{case}.json" for kind in KINDS.values() for case in CASES}
    assert {path.name for path in RELEASE_1.glob("*.json")} == expected
    assert (RELEASE_1 / "README.md").is_file()


@pytest.mark.parametrize("path", RECORDED, ids=[path.relative_to(HISTORIES).as_posix() for path in RECORDED])
def test_replay_recorded_history(path):
    """Every history of every release replays against today's code (determinism), so a new worker takes over
    runs the old one started. Runs cut mid-flight replay up to the cut, as on the upgraded worker."""
    assert path.name.split("-")[0] in KINDS.values()
    text = decoded(json.loads(path.read_text()))
    assert "apiCallId" in text  # the payloads were decoded: the input is readable
    assert not [secret for secret in (ARK_KEY, BANANA_KEY, TOKEN) if secret in text]
    assert replay(path) is None


def decoded(node) -> str:
    """A history's JSON as text with every payload's data decoded (the JSON holds it in base64)."""
    if isinstance(node, dict):
        return " ".join(decoded_data(value) if key == "data" and isinstance(value, str) else decoded(value)
                        for key, value in node.items())
    if isinstance(node, list):
        return " ".join(decoded(value) for value in node)
    return str(node)


def decoded_data(value: str) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8", errors="replace")
    except binascii.Error:
        return value


# Living documentation of the rule: a workflow change must not alter the commands a run in flight already
# recorded. Both classes below change VideoPollingWorkflow the same way (a timer before the create activity).
# Unsandboxed, as the sandbox would re-import this whole test module.

@workflow.defn(name="VideoPollingWorkflow", sandboxed=False)
class VideoWaitsFirstUnguarded:
    """The wrong way: the new first step replaces what release 1 recorded first."""

    @workflow.run
    async def run(self, params: WorkflowInput) -> dict:
        await workflow.sleep(timedelta(seconds=1))
        return await PollingRun(params, VIDEO_ACTIVITIES).run()


@workflow.defn(name="VideoPollingWorkflow", sandboxed=False)
class VideoWaitsFirstPatched:
    """The right way: new runs take the new step; runs recorded without the patch marker replay as before."""

    @workflow.run
    async def run(self, params: WorkflowInput) -> dict:
        if workflow.patched("wait-before-create"):
            await workflow.sleep(timedelta(seconds=1))
        return await PollingRun(params, VIDEO_ACTIVITIES).run()


def test_unguarded_workflow_change_fails_replay_of_release_1():
    """The guard can fail: the changed workflow cannot take over release 1's video runs, finished or in flight."""
    failures = {path.name: replay(path, [VideoWaitsFirstUnguarded]) for path in sorted(RELEASE_1.glob("video-*"))}
    assert len(failures) == len(CASES)
    not_caught = {name: failure for name, failure in failures.items()
                  if not isinstance(failure, workflow.NondeterminismError)}
    assert not_caught == {}
    assert "nondetermin" in str(failures["video-cut-polling.json"]).lower()


def test_workflow_change_behind_patched_replays_release_1():
    """The safe path: the same change behind workflow.patched() replays every release-1 history."""
    paths = sorted(RELEASE_1.glob("*.json"))
    failures = {path.name: replay(path, [VideoWaitsFirstPatched, ImagePollingWorkflow]) for path in paths}
    assert len(failures) == 2 * len(CASES)
    assert {name: failure for name, failure in failures.items() if failure is not None} == {}


def test_worker_survives_and_keeps_serving(web, providers):
    providers.serve(web().url)
    assert providers.worker.poll() is None
    log = wait_until(lambda: (text := providers.worker_log.read_text()) and "serving nanobanana2" in text and text,
                     message="worker serving both task queues")
    assert "serving fangzhouVideoGeneration" in log
    assert "Traceback" not in log, log[log.find("Traceback") - 500:][:3000]


# -- recording a release's histories --

# What each workflow's histories show: three finished runs, and three runs cut mid-flight, each at one of the
# waits a run can spend long in when a new worker takes over.
CASES = ("completed", "failed", "rejected", "cut-creating", "cut-polling", "cut-reporting")


def recording_folder() -> Path:
    """tests/histories/<release being recorded>; never a frozen release (one with a README.md)."""
    name = os.environ.get("HISTORIES_RELEASE", RECORDING_RELEASE)
    folder = HISTORIES / name
    assert name and folder.parent == HISTORIES, f"HISTORIES_RELEASE={name!r}: one folder name, please"
    if (folder / "README.md").exists():
        pytest.fail(f"{folder} is a frozen release: never re-record it; record the next release beside it "
                    f"(HISTORIES_RELEASE=release-N)")
    folder.mkdir(exist_ok=True)
    return folder


def test_recorder_never_writes_a_frozen_release(monkeypatch):
    for frozen in ("release-1", "../release-1", ""):
        monkeypatch.setenv("HISTORIES_RELEASE", frozen)
        with pytest.raises((pytest.fail.Exception, AssertionError)):
            recording_folder()
    monkeypatch.delenv("HISTORIES_RELEASE")
    assert RECORDING_RELEASE != RELEASE_1.name and not (HISTORIES / RECORDING_RELEASE / "README.md").exists()


@contextmanager
def running(providers, app, namespace, prompt):
    """One task's workflow, started as the processor would, terminated when done with (it is cut mid-flight)."""
    task_id, workflow_id = providers.start(app, namespace, prompt)
    try:
        yield task_id, workflow_id
    finally:
        providers.terminate(workflow_id)


@contextmanager
def own_web_process(folder):
    """A web process the test can stop (the `web` fixture's run until the test ends)."""
    db_path = str(folder / "own.db")
    with gunicorn(db_path, folder / "own-gunicorn.log", workers=1, env=SECRETS) as url:
        yield Web(url, db_path)


def events_of(app, task_id):
    return [e["status"] for e in app.events() if e["task_id"] == task_id]


def cut_creating(providers, app, namespace):
    """Cut while the create activity is retried (the provider answers 500), before `processing`."""
    create = f"{namespace}.createTask"
    with running(providers, app, namespace, f"record {uuid.uuid4().hex[:6]} [error500:1000]") as (task_id, wid):
        history, progress = providers.wait_for(wid, lambda p: p.pending.get(create, 0) >= 2)
        assert progress.steps == [f"scheduled {create}"]
        assert events_of(app, task_id) == ["pending", "queued"]
    return history


def cut_polling(providers, app, namespace):
    """Cut while the poll activity is retried: the job was created, `processing` reported, the job unfinished."""
    create, poll = f"{namespace}.createTask", f"{namespace}.pollTask"
    with running(providers, app, namespace, "record [slow:30]") as (task_id, wid):  # the job takes 60 s
        history, progress = providers.wait_for(wid, lambda p: p.pending.get(poll, 0) >= 3)
        assert progress.steps == [f"scheduled {create}", f"completed {create}", f"scheduled {REPORT}",
                                  f"completed {REPORT}", f"scheduled {poll}"]
        assert events_of(app, task_id) == ["pending", "queued", "processing"]
    return history


def cut_reporting(providers, namespace, folder):
    """Cut while the `completed` report is retried: the job ended, its media were stored, the web process is down."""
    poll = f"{namespace}.pollTask"
    with ExitStack() as web_up:
        app = web_up.enter_context(own_web_process(folder))
        with running(providers, app, namespace, "record [slow:3]") as (task_id, wid):  # the job takes 6 s
            providers.wait_for(wid, lambda p: poll in p.pending)
            assert events_of(app, task_id) == ["pending", "queued", "processing"]
            web_up.close()  # the web process goes down before the job ends
            history, progress = providers.wait_for(wid, lambda p: p.pending.get(REPORT, 0) >= 2)
            assert progress.steps[-2:] == ["completed storeMedia", f"scheduled {REPORT}"]
    return history


@pytest.mark.skipif(not os.environ.get("RECORD_HISTORIES"), reason="set RECORD_HISTORIES=1 to record")
def test_record_histories(web, providers, tmp_path):
    """Record the release being made (RECORDING_RELEASE, or HISTORIES_RELEASE) from real runs of today's code:
    each workflow completed, failed and rejected, and cut mid-flight at each of its waits (CASES)."""
    folder = recording_folder()
    app = web()
    for namespace, kind in KINDS.items():
        histories = {
            "completed": providers.run(app, namespace, "record ok")[3],
            "failed": providers.run(app, namespace, "record [fail]")[3],
            "rejected": providers.run(app, namespace, f"record {time.time()} [reject]")[3],
            "cut-creating": cut_creating(providers, app, namespace),
            "cut-polling": cut_polling(providers, app, namespace),
            "cut-reporting": cut_reporting(providers, namespace, tmp_path),
        }
        assert tuple(histories) == CASES
        for case, history in histories.items():
            (folder / f"{kind}-{case}.json").write_text(history.to_json())
