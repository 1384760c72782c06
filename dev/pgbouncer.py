"""A throwaway PgBouncer in front of a PostgreSQL server, for tests: started here, stopped by pid.

Debian's `pgbouncer` (`.ci/run` installs it). It refuses to run as root, so as root it runs as
the `postgres` user (its own process, stopped by its pid), from a temporary folder that user
owns. It listens on 127.0.0.1 only, at a free port, without a unix socket, and lets in one role
with its password (SCRAM). Its `pool_mode` is the caller's; `pool_size` server connections per
database and role.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from dev.stack import free_port, wait_for_listening

RUN_AS = "postgres"
START_SECONDS = 10


def find() -> str | None:
    return shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)


@contextlib.contextmanager
def bouncer(host: str, port: int, database: str, user: str, password: str, pool_mode: str = "transaction",
            pool_size: int = 1) -> Iterator[str]:
    """PgBouncer for `database` on host:port, as `user`; yields the URL to reach the database through it."""
    binary = find()
    if binary is None:
        raise RuntimeError("pgbouncer not found (apt-get install pgbouncer; .ci/run does)")
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    as_user: dict = {}
    if os.geteuid() == 0:  # "PgBouncer should not run as root"
        entry = pwd.getpwnam(RUN_AS)
        as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    os.chmod(folder, 0o700)
    listen = free_port()
    (folder / "users.txt").write_text(f'"{user}" "{password}"\n')
    (folder / "pgbouncer.ini").write_text(f"""[databases]
{database} = host={host} port={port} dbname={database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {folder / "users.txt"}
pool_mode = {pool_mode}
default_pool_size = {pool_size}
max_client_conn = 200
logfile = {folder / "pgbouncer.log"}
pidfile = {folder / "pgbouncer.pid"}
""")
    if as_user:
        for name in ("users.txt", "pgbouncer.ini"):
            os.chown(folder / name, entry.pw_uid, entry.pw_gid)
    process = subprocess.Popen([binary, str(folder / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT, cwd=folder, **as_user)
    try:
        try:  # its own word, not a connection that whoever took the port first could accept
            wait_for_listening(process, folder / "pgbouncer.log", 0, f"listening on 127.0.0.1:{listen}",
                               timeout=START_SECONDS)
        except (RuntimeError, TimeoutError) as exc:
            log = (folder / "pgbouncer.log").read_text() if (folder / "pgbouncer.log").exists() else ""
            raise RuntimeError(f"pgbouncer did not start ({exc}):\n{log[-2000:]}") from None
        yield f"postgresql://{quote(user)}:{quote(password)}@127.0.0.1:{listen}/{database}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # shut down at once
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)
