"""0003: dispatched_at (commit 97b3bca): a claim whose workflow start is confirmed is never rescued as stuck.

Python, because SQL cannot say "only if missing", and ADD COLUMN would append the column
where schema.sql has it before created_at: a task table whose columns differ from today's
is rebuilt (every row kept, with its rowid; no confirmed claim existed, so dispatched_at is
NULL). A table that already has today's columns (made before versioning by 97b3bca or later)
is left alone. The stuck-claims index keeps its name but gains dispatched_at, so each index
is made again only where its definition differs.
"""

import sqlite3

TABLES = ("video_tasks", "image_tasks")
COLUMNS = ["id", "status", "attempts", "started_at", "request_params", "external_id", "result", "error",
           "retryable", "dispatched_at", "created_at", "updated_at"]
CREATE_TABLE = """CREATE TABLE {table} (
    id             TEXT PRIMARY KEY,
    status         TEXT NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'queued', 'processing', 'completed', 'failed')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    started_at     INTEGER,
    request_params TEXT NOT NULL,
    external_id    TEXT,
    result         TEXT,
    error          TEXT,
    retryable      INTEGER NOT NULL DEFAULT 1,
    dispatched_at  REAL,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL
)"""
INDEXES = {
    "status_created": "ON {table} (status, created_at)",
    "status_started": "ON {table} (status, dispatched_at, started_at)",
    "retry_due": "ON {table} (retryable, created_at) WHERE status = 'failed'",
    "status_attempts": "ON {table} (status, attempts, started_at)",
}


def migrate(conn: sqlite3.Connection) -> None:
    for table in TABLES:
        if columns(conn, table) != COLUMNS:
            rebuild(conn, table)
        for suffix, body in INDEXES.items():
            ensure_index(conn, f"{table}_{suffix}", f"CREATE INDEX {table}_{suffix} {body.format(table=table)}")


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def rebuild(conn: sqlite3.Connection, table: str) -> None:
    """Today's table with the old one's rows. The old table is renamed first so the new one's
    stored SQL is exactly schema.sql's; nothing (trigger, view, foreign key) refers to it."""
    old = columns(conn, table)
    unknown = [name for name in old if name not in COLUMNS]
    if unknown:
        raise RuntimeError(f"{table} has columns this migration does not know ({', '.join(unknown)}); "
                           "refusing to drop them")
    kept = ", ".join(["rowid", *old])
    conn.execute(f"ALTER TABLE {table} RENAME TO {table}_before_0003")
    conn.execute(CREATE_TABLE.format(table=table))
    conn.execute(f"INSERT INTO {table} ({kept}) SELECT {kept} FROM {table}_before_0003")
    conn.execute(f"DROP TABLE {table}_before_0003")  # and its indexes


def ensure_index(conn: sqlite3.Connection, name: str, sql: str) -> None:
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)).fetchone()
    if row is not None and row[0].split() == sql.split():
        return
    conn.execute(f"DROP INDEX IF EXISTS {name}")
    conn.execute(sql)
