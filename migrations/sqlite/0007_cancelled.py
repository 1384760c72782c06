"""0007: cancel (issue 15): the status `cancelled`, and when a cancel was asked for and last sent.

SQLite cannot change a CHECK constraint in place, so both task tables are rebuilt
(every row kept, with its rowid) with `cancelled` allowed and two new columns:
cancel_requested_at (a client or operator asked to cancel an active task) and
cancel_sent_at (a processor was last handed the cancel to deliver to Temporal).
The tables' indexes go with the old tables and are made again, plus one partial
index over the active tasks whose cancel is asked for: the processors' worklist.
A large database takes a few seconds per million tasks to rebuild.
"""

import sqlite3

TABLES = ("video_tasks", "image_tasks")
OLD_COLUMNS = ["id", "status", "attempts", "started_at", "request_params", "external_id", "result", "error",
               "retryable", "dispatched_at", "created_at", "updated_at", "retry_at", "attempts_refunded"]
CREATE_TABLE = """CREATE TABLE {table} (
    id                  TEXT PRIMARY KEY,
    status              TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'queued', 'processing', 'completed', 'failed', 'cancelled')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    started_at          INTEGER,
    request_params      TEXT NOT NULL,
    external_id         TEXT,
    result              TEXT,
    error               TEXT,
    retryable           INTEGER NOT NULL DEFAULT 1,
    dispatched_at       REAL,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    retry_at            REAL,
    attempts_refunded   INTEGER NOT NULL DEFAULT 0,
    cancel_requested_at REAL,
    cancel_sent_at      REAL
)"""
INDEXES = [
    "CREATE INDEX {table}_status_created ON {table} (status, created_at)",
    "CREATE INDEX {table}_status_started ON {table} (status, dispatched_at, started_at)",
    "CREATE INDEX {table}_retry_due ON {table} (retryable, retry_at) WHERE status = 'failed'",
    "CREATE INDEX {table}_status_attempts ON {table} (status, attempts, started_at)",
    "CREATE INDEX {table}_cancel_due ON {table} (cancel_sent_at) "
    "WHERE cancel_requested_at IS NOT NULL AND status IN ('queued', 'processing')",
]


def migrate(conn: sqlite3.Connection) -> None:
    for table in TABLES:
        old = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        if old != OLD_COLUMNS:
            raise RuntimeError(f"{table} has columns {old}; 0007 expects {OLD_COLUMNS}")
        kept = ", ".join(["rowid", *old])
        conn.execute(f"ALTER TABLE {table} RENAME TO {table}_before_0007")
        conn.execute(CREATE_TABLE.format(table=table))
        conn.execute(f"INSERT INTO {table} ({kept}) SELECT {kept} FROM {table}_before_0007")
        conn.execute(f"DROP TABLE {table}_before_0007")  # and its indexes
        for index in INDEXES:
            conn.execute(index.format(table=table))
