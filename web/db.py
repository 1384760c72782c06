"""The web process's SQLite connections: WAL, a busy timeout, one long-lived connection per thread.

Connections run in autocommit mode so that task_store can open its own
`BEGIN IMMEDIATE` transactions. A connection is kept for its thread's next
request: opening and closing one per request cost ~1 ms (closing the last
connection of a WAL database checkpoints it), half of a task creation.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import click
import sqlite_utils
from flask import current_app

SCHEMA = Path(__file__).resolve().parent.parent / "schema.sql"
BUSY_TIMEOUT_SECONDS = 30.0


def connect(path: str) -> sqlite3.Connection:
    """A connection that waits for the write lock instead of failing with 'database is locked'."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe with WAL
    return conn


def init_db(path: str) -> None:
    """Create the database file, switch it to WAL and apply schema.sql (idempotent)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    try:
        db = sqlite_utils.Database(conn, execute_plugins=False)
        db.enable_wal()
        db.executescript(SCHEMA.read_text())
    finally:
        conn.close()


_local = threading.local()


def get_db() -> sqlite3.Connection:
    """This thread's connection to the app's database, opened on first use and then kept."""
    path = current_app.config["DATABASE_PATH"]
    cached = getattr(_local, "conn", None)
    if cached is None or cached[0] != path:
        if cached is not None:
            cached[1].close()
        _local.conn = (path, connect(path))
    return _local.conn[1]


def end_request(_exc: BaseException | None = None) -> None:
    """Never leave a transaction open on a kept connection (a failed request may have)."""
    cached = getattr(_local, "conn", None)
    if cached is not None and cached[1].in_transaction:
        cached[1].rollback()


@click.command("init-db")
def init_db_command() -> None:
    """Create the tables and indexes of schema.sql."""
    init_db(current_app.config["DATABASE_PATH"])
    click.echo(f"Initialized the database at {current_app.config['DATABASE_PATH']}.")


def init_app(app) -> None:
    app.teardown_appcontext(end_request)
    app.cli.add_command(init_db_command)
