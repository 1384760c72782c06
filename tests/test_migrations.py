"""Versioned schema migrations: equal to schema.sql, databases from every earlier commit upgraded in place.

The fixtures are `git show <commit>:schema.sql` saved verbatim (CI clones may be shallow):
3b50bad (first release), c44efa3 and 2f3308c (fetch indexes), c6e0045 (the last unversioned one). They ran their
schema.sql with IF NOT EXISTS at every start, so a database that lived through several of them
holds a mix; `legacy()` builds one the same way.

SQLite only, by nature: its files, PRAGMA user_version and the unversioned history are SQLite's
(PostgreSQL's migrations under the advisory lock: tests/test_postgres.py).
"""

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from app import create_app
from dev.stack import BIN
from settings import ROOT
from tests.conftest import AUTH, IMAGE, SECRETS, VIDEO
from web import db

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CURRENT = len(db.load_migrations())
TASK_TABLES = {"video_tasks": VIDEO, "image_tasks": IMAGE}
UPGRADE = "flask --app app db upgrade"

# label: status, attempts, external_id, result, error, retryable
STATES = {
    "pending": ("pending", 0, None, None, None, 1),
    "queued": ("queued", 1, None, None, None, 1),
    "processing": ("processing", 1, "ext-processing", None, None, 1),
    "completed": ("completed", 1, "ext-completed", '{"url": "https://example.com/done"}', None, 1),
    "failed_retryable": ("failed", 1, "ext-failed", None, "provider job failed", 1),
    "failed_rejected": ("failed", 1, None, None, "400 InvalidParameter", 0),
    # Before c44efa3, running out of attempts did not clear retryable: the attempts count decided.
    "failed_no_attempts_left": ("failed", 5, None, None, "provider job failed", 1),
}


def legacy(path, *schemas):
    """A database as unversioned releases left it: WAL, then each release's schema.sql run at its start."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for name in schemas:
            conn.executescript((FIXTURES / f"schema_{'c6e0045' if name == 'today' else name}.sql")
                               .read_text())
    return path


def seed(path):
    """A task in every state in both tables, with the events that got it there; returns {(table, label): id}."""
    now = time.time()
    ids = {}
    with closing(sqlite3.connect(path)) as conn, conn:
        for table, namespace in TASK_TABLES.items():
            has_dispatched = "dispatched_at" in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            for n, (label, (status, attempts, external_id, result, error, retryable)) in enumerate(STATES.items()):
                task_id = f"{table[:5]}-{label}"
                created = now - 1000 + n
                started = int(now) - 5 if attempts else None  # a recent claim: the queued one is not stuck
                row = {"id": task_id, "status": status, "attempts": attempts, "started_at": started,
                       "request_params": json.dumps({"prompt": f"{label} prompt"}), "external_id": external_id,
                       "result": result, "error": error, "retryable": retryable,
                       "created_at": created, "updated_at": created + 1}
                if has_dispatched and status == "queued":
                    row["dispatched_at"] = now - 4
                conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                             list(row.values()))
                events = [("pending", 0, None, None, None)]
                if attempts:
                    events.append(("queued", attempts, None, None, None))
                if external_id:
                    events.append(("processing", attempts, external_id, None, None))
                if status in ("completed", "failed"):
                    events.append((status, attempts, None, result, error))
                for status_, attempt, ext, data, err in events:
                    conn.execute("INSERT INTO task_events (namespace, task_id, status, attempt, external_id, data, "
                                 "error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 (namespace, task_id, status_, attempt, ext, data, err, created))
                ids[(table, label)] = task_id
    return ids


def contents(path):
    """Every row of the three tables with its rowid; dispatched_at as NULL where the column is missing.

    retry_at (0004) is left out: the upgrade sets it for waiting failures (`test_waiting_failures_stay_due`).
    """
    with closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        added = {"dispatched_at": None, "attempts_refunded": 0, "cancel_requested_at": None, "cancel_sent_at": None}
        rows = {table: [{**added, **dict(row)}
                        for row in conn.execute(f"SELECT rowid AS row_id, * FROM {table} ORDER BY rowid")]
                for table in (*TASK_TABLES, "task_events")}
    for table in TASK_TABLES:
        for row in rows[table]:
            row.pop("retry_at", None)
    return rows


def test_waiting_failures_stay_due(tmp_path):
    """A retryable failure of the previous release was claimable at once; after 0004 it still is."""
    path = str(tmp_path / "old.db")
    ids = seed(legacy(path, "3b50bad"))
    db.upgrade(path)
    with closing(sqlite3.connect(path)) as conn:
        due = dict(conn.execute("SELECT id, retry_at <= updated_at FROM video_tasks WHERE retry_at IS NOT NULL"))
    assert due == {ids[("video_tasks", "failed_retryable")]: 1, ids[("video_tasks", "failed_no_attempts_left")]: 1}


def schema(path):
    """sqlite_master (type, name, table, whitespace-normalised SQL) and each table's columns in order."""
    with closing(sqlite3.connect(path)) as conn:
        objects = sorted((kind, name, table, " ".join(sql.split()) if sql else None) for kind, name, table, sql
                         in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
        columns = {name: conn.execute(f"PRAGMA table_info({name})").fetchall()
                   for kind, name, _, _ in objects if kind == "table"}
    return objects, columns


def version(path):
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def expected_schema(tmp_path_factory):
    """schema.sql run directly on an empty database: what every upgrade must end at."""
    path = tmp_path_factory.mktemp("expected") / "schema.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(db.SCHEMA.read_text())
    return schema(path)


def test_migrations_give_exactly_schema_sql(tmp_path, expected_schema):
    path = str(tmp_path / "new.db")
    assert db.upgrade(path) == [m.name for m in db.load_migrations()]
    assert schema(path) == expected_schema
    assert version(path) == CURRENT == 9
    objects, _ = expected_schema
    assert {name for kind, name, _, _ in objects if kind == "index" and not name.startswith("sqlite_")} == {
        f"{t}_{s}" for t in TASK_TABLES for s in ("status_created", "status_started", "retry_due", "status_attempts",
                                                 "cancel_due")
    } | {"task_events_task", "idempotency_keys_created"}


def test_first_migration_is_the_first_release(tmp_path):
    migration = db.load_migrations()[0]
    first, release = str(tmp_path / "first.db"), legacy(str(tmp_path / "release.db"), "3b50bad")
    with closing(db.connect(first)) as conn:
        migration.apply(conn)
    assert schema(first) == schema(release)


def test_app_creates_a_new_database_at_the_current_version(app, db_path):
    assert version(db_path) == CURRENT
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("history", [
    ("3b50bad",),
    ("c44efa3",),
    ("2f3308c",),
    ("3b50bad", "c44efa3", "2f3308c"),  # lived through every unversioned release's start
    ("3b50bad", "today"),  # the issue: the last unversioned code (c6e0045) started on a first-release file
    ("today",),  # version 0 with the last unversioned release's tables
    ("2f3308c", "added by hand"),  # an operator's ALTER TABLE ... ADD COLUMN dispatched_at (appended last)
], ids=lambda history: "+".join(history).replace(" ", "-"))
def test_database_from_before_versioning_is_upgraded_in_place(tmp_path, expected_schema, history):
    path = legacy(str(tmp_path / "old.db"), *[h for h in history if h != "added by hand"])
    if "added by hand" in history:
        with closing(sqlite3.connect(path)) as conn:
            for table in TASK_TABLES:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN dispatched_at REAL")
    seed(path)
    before = contents(path)

    lines = []
    assert db.upgrade(path, echo=lines.append) == ["0002_fetch_indexes.sql", "0003_dispatched_at.py",
                                                   "0004_retry_at.sql", "0005_blocked_integrations.sql",
                                                   "0006_idempotency_keys.sql", "0007_cancelled.py",
                                                   "0008_prune.sql",
                                "0009_dashboard_counts.sql"]
    assert lines[0] == f"{path}: tables from before versioning adopted as schema version 1"
    assert lines[1:] == [f"{path}: applied 0002_fetch_indexes.sql (schema version 2 of 9)",
                         f"{path}: applied 0003_dispatched_at.py (schema version 3 of 9)",
                         f"{path}: applied 0004_retry_at.sql (schema version 4 of 9)",
                         f"{path}: applied 0005_blocked_integrations.sql (schema version 5 of 9)",
                         f"{path}: applied 0006_idempotency_keys.sql (schema version 6 of 9)",
                         f"{path}: applied 0007_cancelled.py (schema version 7 of 9)",
                         f"{path}: applied 0008_prune.sql (schema version 8 of 9)",
                         f"{path}: applied 0009_dashboard_counts.sql (schema version 9 of 9)"]
    assert version(path) == CURRENT
    assert schema(path) == expected_schema
    assert contents(path) == before


def test_upgrade_twice_is_a_no_op(tmp_path):
    path = legacy(str(tmp_path / "old.db"), "3b50bad")
    seed(path)
    db.upgrade(path)
    before, shape = contents(path), schema(path)
    lines = []
    assert db.upgrade(path, echo=lines.append) == []
    assert lines == [f"{path}: schema version 9 of 9, nothing to apply"]
    assert contents(path) == before and schema(path) == shape and version(path) == CURRENT


def test_version_1_database_gets_each_later_migration(tmp_path, expected_schema):
    path = str(tmp_path / "v1.db")
    with closing(db.connect(path)) as conn:
        db.load_migrations()[0].apply(conn)
        conn.execute("PRAGMA user_version = 1")
    seed(path)
    before = contents(path)
    assert db.upgrade(path) == ["0002_fetch_indexes.sql", "0003_dispatched_at.py", "0004_retry_at.sql",
                                "0005_blocked_integrations.sql", "0006_idempotency_keys.sql",
                                "0007_cancelled.py", "0008_prune.sql",
                                "0009_dashboard_counts.sql"]
    assert schema(path) == expected_schema and contents(path) == before


def test_behind_database_is_refused_by_a_test_app(tmp_path):
    path = str(tmp_path / "v1.db")
    with closing(db.connect(path)) as conn:
        db.load_migrations()[0].apply(conn)
        conn.execute("PRAGMA user_version = 1")
    unchanged = digest(path)
    with pytest.raises(db.SchemaError, match=f"is at schema version 1 of 9; run: {UPGRADE}$"):
        create_app({"DATABASE_PATH": path, **SECRETS})
    assert digest(path) == unchanged and version(path) == 1


def test_database_ahead_is_refused(tmp_path, capsys):
    path = str(tmp_path / "ahead.db")
    db.upgrade(path)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {CURRENT + 1}")
    unchanged, shape = digest(path), schema(path)

    message = (f"{path} is at schema version {CURRENT + 1}, ahead of this release's {CURRENT}; "
               "run the release that upgraded it")
    with pytest.raises(db.SchemaError, match=message):
        create_app({"DATABASE_PATH": path, **SECRETS})
    with pytest.raises(SystemExit) as exit_:
        db.check_at_start(path, exit_on_error=True)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"database error: {message} (or a newer one)"]
    with pytest.raises(db.SchemaError, match="ahead"):
        db.upgrade(path)
    assert digest(path) == unchanged and schema(path) == shape and version(path) == CURRENT + 1


def test_tables_that_are_not_this_apps_are_not_touched(tmp_path):
    path = str(tmp_path / "other.db")
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE video_tasks (id TEXT PRIMARY KEY)")
    unchanged = digest(path)
    with pytest.raises(db.SchemaError, match=r"not this app's \(missing video_tasks.attempts, .*image_tasks, "
                                             r"task_events\); refusing to upgrade it"):
        db.upgrade(path)
    assert digest(path) == unchanged and version(path) == 0


def test_failed_migration_leaves_the_database_as_it_was(tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(db.MIGRATIONS, folder)
    broken = f"{CURRENT + 1:04d}_broken.sql"
    (folder / broken).write_text("CREATE TABLE half (a);\nALTER TABLE video_tasks ADD COLUMN half;\n"
                                            "CREATE TABLE half (a);\n")
    path = str(tmp_path / "app.db")
    db.upgrade(path)
    seed(path)
    before, shape = contents(path), schema(path)
    with pytest.raises(db.SchemaError, match=f"{broken} failed and was rolled back: table half already"):
        db.upgrade(path, folder=folder)
    assert version(path) == CURRENT and schema(path) == shape and contents(path) == before


def test_migration_numbers_must_not_skip(tmp_path):
    shutil.copytree(db.MIGRATIONS, tmp_path / "m")
    (tmp_path / "m" / f"{CURRENT + 2:04d}_later.sql").write_text("SELECT 1;\n")
    with pytest.raises(db.SchemaError, match="without gaps"):
        db.load_migrations(tmp_path / "m")


def test_concurrent_upgrades_apply_each_migration_once(tmp_path, expected_schema):
    path = legacy(str(tmp_path / "old.db"), "3b50bad")
    seed(path)
    before = contents(path)
    applied, errors = [], []

    def run():
        try:
            applied.extend(db.upgrade(path))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(applied) == ["0002_fetch_indexes.sql", "0003_dispatched_at.py", "0004_retry_at.sql",
                                "0005_blocked_integrations.sql", "0006_idempotency_keys.sql",
                                "0007_cancelled.py", "0008_prune.sql",
                                "0009_dashboard_counts.sql"]
    assert schema(path) == expected_schema and contents(path) == before


# -- the real commands, as separate processes --

def flask(db_path, *args):
    return subprocess.run([str(BIN / "flask"), "--app", "app", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "DATABASE_PATH": db_path, **SECRETS}, timeout=60)


@pytest.mark.slow
def test_behind_database_is_refused_at_start(tmp_path):
    path = legacy(str(tmp_path / "old.db"), "3b50bad")
    seed(path)
    unchanged = digest(path)
    line = f"database error: {path} is at schema version 0 of 9 (made before versioning); run: {UPGRADE}"

    result = subprocess.run([sys.executable, "-c", "from app import create_app; create_app()"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60,
                            env={"DATABASE_PATH": path, **SECRETS, "PATH": ""})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [line]
    assert digest(path) == unchanged

    stats = flask(path, "tasks", "stats")  # every command but db's is refused too
    assert stats.returncode == 2 and stats.stderr.splitlines() == [line]
    shown = flask(path, "db", "version")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [line.removeprefix("database error: "), "  pending: 0002_fetch_indexes.sql",
                                         "  pending: 0003_dispatched_at.py", "  pending: 0004_retry_at.sql",
                                         "  pending: 0005_blocked_integrations.sql",
                                         "  pending: 0006_idempotency_keys.sql",
                                         "  pending: 0007_cancelled.py", "  pending: 0008_prune.sql",
                                         "  pending: 0009_dashboard_counts.sql"]
    assert digest(path) == unchanged and version(path) == 0


@pytest.mark.slow
def test_first_release_database_upgrades_and_serves_every_write_path(tmp_path, db_path, web, expected_schema):
    legacy(db_path, "3b50bad")
    ids = seed(db_path)
    before = contents(db_path)

    result = flask(db_path, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{db_path}: tables from before versioning adopted as schema version 1",
        f"{db_path}: applied 0002_fetch_indexes.sql (schema version 2 of 9)",
        f"{db_path}: applied 0003_dispatched_at.py (schema version 3 of 9)",
        f"{db_path}: applied 0004_retry_at.sql (schema version 4 of 9)",
        f"{db_path}: applied 0005_blocked_integrations.sql (schema version 5 of 9)",
        f"{db_path}: applied 0006_idempotency_keys.sql (schema version 6 of 9)",
        f"{db_path}: applied 0007_cancelled.py (schema version 7 of 9)",
        f"{db_path}: applied 0008_prune.sql (schema version 8 of 9)",
        f"{db_path}: applied 0009_dashboard_counts.sql (schema version 9 of 9)",
    ]
    assert contents(db_path) == before and schema(db_path) == expected_schema
    again = flask(db_path, "init-db")  # the old name of db upgrade
    assert again.returncode == 0
    assert again.stdout.splitlines() == [f"{db_path}: schema version 9 of 9, nothing to apply"]

    app = web()
    for table, namespace in TASK_TABLES.items():
        claim = f"{app.url}/api/{namespace}/claimPendingTasks"
        claimed = app.http.post(claim, json={"limit": 100}, headers=AUTH, timeout=10).json()["tasks"]
        # Claimable: the pending task and the retryable failure. Not the recent claim, the running and the
        # completed tasks, the rejected one, nor the one out of attempts (MAX_ATTEMPTS is 5).
        assert {t["id"]: t["attempt"] for t in claimed} == {ids[(table, "pending")]: 1,
                                                           ids[(table, "failed_retryable")]: 2}
        confirm = app.http.post(claim, headers=AUTH, timeout=10, json={
            "limit": 1, "dispatched": [{"apiCallId": ids[(table, "pending")], "attempt": 1}]}).json()
        assert confirm["tasks"] == [] and confirm["dispatched"][0]["success"], confirm

        done = app.report(ids[(table, "processing")], "completed", namespace, attempt=1,
                          data={"url": "https://example.com/out"})
        assert done.status_code == 200, done.text
        assert app.task(ids[(table, "processing")])["status"] == "completed"
        assert app.task(app.create(namespace))["status"] == "pending"

    after = contents(db_path)
    for table in TASK_TABLES:
        rows = {row["id"]: row for row in after[table]}
        assert rows[ids[(table, "pending")]]["dispatched_at"] is not None
        assert rows[ids[(table, "failed_retryable")]]["status"] == "queued"
        assert len(rows) == len(STATES) + 1
    assert after["task_events"][:len(before["task_events"])] == before["task_events"]
    assert {(e["task_id"], e["status"], e["attempt"]) for e in after["task_events"][len(before["task_events"]):]} >= {
        (ids[(t, "pending")], "queued", 1) for t in TASK_TABLES} | {
        (ids[(t, "failed_retryable")], "queued", 2) for t in TASK_TABLES} | {
        (ids[(t, "processing")], "completed", 1) for t in TASK_TABLES}


@pytest.mark.slow
def test_first_release_database_upgrades_and_runs_end_to_end(tmp_path):
    """The whole stack on an upgraded first-release database: every task that can still run ends completed.

    Its queued claim (never confirmed: 3b50bad had no dispatch confirmations) is rescued as stuck; its
    processing task's workflow never existed on this Temporal, so the reconciler fails it for a retry.
    """
    from dev.stack import Stack
    from tests.conftest import wait_until

    path = str(tmp_path / "app.db")
    ids = seed(legacy(path, "3b50bad"))
    assert flask(path, "db", "upgrade").returncode == 0
    runnable = [task_id for (_, label), task_id in ids.items() if label not in ("failed_rejected",
                                                                                 "failed_no_attempts_left")]
    with Stack(tmp_path, STUCK_TIMEOUT_SECONDS=2, RECONCILE_AFTER_SECONDS=2, RECONCILE_INTERVAL_SECONDS=0.5,
               RECONCILE_CALLS_PER_MINUTE=600).start_all() as stack:
        assert stack.db_path == path
        wait_until(lambda: all(stack.task(t)["status"] == "completed" for t in runnable), timeout=120,
                   message="every runnable task of the first release completed")
        for (_, label), task_id in ids.items():
            if label in ("failed_rejected", "failed_no_attempts_left"):
                assert stack.task(task_id)["status"] == "failed"


def test_dashboard_counts_are_backfilled_and_kept_exact(tmp_path):
    """0009: task_counts starts equal to a GROUP BY of each table; its triggers keep it so
    through inserts, status changes and deletes; task_minutes holds the seeded tasks' creations and endings."""
    path = legacy(str(tmp_path / "old.db"), "3b50bad")
    seed(path)
    db.upgrade(path)

    def scanned(conn):
        return {(t, s): n for t in TASK_TABLES for s, n in conn.execute(f"SELECT status, COUNT(*) FROM {t} "
                                                                      "GROUP BY status")}

    def kept(conn):
        return {(t, s): n for t, s, n in conn.execute("SELECT tbl, status, n FROM task_counts WHERE n != 0")}

    with closing(sqlite3.connect(path)) as conn, conn:
        assert kept(conn) == scanned(conn) and sum(kept(conn).values()) == 2 * len(STATES)
        minutes = dict(conn.execute("SELECT kind, SUM(n) FROM task_minutes GROUP BY kind"))
        assert minutes == {"created": 2 * len(STATES), "completed": 2, "failed": 6}
        conn.execute("UPDATE video_tasks SET status = 'completed' WHERE status = 'pending'")
        conn.execute("UPDATE video_tasks SET updated_at = 0")  # no status change: no count change
        conn.execute("DELETE FROM image_tasks WHERE status = 'failed'")
        conn.execute("INSERT INTO image_tasks (id, request_params, created_at, updated_at) VALUES ('n', '{}', 1, 1)")
        assert kept(conn) == scanned(conn)
