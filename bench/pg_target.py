"""The bench on PostgreSQL: which server it runs on, a fresh schema per phase, a backlog in one commit.

`make bench` with DATABASE_URL=postgresql://... set, or `make bench-pg` (a throwaway cluster from
dev/postgres.py), runs bench/run.py's phases on PostgreSQL with two web hosts. Each phase gets a schema
of its own on that server (as the SQLite run gets a fresh file), dropped when the phase ends; the URL
the web hosts get names it through search_path, as the tests' `pg_url` does.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

from dev import dbaccess

NOTIFY_CHANNEL = "task_ready"  # web/pg_wakeup.py's channel: what a create's commit wakes long polls with


def server_url(start_cluster: bool, stack: contextlib.ExitStack) -> str | None:
    """The PostgreSQL server the bench runs on: DATABASE_URL if it names one, else with `start_cluster`
    a throwaway cluster for the run (dev/postgres.py), else None (SQLite)."""
    given = os.environ.get("DATABASE_URL", "")
    if dbaccess.is_postgres(given):
        return given
    if not start_cluster:
        return None
    from dev import postgres

    return stack.enter_context(postgres.cluster()).url


def schema_url(server: str, schema: str) -> str:
    """`server`'s URL whose connections see `schema` first."""
    return f"{server}{'&' if '?' in server else '?'}options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def fresh_schema(server: str) -> Iterator[str]:
    """An empty schema for one phase; yields its URL (the web hosts create the tables), drops it after."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    dbaccess.execute(server, f"CREATE SCHEMA {schema}")
    url = schema_url(server, schema)
    try:
        yield url
    finally:
        dbaccess.close(url)
        dbaccess.execute(server, f"DROP SCHEMA {schema} CASCADE")


def insert_pending(url: str, statements: list[tuple[str, list]], namespace: str) -> None:
    """The backlog's `statements` (SQL, rows) — bench/run.py's insert_pending builds them for both stores — in
    one transaction; then the wake-up the app sends after a create's commit (web/pg_wakeup.py), so the long
    polls learn of it as they would."""
    from web import pg

    conn = pg.connect(url)
    try:
        with conn.transaction():
            for sql, rows in statements:
                conn.executemany(sql, rows)
        conn.execute_pg("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, namespace))
    finally:
        conn.close()
