"""Benchmark: claims per second on PostgreSQL at the task-store level, and the round trips each batch costs.

    make bench-pg-claims        (or: .venv/bin/python bench/pg_claims.py [--tasks 6000] [--threads 4]
                                                                          [--batches 1 10 100])

Uses DATABASE_URL if it names PostgreSQL (in a schema of its own, dropped after), else a throwaway cluster
(dev/postgres.py). For each batch size it fills the video table with pending tasks, then `--threads` threads,
each on its own connection, call task_store.claim_next until nothing is left, and prints claims/s and what one
batch sent: statements (a pipelined executemany counts each of its rows) and round trips (an executemany is
one; BEGIN and COMMIT are one each). No HTTP, no Temporal: only what the store's SQL costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dev import dbaccess
from settings import load_config
from web import db, pg, task_store
from web.task_store import TaskTable


class Counting(pg.PgConn):
    """A connection that counts what it sends: statements and round trips (BEGIN/COMMIT included)."""

    def __init__(self, conn: pg.PgConn):
        super().__init__(conn.raw)  # no URL: the claims notify nobody
        self.statements = self.trips = 0

    def execute(self, sql, params=()):
        self.statements, self.trips = self.statements + 1, self.trips + 1
        return super().execute(sql, params)

    def executemany(self, sql, params_seq, **kwargs):
        params_seq = list(params_seq)
        self.statements, self.trips = self.statements + len(params_seq), self.trips + 1
        return super().executemany(sql, params_seq, **kwargs)

    def transaction(self):
        self.statements, self.trips = self.statements + 2, self.trips + 2
        return super().transaction()


def video_table() -> TaskTable:
    """The video table without its active cap (the cap adds one advisory lock and two counts per batch)."""
    table = TaskTable.from_config(load_config(environ={"INTERNAL_API_TOKEN": "bench"}), "fangzhouVideoGeneration")
    return dataclasses.replace(table, policy=dataclasses.replace(table.policy, max_active=None))


def fill(url: str, tasks: int) -> None:
    now = time.time()
    dbaccess.execute(url, "TRUNCATE video_tasks")
    dbaccess.execute(url, f"""
        INSERT INTO video_tasks (id, status, attempts, request_params, retryable, created_at, updated_at)
        SELECT 'b' || i, 'pending', 0, '{{"prompt": "p"}}', 1, {now} - 3600 + i * 0.001, {now} - 3600
        FROM generate_series(1, {tasks}) AS i""")
    dbaccess.execute(url, "ANALYZE video_tasks")


def run(url: str, table: TaskTable, tasks: int, threads: int, batch: int) -> dict:
    """Claim every task with `threads` claimers of `batch`: claims/s, and statements and round trips per batch."""
    fill(url, tasks)
    conns = [Counting(pg.connect(url)) for _ in range(threads)]
    claimed, batches, gate = [0] * threads, [0] * threads, threading.Barrier(threads + 1)

    def claimer(i: int) -> None:
        gate.wait(timeout=30)
        while True:
            found, _ = task_store.claim_next(conns[i], table, batch)
            if not found:
                return
            claimed[i] += len(found)
            batches[i] += 1

    workers = [threading.Thread(target=claimer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    gate.wait(timeout=30)
    started = time.perf_counter()
    for worker in workers:
        worker.join(timeout=600)
    seconds = time.perf_counter() - started
    for conn in conns:
        conn.close()
    assert sum(claimed) == tasks, f"claimed {sum(claimed)} of {tasks}"
    done = sum(batches) + threads  # each claimer's last, empty batch too
    return {"batch": batch, "claims_per_s": round(tasks / seconds), "seconds": round(seconds, 2),
            "statements_per_batch": round(sum(c.statements for c in conns) / done, 1),
            "round_trips_per_batch": round(sum(c.trips for c in conns) / done, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=6000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 10, 100])
    args = parser.parse_args()
    given = os.environ.get("DATABASE_URL", "")
    if db.is_postgres(given):
        measure(given, lambda schema: f"{given}{'&' if '?' in given else '?'}options=-csearch_path%3D{schema}", args)
        return
    from dev import postgres

    with postgres.cluster() as cluster:
        measure(cluster.url, lambda schema: cluster.url_for(schema=schema), args)


def measure(admin: str, url_for, args) -> None:
    schema = f"bench_{secrets.token_hex(4)}"
    dbaccess.execute(admin, f"CREATE SCHEMA {schema}")
    url = url_for(schema)
    try:
        db.upgrade(url)
        table = video_table()
        print(f"{args.tasks} pending tasks, {args.threads} claimers, each batch claim_next(limit=batch)")
        for batch in args.batches:
            print(run(url, table, args.tasks, args.threads, batch), flush=True)
    finally:
        dbaccess.close(url)
        dbaccess.execute(admin, f"DROP SCHEMA {schema} CASCADE")
        dbaccess.close(admin)


if __name__ == "__main__":
    main()
