"""What both polling workflows share: activity inputs, the provider job activities, the report activity.

Secrets (provider keys, the internal token) are read here, in the worker, from
its own configuration: they never travel in workflow or activity arguments
(docs/design.md §4.9). The internal token goes only to the configured main
endpoint's origin (MAIN_ENDPOINT), whatever `reportUrl` a workflow's input names.
"""

from __future__ import annotations

import functools
import http.client
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from prometheus_client import Counter, Histogram
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from integrations.shared.providers import (
    JobApi,
    ProviderBlocked,
    ProviderError,
    ProviderJobFailed,
    ProviderRejected,
    ProviderTransient,
)
from settings import Config, load_config

REPORT_TIMEOUT = (3.05, 10)
# A local try (workflows.LOCAL_REPORTS) is given up by the worker after 2 s; its HTTP call must end by then too,
# or the abandoned try keeps its thread blocked in the socket read while the next try takes another.
LOCAL_REPORT_HTTP_TIMEOUT = (0.5, 1.4)
# Error types a workflow reads off a failed activity.
REJECTED = "ProviderRejected"
TRANSIENT = "ProviderTransient"
BLOCKED = "ProviderBlocked"  # the account cannot work now (credits, quota, key, feature): the integration blocks
JOB_FAILED = "ProviderJobFailed"  # the provider ran the job and it failed
CREATE_UNANSWERED = "CreateUnanswered"  # a create sent whose answer was lost: not sent again in the attempt
NOT_DONE = "ProviderJobNotDone"
REPORT_REFUSED = "ReportRefused"
REPORT_URL_REFUSED = "ReportUrlRefused"  # a reportUrl off the main endpoint's origin: nothing is sent
BENIGN = ApplicationErrorCategory.BENIGN
# The worker's own metrics (WORKER_METRICS_PORT), beside the SDK's: how the providers answer.
PROVIDER_CALLS = Histogram("worker_provider_call_seconds", "Provider calls by integration, operation and outcome",
                           ["integration", "operation", "outcome"],
                           buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
PROVIDER_ERRORS = Counter("worker_provider_errors", "Failed provider calls by status (HTTP or body status, or "
                          "network) and the provider's error code", ["integration", "operation", "status", "code"])


@dataclass
class CreateInput:
    api_call_id: str
    attempt: int
    request_params: dict[str, Any]
    deadline_seconds: float | None = None  # the attempt's deadline: the job's expiry where the API takes one


@dataclass
class PollInput:
    api_call_id: str
    attempt: int
    external_id: str


@dataclass
class PollOutcome:
    """A finished provider job: succeeded with a result, or failed with the provider's message."""

    succeeded: bool
    result: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = True  # False: retrying would fail the same way (moderation)


@dataclass
class JobLook:
    """One look at an earlier attempt's job: still alive (resume it), ended (with its outcome), or gone."""

    status: str
    alive: bool
    outcome: PollOutcome | None = None


@dataclass
class ReportInput:
    report_url: str
    api_call_id: str
    attempt: int
    status: str
    external_id: str | None = None
    data: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def provider_errors(about: CreateInput | PollInput):
    """Provider failures as activity errors: rejected ones final, transient ones retried.

    They are expected, so they are logged here in one line (with the task and
    attempt) and marked benign (the SDK then logs no traceback for them).
    """
    try:
        yield
    except ProviderRejected as exc:
        _warn("provider rejected the request", exc, about)
        raise ApplicationError(str(exc), type=REJECTED, non_retryable=True, category=BENIGN) from exc
    except ProviderBlocked as exc:
        _warn("provider refuses the account; the integration blocks", exc, about)
        raise ApplicationError(str(exc), type=BLOCKED, non_retryable=True, category=BENIGN) from exc
    except ProviderJobFailed as exc:
        _warn("provider job failed", exc, about)
        raise ApplicationError(str(exc), type=JOB_FAILED, non_retryable=True, category=BENIGN) from exc
    except ProviderTransient as exc:
        wait = getattr(exc, "retry_after", None)
        _warn("provider call failed; will retry" + (f" after {wait:g}s (Retry-After)" if wait else ""), exc, about)
        raise ApplicationError(str(exc), type=TRANSIENT, category=BENIGN,
                               next_retry_delay=timedelta(seconds=wait) if wait else None) from exc


def _warn(message: str, exc: Exception, about: CreateInput | PollInput) -> None:
    fields = {"task": about.api_call_id, "attempt": about.attempt, "error": str(exc)}
    activity.logger.warning(message, extra={"fields": fields})


def not_done(message: str) -> ApplicationError:
    """The provider's job is still running: the poll activity's retry policy will look again."""
    return ApplicationError(message, type=NOT_DONE, category=BENIGN)


@functools.lru_cache(maxsize=1)
def worker_config() -> Config:
    """The worker's configuration, read once per process."""
    return load_config()


def provider_settings(namespace: str) -> dict:
    return worker_config().section(f"integrations.{namespace}")


@contextmanager
def measured(integration: str, operation: str) -> Iterator[None]:
    """Time one provider call and count its failure by code."""
    began, outcome = time.monotonic(), "ok"
    try:
        yield
    except ProviderError as exc:
        outcome = {ProviderRejected: "rejected", ProviderBlocked: "blocked",
                   ProviderJobFailed: "job_failed"}.get(type(exc), "transient")
        PROVIDER_ERRORS.labels(integration, operation, str(exc.status or "network"), str(exc.code or "")).inc()
        raise
    finally:
        PROVIDER_CALLS.labels(integration, operation, outcome).observe(time.monotonic() - began)


class Throttle:
    """At most `rate` calls per second (a token bucket of one second's worth), shared by a worker's threads."""

    def __init__(self, rate: float):
        self.rate, self.tokens, self.at = rate, max(rate, 1.0), time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        """Take a token, sleeping until one is there."""
        with self.lock:  # callers queue here in turn: the first waits for the next token, then the next
            now = time.monotonic()
            self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens < 1:
                time.sleep((1 - self.tokens) / self.rate)
                self.tokens, self.at = 1.0, time.monotonic()
            self.tokens -= 1


class ThrottledSession(requests.Session):
    """A session whose every request first takes a token of its integration's Throttle."""

    def __init__(self, throttle: Throttle):
        super().__init__()
        self.throttle = throttle

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        self.throttle.wait()
        return super().request(*args, **kwargs)


@functools.cache
def throttle(namespace: str) -> Throttle:
    """The integration's provider call cap in this worker (`callsPerSecond`, default 10)."""
    return Throttle(float(provider_settings(namespace).get("callsPerSecond", 10)))


HEARTBEAT_SECONDS = 2.0  # the create's heartbeat; the workflow's heartbeat timeout is a few of these


def while_heartbeating(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`call(*args, **kwargs)` in a helper thread while this activity heartbeats.

    A create waits up to 10 minutes for a slow provider's answer, so its start-to-close timeout is long;
    the heartbeat lets Temporal see within seconds that a worker died mid-call and retry it elsewhere,
    instead of after that timeout.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call(*args, **kwargs)
        except BaseException as exc:  # handed to the activity thread below
            outcome["error"] = exc

    helper = threading.Thread(target=run, name="provider-call", daemon=True)
    helper.start()
    while helper.is_alive():
        activity.heartbeat()
        helper.join(HEARTBEAT_SECONDS)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class JobActivities(NamedTuple):
    """An integration's provider activities: create a job, wait for it, look at an earlier one, cancel one."""

    create: Callable
    poll: Callable
    look: Callable
    cancel: Callable


def job_activities(namespace: str, api: type[JobApi]) -> JobActivities:
    """`{namespace}.createTask`, `.pollTask`, `.lookTask` and `.cancelTask`."""

    def connect() -> tuple[JobApi, str]:
        settings = provider_settings(namespace)
        return api(settings["baseUrl"], settings["apiKey"], ThrottledSession(throttle(namespace))), settings["model"]

    @activity.defn(name=f"{namespace}.createTask")
    def create_task(task: CreateInput) -> str:
        """Create the provider's job; return its id (the external id)."""
        client, model = connect()
        with provider_errors(task), measured(namespace, "create"):
            try:
                return while_heartbeating(client.create_job, model, task.request_params,
                                          deadline_seconds=task.deadline_seconds)
            except ProviderTransient as exc:
                if not exc.sent:
                    raise
                # The create went out and its answer was lost: sent again, it could make a second job. The
                # attempt fails instead (retryable, after its retryAt); neither provider has an idempotency key.
                _warn("create sent but unanswered; not sent again in this attempt", exc, task)
                raise ApplicationError(f"{exc}; the create was sent and its answer lost, so it is not sent again "
                                       "in this attempt", type=CREATE_UNANSWERED, non_retryable=True,
                                       category=BENIGN) from exc

    @activity.defn(name=f"{namespace}.pollTask")
    def poll_task(poll: PollInput) -> PollOutcome:
        """One look at the job. Not final yet: raise, and the retry policy polls again later."""
        client, _ = connect()
        with provider_errors(poll), measured(namespace, "poll"):
            job = client.look(poll.external_id)
        if not job.finished:
            raise not_done(f"{client.job_label} {poll.external_id} is {job.status}")
        return PollOutcome(job.succeeded, result=job.result, error=job.error, retryable=job.retryable)

    @activity.defn(name=f"{namespace}.lookTask")
    def look_task(look: PollInput) -> JobLook:
        """One look at an earlier attempt's job, before a new attempt creates another: a job the provider
        no longer knows (404, 422) is `gone`; account refusals and passing failures raise as usual."""
        client, _ = connect()
        with provider_errors(look), measured(namespace, "look"):
            try:
                job = client.look(look.external_id)
            except ProviderRejected:
                return JobLook("gone", alive=False)
            except ProviderJobFailed as exc:  # kie's 501 with no state: the job ended, failed
                return JobLook("failed", alive=False, outcome=PollOutcome(False, error=str(exc)))
        if not job.finished:
            return JobLook(job.status, alive=True)
        return JobLook(job.status, alive=False, outcome=PollOutcome(job.succeeded, job.result, job.error,
                                                                    job.retryable))

    @activity.defn(name=f"{namespace}.cancelTask")
    def cancel_task(cancel: PollInput) -> bool:
        """Cancel the job at the provider if it still can be (Ark: while queued); True if it was."""
        client, _ = connect()
        try:
            with measured(namespace, "cancel"):
                return client.cancel(cancel.external_id)
        except (ProviderRejected, ProviderBlocked) as exc:
            _warn("provider would not cancel the job", exc, cancel)
            return False
        except ProviderTransient as exc:
            _warn("provider cancel failed; will retry", exc, cancel)
            raise ApplicationError(str(exc), type=TRANSIENT, category=BENIGN) from exc

    return JobActivities(create_task, poll_task, look_task, cancel_task)


@functools.lru_cache(maxsize=1)
def _session() -> requests.Session:
    return requests.Session()  # no Authorization by default: report_task_event adds it where it may go


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a plain http(s) URL, the port made explicit; None for anything else.

    Plain: no user info, no backslash, space or control character, on which URL
    parsers disagree about where the host is.
    """
    if not isinstance(url, str) or any(c in url for c in "\\ ") or any(ord(c) < 32 or ord(c) == 127 for c in url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


def report_target(report_url: str, main_endpoint: str) -> str | None:
    """Where to POST a report: `report_url` on the main endpoint's origin, or None if it is elsewhere.

    The URL returned is rebuilt on the main endpoint's own scheme and host, so
    the request goes exactly where the comparison said.
    """
    main = origin(main_endpoint)
    if main is None or origin(report_url) != main:
        return None
    base, wanted = urlsplit(main_endpoint), urlsplit(report_url)
    return urlunsplit((base.scheme, base.netloc, wanted.path, wanted.query, ""))


@activity.defn(name="reportTaskEvent")
def report_task_event(report: ReportInput) -> dict:
    """POST one report to the web process. Safe to retry: a duplicate is answered 200 without a new event.

    404/409/400/401 are final (the task is gone, superseded or the report is
    wrong): raised as non-retryable so the workflow stops instead of looping.
    A `reportUrl` off the main endpoint's origin (MAIN_ENDPOINT) is refused the
    same way, before anything is sent: anyone able to start a workflow on the
    task queue could otherwise name a URL and receive the internal token.
    """
    config = worker_config()
    main_endpoint = config.require("components.main.endpoint")
    target = report_target(report.report_url, main_endpoint)
    if target is None:
        fields = {"task": report.api_call_id, "attempt": report.attempt, "status": report.status,
                  "report_origin": _shown_origin(report.report_url), "main_endpoint": main_endpoint}
        activity.logger.error("report not sent: its URL is not on the main endpoint's origin (MAIN_ENDPOINT)",
                              extra={"fields": fields})
        raise ApplicationError(
            f"report {report.status} not sent: reportUrl {_shown_origin(report.report_url)} is not on the main "
            f"endpoint's origin {_shown_origin(main_endpoint)} (MAIN_ENDPOINT); the internal token goes only there",
            type=REPORT_URL_REFUSED, non_retryable=True)
    token = config.require("components.asyncTask.internalApiToken")
    body: dict[str, Any] = {"apiCallId": report.api_call_id, "status": report.status, "attempt": report.attempt}
    for key, value in (("taskId", report.external_id), ("data", report.data), ("error", report.error)):
        if value is not None:
            body[key] = value
    if report.status == "failed":
        body["retryable"] = report.retryable
    def post() -> requests.Response:  # no redirects: a redirect must not carry the token to another origin
        return _session().post(target, json=body, headers={"Authorization": f"Bearer {token}"},
                               timeout=LOCAL_REPORT_HTTP_TIMEOUT if activity.info().is_local else REPORT_TIMEOUT,
                               allow_redirects=False)

    try:
        try:
            response = post()
        except requests.ConnectionError as exc:
            if not closed_unanswered(exc):
                raise
            # The web process closed the kept-alive connection as we reused it (its idle timeout): send it
            # again, on a new connection, at once. A report is idempotent (a duplicate is answered 200).
            response = post()
    except requests.RequestException as exc:
        raise ApplicationError(f"report {report.status} failed: {type(exc).__name__}: {exc}") from exc
    if 200 <= response.status_code < 300:
        return response.json()
    message = f"report {report.status} answered {response.status_code}: {response.text[:300]}"
    if response.status_code >= 500 or response.status_code == 429:
        raise ApplicationError(message)
    raise ApplicationError(message, type=REPORT_REFUSED, non_retryable=True)


def closed_unanswered(exc: requests.ConnectionError) -> bool:
    """The server closed the connection without an answer (it closed a kept-alive connection as the request
    went out on it), as opposed to a refused connection, a timeout or a name that does not resolve."""
    reason = exc.args[0] if exc.args else None
    cause = reason.args[1] if isinstance(reason, urllib3.exceptions.ProtocolError) and len(reason.args) > 1 else None
    return isinstance(cause, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError))


def _shown_origin(url: str) -> str:
    """A URL's origin as scheme://host:port for messages (never its path or query), or its repr if it has none."""
    found = origin(url)
    if found is None:
        return repr(url)[:200]
    scheme, host, port = found
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


# -- copying a completed job's media into our store (integrations/shared/media.py) --

MEDIA_NOT_STORED = "MediaNotStored"  # a download or the store failed in a way that may pass: retried


@dataclass
class StoreMediaInput:
    api_call_id: str
    attempt: int
    result: dict[str, Any]


@dataclass
class StoredMediaOutcome:
    """The stored names, mirroring the result's URL fields (`media`), and what could never be stored (`notes`)."""

    media: dict[str, Any]
    notes: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=1)
def worker_media_store():
    """The worker's media store (MEDIA_DIR or MEDIA_S3_BUCKET), built once per process."""
    from integrations.shared.media import media_store

    return media_store(worker_config())


@functools.lru_cache(maxsize=1)
def _media_session() -> requests.Session:
    return requests.Session()  # never carries a provider key: result URLs are public (signed) links


@activity.defn(name="storeMedia")
def store_media(job: StoreMediaInput) -> StoredMediaOutcome:
    """Copy the result's media into our store, heartbeating while it copies. A file that can never be stored
    (too large, wrong type, gone) is a note; a failure that may pass (timeout, 5xx, disk, bucket) raises and
    the workflow's retry policy tries again later."""
    from integrations.shared.media import MediaError, max_bytes
    from integrations.shared.media_copy import MediaRefused, copy_media

    try:
        media, notes = while_heartbeating(copy_media, worker_media_store(), job.api_call_id, job.result,
                                          max_bytes(worker_config()), _media_session())
    except MediaRefused as exc:  # copy_media notes these itself; anything left is a bug worth seeing
        raise ApplicationError(str(exc), type=MEDIA_NOT_STORED) from exc
    except MediaError as exc:
        _warn("media not stored; will retry", exc, job)
        raise ApplicationError(str(exc), type=MEDIA_NOT_STORED, category=BENIGN) from exc
    for note in notes:
        _warn("media refused; the result keeps the provider URL", Exception(note), job)
    return StoredMediaOutcome(media, notes)
