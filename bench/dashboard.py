"""Benchmark: the dashboard page's render time at 1,000,000 tasks.

    make bench-dashboard        (or: .venv/bin/python bench/dashboard.py [--rows 1000000] [--renders 200])

Builds both task tables (the mix of bench/fetch_pending.py: most tasks completed
with a result, some failed, a pending backlog, a few in flight; a prompt each),
every task's events (pending, then its outcome), through the schema's triggers, so
task_counts and task_minutes are what production would hold; the last hour holds
100 new tasks a minute. Then renders the dashboard (`GET /`, and its filtered
forms) through the Flask test client, signed in, and reports the median and p99
of many renders. `make bench` records the median as `dashboard_ms_1m`.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fetch_pending import MIX
from web import db

TABLES = {"video_tasks": "fangzhouVideoGeneration", "image_tasks": "nanobanana2ImageGeneration"}
RECENT_PER_MINUTE = 100  # tasks created per minute over the last hour
PASSWORD = "bench-dashboard-password"
SECRETS = {"INTERNAL_API_TOKEN": "bench-internal-token-0123", "CLIENT_API_KEYS": "bench-client-key-0123456789",
           "DASHBOARD_PASSWORD": PASSWORD}
PAGES = ("/", "/?status=completed", "/?integration=image", "/?status=pending&integration=video")


def result_of(table: str, n: int) -> str:
    """A completed task's result: the provider's URLs and our stored copies' names."""
    if table == "video_tasks":
        return json.dumps({"videoUrl": f"https://ark.example/v/{n}.mp4", "lastFrameUrl": f"https://ark.example/v/{n}.png",
                           "media": {"videoUrl": "video.mp4", "lastFrameUrl": "last-frame.png"}})
    return json.dumps({"imageUrls": [f"https://kie.example/i/{n}.png"], "media": {"imageUrls": ["image-1.png"]}})


FINISHED = [m for m in MIX if m[1] in ("completed", "failed") and not (m[1] == "failed" and m[3])]  # none to do


def build(path: str, rows: int, mix: list[tuple] = MIX, recent_per_minute: int = RECENT_PER_MINUTE) -> None:
    """`rows` tasks (half per table) and their events, in creation order, through the triggers. `mix`:
    MIX (a busy service's table), or FINISHED (only completed and failed-for-good tasks: nothing to claim);
    `recent_per_minute` of them were created in each minute of the last hour (0: all are older)."""
    db.init_db(path)
    conn = db.connect(path)
    now = time.time()
    rng = random.Random(42)
    shares = [m[0] for m in mix]
    recent = recent_per_minute * 60
    conn.execute("BEGIN")
    for n in range(rows):
        table = "video_tasks" if n % 2 else "image_tasks"
        _, status, attempts, retryable, started = rng.choices(mix, weights=shares)[0]
        if n >= rows - recent:  # the last hour: 100 a minute
            created = now - 3600 + (n - (rows - recent)) * 3600 / recent
        else:
            created = now - 86400 * 30 + n * (86400 * 30 - 3600) / max(rows - recent, 1)
        finished = created + 40 if status in ("completed", "failed") else None
        task_id = f"task-{n:08d}"
        conn.execute(
            f"INSERT INTO {table} (id, status, attempts, started_at, request_params, result, error, retryable, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (task_id, status, attempts, None if started is None else int(now + started),
             json.dumps({"prompt": f"prompt {n}: a lighthouse on a cliff in a storm, waves, cinematic light",
                         "model": "bench"}),
             result_of(table, n) if status == "completed" else None,
             "provider job failed" if status == "failed" else None, retryable, created, finished or created))
        events = [("pending", 0, created)] + ([(status, attempts, finished)] if finished else [])
        conn.executemany("INSERT INTO task_events (namespace, task_id, status, attempt, created_at) "
                         "VALUES (?, ?, ?, ?, ?)", [(TABLES[table], task_id, s, a, t) for s, a, t in events])
        if n % 100_000 == 99_999:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def measure(path: str, renders: int) -> dict[str, dict[str, float]]:
    from app import create_app

    app = create_app({"DATABASE_PATH": path, **SECRETS})
    client = app.test_client()
    login = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
    results = {}
    for page in PAGES:
        for _ in range(10):  # warm: the connection, the templates, SQLite's page cache
            assert client.get(page, headers=login).status_code == 200
        timings = []
        for _ in range(renders):
            start = time.perf_counter()
            answer = client.get(page, headers=login)
            answer.get_data()
            timings.append((time.perf_counter() - start) * 1000)
            assert answer.status_code == 200
        timings.sort()
        results[page] = {"p50_ms": statistics.median(timings), "p99_ms": timings[int(len(timings) * 0.99) - 1],
                         "rows_shown": answer.get_data(as_text=True).count("data-task-id=")}
    return results


def run(folder: Path, rows: int = 1_000_000, renders: int = 200) -> dict[str, dict[str, float]]:
    path = str(folder / f"dashboard-{rows}.db")
    started = time.perf_counter()
    build(path, rows)
    print(f"built {rows:,} tasks and their events in {time.perf_counter() - started:.1f}s", flush=True)
    results = measure(path, renders)
    Path(path).unlink()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--renders", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(Path(tmp), args.rows, args.renders)
    print(f"\ndashboard render at {args.rows:,} tasks (Flask test client, signed in), {args.renders} renders each")
    print(f"{'page':<40} {'p50 ms':>8} {'p99 ms':>8} {'rows':>5}")
    for page, r in results.items():
        print(f"{page:<40} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['rows_shown']:>5}")
    print(f"goal: GET / p50 <= 20 ms: {'met' if results['/']['p50_ms'] <= 20 else 'NOT met'}")


if __name__ == "__main__":
    main()
