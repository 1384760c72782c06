"""Calling a provider over HTTP, with its failures sorted into four kinds.

    ProviderError
    ├── ProviderRejected    the request itself is wrong (a bad parameter, a blocked prompt, an
    │                       unknown job): the task fails for good; retrying would not help
    ├── ProviderTransient   429 rate limits, 5xx, a timeout, a refused connection, a closed-for-now
    │                       endpoint, maintenance: worth retrying (after `retry_after` seconds, if
    │                       the provider sent Retry-After)
    ├── ProviderBlocked     the integration cannot work now for account-level reasons (credits,
    │                       quota, overdue account, key refused, model not open or paused, feature
    │                       disabled): every task would get the same answer, so stop claiming and
    │                       probe later; no task is at fault
    └── ProviderJobFailed   the provider ran the job and it failed (kie's body code 501 where no
                            `state` says otherwise)

Each client sorts its provider's answers (HTTP status and the provider's own code) with its own
`sort_error`; `classify` builds the exception. The whole table, with sources: docs/provider-errors.md.
requests' exceptions are translated here, at one boundary. Error messages are for operators; the
provider's own words in them are marked for users only where they are about the request
(integrations/shared/public_errors.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from integrations.shared.public_errors import provider_says

# HTTP timeouts, (connect, read) seconds. Neither provider documents an idempotency key [S1][S2][S6], so a
# create whose answer is late must not be given up and sent again: its read timeout is long. A connect timeout
# means nothing was sent, so retrying one is safe, and 10 s is ample for a TCP and TLS handshake.
CONNECT_SECONDS = 10.0
# Status queries and cancels: idempotent, a retry costs nothing, so a stuck answer is dropped after 30 s.
LOOK_TIMEOUT = (CONNECT_SECONDS, 30.0)
# A create, by default and for kie.ai: kie documents no figure; 120 s is chosen (its creates answer in well under
# a second; the job runs afterwards).
CREATE_TIMEOUT = (CONNECT_SECONDS, 120.0)
# Ark's create: 600 s read, the official SDK's default (volcengine-python-sdk `_constants.py` [S1]).
ARK_CREATE_TIMEOUT = (CONNECT_SECONDS, 600.0)
CREATE_TIMEOUTS = (CREATE_TIMEOUT, ARK_CREATE_TIMEOUT)  # every client's create timeout is one of these
# The longest a create call can take (connect + read): the create activity's timeout must exceed it.
LONGEST_CREATE_SECONDS = max(connect + read for connect, read in CREATE_TIMEOUTS)
LOOK_SECONDS = sum(LOOK_TIMEOUT)  # the longest one status query can take

TRANSIENT_STATUS = frozenset({408, 409, 425, 429})  # and every status >= 500
BLOCKED_STATUS = frozenset({401, 402, 403})  # the key, the money, the account: the same answer for every task
MAX_RETRY_AFTER = 3600.0  # seconds; a Retry-After beyond it is cut to it


class ProviderError(Exception):
    """A provider call failed."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


class ProviderRejected(ProviderError):
    """The provider refused the request; the same request would be refused again."""


class ProviderTransient(ProviderError):
    """A passing failure: rate limit, server error, timeout or network. `retry_after`: the seconds the provider
    asked us to wait (its Retry-After header), or None. `sent`: the request went out and its answer was lost
    (a read timeout, a connection dropped mid-answer), so a create may have made a job."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None, sent: bool = False):
        super().__init__(message, status, code)
        self.retry_after = retry_after
        self.sent = sent  # the request reached the provider and no answer came back: it may have acted on it


class ProviderBlocked(ProviderError):
    """The integration cannot work now (credits, quota, account, key, model, feature): every task would get the
    same answer, so the caller stops claiming for it and probes later instead of failing tasks."""


class ProviderJobFailed(ProviderError):
    """The provider ran the job and it failed (its answer carried no job state to read instead)."""


def call(session: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
    """Send one request; raise ProviderTransient for network trouble, return the response otherwise.

    Without a `timeout`, LOOK_TIMEOUT: a create passes its client's `create_timeout`.
    """
    kwargs.setdefault("timeout", LOOK_TIMEOUT)
    try:
        return session.request(method, url, **kwargs)
    except requests.ConnectTimeout as exc:
        raise ProviderTransient(f"{method} {url} timed out connecting: {exc}") from exc
    except requests.Timeout as exc:  # the request was sent: the provider may have acted on it
        raise ProviderTransient(f"{method} {url} timed out: {exc}", sent=True) from exc
    except requests.RequestException as exc:
        raise ProviderTransient(f"{method} {url} failed: {type(exc).__name__}: {exc}",
                                sent=not _never_connected(exc)) from exc


def _never_connected(exc: requests.RequestException) -> bool:
    """The connection was never made (refused, no such host, TLS failed): nothing reached the provider."""
    text = str(exc)
    return isinstance(exc, requests.exceptions.SSLError) or any(
        sign in text for sign in ("Failed to establish a new connection", "NameResolutionError",
                                  "Name or service not known", "Connection refused"))


def error_kind(status: int) -> type[ProviderError]:
    """The kind a status means when the provider's own code says nothing more."""
    if status in BLOCKED_STATUS:
        return ProviderBlocked
    if status in TRANSIENT_STATUS or status >= 500:
        return ProviderTransient
    return ProviderRejected


def classify(status: int, message: str, code: str | None = None, *, kind: type[ProviderError] | None = None,
             retry_after: float | None = None) -> ProviderError:
    """The error for an HTTP (or body) status that is not a success: of `kind` (a client's sort_error decides),
    or what the status alone means. `retry_after` goes to a transient error only."""
    kind = kind or error_kind(status)
    if issubclass(kind, ProviderTransient):
        return kind(message, status, code, retry_after=retry_after)
    return kind(message, status, code)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header in seconds from now: delta-seconds or an HTTP-date, clamped to [0, MAX_RETRY_AFTER];
    None if absent or unreadable (garbage is ignored, not trusted)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": UTC, as HTTP-dates always are
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def retry_after(response: requests.Response) -> float | None:
    """The seconds an error answer's Retry-After header asks for, or None."""
    return parse_retry_after(response.headers.get("Retry-After"))


def error_message(label: str, status: int, code: str | None, said: str | None, raw: str = "") -> str:
    """`{label} {status} {code}` and the provider's message: marked as its own words for users when the
    status says the request itself was refused (public_errors.provider_says), plain otherwise (or the raw
    body, when it gave no message), for operators only."""
    head = f"{label} {status}{f' {code}' if code else ''}"
    return (head + (provider_says(said, status) or f": {said or raw[:200]}")).strip()


def json_body(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@dataclass(frozen=True)
class JobState:
    """One look at a provider's job: still running (`finished` False), or how it ended.

    `retryable`: whether running the task again could end otherwise; False for a job failed by content
    moderation, which the same prompt would meet again.
    """

    status: str
    finished: bool = False
    succeeded: bool = False
    result: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = True


class JobApi:
    """A provider's asynchronous job API: create a job, look at it, cancel it. One subclass per provider."""

    job_label = "job"  # how messages name one of its jobs
    # (model, our requestParams, deadline_seconds=...) -> its request
    build_body: Callable[..., dict[str, Any]]
    status_field = "status"  # where a job's record holds its status
    final_statuses: frozenset[str] = frozenset()
    create_timeout: tuple[float, float] = CREATE_TIMEOUT  # (connect, read) of a create: one of CREATE_TIMEOUTS

    def __init__(self, base_url: str, api_key: str, session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def create_job(self, model: str, params: dict[str, Any], deadline_seconds: float | None = None) -> str:
        """Create a job for our stored requestParams; return its id (the external id).

        `deadline_seconds`: how long we will wait for it, for a provider that can expire a job by itself.
        """
        return self.create_task(self.build_body(model, params, deadline_seconds=deadline_seconds))

    def create_task(self, body: dict[str, Any]) -> str:
        """Send the provider's create request; return the job id it answers."""
        raise NotImplementedError

    def look(self, external_id: str) -> JobState:
        """The job's state now."""
        record = self.get_record(external_id)
        status = record.get(self.status_field)
        if status not in self.final_statuses:
            return JobState(str(status))
        return self.ended(external_id, status, record)

    def cancel(self, external_id: str) -> bool:
        """Stop the job if the provider can; True only if it did. By default there is no way to."""
        return False

    def get_record(self, external_id: str) -> dict[str, Any]:
        """The provider's record of the job."""
        raise NotImplementedError

    def ended(self, external_id: str, status: str, record: dict[str, Any]) -> JobState:
        """How a finished job ended: its result, or the provider's message."""
        raise NotImplementedError
