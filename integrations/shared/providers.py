"""Calling a provider over HTTP, with its failures sorted into two kinds.

    ProviderError
    ├── ProviderRejected    the request itself is wrong (400, 401, 403, 404, 422, a blocked
    │                       prompt): failing the task at once; retrying would not help
    └── ProviderTransient   429, 5xx, a timeout, a refused connection: worth retrying

requests' exceptions are translated here, at one boundary.
"""

from __future__ import annotations

from typing import Any

import requests

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


def json_body(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
