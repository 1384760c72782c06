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
    Setting("DATABASE_URL", "components.main.databaseUrl", str,
            "unset or sqlite:///path: SQLite (at DATABASE_PATH, or the path); postgresql://...: a PostgreSQL task "
            "store (psycopg 3 and its pool)"),
    Setting("DATABASE_DIRECT_URL", "components.main.databaseDirectUrl", str,
            "PostgreSQL only, when DATABASE_URL is a transaction pooler (PgBouncer in transaction mode): a "
            "direct connection for the work that needs a session of its own (LISTEN for the long polls' "
            "wake-ups, the periodic prune's advisory lock); DATABASE_URL's connections then make no session "
            "settings and prepare no statements; unset: DATABASE_URL is not a pooler"),
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
    Setting("CLIENT_API_KEYS", "components.auth.clientApiKeys", str,
            "comma-separated keys a client sends as `Authorization: Bearer <key>` to the user API"),
    Setting("DASHBOARD_USERNAME", "components.auth.dashboardUsername", str, "the dashboard's basic-auth user"),
    Setting("DASHBOARD_PASSWORD", "components.auth.dashboardPassword", str, "the dashboard's basic-auth password"),
    Setting("ALLOW_UNAUTHENTICATED", "components.auth.allowUnauthenticated", bool,
            "leave the user API or the dashboard open when its credentials are unset (logged at start)"),
    Setting("RETRY_BASE_SECONDS", "components.asyncTask.pullMode.retryBaseSeconds", float,
            "a retryable failure waits about this long before its second attempt, doubling for each next one"),
    Setting("RETRY_MAX_SECONDS", "components.asyncTask.pullMode.retryMaxSeconds", float,
            "the longest wait between two attempts"),
    Setting("FANGZHOU_MAX_ACTIVE", f"{VIDEO}.maxActiveTasks", int, "most video tasks queued + processing at once"),
    Setting("NANOBANANA_MAX_ACTIVE", f"{IMAGE}.maxActiveTasks", int, "most image tasks queued + processing at once"),
    Setting("PROBE_SECONDS", "components.asyncTask.pullMode.probeSeconds", int,
            "a blocked integration (credits, quota, account) lets one task through this often to see if it is over"),
    Setting("FANGZHOU_CALLS_PER_SECOND", f"{VIDEO}.callsPerSecond", float,
            "most Ark API calls per second, per worker process"),
    Setting("NANOBANANA_CALLS_PER_SECOND", f"{IMAGE}.callsPerSecond", float,
            "most Nano Banana API calls per second, per worker process"),
    Setting("RECONCILE_ENABLED", "components.asyncTask.reconciler.enabled", bool,
            "whether the processor heals tasks whose workflow is gone"),
    Setting("RECONCILE_AFTER_SECONDS", "components.asyncTask.reconciler.afterSeconds", int,
            "age (since its last change) after which a dispatched task's workflow is looked at"),
    Setting("RECONCILE_INTERVAL_SECONDS", "components.asyncTask.reconciler.intervalSeconds", float,
            "how often the reconciler looks for such tasks"),
    Setting("RECONCILE_CALLS_PER_MINUTE", "components.asyncTask.reconciler.callsPerMinute", int,
            "most Temporal describe calls the reconciler makes per minute, per processor"),
    Setting("RETENTION_DAYS", "components.retention.days", float,
            "if set, the web process deletes finished tasks (and their events and media) older than this many days"),
    Setting("RETENTION_INTERVAL_SECONDS", "components.retention.intervalSeconds", float,
            "how often the web process's periodic prune runs (with RETENTION_DAYS)"),
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
    Setting("MEDIA_DIR", "components.media.dir", str,
            "folder where generated media are kept (default: media/ beside the database); the worker writes, "
            "the web process serves"),
    Setting("MEDIA_MAX_BYTES", "components.media.maxBytes", int,
            "largest media file copied from a provider; a bigger one is refused and noted on the task"),
    Setting("MEDIA_S3_BUCKET", "components.media.s3.bucket", str,
            "keep media in this S3-compatible bucket instead of MEDIA_DIR (credentials: the AWS_* variables)"),
    Setting("MEDIA_S3_ENDPOINT_URL", "components.media.s3.endpointUrl", str,
            "the S3-compatible service's URL (unset: AWS S3)"),
    Setting("MEDIA_S3_PREFIX", "components.media.s3.prefix", str, "key prefix of the media objects in the bucket"),
    Setting("MEDIA_GIVE_UP_SECONDS", "components.media.giveUpSeconds", float,
            "copying a result's media is retried this long (the provider links' life, 24 h); then the task "
            "completes with the provider URLs only"),
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
    f"{VIDEO}.maxActiveTasks": (1, 100_000),
    f"{IMAGE}.maxActiveTasks": (1, 100_000),
    "components.asyncTask.reconciler.afterSeconds": (1, 86_400 * 7),
    "components.asyncTask.reconciler.callsPerMinute": (1, 100_000),
    "components.metrics.processorPort": (1, 65535),
    "components.metrics.workerPort": (1, 65535),
    "components.asyncTask.pullMode.maxAttempts": (1, 1000),
    "components.asyncTask.pullMode.stuckTimeoutSeconds": (1, 86_400 * 7),
    "components.asyncTask.pullMode.probeSeconds": (1, 3600),
    "components.media.maxBytes": (1, 64 * 1024**3),
}


TEMPORAL_ADDRESS_PATH = "components.asyncTask.temporal.address"
TEMPORAL_NAMESPACE_PATH = "components.asyncTask.temporal.namespace"
# Each TLS file of a Temporal client profile: what it is, its variable, its TOML key (under [profile.NAME.tls]).
_TEMPORAL_TLS_FILES = {
    "server_root_ca_cert": ("server CA certificate", "TEMPORAL_TLS_SERVER_CA_CERT_PATH", "server_ca_cert_path"),
    "client_cert": ("client certificate", "TEMPORAL_TLS_CLIENT_CERT_PATH", "client_cert_path"),
    "client_private_key": ("client key", "TEMPORAL_TLS_CLIENT_KEY_PATH", "client_key_path"),
}


MIN_SECRET_CHARS = 16


def require_secret(config: Config, path: str) -> str:
    """A required key, password or token: present, and long enough not to be guessed."""
    value = str(config.require(path))
    check_secret(BY_PATH[path].env if path in BY_PATH else path, value)
    return value


def check_secret(name: str, value: str) -> None:
    if len(value) < MIN_SECRET_CHARS or value != value.strip() or any(c.isspace() for c in value):
        raise ConfigError(f"{name} must be at least {MIN_SECRET_CHARS} characters with no spaces (got "
                          f"{len(value)}); make one with: python -c 'import secrets; print(secrets.token_urlsafe())'")


def temporal_connection(config: Config, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for temporalio's `Client.connect`, from Temporal's own client configuration.

    temporalio.envconfig loads a profile (TEMPORAL_PROFILE, else "default") from the TOML file
    TEMPORAL_CONFIG_FILE (else ~/.config/temporalio/temporal.toml, if there is one), then applies the
    TEMPORAL_* variables over it: address, namespace, API key, TLS and mTLS files, server name, gRPC
    metadata. Where neither sets the address or the namespace, ours are used (TEMPORAL_ADDRESS and
    TEMPORAL_NAMESPACE are our settings too, so a `load_config` override of them wins over the variable).
    Every mistake is a ConfigError at start: a missing config file, malformed TOML or unknown key, an
    unknown profile, an unreadable or non-PEM certificate, a client certificate without its key.
    """
    import dataclasses

    from temporalio.envconfig import ClientConfigProfile  # here, not at import: the web process loads settings

    environ = os.environ if environ is None else environ
    # Empty means unset, as for our settings (envconfig would take TEMPORAL_TLS="" as "TLS on");
    # an empty TEMPORAL_GRPC_META_<NAME> keeps its meaning: drop that header.
    env = {k: v for k, v in environ.items()
           if k.startswith("TEMPORAL_") and (v != "" or k.startswith("TEMPORAL_GRPC_META_"))}
    for name in ("TEMPORAL_TLS", "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION"):
        if name in env and env[name].lower() not in ("true", "1", "false", "0"):  # envconfig ignores other values
            raise ConfigError(f"{name} must be true or false, got {env[name]!r}")
    if env.get("TEMPORAL_TLS_DISABLE_HOST_VERIFICATION", "").lower() in ("true", "1"):
        raise ConfigError("TEMPORAL_TLS_DISABLE_HOST_VERIFICATION is not supported by the Temporal Python SDK; "
                          "set TEMPORAL_TLS_SERVER_NAME to a name the server's certificate carries")
    config_file = env.get("TEMPORAL_CONFIG_FILE")
    if config_file and (not os.path.exists(config_file) or os.path.isdir(config_file)):
        raise ConfigError(f"TEMPORAL_CONFIG_FILE {config_file} does not exist")  # envconfig would ignore it
    try:
        profile = ClientConfigProfile.load(config_file_strict=True, override_env_vars=env)
    except Exception as exc:  # temporalio's ConfigError: malformed TOML, unknown key or profile, path and data
        source = f"TEMPORAL_CONFIG_FILE {config_file}" if config_file else "Temporal client configuration"
        raise ConfigError(f"{source}: {_one_line(exc)}") from None

    tls = profile.tls
    if tls is not None and not tls.disabled:
        files = {}
        for field, (what, variable, key) in _TEMPORAL_TLS_FILES.items():
            source = getattr(tls, field)
            where = f"{source} ({variable} or tls.{key})" if isinstance(source, Path) else f"(the {what} data)"
            if isinstance(source, Path):
                try:
                    source = source.read_bytes()
                except OSError as exc:
                    raise ConfigError(f"cannot read the TLS {what} {where}: {exc.strerror}") from None
            if source is not None and b"-----BEGIN " not in source:
                raise ConfigError(f"the TLS {what} {where} is not PEM (no -----BEGIN line)")
            files[field] = source
        if (files["client_cert"] is None) != (files["client_private_key"] is None):
            raise ConfigError("mTLS needs both the client certificate and its key: set TEMPORAL_TLS_CLIENT_CERT_PATH "
                              "and TEMPORAL_TLS_CLIENT_KEY_PATH (or tls.client_cert_path and tls.client_key_path)")
        tls = dataclasses.replace(tls, **files)  # read once, here: connecting needs no file

    address = (config.require(TEMPORAL_ADDRESS_PATH) if "TEMPORAL_ADDRESS" in env
               else profile.address or config.require(TEMPORAL_ADDRESS_PATH))
    namespace = (config.get(TEMPORAL_NAMESPACE_PATH, "default") if "TEMPORAL_NAMESPACE" in env
                 else profile.namespace or config.get(TEMPORAL_NAMESPACE_PATH, "default"))
    profile = dataclasses.replace(profile, address=address, namespace=namespace, tls=tls)
    return dict(profile.to_client_connect_config())


def _one_line(exc: BaseException) -> str:
    """A multi-line error (a TOML parse error quotes the line) as one line, without the quoted source."""
    lines = [line.strip() for line in str(exc).splitlines()]
    return ": ".join(line for line in lines if line and not re.match(r"^\d*\s*\|", line)) or type(exc).__name__


def describe_temporal_error(exc: BaseException) -> str:
    """One line (under 200 characters when it is a TLS problem) saying why reaching Temporal failed.

    The Rust core reports TLS failures as Rust debug text (`InvalidCertificate(UnknownIssuer)`):
    the common cases are named plainly, with what to set. Anything else: its type and text, on one line.
    """
    text = " ".join(str(exc).split()).removeprefix("Failed client connect: ")
    mtls = "set TEMPORAL_TLS_CLIENT_CERT_PATH and _KEY_PATH"
    if "InvalidCertificate(UnknownIssuer)" in text or "InvalidCertificate(BadSignature)" in text:
        return ("TLS: the server's certificate is not signed by a trusted CA; set TEMPORAL_TLS_SERVER_CA_CERT_PATH "
                "to the CA that signed it (UnknownIssuer)")
    if "NotValidForName" in text:
        expected = re.search(r'expected: \w+\("?([^")]*)"?\)', text)
        presented = re.findall(r'(?:DnsName|IpAddress)\(\\?"?([^"\\)]*)', text.split("presented:", 1)[-1])
        return (f"TLS: the server's certificate is for {', '.join(presented) or 'other names'}, not "
                f"{expected.group(1) if expected else 'this host'}; connect by one of those names or set "
                f"TEMPORAL_TLS_SERVER_NAME (NotValidForName)")
    for token, what in (("Expired", "has expired"), ("NotValidYet", "is not valid yet")):
        if f"InvalidCertificate({token}" in text:
            return f"TLS: the server's certificate {what} ({token})"
    alert = re.search(r"(?:AlertReceived\(|received fatal alert: )(\w+)", text)
    if alert and alert.group(1) in ("CertificateRequired", "HandshakeFailure", "BadCertificate", "UnknownCA",
                                    "CertificateUnknown", "AccessDenied", "DecryptError"):
        return (f"TLS: the server refused the handshake ({alert.group(1)} alert): it wants a client certificate "
                f"it trusts; {mtls}")
    if "status: 400 Bad Request" in text and "text/html" in text:
        server = re.search(r'"server": "([^"]+)"', text)
        return (f"TLS: the server{f' ({server.group(1)})' if server else ''} answered HTTP 400, not gRPC: most often "
                f"a proxy refusing a missing or untrusted client certificate; {mtls}")
    if "InvalidMessage(InvalidContentType)" in text:
        return ("TLS: the server at this address does not speak TLS; set TEMPORAL_TLS=false (an API key turns TLS "
                "on) or check the address (InvalidContentType)")
    if "FRAME_SIZE_ERROR" in text:
        return ("the server at this address speaks TLS and this client did not; set TEMPORAL_TLS=true or "
                "TEMPORAL_TLS_SERVER_CA_CERT_PATH (FRAME_SIZE_ERROR)")
    if "ConnectionRefused" in text:
        return "connection refused: nothing listens at that address (Temporal is down, or TEMPORAL_ADDRESS is wrong)"
    status = re.search(r'Status \{ code: (\w+), message: "([^"]*)"', text)
    if status and status.group(1) in ("Unauthenticated", "PermissionDenied"):
        return f"Temporal refused the credentials ({status.group(1)}: {status.group(2)}); check TEMPORAL_API_KEY"
    return f"{type(exc).__name__}: {text}"


def _validate(config: Config) -> None:
    for namespace in ("fangzhouVideoGeneration", "nanobanana2ImageGeneration"):
        for key, (low, high) in {"pollIntervalSeconds": (0.05, 3600), "deadlineSeconds": (1, 86_400 * 2),
                                 "callsPerSecond": (0.01, 10_000)}.items():
            path = f"integrations.{namespace}.{key}"
            value = config.get(path)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not low <= value <= high):
                raise ConfigError(f"{BY_PATH[path].env} ({path}) must be a number from {low} to {high}, got {value!r}")
    for path in ("components.asyncTask.pullMode.retryBaseSeconds", "components.asyncTask.pullMode.retryMaxSeconds"):
        value = config.get(path)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value <= 86_400 * 7):
            raise ConfigError(f"{BY_PATH[path].env} ({path}) must be a number of seconds from 0 to 604800, "
                              f"got {value!r}")
    give_up = config.get("components.media.giveUpSeconds")
    if give_up is not None and (isinstance(give_up, bool) or not isinstance(give_up, (int, float))
                                or not 1 <= give_up <= 86_400 * 7):
        raise ConfigError(f"MEDIA_GIVE_UP_SECONDS (components.media.giveUpSeconds) must be a number of seconds from "
                          f"1 to 604800, got {give_up!r}")
    interval = config.get("components.asyncTask.reconciler.intervalSeconds")
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, (int, float))
                                 or not 0.1 <= interval <= 3600):
        raise ConfigError(f"RECONCILE_INTERVAL_SECONDS (components.asyncTask.reconciler.intervalSeconds) must be a "
                          f"number from 0.1 to 3600, got {interval!r}")
    _validate_retention(config)
    _validate_database_urls(config)
    for path, (low, high) in _BOUNDS.items():
        value = config.get(path)
        if value is None:
            continue
        setting = BY_PATH[path]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(f"{setting.env} ({path}) must be an integer from {low} to {high}, got {value!r}")


def names_postgres(value: Any) -> bool:
    """Whether a database setting (DATABASE_URL, DATABASE_DIRECT_URL, or an SQLite path) names PostgreSQL."""
    return isinstance(value, str) and value.startswith(("postgresql://", "postgres://"))


def _validate_database_urls(config: Config) -> None:
    """DATABASE_URL is SQLite or PostgreSQL; DATABASE_DIRECT_URL, if set, is PostgreSQL beside a PostgreSQL one."""
    url = config.get("components.main.databaseUrl")
    if url not in (None, "") and not (names_postgres(url) or (isinstance(url, str) and url.startswith("sqlite:///"))):
        raise ConfigError("DATABASE_URL (components.main.databaseUrl) must be sqlite:///<path> or "
                          "postgresql://...; got a value of another scheme")
    direct = config.get("components.main.databaseDirectUrl")
    if direct in (None, ""):
        return
    if not names_postgres(direct):
        raise ConfigError("DATABASE_DIRECT_URL (components.main.databaseDirectUrl) must be postgresql://...; "
                          "got a value of another scheme")
    if not names_postgres(url):
        raise ConfigError("DATABASE_DIRECT_URL (components.main.databaseDirectUrl) is for a PostgreSQL "
                          "DATABASE_URL; DATABASE_URL is not one")


def _validate_retention(config: Config) -> None:
    """RETENTION_DAYS: unset (off) or a number of days from 0; the interval from 0.1 s to a day."""
    for path, low, high in (("components.retention.days", 0, 36_500),
                            ("components.retention.intervalSeconds", 0.1, 86_400)):
        value = config.get(path)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not low <= value <= high):
            raise ConfigError(f"{BY_PATH[path].env} ({path}) must be a number from {low} to {high}, got {value!r}")
