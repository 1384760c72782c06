"""Calling a provider over HTTP, with its failures sorted into two kinds.

    ProviderError
    ├── ProviderRejected    the request itself is wrong (400, 401, 403, 404, 422, a blocked
    │                       prompt): failing the task at once; retrying would not help
    └── ProviderTransient   429, 5xx, a timeout, a refused connection: worth retrying

requests' exceptions are translated here, at one boundary. Error messages are for
operators; the provider's own words in them are marked for users only where they
are about the request (integrations/shared/public_errors.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from integrations.shared.public_errors import provider_says

TIMEOUT = (3.05, 10)  # (connect, read) seconds on every provider call; async job APIs answer fast
TRANSIENT_STATUS = {408, 409, 425, 429}


class ProviderError(Exception):
    """A provider call failed."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


class ProviderRejected(ProviderError):
    """The provider refused the request; the same request would be refused again."""


class ProviderTransient(ProviderError):
    """A passing failure: rate limit, server error, timeout or network."""


def call(session: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
    """Send one request; raise ProviderTransient for network trouble, return the response otherwise."""
    kwargs.setdefault("timeout", TIMEOUT)
    try:
        return session.request(method, url, **kwargs)
    except requests.Timeout as exc:
        raise ProviderTransient(f"{method} {url} timed out: {exc}") from exc
    except requests.RequestException as exc:
        raise ProviderTransient(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc


def classify(status: int, message: str, code: str | None = None) -> ProviderError:
    """The error kind for an HTTP (or body) status that is not a success."""
    if status in TRANSIENT_STATUS or status >= 500:
        return ProviderTransient(message, status, code)
    return ProviderRejected(message, status, code)


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
    """One look at a provider's job: still running (`finished` False), or how it ended."""

    status: str
    finished: bool = False
    succeeded: bool = False
    result: dict[str, Any] | None = None
    error: str | None = None


class JobApi:
    """A provider's asynchronous job API: create a job, look at it. One subclass per provider."""

    job_label = "job"  # how messages name one of its jobs
    build_body: Callable[[str, dict[str, Any]], dict[str, Any]]  # (model, our requestParams) -> its request
    status_field = "status"  # where a job's record holds its status
    final_statuses: frozenset[str] = frozenset()

    def __init__(self, base_url: str, api_key: str, session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def create_job(self, model: str, params: dict[str, Any]) -> str:
        """Create a job for our stored requestParams; return its id (the external id)."""
        return self.create_task(self.build_body(model, params))

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

    def get_record(self, external_id: str) -> dict[str, Any]:
        """The provider's record of the job."""
        raise NotImplementedError

    def ended(self, external_id: str, status: str, record: dict[str, Any]) -> JobState:
        """How a finished job ended: its result, or the provider's message."""
        raise NotImplementedError
