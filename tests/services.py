"""Real processes for tests: gunicorn serving the app (more to come: Temporal, fakes, processor).

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


@contextmanager
def gunicorn(db_path: str, log_path: Path, workers: int = 4, env: dict | None = None):
    """The web process under gunicorn; yields its base URL."""
    port = free_port()
    environ = {**os.environ, "DATABASE_PATH": db_path, "PORT": str(port), **(env or {})}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(BIN / "gunicorn"), "--workers", str(workers), "--bind", f"127.0.0.1:{port}",
             "--graceful-timeout", "5", "app:create_app()"],
            cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz", process=process)
        yield url
    finally:
        stop(process)
