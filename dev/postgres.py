"""A throwaway PostgreSQL cluster for tests and benchmarks: started here, stopped by pid.

    python -m dev.postgres      start one, print its URL, stop it on Ctrl-C

initdb refuses to run as root, so as root the server runs as the `postgres` user (Debian's package
makes it) in a temporary directory that user owns. It listens on 127.0.0.1 only, at a free port,
with its unix socket in that directory; the superuser has a random password (scram-sha-256), so
another local user cannot walk in. Durability is off (fsync, synchronous_commit, full_page_writes):
a crash loses a throwaway cluster, which is fine for tests and never for production.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dev.stack import free_port

SERVER_USER = "postgres"
START_SECONDS = 30


def find_bin() -> Path | None:
    """The folder of initdb/pg_ctl: $PG_BIN, else the newest /usr/lib/postgresql/*/bin (15 preferred)."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: (("/15/" not in p), p))
    return Path(found[0]).parent if found else None


@dataclass
class Cluster:
    """A running cluster: its folder, port, superuser URL and postmaster pid."""

    folder: Path
    port: int
    password: str
    pid: int
    bin: Path
    as_user: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://{SERVER_USER}:{self.password}@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str = "postgres", schema: str | None = None) -> str:
        """A URL of `database`; with `schema`, connections look there first (search_path)."""
        options = f"?options=-csearch_path%3D{schema}" if schema else ""
        return f"postgresql://{SERVER_USER}:{self.password}@127.0.0.1:{self.port}/{database}{options}"

    def stop(self) -> None:
        """pg_ctl stop (fast), then SIGKILL of the postmaster's pid if it is still there; the folder goes."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast",
                            "-w", "-t", "20", "stop"], capture_output=True, timeout=30, check=False)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, 0)
            os.kill(self.pid, signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)


def start(bin_dir: Path | None = None) -> Cluster:
    """initdb into a fresh temporary folder, then pg_ctl start; raises RuntimeError with the log if it fails."""
    bin_dir = bin_dir or find_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        raise RuntimeError("PostgreSQL binaries not found (set PG_BIN or install postgresql-15)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="pg-test-"))
    if os.geteuid() == 0:  # initdb: "cannot be run as root"
        as_user = ["runuser", "-u", SERVER_USER, "--"]
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    os.chmod(folder, 0o700)
    password = secrets.token_hex(16)
    pwfile = folder / "pw"
    pwfile.write_text(password + "\n")
    if as_user:
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    data = folder / "data"
    run = lambda *args: subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120, check=False)
    done = run(str(bin_dir / "initdb"), "-D", str(data), "-U", SERVER_USER, "--pwfile", str(pwfile),
               "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--no-sync", "-E", "UTF8",
               "--locale=C")
    pwfile.unlink()
    if done.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
    for _ in range(3):  # a free port can be taken by someone else before the server binds it
        port = free_port()
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        done = run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", options,
                   "-w", "-t", str(START_SECONDS), "start")
        if done.returncode == 0:
            pid = int((data / "postmaster.pid").read_text().split()[0])
            return Cluster(folder, port, password, pid, bin_dir, as_user)
    log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
    shutil.rmtree(folder, ignore_errors=True)
    raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()}\n{log[-2000:]}")


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    """A cluster for the block; also stopped at interpreter exit if the block is never left."""
    running = start()
    atexit.register(running.stop)
    try:
        yield running
    finally:
        running.stop()
        atexit.unregister(running.stop)


if __name__ == "__main__":
    with cluster() as pg:
        print(pg.url, flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            sys.exit(0)
