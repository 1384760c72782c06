"""Read and write the app's database directly, on either backend: tests, invariants and benchmarks.

`target` is what the app runs on: a postgresql:// URL or an SQLite file's path. SQL is written as for
SQLite (`?` and `:name` placeholders); on PostgreSQL it is translated as task_store's is (web/pg.py).
Rows come back as dicts. Each call is its own transaction (autocommit). PostgreSQL connections are kept
per URL until `close(url)`, since a new one costs an authentication handshake.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from settings import names_postgres

_pg: dict[str, Any] = {}


def is_postgres(target: str) -> bool:
    return names_postgres(target)


def _pg_conn(url: str):
    from web import pg

    conn = _pg.get(url)
    if conn is None or conn.raw.closed:
        conn = _pg[url] = pg.connect(url)
    return conn


def query(target: str, sql: str, params: Any = ()) -> list[dict]:
    """The rows of one statement, as dicts."""
    if is_postgres(target):
        cursor = _pg_conn(target).execute(sql, params)
        return [dict(row) for row in cursor.fetchall()] if cursor.description else []
    with sqlite3.connect(target) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, params).fetchall()]


def execute(target: str, sql: str, params: Any = ()) -> int:
    """Run one statement and commit it; its rowcount."""
    if is_postgres(target):
        return _pg_conn(target).execute(sql, params).rowcount
    with sqlite3.connect(target) as conn:
        return conn.execute(sql, params).rowcount


def tables(target: str) -> list[str]:
    """The tables of the app's schema (on PostgreSQL: of the first schema on the search path)."""
    if is_postgres(target):
        return [r["table_name"] for r in query(
            target, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
                    "AND table_type = 'BASE TABLE' ORDER BY table_name")]
    return [r["name"] for r in query(target, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]


def close(url: str | None = None) -> None:
    """Close the kept PostgreSQL connections (of `url` only, if given)."""
    for key in [k for k in _pg if url is None or k == url]:
        _pg.pop(key).close()
