"""What only the PostgreSQL task store has to show: its migrations under the advisory lock, its schema,
single winners among concurrent claimers with row locks instead of one write lock, and claim plans that
walk the partial indexes. (The shared promises run on both backends in the parametrized modules.)"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app import create_app
from dev import dbaccess
from tests.conftest import SECRETS, VIDEO
from web import db, pg, task_store
from web.task_store import Report, TaskTable, TransitionRefused

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


def table(url, **policy) -> TaskTable:
    """The video table of an app on `url`, its policy changed by `policy` (the default caps active tasks at 100)."""
    app = create_app({"DATABASE_URL": url, **SECRETS})
    found = app.extensions["task_tables"][VIDEO]
    return dataclasses.replace(found, policy=dataclasses.replace(found.policy, **policy))


def test_concurrent_upgrades_apply_each_migration_once(db_target):
    """Several hosts starting at once: the advisory lock lets one apply, the others find it done."""
    gate, applied = threading.Barrier(4), []

    def upgrade():
        gate.wait(timeout=10)
        applied.append(db.upgrade(db_target))

    threads = [threading.Thread(target=upgrade) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(applied) == [[], [], [], ["0001_initial.sql"]]
    assert dbaccess.query(db_target, "SELECT version FROM schema_version") == [{"version": 1}]
    assert db.upgrade(db_target) == []


def test_the_schema_has_sqlites_columns_and_the_claim_indexes(db_target):
    db.upgrade(db_target)
    memory = sqlite3.connect(":memory:")
    memory.executescript((db.ROOT / "schema.sql").read_text())
    for name in ("video_tasks", "image_tasks", "task_events", "integration_blocks", "idempotency_keys",
                 "task_counts", "task_minutes"):
        expected = [row[1] for row in memory.execute(f"PRAGMA table_info({name})")]
        found = [r["column_name"] for r in dbaccess.query(
            db_target, "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                       "AND table_name = ? ORDER BY ordinal_position", (name,))]
        assert found == expected, name
    indexes = {r["indexname"]: r["indexdef"].split(" USING btree ")[1] for r in dbaccess.query(
        db_target, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                   "AND tablename = 'video_tasks'")}
    assert indexes == {
        "video_tasks_pkey": "(id)",
        "video_tasks_pending": "(created_at) WHERE (status = 'pending'::text)",
        "video_tasks_retry_due": "(retry_at) WHERE ((status = 'failed'::text) AND (retryable = 1))",
        "video_tasks_undispatched": "(started_at) WHERE ((status = 'queued'::text) AND (dispatched_at IS NULL))",
        "video_tasks_status_created": "(status, created_at, id)",
        "video_tasks_cancel_due": "(cancel_sent_at) WHERE ((cancel_requested_at IS NOT NULL) AND "
                                  "(status = ANY (ARRAY['queued'::text, 'processing'::text])))",
    }
    triggers = {(r["event_object_table"], r["trigger_name"], r["event_manipulation"]) for r in dbaccess.query(
        db_target, "SELECT event_object_table, trigger_name, event_manipulation FROM information_schema.triggers "
                   "WHERE trigger_schema = current_schema()")}
    assert triggers >= {("task_events", "task_events_no_update", "UPDATE"),
                        ("task_events", "task_events_no_delete", "DELETE"),
                        ("task_events", "task_events_per_minute", "INSERT"),
                        ("video_tasks", "video_tasks_count_update", "UPDATE"),
                        ("video_tasks", "video_tasks_count_insert", "DELETE")}


def test_the_app_refuses_a_schema_ahead_of_it(db_target):
    db.upgrade(db_target)
    dbaccess.execute(db_target, "UPDATE schema_version SET version = 99")
    with pytest.raises(db.SchemaError, match="ahead"):
        create_app({"DATABASE_URL": db_target, **SECRETS})


def test_events_of_a_pruned_task_may_go_and_counts_follow_every_move(db_target):
    tasks_table = table(db_target)
    conn = pg.connect(db_target)
    try:
        task = task_store.create_task(conn, tasks_table, {"prompt": "x"})
        assert task_store.count_by_status(conn, tasks_table)["pending"] == 1
        task_store.claim_next(conn, tasks_table, 5)
        assert task_store.transition(conn, tasks_table, task["id"], Report.progress("completed", 1)).status \
            == "completed"
        counts = task_store.count_by_status(conn, tasks_table)
        assert (counts["pending"], counts["queued"], counts["completed"]) == (0, 0, 1)
        with pytest.raises(Exception, match="append-only"):
            conn.execute("TRUNCATE task_events")
        report = task_store.prune_finished(conn, [tasks_table], 0, now=time.time() + 10)
        assert (report.tasks, report.events) == (1, 3)
        assert task_store.count_by_status(conn, tasks_table)["completed"] == 0
    finally:
        conn.close()


@pytest.mark.parametrize("cap", [None, 50])
def test_concurrent_claimers_never_take_a_task_twice(db_target, cap):
    """8 threads, each on its own connection, claim batches until nothing more is claimable: every task once,
    and with an active cap never more than the cap (its claims take turns under an advisory lock)."""
    tasks_table = table(db_target, max_active=cap)
    setup = pg.connect(db_target)
    ids = {task_store.create_task(setup, tasks_table, {"prompt": f"p{i}"}, now=1000.0 + i)["id"]
           for i in range(300)}
    setup.close()

    def claimer(_):
        conn, mine = pg.connect(db_target), []
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                claimed, _ = task_store.claim_next(conn, tasks_table, 7)
                if not claimed:
                    return mine
                mine += [t["id"] for t in claimed]
            raise AssertionError("claims did not end within 60 s")
        finally:
            conn.close()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(claimer, range(8)))
    claimed = [task_id for mine in results for task_id in mine]
    expected = 300 if cap is None else cap
    assert len(claimed) == len(set(claimed)) == expected and set(claimed) <= ids
    rows = dbaccess.query(db_target, "SELECT status, attempts, COUNT(*) AS n FROM video_tasks "
                                     "WHERE status = 'queued' GROUP BY 1, 2")
    assert rows == [{"status": "queued", "attempts": 1, "n": expected}]
    queued = dbaccess.query(db_target, "SELECT COUNT(*) AS n FROM task_events WHERE status = 'queued'")
    assert queued == [{"n": expected}]


def test_racing_single_claims_and_reports_have_one_winner(db_target):
    """6 threads send the same report-style claim for each task, then the same completion: one winner each,
    the others refused (a stale or repeated report), never a second attempt."""
    tasks_table = table(db_target, max_active=None)
    setup = pg.connect(db_target)
    ids = [task_store.create_task(setup, tasks_table, {"prompt": f"p{i}"})["id"] for i in range(60)]
    setup.close()
    gate = threading.Barrier(6)

    def racer(_):
        conn, won, done = pg.connect(db_target), 0, 0
        try:
            gate.wait(timeout=10)
            for task_id in ids:
                try:
                    won += task_store.transition(conn, tasks_table, task_id, Report.claim()).attempt == 1
                except TransitionRefused:
                    pass
            for task_id in ids:
                outcome = task_store.transition(conn, tasks_table, task_id, Report.progress("completed", 1))
                done += not outcome.duplicate
            return won, done
        finally:
            conn.close()

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(racer, range(6)))
    assert sum(won for won, _ in results) == 60 and sum(done for _, done in results) == 60
    events = dbaccess.query(db_target, "SELECT status, COUNT(*) AS n FROM task_events GROUP BY status ORDER BY 1")
    assert events == [{"status": "completed", "n": 60}, {"status": "pending", "n": 60},
                      {"status": "queued", "n": 60}]


class Explaining:
    """Runs task_store's own SQL under EXPLAIN (FORMAT JSON) and keeps the plans."""

    dialect = "postgresql"

    def __init__(self, conn):
        self.conn, self.plans = conn, []

    def execute(self, sql, params=()):
        cursor = self.conn.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]
        self.plans.append(json.loads(plan) if isinstance(plan, str) else plan)
        return iter(())


def index_names(plan) -> set[str]:
    found, stack = set(), [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "Index Name" in node:
                found.add(node["Index Name"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def test_claim_plans_walk_the_partial_indexes(db_target):
    """20,000 tasks, nearly all finished (as history piles up), then ANALYZE: each claim kind reads its own
    partial index; none scans the table."""
    tasks_table = table(db_target, max_active=None)
    dbaccess.execute(db_target, """
        INSERT INTO video_tasks (id, status, attempts, started_at, request_params, retryable, dispatched_at,
                                 created_at, updated_at, retry_at)
        SELECT 't' || i, (ARRAY['completed','completed','completed','completed','completed','completed','pending',
                                'failed','queued','processing'])[1 + i % 10],
               1, 1000 + i, '{}', 1, CASE WHEN i % 20 = 8 THEN NULL ELSE 5 END, i, i, i
        FROM generate_series(1, 20000) AS i""")
    dbaccess.execute(db_target, "ANALYZE video_tasks")
    conn = pg.connect(db_target)
    try:
        explaining = Explaining(conn)
        task_store._claimable_pg(explaining, tasks_table, 10, time.time(), lock=True)
        claim_plan = explaining.plans[-1]
        assert {"video_tasks_pending", "video_tasks_retry_due", "video_tasks_undispatched"} <= index_names(claim_plan)
        assert '"Seq Scan"' not in json.dumps(claim_plan)
        assert json.dumps(claim_plan).count('"LockRows"') >= 3  # each kind locks inside its own walk
    finally:
        conn.close()
