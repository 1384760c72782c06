"""The worker: both polling workflows and their activities, in one process.

    python workflows.py            (the Procfile's `worker` line)

A polling workflow creates the provider's job, reports `processing` with the
job id, waits for the job to end, and reports `completed` or `failed`. It never
reports `queued` (the processor's claim did). Every report carries the attempt
the workflow was started with, so a superseded run is fenced off (409) and
stops. When its task fails the workflow itself fails, so Temporal shows it and
the id-reuse policy lets only a failed run be started again.

Waiting follows Temporal's guidance for long external jobs: the poll activity
raises while the job is unfinished and its retry policy (fixed interval,
schedule-to-close = the deadline) polls again. Retries add no history events,
so the history stays a couple of dozen events however long the job runs.

A cancel (docs/design.md §3.5) arrives as Temporal's workflow cancellation: the
run cancels the provider's job where the provider allows (Ark: while queued) and
reports `cancelled`; a create under way is waited for first, so its job is known.

This module is re-imported by the workflow sandbox: nothing runs at import.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, NoReturn

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

with workflow.unsafe.imports_passed_through():
    from integrations.base import WorkflowInput
    from integrations.fangzhou_video.activities import ACTIVITIES as VIDEO_ACTIVITIES
    from integrations.nanobanana2_image.activities import ACTIVITIES as IMAGE_ACTIVITIES
    from integrations.shared import public_errors as text  # the failure texts' prefixes: what users are told
    from integrations.shared.activities import (
        BLOCKED,
        JOB_FAILED,
        NOT_DONE,
        REJECTED,
        REPORT_REFUSED,
        CreateInput,
        JobActivities,
        PollInput,
        PollOutcome,
        ReportInput,
        StoreMediaInput,
        report_task_event,
        store_media,
    )
    from integrations.shared.providers import LONGEST_CREATE_SECONDS, LOOK_SECONDS

CREATE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                           maximum_interval=timedelta(seconds=30), maximum_attempts=6,
                           non_retryable_error_types=[REJECTED, BLOCKED, JOB_FAILED])
LOOK_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                         maximum_interval=timedelta(seconds=30), maximum_attempts=6,
                         non_retryable_error_types=[BLOCKED])
CANCEL_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                           maximum_interval=timedelta(seconds=10), maximum_attempts=4)
REPORT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                           maximum_interval=timedelta(seconds=30), non_retryable_error_types=[REPORT_REFUSED])
# The `processing` report goes first as a local activity: run by the worker inside the workflow task, it costs one
# marker event and no activity task or extra workflow task. Three tries of at most 2 s (about 6.6 s in all, inside
# the workflow task's 8 s before the worker must heartbeat it, which would add events), then it falls back to a
# regular activity retried up to REPORT_GIVE_UP: a web outage spends time without growing the history. (The
# local activity's schedule-to-close timeout did not bound its retries in temporalio 1.35; the attempts do.)
# Only `processing`: a local activity's result is kept only once its workflow task completes, and the task that
# runs an ending report (completed, failed, blocked, cancelled) is the one that closes the run. A cancel arriving
# meanwhile makes the server refuse that task (UnhandledCommand); the retried task replays without the report's
# result, takes the cancel, and the run ended cancelled although the web had committed `completed`
# (tests/test_local_reports.py). An ending report is a regular activity: its result is in the history before
# the run acts on it. Nothing ends on `processing`: sent again on such a replay it is a duplicate (200).
LOCAL_REPORTS = frozenset({"processing"})
LOCAL_REPORT_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), backoff_coefficient=2.0,
                                 maximum_attempts=3, non_retryable_error_types=[REPORT_REFUSED])
LOCAL_REPORT_TIMEOUT = timedelta(seconds=2)
REPORT_GIVE_UP = timedelta(hours=24)  # the web process may be down for a while; then the stuck rescue takes over
CALL_TIMEOUT = timedelta(seconds=60)  # one status query or report (HTTP timeouts: 10 s connect + 30 s read)
CANCEL_TIMEOUT = timedelta(seconds=2 * LOOK_SECONDS + 20)  # Ark's cancel looks at the job, then DELETEs it
# A create waits for the provider's answer as long as the slowest client's HTTP timeout (Ark: the official SDK's
# 600 s): a slow answer is waited for, never retried into a second job (integrations/shared/providers.py).
CREATE_TIMEOUT = timedelta(seconds=LONGEST_CREATE_SECONDS + 30)
CREATE_HEARTBEAT = timedelta(seconds=30)  # the create heartbeats every 2 s: a worker lost mid-call shows in 30 s
ACTIVITY_THREADS = 64  # per task queue: its activity slots and threads (see serve)
LOCAL_ACTIVITY_SLOTS = 16  # per task queue: local reports at once, on threads of their own beside ACTIVITY_THREADS
TASK_FAILED = "TaskFailed"
INTEGRATION_BLOCKED = "IntegrationBlocked"
# workflow.patched() ids: runs recorded before a change replay without it (tests/histories).
RESUME_PATCH = "resume-earlier-job"
CANCEL_PATCH = "cancel-at-deadline"
MEDIA_PATCH = "store-media"
LOCAL_REPORT_PATCH = "local-processing-report"
# Copying the media: retried with backoff and no attempt limit while the provider's URLs can still work. Past
# the input's mediaGiveUpSeconds (MEDIA_GIVE_UP_SECONDS, default 24 h: the links' documented life) nothing can
# succeed: the task completes with the provider URLs and a `mediaNote`; storage never fails a task.
MEDIA_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=2.0,
                          maximum_interval=timedelta(minutes=5))
MEDIA_TIMEOUT = timedelta(hours=1)  # one try, every file (10 minutes at most each); the heartbeat spots a lost worker
MEDIA_HEARTBEAT = timedelta(seconds=30)
MEDIA_GIVEN_UP = "media not stored: our storage or the provider's links kept failing; the provider URLs are kept"


class PollingRun:
    """One run of a polling workflow: its input, and how it reports."""

    def __init__(self, params: WorkflowInput, activities: JobActivities):
        self.params = params
        self.activities = activities
        self.task_id, self.attempt = params.task_id, params.attempt
        self.interval = timedelta(seconds=params.pollIntervalSeconds)
        self.deadline = timedelta(seconds=params.deadlineSeconds)
        self.external_id: str | None = None  # the provider's job, once known: what a cancel must stop
        self.ended: tuple[str, Any] | None = None  # ("completed", result) or ("failed", error), once reported

    async def run(self) -> dict:
        """Drive the job; on a cancel request, stop it and report `cancelled` (then end cancelled).

        A cancel that comes while the task's end is being reported lets that report finish (reports are
        shielded): if it landed, the run ends as the task did, and the cancel changes nothing."""
        try:
            return await self.drive()
        except (asyncio.CancelledError, ActivityError) as err:
            if not is_cancelled_exception(err):
                raise
            if self.ended is not None:
                status, detail = self.ended
                if status == "completed":
                    return detail
                raise ApplicationError(detail, type=TASK_FAILED, non_retryable=True) from None
            await self.stop_on_cancel()
            raise asyncio.CancelledError() from err

    async def drive(self) -> dict:
        await asyncio.sleep(0)  # a cancel that came before the run started ends it here, before any provider call
        external_id = None
        if self.params.resumeExternalId and workflow.patched(RESUME_PATCH):
            external_id, ended = await self.resume(self.params.resumeExternalId)
            if ended is not None:
                return await self.finish(external_id, ended)
        if external_id is None:
            external_id = await self.create()
            self.log("provider job created", external_id=external_id)
        self.external_id = external_id
        await self.report("processing", external_id=external_id)
        poll_retry = RetryPolicy(initial_interval=self.interval, backoff_coefficient=1.0,
                                 maximum_interval=self.interval, non_retryable_error_types=[REJECTED, BLOCKED])
        try:
            outcome = await workflow.execute_activity(
                self.activities.poll, PollInput(self.task_id, self.attempt, external_id),
                start_to_close_timeout=CALL_TIMEOUT, schedule_to_close_timeout=self.deadline,
                retry_policy=poll_retry)
        except ActivityError as err:
            _raise_if_cancelled(err)
            # Out of time: either the deadline struck mid-attempt (a timeout), or the server
            # would not schedule the next poll past it (the last "not done" answer).
            if isinstance(err.cause, TemporalTimeoutError) or _error_type(err) == NOT_DONE:
                late = text.DEADLINE.format(seconds=self.deadline.total_seconds())
                await self.fail(f"{text.JOB_TIMED_OUT}{external_id} {late}{await self.cancel(external_id)}",
                                external_id=external_id)
            if _error_type(err) == BLOCKED:  # the job lives on: the probe's attempt resumes it
                await self.hand_back(_message(err))
            if _error_type(err) == JOB_FAILED:  # kie's 501 with no state: the job ended, failed
                await self.fail(f"{text.JOB_FAILED}{_message(err)}", external_id=external_id)
            await self.fail(f"{text.POLL_FAILED}{external_id}: {_message(err)}", external_id=external_id)
        return await self.finish(external_id, outcome)

    async def create(self) -> str:
        """Create the provider's job: its id. Refusals end the attempt here (fail() and hand_back() never return).

        A cancel does not interrupt the create (shielded): it waits for the provider's answer, so that the job,
        if one was made, is known and can be cancelled instead of running unseen."""
        creating = workflow.start_activity(
            self.activities.create,
            CreateInput(self.task_id, self.attempt, self.params.requestParams, self.params.deadlineSeconds),
            start_to_close_timeout=CREATE_TIMEOUT, heartbeat_timeout=CREATE_HEARTBEAT, retry_policy=CREATE_RETRY)
        try:
            return await asyncio.shield(creating)
        except asyncio.CancelledError:
            try:
                self.external_id = await creating
            except ActivityError:
                pass  # no job was made
            raise
        except ActivityError as err:
            kind = _error_type(err)
            if kind == BLOCKED:
                await self.hand_back(_message(err))
            if kind == JOB_FAILED:
                await self.fail(f"{text.JOB_FAILED}{_message(err)}")
            rejected = kind == REJECTED
            prefix = text.REJECTED if rejected else text.CREATE_FAILED
            await self.fail(f"{prefix}{_message(err)}", retryable=not rejected)

    async def resume(self, earlier: str) -> tuple[str | None, PollOutcome | None]:
        """Look at the previous attempt's job before creating another: (its id, None) if it is still alive,
        so this attempt polls it; (its id, outcome) if it ended in success while nobody watched, or failed
        for good (moderation); (None, None) if it failed otherwise or is gone, so a new job is created."""
        self.external_id = earlier  # a cancel during the look must still cancel this job (no command: replay-safe)
        try:
            look = await workflow.execute_activity(
                self.activities.look, PollInput(self.task_id, self.attempt, earlier),
                start_to_close_timeout=CALL_TIMEOUT, retry_policy=LOOK_RETRY)
        except ActivityError as err:
            _raise_if_cancelled(err)
            if _error_type(err) == BLOCKED:
                await self.hand_back(_message(err))
            await self.fail(f"{text.POLL_FAILED}{earlier}: {_message(err)}", external_id=earlier)
        if look.alive:
            self.log("resuming the previous attempt's provider job", external_id=earlier, status=look.status)
            return earlier, None
        if look.outcome is not None and (look.outcome.succeeded or not look.outcome.retryable):
            # Succeeded while nobody watched: its result. Refused for its content: a new job would be too.
            self.log("the previous attempt's provider job ended", external_id=earlier, status=look.status)
            return earlier, look.outcome
        self.log("the previous attempt's provider job is over; creating a new one", external_id=earlier,
                 status=look.status)
        self.external_id = None  # over: a cancel from here on concerns the job created next, if any
        return None, None

    async def finish(self, external_id: str, outcome: PollOutcome) -> dict:
        """Report how the job ended: `completed` with its result, or `failed` (for good if retrying is futile)."""
        if not outcome.succeeded:
            await self.fail(f"{text.JOB_FAILED}{outcome.error or 'no message'}", external_id=external_id,
                            retryable=outcome.retryable)
        result = outcome.result
        if result and workflow.patched(MEDIA_PATCH):
            result = await self.keep_media(result)
        await self.report("completed", external_id=external_id, data=result)
        self.log("task completed", external_id=external_id)
        return result or {}

    async def keep_media(self, result: dict) -> dict:
        """The result with our copies of its media: `media` names them (web/media.py serves them); `mediaNote`
        says what could not be stored. The provider URLs stay as they were."""
        try:
            stored = await workflow.execute_activity(
                store_media, StoreMediaInput(self.task_id, self.attempt, result),
                start_to_close_timeout=MEDIA_TIMEOUT, heartbeat_timeout=MEDIA_HEARTBEAT,
                schedule_to_close_timeout=timedelta(seconds=self.params.mediaGiveUpSeconds), retry_policy=MEDIA_RETRY)
        except ActivityError as err:  # users see the note: the cause (a path, a bucket) only in the log
            _raise_if_cancelled(err)
            self.log("media not stored; completing with the provider URLs only", error=_message(err))
            return {**result, "mediaNote": MEDIA_GIVEN_UP}
        copied = {**result, "media": stored.media}
        if stored.notes:
            copied["mediaNote"] = "; ".join(stored.notes)
        return copied

    async def cancel(self, external_id: str) -> str:
        """At the deadline, cancel the job where the provider still can (Ark: while queued), so a retry never
        runs beside it; what happened, as the end of the failure's text."""
        if not workflow.patched(CANCEL_PATCH):
            return ""
        cancelled = await self.cancel_job(external_id)
        self.log("provider job cancelled at the deadline" if cancelled else "provider job left running",
                 external_id=external_id)
        return ("; cancelled at the provider" if cancelled
                else "; still running at the provider: the next attempt resumes it")

    async def cancel_job(self, external_id: str) -> bool:
        """Cancel the provider's job where the provider allows (Ark: while queued): whether it was cancelled."""
        try:
            return await workflow.execute_activity(
                self.activities.cancel, PollInput(self.task_id, self.attempt, external_id),
                start_to_close_timeout=CANCEL_TIMEOUT, retry_policy=CANCEL_RETRY)
        except ActivityError:
            return False

    async def stop_on_cancel(self) -> None:
        """The task's cancel reached this run: cancel the provider's job where the provider allows, then report
        `cancelled`. If the task completed or failed first, the report is refused (409): that outcome stands."""
        note = "cancelled before a provider job was made"
        if self.external_id is not None:
            note = ("cancelled; the provider's job was cancelled too" if await self.cancel_job(self.external_id) else
                    "cancelled; the provider's job could not be cancelled (running or ended): it ends on its own")
        try:
            await self.report("cancelled", external_id=self.external_id, error=note)
        except ActivityError as err:
            self.log("cancel not recorded: the task ended first", error=_message(err))
            return
        self.log("task cancelled", external_id=self.external_id, note=note)

    async def hand_back(self, reason: str) -> NoReturn:
        """The provider refuses the account (credits, quota, key, feature): report `blocked`, which hands the
        claim back with its attempt refunded and blocks the integration, then end this run in failure."""
        await self.report("blocked", error=reason)
        self.log("integration blocked; claim handed back", error=reason)
        raise ApplicationError(reason, type=INTEGRATION_BLOCKED, non_retryable=True)

    def log(self, message: str, **fields: Any) -> None:
        """A workflow log line (not repeated on replay) with the task and attempt on it."""
        fields = {"task": self.task_id, "attempt": self.attempt, **fields}
        workflow.logger.info(message, extra={"fields": {k: v for k, v in fields.items() if v is not None}})

    async def report(self, status: str, **fields: Any) -> None:
        """Send one report. A cancel does not interrupt it (shielded): it lets the report land or be refused, so
        the run knows whether the task ended (`self.ended`) before it handles the cancel."""
        reporting = asyncio.ensure_future(
            self.deliver(ReportInput(self.params.reportUrl, self.task_id, self.attempt, status, **fields)))
        try:
            await asyncio.shield(reporting)
        except asyncio.CancelledError:
            try:
                await reporting
            except (ActivityError, ApplicationError):
                raise asyncio.CancelledError() from None  # refused: the cancel is handled as if it came first
            self.note_end(status, fields)
            raise
        self.note_end(status, fields)

    async def deliver(self, report: ReportInput) -> None:
        """Send `report`: a `processing` report as a local activity first, then, if the web process did not take
        it in time, as a regular activity that retries for a day; an ending report as that activity only
        (LOCAL_REPORTS says why). A refusal (4xx) is final either way.

        A local activity's failure arrives as its cause (an ApplicationError, or a TimeoutError), not wrapped in
        an ActivityError as a regular activity's is."""
        if report.status in LOCAL_REPORTS and workflow.patched(LOCAL_REPORT_PATCH):
            try:
                await workflow.execute_local_activity(
                    report_task_event, report, start_to_close_timeout=LOCAL_REPORT_TIMEOUT,
                    retry_policy=LOCAL_REPORT_RETRY)
                return
            except (ActivityError, ApplicationError, TemporalTimeoutError) as err:
                cause = err.cause if isinstance(err, ActivityError) else err
                # Final: a refusal (4xx) or a report URL off the main endpoint; a regular activity would fail too.
                final = isinstance(cause, ApplicationError) and cause.non_retryable
                if final or is_cancelled_exception(err):  # (the report is shielded: cancelled only if that changes)
                    raise
                self.log("report not taken yet; retrying it as an activity", status=report.status,
                         error=getattr(cause, "message", str(cause)))
        await workflow.execute_activity(report_task_event, report, start_to_close_timeout=CALL_TIMEOUT,
                                        schedule_to_close_timeout=REPORT_GIVE_UP, retry_policy=REPORT_RETRY)

    def note_end(self, status: str, fields: dict[str, Any]) -> None:
        if status == "completed":
            self.ended = ("completed", fields.get("data") or {})
        elif status == "failed":
            self.ended = ("failed", fields.get("error") or "failed")

    async def fail(self, error: str, retryable: bool = True, external_id: str | None = None) -> NoReturn:
        """Report `failed`, then end this workflow in failure: it never returns."""
        await self.report("failed", error=error, retryable=retryable, external_id=external_id)
        self.log("task failed", error=error, retryable=retryable)
        raise ApplicationError(error, type=TASK_FAILED, non_retryable=True)


def _raise_if_cancelled(err: ActivityError) -> None:
    """An activity ended by the run's own cancellation is no provider failure: let run() handle the cancel."""
    if is_cancelled_exception(err):
        raise err


def _error_type(err: ActivityError) -> str | None:
    cause = err.cause
    return cause.type if isinstance(cause, ApplicationError) else None


def _message(err: ActivityError) -> str:
    cause = err.cause
    while cause is not None and cause.cause is not None and not isinstance(cause, ApplicationError):
        cause = cause.cause
    return cause.message if cause is not None else str(err)


@workflow.defn(name="VideoPollingWorkflow")
class VideoPollingWorkflow:
    """Text-to-video through Volcengine Ark."""

    @workflow.run
    async def run(self, params: WorkflowInput) -> dict:
        return await PollingRun(params, VIDEO_ACTIVITIES).run()


@workflow.defn(name="ImagePollingWorkflow")
class ImagePollingWorkflow:
    """Text-to-image through the nano-banana-2 job API."""

    @workflow.run
    async def run(self, params: WorkflowInput) -> dict:
        return await PollingRun(params, IMAGE_ACTIVITIES).run()


# integration -> (workflow class, its provider activities); reportTaskEvent serves both.
REGISTRY = {
    "fangzhouVideoGeneration": (VideoPollingWorkflow, list(VIDEO_ACTIVITIES)),
    "nanobanana2ImageGeneration": (ImagePollingWorkflow, list(IMAGE_ACTIVITIES)),
}


# -- the worker process --

def check_registry(config) -> list[tuple[str, str, type, list]]:
    """(integration, task queue, workflow, activities) per enabled integration; ConfigError if misconfigured."""
    from integrations import load_integrations
    from integrations.shared.activities import origin
    from settings import ConfigError, require_secret, temporal_connection

    temporal_connection(config)  # the Temporal settings are complete
    require_secret(config, "components.asyncTask.internalApiToken")
    endpoint = config.require("components.main.endpoint")
    if origin(endpoint) is None:  # reports go only to this origin: it must be one
        raise ConfigError(f"MAIN_ENDPOINT (components.main.endpoint) must be an http(s) URL, got {endpoint!r}")
    served = []
    for integration in load_integrations(config):
        pull = integration.get_pull_mode_config()
        if not pull.enabled:
            continue
        workflow_class, activities = REGISTRY[integration.namespace]
        defined = workflow_class.__temporal_workflow_definition.name
        if pull.workflow_name != defined:
            raise ConfigError(f"integrations.{integration.namespace}.workflowName is {pull.workflow_name!r}, "
                              f"but this worker defines {defined!r}")
        for key in ("baseUrl", "model", "apiKey"):
            config.require(f"integrations.{integration.namespace}.{key}")
        served.append((integration.namespace, pull.task_queue, workflow_class, activities))
    return served


def telemetry(config) -> dict:
    """With WORKER_METRICS_PORT: the SDK's own metrics and ours (provider calls) on that port.

    The SDK's Prometheus exporter listens on a private loopback port; our endpoint
    serves prometheus_client's registry and appends the SDK's exposition, so one
    scrape sees both and METRICS_TOKEN guards both. Returns Client.connect's `runtime`.
    """
    if config.get("components.metrics.workerPort") is None:
        return {}
    import socket

    import requests
    from prometheus_client import REGISTRY
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    import metrics

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        sdk_port = probe.getsockname()[1]
    runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{sdk_port}")))

    def sdk_metrics() -> bytes:
        try:
            return requests.get(f"http://127.0.0.1:{sdk_port}/metrics", timeout=2).content
        except requests.RequestException:
            return b""  # the SDK has not started its exporter yet

    metrics.serve(config, "components.metrics.workerPort", REGISTRY, extra=sdk_metrics)
    return {"runtime": runtime}


def cache_bytecode(log) -> None:
    """Write this module's bytecode cache, even under PYTHONDONTWRITEBYTECODE.

    The sandbox imports this module afresh for every workflow run; without a cache each import compiles the
    source again (measured: about a sixth of the worker's CPU per task). A read-only tree is only logged."""
    import importlib.util
    import py_compile

    try:
        py_compile.compile(__file__, cfile=importlib.util.cache_from_source(__file__), doraise=True)
    except (OSError, py_compile.PyCompileError) as exc:
        log.info("workflow code not cached as bytecode (%s): each run compiles it", exc)


def queue_worker(stack, client, integration: str, queue: str, workflow_class: type, activities: list):
    """The Worker of one task queue, its threads entered on `stack` (an ExitStack): serve's, and the bench's
    reference worker's, so both run with the same settings."""
    from concurrent.futures import ThreadPoolExecutor

    from temporalio.worker import Worker

    # Its own threads, as many as the activities it accepts: an accepted activity starts at once.
    # Were there fewer, an accepted create could wait for a thread past its heartbeat timeout;
    # Temporal would schedule it again and both would send the create.
    # Local activities (the `processing` report) run on the same executor: it has a thread for each of
    # their slots too, so they never take a thread an accepted activity is owed.
    executor = stack.enter_context(ThreadPoolExecutor(max_workers=ACTIVITY_THREADS + LOCAL_ACTIVITY_SLOTS,
                                                      thread_name_prefix=f"activity-{integration}"))
    return Worker(client, task_queue=queue, workflows=[workflow_class], activities=activities,
                  activity_executor=executor, max_concurrent_activities=ACTIVITY_THREADS,
                  max_concurrent_local_activities=LOCAL_ACTIVITY_SLOTS, graceful_shutdown_timeout=timedelta(seconds=5))


async def serve(config, stop, served=None, connect=None, options=None) -> None:
    """Connect to Temporal (waiting while it is down) and run one Worker per task queue until `stop` is set."""
    import asyncio
    import logging
    from contextlib import AsyncExitStack

    from temporalio.activity import logger as activity_logger
    from temporalio.client import Client

    from settings import temporal_connection

    log = logging.getLogger("worker")
    served = served if served is not None else check_registry(config)
    connection = {**temporal_connection(config), **(options if options is not None else telemetry(config))}
    address = connection.get("target_host")
    delay = 0.5
    while not stop.is_set():
        try:
            client = await (connect or Client.connect)(**connection)
            break
        except Exception as exc:  # keep waiting for Temporal, whatever the error
            from settings import describe_temporal_error  # names TLS problems plainly

            log.warning("temporal unavailable at %s: %s; retrying in %.1fs", address, describe_temporal_error(exc),
                        delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 10.0)
    else:
        return
    cache_bytecode(log)
    async with AsyncExitStack() as stack:
        for integration, queue, workflow_class, activities in served:
            worker = queue_worker(stack, client, integration, queue, workflow_class,
                                  [*activities, report_task_event, store_media])
            await stack.enter_async_context(worker)
            log.info("serving %s on task queue %s (%s)", integration, queue,
                     workflow_class.__temporal_workflow_definition.name)
        workflow.logger.workflow_info_on_message = False  # the logfmt formatter reads it from extra
        activity_logger.activity_info_on_message = False
        await stop.wait()
        log.info("shutting down")


def main() -> int:
    import asyncio
    import signal
    import sys

    import logs
    from settings import ConfigError, load_config

    logs.setup("worker")
    try:
        config = load_config()
        served = check_registry(config)
        options = telemetry(config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr, flush=True)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop, served, options=options)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
