"""Benchmark: pruning 1,000,000 finished tasks (3 events each) through the real prune, beside live tasks.

    make bench-prune            (or: .venv/bin/python bench/prune.py [--tasks 1000000] [--sweep])

Builds a database with `--tasks` finished tasks (completed, and failed for good), half video and
half image, created over 60 days, each with its pending/queued/processing... events (3 on
average), plus 1,000 live tasks (pending, queued, processing, failed and waiting for a retry) as
old as the oldest finished ones. Then runs task_store.prune_finished at its defaults (batch size,
rest between batches) with a cutoff that takes every finished task: prints the rate (tasks/s), the
longest write transaction and its p99, and checks that every live task and its events are intact.

--sweep first prunes five slices of the tasks at batch sizes 25..400 and prints each one's lock
hold and rate: the figures PRUNE_BATCH was chosen by.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from settings import load_config
from web import db, task_store
from web.task_store import TaskTable

DAY = 86_400
SPAN_DAYS = 60
LIVE = [("pending", 0, 1), ("queued", 1, 1), ("processing", 1, 1), ("failed", 1, 1)]  # status, attempts, retryable
EVENTS = {"completed": ("pending", "queued", "completed"), "failed": ("pending", "queued", "failed")}
NAMESPACES = {"video_tasks": "fangzhouVideoGeneration", "image_tasks": "nanobanana2ImageGeneration"}


def task_tables() -> list[TaskTable]:
    config = load_config(environ={"INTERNAL_API_TOKEN": "bench"})
    return [TaskTable.from_config(config, namespace) for namespace in NAMESPACES.values()]


def build(path: str, tasks: int, live: int = 1000, now: float | None = None) -> list[str]:
    """The database: `tasks` finished and `live` live tasks with their events; returns the live ids."""
    db.init_db(path)
    now = time.time() if now is None else now
    start = now - (SPAN_DAYS + 1) * DAY
    rng = random.Random(15)
    live_ids = []
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA synchronous = OFF")
        for n, (table, namespace) in enumerate(NAMESPACES.items()):
            count = tasks // 2 + (tasks % 2 if n == 0 else 0)
            rows, events = [], []
            for i in range(count):
                created = start + i * (SPAN_DAYS * DAY / count)
                status = "completed" if rng.random() < 0.95 else "failed"
                task_id = f"{table[:5]}-{i:08d}"
                rows.append((task_id, status, 1, int(created), "{\"prompt\": \"a heron\"}",
                             0 if status == "failed" else 1, created, created + 40))
                events += [(namespace, task_id, step, 0 if step == "pending" else 1, created + k)
                           for k, step in enumerate(EVENTS[status])]
                if len(rows) == 50_000 or i == count - 1:
                    _insert(conn, table, rows, events)
                    rows, events = [], []
            for i in range(live // 2):
                status, attempts, retryable = LIVE[i % len(LIVE)]
                created = start + i
                task_id = f"{table[:5]}-live-{i:05d}"
                live_ids.append(task_id)
                _insert(conn, table, [(task_id, status, attempts, int(created), "{}", retryable, created, created)],
                        [(namespace, task_id, "pending", 0, created)])
        conn.commit()
    return live_ids


def _insert(conn, table, rows, events) -> None:
    conn.executemany(f"INSERT INTO {table} (id, status, attempts, started_at, request_params, retryable, created_at, "
                     "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.executemany("INSERT INTO task_events (namespace, task_id, status, attempt, created_at) "
                     "VALUES (?, ?, ?, ?, ?)", events)


def counts(path: str) -> dict[str, int]:
    with closing(sqlite3.connect(path)) as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in (*NAMESPACES, "task_events")}


def live_state(path: str, ids: list[str]) -> list:
    with closing(sqlite3.connect(path)) as conn:
        marks = ", ".join("?" * len(ids))
        return [conn.execute(f"SELECT * FROM {t} WHERE id IN ({marks}) ORDER BY id", ids).fetchall()
                for t in NAMESPACES] + [conn.execute(f"SELECT * FROM task_events WHERE task_id IN ({marks}) "
                                                     "ORDER BY id", ids).fetchall()]


def prune(path: str, older_than_seconds: float, batch_size: int = task_store.PRUNE_BATCH) -> dict:
    with closing(db.connect(path)) as conn:
        report = task_store.prune_finished(conn, task_tables(), older_than_seconds, batch_size)
    locks = sorted(report.lock_ms)
    return {"tasks": report.tasks, "events": report.events, "seconds": report.seconds,
            "rate": report.tasks / report.seconds if report.seconds else 0.0,
            "max_lock_ms": report.longest_lock_ms, "p99_lock_ms": locks[int(len(locks) * 0.99) - 1] if locks else 0,
            "median_lock_ms": statistics.median(locks) if locks else 0, "batches": report.batches}


def sweep(path: str, now: float) -> None:
    """Five slices of the span, oldest first, each pruned at its own batch size."""
    print(f"{'batch':>6} {'tasks':>8} {'tasks/s':>9} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
    for n, size in enumerate((25, 50, 100, 200, 400)):
        cutoff_days = SPAN_DAYS + 1 - (n + 1) * SPAN_DAYS / 10  # a tenth of the span each
        r = prune(path, cutoff_days * DAY, size)
        print(f"{size:>6} {r['tasks']:>8,} {r['rate']:>9,.0f} {r['median_lock_ms']:>10.2f} {r['p99_lock_ms']:>8.2f} "
              f"{r['max_lock_ms']:>8.2f}", flush=True)


def run(folder: Path, tasks: int, do_sweep: bool = False) -> dict[str, float]:
    path = str(folder / "prune.db")
    now = time.time()
    started = time.perf_counter()
    live = build(path, tasks, now=now)
    print(f"built {tasks:,} finished tasks and {len(live):,} live ones in {time.perf_counter() - started:.1f}s: "
          f"{counts(path)}", flush=True)
    before = live_state(path, live)
    if do_sweep:
        sweep(path, now)
    result = prune(path, 0)
    after = counts(path)
    assert live_state(path, live) == before, "a live task or its events changed"
    assert after == {"video_tasks": len(live) // 2, "image_tasks": len(live) // 2, "task_events": len(live)}, after
    print(f"pruned {result['tasks']:,} tasks and {result['events']:,} events in {result['seconds']:.1f}s "
          f"({result['batches']:,} batches of {task_store.PRUNE_BATCH}): {result['rate']:,.0f} tasks/s; write lock "
          f"median {result['median_lock_ms']:.2f} ms, p99 {result['p99_lock_ms']:.2f} ms, "
          f"max {result['max_lock_ms']:.2f} ms; live tasks intact: {after}")
    return {"prune_rate": result["rate"], "prune_max_lock_ms": result["max_lock_ms"],
            "prune_p99_lock_ms": result["p99_lock_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--sweep", action="store_true", help="first compare batch sizes on slices of the tasks")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp), args.tasks, args.sweep), indent=2))


if __name__ == "__main__":
    main()
