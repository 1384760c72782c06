"""Configuration shared by the three processes (docs/design.md §6).

`app.config.json` holds the defaults; `${VAR}` and `${VAR:-default}` in its
strings are substituted from the environment. The environment variables in
SETTINGS then override single values, twelve-factor style, so a Procfile line
needs no file edits. This module imports nothing of the database layer: the
processor and the worker load it too.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG_FILE = ROOT / "app.config.json"

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line for the operator."""


@dataclass(frozen=True)
class Setting:
    env: str
    path: str
    kind: type
    help: str


VIDEO = "integrations.fangzhouVideoGeneration"
IMAGE = "integrations.nanobanana2ImageGeneration"

SETTINGS = [
    Setting("PORT", "components.main.port", int, "port the web process listens on"),
    Setting("DATABASE_PATH", "components.main.databasePath", str, "SQLite database file"),
    Setting("MAIN_ENDPOINT", "components.main.endpoint", str,
            "base URL the processor and worker use to reach the web process"),
    Setting("INTERNAL_API_TOKEN", "components.asyncTask.internalApiToken", str,
            "Bearer token of the internal endpoints"),
    Setting("TEMPORAL_ADDRESS", "components.asyncTask.temporal.address", str, "Temporal frontend host:port"),
    Setting("TEMPORAL_UI_URL", "components.asyncTask.temporal.uiUrl", str,
            "Temporal Web UI, linked from the dashboard"),
    Setting("TEMPORAL_NAMESPACE", "components.asyncTask.temporal.namespace", str, "Temporal namespace"),
    Setting("POLL_INTERVAL_MS", "components.asyncTask.pullMode.pollIntervalMs", int,
            "how long an idle processor's long poll waits on the server for new work"),
    Setting("BATCH_SIZE", "components.asyncTask.pullMode.batchSize", int, "tasks claimed per request (1..100)"),
    Setting("MAX_IN_FLIGHT", "components.asyncTask.pullMode.maxInFlight", int,
            "workflow starts one processor keeps in flight at once"),
    Setting("MAX_ATTEMPTS", "components.asyncTask.pullMode.maxAttempts", int,
            "claims a task may use before it fails for good"),
    Setting("STUCK_TIMEOUT_SECONDS", "components.asyncTask.pullMode.stuckTimeoutSeconds", int,
            "age after which a queued claim may be rescued"),
    Setting("RECONCILE_ENABLED", "components.asyncTask.reconciler.enabled", bool,
            "whether the processor heals tasks whose workflow is gone"),
    Setting("RECONCILE_AFTER_SECONDS", "components.asyncTask.reconciler.afterSeconds", int,
            "age (since its last change) after which a dispatched task's workflow is looked at"),
    Setting("RECONCILE_INTERVAL_SECONDS", "components.asyncTask.reconciler.intervalSeconds", float,
            "how often the reconciler looks for such tasks"),
    Setting("RECONCILE_CALLS_PER_MINUTE", "components.asyncTask.reconciler.callsPerMinute", int,
            "most Temporal describe calls the reconciler makes per minute, per processor"),
    Setting("METRICS_TOKEN", "components.metrics.token", str,
            "if set, /metrics and the metrics ports need `Authorization: Bearer <token>`"),
    Setting("METRICS_HOST", "components.metrics.host", str, "address the processor's and worker's metrics bind"),
    Setting("PROCESSOR_METRICS_PORT", "components.metrics.processorPort", int,
            "the processor serves Prometheus metrics on this port (unset: none)"),
    Setting("WORKER_METRICS_PORT", "components.metrics.workerPort", int,
            "the worker serves Prometheus metrics on this port (unset: none)"),
    Setting("FANGZHOU_BASE_URL", f"{VIDEO}.baseUrl", str, "Volcengine Ark API base URL"),
    Setting("FANGZHOU_API_KEY", f"{VIDEO}.apiKey", str, "Volcengine Ark API key"),
    Setting("FANGZHOU_MODEL", f"{VIDEO}.model", str, "Ark video model id"),
    Setting("NANOBANANA_BASE_URL", f"{IMAGE}.baseUrl", str, "Nano Banana job API base URL"),
    Setting("NANOBANANA_API_KEY", f"{IMAGE}.apiKey", str, "Nano Banana API key"),
    Setting("NANOBANANA_MODEL", f"{IMAGE}.model", str, "Nano Banana model id"),
    Setting("FANGZHOU_TASK_QUEUE", f"{VIDEO}.taskQueue", str, "Temporal task queue of the video workflow"),
    Setting("NANOBANANA_TASK_QUEUE", f"{IMAGE}.taskQueue", str, "Temporal task queue of the image workflow"),
    Setting("FANGZHOU_POLL_INTERVAL_SECONDS", f"{VIDEO}.pollIntervalSeconds", float, "video job poll interval"),
    Setting("FANGZHOU_DEADLINE_SECONDS", f"{VIDEO}.deadlineSeconds", float, "give up on a video job after this long"),
    Setting("NANOBANANA_POLL_INTERVAL_SECONDS", f"{IMAGE}.pollIntervalSeconds", float, "image job poll interval"),
    Setting("NANOBANANA_DEADLINE_SECONDS", f"{IMAGE}.deadlineSeconds", float,
            "give up on an image job after this long"),
]
BY_ENV = {s.env: s for s in SETTINGS}
BY_PATH = {s.path: s for s in SETTINGS}


class Config:
    """The loaded configuration: a nested dict read by dotted paths."""

    def __init__(self, data: dict):
        self.data = data

    def get(self, path: str, default: Any = None) -> Any:
        node: Any = self.data
        for key in path.split("."):
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return default if node is None else node

    def require(self, path: str) -> Any:
        """The value at `path`, or a ConfigError naming the variable to set."""
        value = self.get(path)
        if value is None or value == "":
            setting = BY_PATH.get(path)
            hint = f"set {setting.env} ({path})" if setting else f"set {path} in app.config.json"
            raise ConfigError(f"missing required setting: {hint}")
        return value

    def section(self, path: str) -> dict:
        value = self.get(path, {})
        return value if isinstance(value, dict) else {}


def load_config(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    path: str | os.PathLike | None = None,
) -> Config:
    """Read the config file, substitute `${VAR}`, apply env then `overrides` (keyed by env name)."""
    environ = os.environ if environ is None else environ
    path = path or environ.get("APP_CONFIG") or DEFAULT_CONFIG_FILE
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    data = _substitute(raw, environ)
    for setting in SETTINGS:
        if environ.get(setting.env) not in (None, ""):
            _set(data, setting.path, _convert(setting, environ[setting.env]))
    for name, value in (overrides or {}).items():
        setting = BY_ENV.get(name)
        if setting is None:
            raise ConfigError(f"unknown setting {name!r}; known: {', '.join(BY_ENV)}")
        _set(data, setting.path, _convert(setting, value))
    config = Config(data)
    _validate(config)
    return config


def _substitute(node: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, environ) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, environ) for v in node]
    if isinstance(node, str) and "${" in node:
        missing = False

        def replace(match: re.Match) -> str:
            nonlocal missing
            value = environ.get(match.group(1))
            if value in (None, ""):
                if match.group(2) is None:
                    missing = True
                    return ""
                return match.group(2)
            return value

        result = _REFERENCE.sub(replace, node)
        return None if missing else result
    return node


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _convert(setting: Setting, value: Any) -> Any:
    if setting.kind is bool and not isinstance(value, bool):
        text = str(value).strip().lower()
        if text not in _TRUE + _FALSE:
            raise ConfigError(f"{setting.env} must be true or false, got {value!r}")
        return text in _TRUE
    if setting.kind in (int, float) and not isinstance(value, setting.kind):
        try:
            return setting.kind(str(value).strip())
        except ValueError:
            noun = "an integer" if setting.kind is int else "a number"
            raise ConfigError(f"{setting.env} must be {noun}, got {value!r}") from None
    return value


def _set(data: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


_BOUNDS = {
    "components.main.port": (1, 65535),
    # A processor's long poll asks the web process to wait this long; it serves at most 30 s.
    "components.asyncTask.pullMode.pollIntervalMs": (1, 30_000),
    "components.asyncTask.pullMode.batchSize": (1, 100),
    "components.asyncTask.pullMode.maxInFlight": (1, 1000),
    "components.asyncTask.reconciler.afterSeconds": (1, 86_400 * 7),
    "components.asyncTask.reconciler.callsPerMinute": (1, 100_000),
    "components.metrics.processorPort": (1, 65535),
    "components.metrics.workerPort": (1, 65535),
    "components.asyncTask.pullMode.maxAttempts": (1, 1000),
    "components.asyncTask.pullMode.stuckTimeoutSeconds": (1, 86_400 * 7),
}


def temporal_connection(config: Config) -> dict[str, Any]:
    """Keyword arguments for temporalio's `Client.connect`: the frontend address and the Temporal namespace."""
    return {"target_host": config.require("components.asyncTask.temporal.address"),
            "namespace": config.get("components.asyncTask.temporal.namespace", "default")}


def _validate(config: Config) -> None:
    for namespace in ("fangzhouVideoGeneration", "nanobanana2ImageGeneration"):
        for key, (low, high) in {"pollIntervalSeconds": (0.05, 3600), "deadlineSeconds": (1, 86_400 * 2)}.items():
            path = f"integrations.{namespace}.{key}"
            value = config.get(path)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not low <= value <= high):
                raise ConfigError(f"{BY_PATH[path].env} ({path}) must be a number from {low} to {high}, got {value!r}")
    interval = config.get("components.asyncTask.reconciler.intervalSeconds")
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, (int, float))
                                 or not 0.1 <= interval <= 3600):
        raise ConfigError(f"RECONCILE_INTERVAL_SECONDS (components.asyncTask.reconciler.intervalSeconds) must be a "
                          f"number from 0.1 to 3600, got {interval!r}")
    for path, (low, high) in _BOUNDS.items():
        value = config.get(path)
        if value is None:
            continue
        setting = BY_PATH[path]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(f"{setting.env} ({path}) must be an integer from {low} to {high}, got {value!r}")
