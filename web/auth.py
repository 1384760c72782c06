"""Who may call what: client keys for the user API, a login for the dashboard, the internal token.

Everything that reads or spends is closed unless an operator opens it on
purpose: the web process refuses to start without CLIENT_API_KEYS and
DASHBOARD_PASSWORD, unless ALLOW_UNAUTHENTICATED opens what is unset (logged
at start). Every secret is at least 16 characters and compared in constant
time; none is ever logged. /healthz and /metrics are not guarded here
(/metrics has its own METRICS_TOKEN).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from dataclasses import dataclass

from flask import current_app, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

from settings import Config, ConfigError, check_secret, require_secret

log = logging.getLogger("web.auth")


@dataclass(frozen=True)
class Credentials:
    """The web process's secrets, checked once at start. None: that part is open (ALLOW_UNAUTHENTICATED)."""

    internal_token: str
    client_keys: tuple[str, ...] | None
    dashboard: tuple[str, str] | None

    @classmethod
    def from_config(cls, config: Config) -> Credentials:
        token = require_secret(config, "components.asyncTask.internalApiToken")
        section = config.section("components.auth")
        open_ok = bool(section.get("allowUnauthenticated", False))
        keys = tuple(k.strip() for k in str(section.get("clientApiKeys") or "").split(",") if k.strip())
        for key in keys:
            check_secret("each of CLIENT_API_KEYS", key)
        password = section.get("dashboardPassword")
        if password:
            check_secret("DASHBOARD_PASSWORD", str(password))
        user = str(section.get("dashboardUsername") or "admin")
        if not keys and not open_ok:
            raise ConfigError("missing required setting: set CLIENT_API_KEYS (comma-separated keys of at least 16 "
                              "characters), or ALLOW_UNAUTHENTICATED=1 to leave the user API open")
        if not password and not open_ok:
            raise ConfigError("missing required setting: set DASHBOARD_PASSWORD (at least 16 characters), or "
                              "ALLOW_UNAUTHENTICATED=1 to leave the dashboard open")
        return cls(token, keys or None, (user, str(password)) if password else None)

    def warn_if_open(self) -> None:
        if self.client_keys is None:
            log.warning("ALLOW_UNAUTHENTICATED: the user API is open to anyone who reaches this port")
        if self.dashboard is None:
            log.warning("ALLOW_UNAUTHENTICATED: the dashboard is open to anyone who reaches this port")


def credentials() -> Credentials:
    return current_app.extensions["credentials"]


def same(given: str, expected: str) -> bool:
    """Constant-time equality of two secrets."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def bearer() -> str:
    header = request.headers.get("Authorization", "")
    return header[7:] if header[:7].lower() == "bearer " else ""


def require_client_key() -> None:
    """401 unless the request carries one of CLIENT_API_KEYS as a Bearer token."""
    keys = credentials().client_keys
    if keys is None:
        return
    given = bearer()
    if not any([same(given, key) for key in keys]):  # a list: every key is compared, whichever matches
        raise Unauthorized("Missing or wrong client API key (Authorization: Bearer <key>)",
                           www_authenticate=WWWAuthenticate("bearer"))


def require_internal_token() -> None:
    """401 unless the request carries `Authorization: Bearer <INTERNAL_API_TOKEN>`."""
    if not same(bearer(), credentials().internal_token):
        raise Unauthorized("Missing or wrong internal API token", www_authenticate=WWWAuthenticate("bearer"))


def require_dashboard_login() -> None:
    """401 (the browser asks for a login) unless HTTP basic auth names the dashboard's user and password."""
    login = credentials().dashboard
    if login is None:
        return
    header = request.headers.get("Authorization", "")
    try:
        decoded = base64.b64decode(header[6:], validate=True).decode() if header[:6].lower() == "basic " else ""
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    user, _, password = decoded.partition(":")
    if not (same(user, login[0]) & same(password, login[1])):
        raise Unauthorized("Log in to see the dashboard",
                           www_authenticate=WWWAuthenticate("basic", {"realm": "dashboard", "charset": "UTF-8"}))
