"""`flask --app app db copy --to postgresql://...` (web/pg_copy.py): an SQLite task database, seeded through the
API with tasks in every state, events, a block and idempotency keys, lands in an empty PostgreSQL database row
for row; events keep their ids and order and the next one follows them; the dashboard counters are rebuilt;
the events stay append-only; a target that has rows is refused."""

from __future__ import annotations

import json
import sqlite3

import pytest

from app import create_app
from dev import dbaccess
from tests.conftest import AUTH, IMAGE, REPORT, SECRETS, USER, VIDEO
from web import pg, task_store

TABLES = ("video_tasks", "image_tasks", "task_events", "integration_blocks", "idempotency_keys")
KEYS = {"task_events": ("id",), "integration_blocks": ("integration",), "idempotency_keys": ("scope", "key")}


def seed(db_path):
    """Tasks in every state on both integrations, through the API (so every trigger ran on SQLite)."""
    app = create_app({"DATABASE_PATH": db_path, **SECRETS, "RETRY_BASE_SECONDS": 0})
    client = app.test_client()

    def create(namespace, key=None):
        path = "/api/video/generate" if namespace == VIDEO else "/api/image/generate"
        headers = {**USER, **({"Idempotency-Key": key} if key else {})}
        response = client.post(path, json={"prompt": "a cät"}, headers=headers)
        assert response.status_code == 201, response.json
        return response.json["taskId"]

    def report(namespace, task_id, status, **fields):
        response = client.post(f"/api/{namespace}/{REPORT[namespace]}", headers=AUTH,
                               json={"apiCallId": task_id, "status": status, "attempt": 1, **fields})
        assert response.status_code == 200, response.json

    made = {}
    for namespace in (VIDEO, IMAGE):
        ids = made[namespace] = [create(namespace, key=f"k-{namespace}-{i}" if i < 3 else None) for i in range(8)]
        claimed = client.post(f"/api/{namespace}/claimPendingTasks", json={"limit": 6}, headers=AUTH).json["tasks"]
        assert [t["id"] for t in claimed] == ids[:6]
        report(namespace, ids[0], "processing", taskId="job-0")
        report(namespace, ids[0], "completed", data={"url": "https://x/0.mp4", "ü": [1, 2.5]})
        report(namespace, ids[1], "failed", error="provider said no")  # retryable
        report(namespace, ids[2], "failed", error="bad prompt", retryable=False)
        report(namespace, ids[3], "processing", taskId="job-3")
        assert client.post(f"/api/tasks/{ids[6]}/cancel", headers=USER).status_code in (200, 202)
    report(VIDEO, made[VIDEO][4], "blocked", error="out of credits")  # a claim handed back: a block
    return app


def rows(target, table):
    key = KEYS.get(table, ("id",))
    found = dbaccess.query(target, f"SELECT * FROM {table}")
    return {tuple(r[k] for k in key): r for r in found}


def jsonb_columns(url, table):
    return {r["column_name"] for r in dbaccess.query(
        url, "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
             "AND table_name = ? AND data_type = 'jsonb'", (table,))}


@pytest.fixture
def seeded(db_path):
    return seed(db_path)


def test_copy_moves_every_row_and_rebuilds_the_counters(seeded, db_path, pg_url):
    result = seeded.test_cli_runner().invoke(args=["db", "copy", "--to", pg_url, "--batch", "7"])
    assert result.exit_code == 0, result.output
    assert "task_events: " in result.output and "the next event id is" in result.output

    for table in TABLES:
        source, copied = rows(db_path, table), rows(pg_url, table)
        assert source, table
        assert copied.keys() == source.keys(), table
        as_json = jsonb_columns(pg_url, table)
        for key, row in source.items():
            for column, value in row.items():
                theirs = copied[key][column]
                if column in as_json and value is not None:
                    value, theirs = json.loads(value), json.loads(theirs)
                assert theirs == value, (table, key, column)

    ids = [r["id"] for r in dbaccess.query(pg_url, "SELECT id FROM task_events ORDER BY id")]
    assert ids == [r["id"] for r in dbaccess.query(db_path, "SELECT id FROM task_events ORDER BY id")]

    # the counters the dashboard reads, rebuilt from the copied rows
    pg_app = create_app({"DATABASE_URL": pg_url, **SECRETS})
    lite, conn = sqlite3.connect(db_path), pg.connect(pg_url)
    lite.row_factory = sqlite3.Row
    try:
        for name, table in pg_app.extensions["task_tables"].items():
            assert task_store.count_by_status(conn, table) == task_store.count_by_status(lite, table), name
        minutes = lambda target, sql: sorted((r["minute"], r["namespace"], r["kind"], r["n"])
                                             for r in dbaccess.query(target, sql))
        assert minutes(pg_url, "SELECT minute, namespace, kind, sum(n) AS n FROM task_minutes "
                               "GROUP BY minute, namespace, kind") == minutes(db_path, "SELECT * FROM task_minutes")
        assert dbaccess.query(pg_url, "SELECT count(*) AS n FROM task_counts")[0]["n"] == len(
            dbaccess.query(pg_url, "SELECT DISTINCT tbl, status FROM task_counts"))  # folded: one row per key

        # the next event follows the copied ones
        new = task_store.create_task(conn, pg_app.extensions["task_tables"][VIDEO], {"prompt": "after"})
        event = dbaccess.query(pg_url, "SELECT id FROM task_events WHERE task_id = ?", (new["id"],))
        assert event == [{"id": ids[-1] + 1}]

        # the events are append-only on the target too
        with pytest.raises(Exception, match="append-only"):
            conn.execute("UPDATE task_events SET error = 'x' WHERE id = ?", (ids[0],))
        with pytest.raises(Exception, match="append-only"):
            conn.execute("DELETE FROM task_events WHERE id = ?", (ids[0],))
    finally:
        lite.close()
        conn.close()


def test_copy_refuses_a_target_that_has_rows(seeded, db_path, pg_url):
    first = seeded.test_cli_runner().invoke(args=["db", "copy", "--to", pg_url])
    assert first.exit_code == 0, first.output
    before = {t: rows(pg_url, t).keys() for t in TABLES}
    again = seeded.test_cli_runner().invoke(args=["db", "copy", "--to", pg_url])
    assert again.exit_code != 0 and "has rows already" in again.output
    assert {t: rows(pg_url, t).keys() for t in TABLES} == before


def test_copy_refuses_what_is_not_a_postgresql_url_or_not_a_task_database(seeded, tmp_path, pg_url):
    runner = seeded.test_cli_runner()
    assert "must be a postgresql:// URL" in runner.invoke(args=["db", "copy", "--to", str(tmp_path / "x.db")]).output
    missing = runner.invoke(args=["db", "copy", "--to", pg_url, "--from", str(tmp_path / "none.db")])
    assert missing.exit_code != 0 and "no SQLite task database" in missing.output
