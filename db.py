"""The web process's SQLite connection: WAL, a busy timeout, one connection per request.

Only the web process imports this module (the processor and the worker speak
HTTP). Connections run in autocommit mode so that task_store can open its own
`BEGIN IMMEDIATE` transactions.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import click
import sqlite_utils
from flask import current_app, g

SCHEMA = Path(__file__).with_name("schema.sql")
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


def get_db() -> sqlite3.Connection:
    """This request's connection, opened on first use."""
    if "db" not in g:
        g.db = connect(current_app.config["DATABASE_PATH"])
    return g.db


def close_db(_exc: BaseException | None = None) -> None:
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


@click.command("init-db")
def init_db_command() -> None:
    """Create the tables and indexes of schema.sql."""
    init_db(current_app.config["DATABASE_PATH"])
    click.echo(f"Initialized the database at {current_app.config['DATABASE_PATH']}.")


def init_app(app) -> None:
    app.teardown_appcontext(close_db)
    app.cli.add_command(init_db_command)
