"""Benchmark: fetchPendingTasks at the query level, at 10,000 and 1,000,000 task rows.

    make bench-fetch            (or: .venv/bin/python bench/fetch_pending.py [--rows 10000 1000000])

Builds a table with a realistic mix (most tasks completed, some failed for
good, a pending backlog, a few in flight), then times the queries the
fetchPendingTasks handler runs (expire_stuck + fetch_claimable, limit 10) and
prints p50/p99 per size, their ratio, and the query plan.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlite_utils

from settings import load_config
from web import db, task_store
from web.task_store import TaskTable

MIX = [  # (share, status, attempts, retryable, started offset seconds)
    (0.900, "completed", 1, 1, -3600),
    (0.030, "failed", 5, 0, -3600),     # attempts exhausted: failed for good
    (0.020, "failed", 1, 0, -3600),     # rejected by the provider: failed for good
    (0.005, "failed", 2, 1, -120),      # waiting for a retry
    (0.030, "pending", 0, 1, None),     # the backlog
    (0.010, "processing", 1, 1, -60),
    (0.004, "queued", 1, 1, -5),
    (0.001, "queued", 1, 1, -900),      # stuck: claimable again
]
QUERIES = 2000


def video_table() -> TaskTable:
    """The video table at default settings, without its active cap: the mix below holds far more active tasks
    than the cap (100), which would leave the fetch nothing to find but rescues. The cap adds one count of the
    active tasks (at most the cap, whatever the table's size), not measured here."""
    table = TaskTable.from_config(load_config(environ={"INTERNAL_API_TOKEN": "bench"}), "fangzhouVideoGeneration")
    return dataclasses.replace(table, policy=dataclasses.replace(table.policy, max_active=None))


def generate(rows: int):
    """The table's rows, the same for either backend."""
    now = time.time()
    rng = random.Random(42)
    shares = [m[0] for m in MIX]
    for n in range(rows):
        _, status, attempts, retryable, started = rng.choices(MIX, weights=shares)[0]
        created = now - 86400 * 30 + n * (86400 * 30 / rows)
        yield {"id": f"task-{n:08d}", "status": status, "attempts": attempts,
               "started_at": None if started is None else int(now + started),
               "request_params": json.dumps({"prompt": f"prompt {n}"}), "retryable": retryable,
               "created_at": created, "updated_at": created}


def build(path: str, rows: int) -> None:
    """The table at `path`: an SQLite file, or a PostgreSQL URL (an empty schema: migrated, COPY, ANALYZE)."""
    if db.is_postgres(path):
        build_pg(path, rows)
        return
    db.init_db(path)
    database = sqlite_utils.Database(path)
    database["video_tasks"].insert_all(generate(rows), batch_size=5000)
    database.close()


def build_pg(url: str, rows: int) -> None:
    import psycopg

    db.upgrade(url)
    columns = ["id", "status", "attempts", "started_at", "request_params", "retryable", "created_at", "updated_at"]
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        with conn.cursor().copy(f"COPY video_tasks ({', '.join(columns)}) FROM STDIN") as copy:
            for row in generate(rows):
                copy.write_row([row[c] for c in columns])
        conn.execute("ANALYZE video_tasks")  # as autovacuum would soon: plans from real statistics


def measure(path: str) -> dict:
    postgres = db.is_postgres(path)
    if postgres:
        from web import pg

        conn = pg.connect(path)
    else:
        conn = db.connect(path)
    table = video_table()
    timings = []
    for _ in range(QUERIES):
        start = time.perf_counter()
        task_store.expire_stuck(conn, table)
        tasks = task_store.fetch_claimable(conn, table, 10)
        timings.append((time.perf_counter() - start) * 1000)
    assert len(tasks) == 10
    timings.sort()
    plan = [] if postgres else query_plan(conn, table)  # PostgreSQL's plans: tests/ (EXPLAIN (FORMAT JSON))
    conn.close()
    return {"p50_ms": statistics.median(timings), "p99_ms": timings[int(len(timings) * 0.99) - 1],
            "max_ms": timings[-1], "plan": plan}


def query_plan(conn, table: TaskTable) -> list[str]:
    """EXPLAIN QUERY PLAN of fetch_claimable's SQL, captured through a tracing connection."""
    statements = []
    conn.set_trace_callback(statements.append)
    task_store.fetch_claimable(conn, table, 10, now=time.time())
    conn.set_trace_callback(None)
    sql = next(s for s in statements if "UNION ALL" in s)
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            path = str(Path(tmp) / f"tasks-{rows}.db")
            started = time.perf_counter()
            build(path, rows)
            print(f"built {rows:>9,} rows in {time.perf_counter() - started:5.1f}s", flush=True)
            results[rows] = measure(path)
    print(f"\nfetchPendingTasks queries (expire_stuck + fetch_claimable, limit 10), {QUERIES} runs each")
    print(f"{'rows':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for rows, r in results.items():
        print(f"{rows:>10,} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['max_ms']:8.3f}")
    sizes = sorted(results)
    if len(sizes) > 1:
        ratio = results[sizes[-1]]["p99_ms"] / results[sizes[0]]["p99_ms"]
        print(f"p99 ratio {sizes[-1]:,} / {sizes[0]:,} rows: {ratio:.2f}x (goal <= 3x); "
              f"p99 at {sizes[-1]:,}: {results[sizes[-1]]['p99_ms']:.3f} ms (goal <= 5 ms)")
    plan = results[sizes[-1]]["plan"]
    print("\nquery plan:\n  " + "\n  ".join(plan))
    full_scans = [line for line in plan if line.startswith("SCAN video_tasks")]
    print("full scans of the task table:", full_scans or "none")


if __name__ == "__main__":
    main()
