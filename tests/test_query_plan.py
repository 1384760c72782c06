"""fetchPendingTasks never scans the task table: each claimable kind reads its own index.

SQLite only, by nature: it reads SQLite's EXPLAIN QUERY PLAN (PostgreSQL's plans: tests/test_postgres.py).
"""

import sqlite3
import time

import pytest

from settings import load_config
from web import db, task_store
from web.task_store import TaskTable


@pytest.mark.parametrize("namespace, table", [
    ("fangzhouVideoGeneration", "video_tasks"), ("nanobanana2ImageGeneration", "image_tasks")])
def test_fetch_and_expire_queries_use_indexes(tmp_path, namespace, table):
    path = str(tmp_path / "plan.db")
    db.init_db(path)
    tasks = TaskTable.from_config(load_config(environ={"INTERNAL_API_TOKEN": "t"}), namespace)
    conn = db.connect(path)
    statements = []
    conn.set_trace_callback(statements.append)
    task_store.fetch_claimable(conn, tasks, 10, now=time.time())
    task_store.expire_stuck(conn, tasks, now=time.time())
    conn.set_trace_callback(None)

    plan = []
    for sql in statements:
        plan += [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    assert not [line for line in plan if line.startswith(f"SCAN {table}")], plan
    for index in ("status_created (status=?)", "retry_due (retryable=? AND retry_at<?)",
                  "status_started (status=? AND dispatched_at=? AND started_at<?)",
                  "status_attempts (status=? AND attempts>?)"):
        assert f"SEARCH {table} USING INDEX {table}_{index}" in plan, "\n".join(plan)
    conn.close()


def test_schema_is_idempotent(tmp_path):
    path = str(tmp_path / "again.db")
    db.init_db(path)
    db.init_db(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
