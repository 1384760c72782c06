"""The `processing` report as a local activity (workflows.PollingRun.deliver): one marker while the web process
answers, a regular activity retried for a day when it does not, so an outage spends time without growing the
history. Ending reports stay regular activities: a cancel racing the `completed` report must not end the run
cancelled (workflows.LOCAL_REPORTS)."""

import asyncio
import json
import os
import subprocess

import pytest

from dev.stack import ROOT, free_port, gunicorn_command, stop, wait_for_http
from tests.conftest import SECRETS, VIDEO, LoopbackHTTP, QuietHandler, Web
from tests.test_workflows import REPORT, events_of
from tests.test_workflows import providers as workflow_providers  # noqa: F401  (a fixture: the fakes and a worker)

pytestmark = pytest.mark.slow
HISTORY_EVENTS = 34  # a task's run: 37 with every report a regular activity (the patch itself costs 2)


class RestartableWeb:
    """gunicorn on a port of its own that can be stopped and started again there (the worker's MAIN_ENDPOINT)."""

    def __init__(self, folder):
        self.folder, self.port, self.process = folder, free_port(), None
        self.db_path = str(folder / "web.db")
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Web:
        env = {**os.environ, **SECRETS, "DATABASE_PATH": self.db_path, "RETRY_BASE_SECONDS": "0"}
        with open(self.folder / "gunicorn.log", "ab") as log:
            self.process = subprocess.Popen(gunicorn_command(self.port, 1), cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        wait_for_http(f"{self.url}/healthz", process=self.process)
        return Web(self.url, self.db_path)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


def history_of(providers, workflow_id):
    async def go():
        from temporalio.client import Client

        client = await Client.connect(providers.temporal)
        return await client.get_workflow_handle(workflow_id).fetch_history()

    return asyncio.run(go())


def result_of(providers, workflow_id, timeout):
    async def go():
        from temporalio.client import Client

        client = await Client.connect(providers.temporal)
        return await asyncio.wait_for(client.get_workflow_handle(workflow_id).result(), timeout)

    return asyncio.run(go())


def replay_failure(history):
    """Replay a fetched history against today's workflows, no server: its failure, or None (a run with the local
    report's markers, succeeded or failed over to the activity, must replay as the released ones do)."""
    from temporalio.worker import Replayer

    from workflows import ImagePollingWorkflow, VideoPollingWorkflow

    replayer = Replayer(workflows=[VideoPollingWorkflow, ImagePollingWorkflow])
    return asyncio.run(replayer.replay_workflow(history, raise_on_replay_failure=False)).replay_failure


def markers(history) -> int:
    return sum(1 for e in history.events if e.HasField("marker_recorded_event_attributes")
               and e.marker_recorded_event_attributes.marker_name == "core_local_activity")


def test_reports_are_local_activities_while_the_web_process_answers(web, workflow_providers):  # noqa: F811
    providers = workflow_providers
    app = web()
    task, events, (status, _), history = providers.run(app, VIDEO, "a heron in the rain")
    assert status == "COMPLETED" and task["status"] == "completed"
    assert events == [("pending", 0), ("queued", 1), ("processing", 1), ("completed", 1)]
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events
                 if e.HasField("activity_task_scheduled_event_attributes")]
    assert scheduled.count(REPORT) == 1  # `completed` only: an ending report is a regular activity
    assert markers(history) == 1  # `processing`
    assert len(history.events) <= HISTORY_EVENTS
    assert replay_failure(history) is None


def test_a_report_the_web_process_cannot_take_falls_back_to_an_activity_and_lands_when_it_is_back(
        workflow_providers, tmp_path):  # noqa: F811
    """The web process goes down while the provider's create is under way: the `processing` report is tried
    locally for about a second, then handed to a regular activity whose retries add no events; the task goes on
    and completes once the web is back."""
    providers = workflow_providers
    host = RestartableWeb(tmp_path)
    app = host.start()
    try:
        task_id, workflow_id = providers.start(app, VIDEO, "a lighthouse [slowcreate:3]")  # the create takes 3 s
        providers.wait_for(workflow_id, lambda p: f"{VIDEO}.createTask" in p.pending)
        assert events_of(app, task_id) == ["pending", "queued"]
        host.stop()
        history, progress = providers.wait_for(workflow_id, lambda p: p.pending.get(REPORT, 0) >= 2, timeout=40)
        assert progress.steps[-2:] == [f"completed {VIDEO}.createTask", f"scheduled {REPORT}"]
        assert markers(history) == 1  # the local tries' failure, recorded once
        later, _ = providers.wait_for(workflow_id, lambda p: p.pending.get(REPORT, 0) >= 3, timeout=40)
        assert len(later.events) == len(history.events)  # another try while down added no event
        app = host.start()
        result = result_of(providers, workflow_id, timeout=60)
        assert result["media"] == {"videoUrl": "video.mp4", "lastFrameUrl": "last-frame.png"}
        assert events_of(app, task_id) == ["pending", "queued", "processing", "completed"]
        assert app.task(task_id)["status"] == "completed"
        final = history_of(providers, workflow_id)
        assert len(final.events) <= 40
        assert replay_failure(final) is None
    finally:
        host.stop()


class HoldingProxy(LoopbackHTTP):
    """A pass-through HTTP proxy in front of the web process that runs `hook(status, body)` after the web has
    answered a report and before the worker gets that answer: the moment between the web's commit and the
    workflow learning of it."""

    def __init__(self, target: str, hook):
        import requests

        proxy = self

        class Handler(QuietHandler):
            def forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = requests.request(self.command, target + self.path, data=body, headers=headers,
                                          timeout=30, allow_redirects=False)
                if self.command == "POST" and "/report" in self.path:
                    proxy.hook(json.loads(body or b"{}"), answer.status_code)
                self.send_response(answer.status_code)
                for key in ("Content-Type",):
                    if key in answer.headers:
                        self.send_header(key, answer.headers[key])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = forward

        self.hook = hook
        super().__init__(Handler)


def cancel_workflow(temporal, workflow_id):
    """What the processor does for a task's cancel: RequestCancelWorkflowExecution (accepted by the server even
    while a workflow task is under way: it is buffered until that task ends)."""
    async def go():
        from temporalio.client import Client

        client = await Client.connect(temporal)
        await client.get_workflow_handle(workflow_id).cancel()

    asyncio.run(go())


def closed_status(providers, workflow_id, timeout=60):
    async def go():
        from temporalio.client import Client

        client = await Client.connect(providers.temporal)
        handle = client.get_workflow_handle(workflow_id)
        try:
            await asyncio.wait_for(handle.result(), timeout)
        except TimeoutError:
            raise
        except Exception:  # ended otherwise: its status says how
            pass
        return (await handle.describe()).status.name

    return asyncio.run(go())


def test_a_cancel_arriving_while_the_completed_report_lands_leaves_the_run_completed(web, workflow_providers):  # noqa: F811
    """The web commits `completed`; before the worker hears back, the processor delivers the task's cancel to
    Temporal. The task completed, so its run must complete too (dev/invariants: a completed task has one
    completed run). A local activity's result is durable only once its workflow task completes, and that task,
    which also closes the run, is refused by the server for the cancel that came meanwhile (UnhandledCommand):
    the retried task replays without the report's result, takes the cancel, and ended the run cancelled."""
    from dev.invariants import check

    providers = workflow_providers
    app = web()
    held = {}

    def hook(body, status_code):
        if body.get("status") == "completed" and status_code == 200 and not held:
            held["task"] = body["apiCallId"]
            cancel_workflow(providers.temporal, f"{VIDEO}:{body['apiCallId']}")

    proxy = HoldingProxy(app.url, hook)
    try:
        task_id, workflow_id = providers.start(Web(proxy.url, app.db_path), VIDEO, "a kingfisher [slow:1]")
        status = closed_status(providers, workflow_id)
        assert held.get("task") == task_id  # the cancel did come while the `completed` report was answered
        assert app.task(task_id)["status"] == "completed"
        assert events_of(app, task_id)[-1] == "completed"
        assert status == "COMPLETED", f"the task completed but its run ended {status}"
        findings = check(app.db_path, providers.temporal)
        assert findings.ok, findings.summary()
    finally:
        proxy.close()
