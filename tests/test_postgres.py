"""What only the PostgreSQL task store has to show: its migrations under the advisory lock, its schema,
single winners among concurrent claimers with row locks instead of one write lock, and claim plans that
walk the partial indexes. (The shared promises run on both backends in the parametrized modules.)"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app import create_app
from dev import dbaccess
from tests.conftest import IMAGE, SECRETS, VIDEO
from web import db, pg, task_store
from web.task_store import Report, TaskTable, TransitionRefused

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


def table(url, integration=VIDEO, **policy) -> TaskTable:
    """An integration's table (video by default) of an app on `url`, its policy changed by `policy`
    (the default caps active tasks at 100)."""
    app = create_app({"DATABASE_URL": url, **SECRETS})
    found = app.extensions["task_tables"][integration]
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
    assert sorted(applied) == [[], [], [], ["0001_initial.sql", "0002_fold_only_what_changed.sql"]]
    assert dbaccess.query(db_target, "SELECT version FROM schema_version") == [{"version": 2}]
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


class Recording(pg.PgConn):
    """A real connection that keeps every statement task_store sends, labelled with the phase that sent it,
    so the test explains the store's own SQL (never a copy of it)."""

    def __init__(self, conn: pg.PgConn):
        super().__init__(conn.raw)  # no URL: nothing to notify
        self.phase, self.sent = "", []

    def execute(self, sql, params=()):
        self.sent.append((self.phase, sql, params))
        return super().execute(sql, params)

    def executemany(self, sql, params_seq, **kwargs):
        params_seq = list(params_seq)
        self.sent += [(self.phase, sql, params) for params in params_seq[:1]]
        return super().executemany(sql, params_seq, **kwargs)


def plan_nodes(plan) -> list[dict]:
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    found, stack = [], [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "Node Type" in node:
                found.append(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


# At 1,000,000 tasks: a history of finished ones, and a few thousand of each live kind the claim path looks for.
MIX = [  # (rows, status, retryable, retry_at, started_at, dispatched_at, attempts, cancel_requested_at)
    (965_000, "completed", 1, None, "NOW - 9000", "NOW - 9000", 1, None),
    (15_000, "failed", 0, None, "NOW - 9000", "NOW - 9000", 5, None),
    (4_000, "cancelled", 0, None, None, None, 0, "NOW - 9000"),
    (5_000, "pending", 1, None, None, None, 0, None),
    (1_000, "failed", 1, "NOW - 60 - i % 600", "NOW - 9000", "NOW - 9000", 1, None),  # retry due
    (1_000, "failed", 1, "NOW + 600 + i % 600", "NOW - 9000", "NOW - 9000", 1, None),  # retry later
    (500, "queued", 1, None, "NOW - i % 60", None, 1, None),  # just claimed, workflow not confirmed yet
    (200, "queued", 1, None, "NOW - 900 - i % 600", None, 2, None),  # claim abandoned: stuck, rescued
    (100, "queued", 1, None, "NOW - 900 - i % 600", None, 5, None),  # stuck with no attempt left: expired
    (2_000, "queued", 1, None, "NOW - i % 600", "NOW - i % 600", 1, None),  # Temporal owns it
    (6_000, "processing", 1, None, "NOW - i % 3600", "NOW - i % 3600", 1, None),
    (200, "processing", 1, None, "NOW - 600", "NOW - 600", 1, "NOW - 60 - i % 60"),  # cancel asked
]


def fill(target: str, table_name: str, now: float, scale: float = 1.0) -> int:
    """Insert MIX (times `scale`) with generate_series: seconds, not minutes. The dashboard's counter triggers
    are off while it runs (a delta row per task would double the work); the counts are written once after."""
    base, total = 0, 0
    for rows, status, retryable, retry_at, started_at, dispatched_at, attempts, cancel in MIX:
        rows = max(1, int(rows * scale))
        value = lambda expr, cast: "NULL" if expr is None else f"({expr.replace('NOW', repr(now))})::{cast}"
        dbaccess.execute(target, f"""
            INSERT INTO {table_name} (id, status, attempts, started_at, request_params, retryable, dispatched_at,
                                      created_at, updated_at, retry_at, cancel_requested_at)
            SELECT 't{base}-' || i, '{status}', {attempts}, {value(started_at, 'bigint')}, '{{"prompt": "p"}}',
                   {retryable}, {value(dispatched_at, 'float8')}, {now} - 86400 + ({base} + i) * 0.01,
                   {now} - 60, {value(retry_at, 'float8')}, {value(cancel, 'float8')}
            FROM generate_series(1, {rows}) AS i""")
        base, total = base + rows, total + rows
    return total


@pytest.mark.slow
def test_claim_path_plans_use_the_partial_indexes_at_a_million_tasks(db_target):
    """1,000,000 tasks (nearly all finished, as history piles up) and ANALYZE: every statement the claim path
    and the long polls send (task_store's own, recorded as they run) reads the partial index of its kind
    and none scans a task table."""
    now = time.time()
    db.upgrade(db_target)
    dbaccess.execute(db_target, "SET session_replication_role = replica")  # the counter triggers wait (see fill)
    try:
        assert fill(db_target, "video_tasks", now) == 1_000_000
        fill(db_target, "image_tasks", now, scale=0.1)
    finally:
        dbaccess.execute(db_target, "RESET session_replication_role")
    for table_name in ("video_tasks", "image_tasks"):
        dbaccess.execute(db_target, f"INSERT INTO task_counts (tbl, status, n) SELECT '{table_name}', status, "
                                    f"COUNT(*) FROM {table_name} GROUP BY status")
    dbaccess.execute(db_target, "ANALYZE")
    expected = {  # phase: the indexes its statements must read (of the table's)
        "expire_stuck": {"undispatched"},
        "fetch_claimable": {"pending", "retry_due", "undispatched"},
        "cancels_due": {"cancel_due"},
        "claim_next": {"pending", "retry_due", "undispatched", "pkey"},
        "claim_next with a cap": {"pending", "retry_due", "undispatched", "status_created"},
        "take_cancels": {"cancel_due", "pkey"},
        "report": {"pkey"},
    }
    for integration, table_name in ((VIDEO, "video_tasks"), (IMAGE, "image_tasks")):
        used = claim_path_indexes(db_target, integration, table_name, now)
        for phase, kinds in expected.items():
            assert used.get(phase, set()) >= {f"{table_name}_{kind}" for kind in kinds}, phase


def claim_path_indexes(target: str, integration: str, table_name: str, now: float) -> dict[str, set[str]]:
    """Run the claim path's and the long polls' task_store calls on the integration's table, then explain every
    statement they sent: {phase: the table's indexes its plans read}. Fails on a Seq Scan of a task table."""
    tasks_table = table(target, integration, max_active=None)
    capped = dataclasses.replace(tasks_table, policy=dataclasses.replace(tasks_table.policy, max_active=10**6))
    confirm = [(row["id"], 1) for row in dbaccess.query(
        target, f"SELECT id FROM {table_name} WHERE status = 'queued' AND dispatched_at IS NULL AND attempts = 1 "
                f"LIMIT 3")]
    used: dict[str, set[str]] = {}
    with contextlib.closing(pg.connect(target)) as raw:
        conn = Recording(raw)
        for phase, run in (
                ("expire_stuck", lambda: task_store.expire_stuck(conn, tasks_table, now)),
                ("fetch_claimable", lambda: task_store.fetch_claimable(conn, tasks_table, 10, now)),
                ("cancels_due", lambda: task_store.cancels_due(conn, tasks_table, now)),
                ("claim_next", lambda: task_store.claim_next(conn, tasks_table, 10, confirm, now)),
                ("claim_next with a cap", lambda: task_store.claim_next(conn, capped, 10, (), now)),
                ("take_cancels", lambda: task_store.take_cancels(conn, tasks_table, 10, now)),
                ("report", lambda: task_store.transition_many(conn, tasks_table, [
                    (task_id, Report.progress("processing", 1, external_id="j")) for task_id, _ in confirm]))):
            conn.phase = phase
            assert run(), phase  # each found work: its statements ran whole
        for phase, sql, params in conn.sent:
            plan = conn.raw.execute("EXPLAIN (FORMAT JSON) " + pg.translate(sql), params).fetchone()[0]
            nodes = plan_nodes(json.loads(plan) if isinstance(plan, str) else plan)
            scans = [n for n in nodes if n.get("Relation Name") in ("video_tasks", "image_tasks")]
            assert not [n for n in scans if n["Node Type"] == "Seq Scan"], (phase, sql, plan)
            used.setdefault(phase, set()).update(
                n["Index Name"] for n in nodes if n.get("Index Name", "").startswith(table_name))
    return used


def test_a_claim_sends_as_many_statements_for_fifty_tasks_as_for_one(db_target):
    """The claim path's round trips do not grow with the batch: the block, the locked candidates, one pipelined
    batch of fenced UPDATEs and one of events (besides BEGIN and COMMIT); every claim still has its event."""
    tasks_table = table(db_target, max_active=None)
    setup = pg.connect(db_target)
    for i in range(60):
        task_store.create_task(setup, tasks_table, {"prompt": f"p{i}"}, now=1000.0 + i)
    setup.close()
    with contextlib.closing(pg.connect(db_target)) as raw:
        conn = Recording(raw)
        for limit in (1, 50):
            conn.phase = limit
            claimed, _ = task_store.claim_next(conn, tasks_table, limit)
            assert [t["attempt"] for t in claimed] == [1] * limit
    sent = [phase for phase, _, _ in conn.sent]
    assert sent.count(1) == sent.count(50) == 4
    assert dbaccess.query(db_target, "SELECT COUNT(*) AS n FROM task_events WHERE status = 'queued'") == [{"n": 51}]


def test_a_fold_touches_only_the_minutes_that_changed(client, tasks, db_target):
    """The dashboard counters' fold merges delta rows; a minute with one row per key is left as it is (the first
    version rewrote the whole day each time, every few seconds per process: dead tuples and WAL for nothing)."""
    hour_ago = int(time.time()) - 3600
    for minute in range(30):  # half an hour of history, folded: one row per key
        dbaccess.execute(db_target, "INSERT INTO task_minutes (minute, namespace, kind, n) VALUES (?, ?, ?, 1)",
                         (hour_ago // 60 + minute, VIDEO, "created"))
    tasks.create(VIDEO)
    tasks.create(VIDEO)  # two delta rows for this minute
    dbaccess.query(db_target, "SELECT fold_task_counts()")
    before = {r["minute"]: r["ctid"] for r in dbaccess.query(
        db_target, "SELECT minute, ctid::text AS ctid FROM task_minutes WHERE minute < ?", (hour_ago // 60 + 30,))}
    tasks.create(VIDEO)
    dbaccess.query(db_target, "SELECT fold_task_counts()")
    after = {r["minute"]: r["ctid"] for r in dbaccess.query(
        db_target, "SELECT minute, ctid::text AS ctid FROM task_minutes WHERE minute < ?", (hour_ago // 60 + 30,))}
    assert len(before) == 30 and after == before  # the same row versions: not deleted and inserted again
    now = dbaccess.query(db_target, "SELECT minute, n FROM task_minutes WHERE minute >= ? AND kind = 'created'",
                         (hour_ago // 60 + 30,))
    assert sum(r["n"] for r in now) == 3 and len(now) == len({r["minute"] for r in now})  # folded: a row a minute
