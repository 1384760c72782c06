"""The invariant checker: reads the database and Temporal after a run and counts violations (docs/design.md §4).

    python -m dev.invariants DATABASE [TEMPORAL_ADDRESS] [--max-attempts 5]

DATABASE is the SQLite file's path or the PostgreSQL URL the web process runs on (DATABASE_URL).

Without TEMPORAL_ADDRESS it reads the configured Temporal as the processor and the worker reach it
(settings.temporal_connection: TLS, mTLS, API key, Temporal's TOML profiles); with one, that plain
host:port (a local dev server).

Each task must be settled: completed, cancelled, or failed for good (attempts exhausted, less
those refunded by a blocked integration, or rejected as not retryable). A task ends once: exactly one
`completed` or `cancelled` event, never both (a cancel racing a completion has one outcome).
Every attempt has exactly one `queued` event.
A task's workflow runs never overlap (each run closed before the next
started, within Temporal's stamping slack: CLOSE_STAMP_SLACK) and none is open
at the end. A completed task completed once: one `completed` event, one
completed run, and no run started after it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from dev import dbaccess
from settings import ConfigError

TABLES = {"video_tasks": "fangzhouVideoGeneration", "image_tasks": "nanobanana2ImageGeneration"}


@dataclass
class Findings:
    tasks: int = 0
    completed: int = 0
    cancelled: int = 0
    failed_for_good: int = 0
    runs: int = 0
    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def summary(self) -> str:
        lines = [f"tasks {self.tasks}: completed {self.completed}, cancelled {self.cancelled}, "
                 f"failed for good {self.failed_for_good}; workflow runs {self.runs}"]
        for name in ("lost", "queued events per attempt", "overlapping runs", "open runs",
                     "completed more than once", "ended more than once"):
            found = self.violations.get(name, [])
            lines.append(f"  {name}: {len(found)}" + (f"  e.g. {found[:3]}" if found else ""))
        return "\n".join(lines)


# Temporal stamps a start when the request arrives, before it takes the workflow id's lock; a run's close when
# its last workflow task commits. A start that waited for that commit can be stamped a little before the close
# it waited for: seen in a CI run, a start 44 us before the earlier run's close, which Temporal had already
# made final (the id allows one open run at a time: ALLOW_DUPLICATE_FAILED_ONLY refuses a start beside one).
CLOSE_STAMP_SLACK = timedelta(milliseconds=50)


def overlapping(task_runs: list) -> list[tuple]:
    """(earlier, later) pairs of one task's runs, sorted by start, where the earlier was still open when the later
    started: open at the end, or closed more than CLOSE_STAMP_SLACK after the later's start."""
    return [(earlier, later) for earlier, later in itertools.pairwise(task_runs)
            if earlier.close_time is None or earlier.close_time - later.start_time > CLOSE_STAMP_SLACK]


def read_database(database: str) -> tuple[dict, dict]:
    """Every task (with its namespace) and its events, from an SQLite path or a PostgreSQL URL."""
    tasks = {}
    for table, namespace in TABLES.items():
        for row in dbaccess.query(database, f"SELECT * FROM {table}"):
            tasks[row["id"]] = {**row, "namespace": namespace}
    events = defaultdict(list)
    for row in dbaccess.query(database, "SELECT * FROM task_events ORDER BY id"):
        events[row["task_id"]].append(row)
    return tasks, events


async def read_runs(address: str | None, workflow_ids: set[str]) -> dict[str, list]:
    from dev.stack import connect_temporal

    client = await connect_temporal(address)
    runs = defaultdict(list)
    async for execution in client.list_workflows():
        if execution.id in workflow_ids:
            runs[execution.id].append(execution)
    return runs


def check(database: str, address: str | None, max_attempts: int = 5, settle_seconds: float = 15.0) -> Findings:
    """Count violations; Temporal's visibility lags a little, so open runs are re-read for a while."""
    tasks, events = read_database(database)
    workflow_ids = {f"{t['namespace']}:{task_id}" for task_id, t in tasks.items()}
    deadline = time.monotonic() + settle_seconds
    while True:
        runs = asyncio.run(read_runs(address, workflow_ids))
        settled = all(r.close_time is not None for group in runs.values() for r in group)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    found = Findings(tasks=len(tasks), runs=sum(len(r) for r in runs.values()))
    for task_id, task in tasks.items():
        status, attempts = task["status"], task["attempts"]
        if status == "completed":
            found.completed += 1
        elif status == "cancelled":
            found.cancelled += 1
        elif status == "failed" and (attempts - (task.get("attempts_refunded") or 0) >= max_attempts
                                     or not task["retryable"]):
            found.failed_for_good += 1
        else:
            found.violations["lost"].append(f"{task_id} {status} attempts={attempts}")

        queued = Counter(e["attempt"] for e in events[task_id] if e["status"] == "queued")
        if queued != Counter(range(1, attempts + 1)):
            found.violations["queued events per attempt"].append(f"{task_id} {dict(queued)} attempts={attempts}")

        task_runs = sorted(runs.get(f"{task['namespace']}:{task_id}", []), key=lambda r: r.start_time)
        for earlier, later in overlapping(task_runs):
            found.violations["overlapping runs"].append(f"{task_id} {earlier.run_id} / {later.run_id}")
        open_runs = [r for r in task_runs if r.close_time is None]
        if open_runs:
            found.violations["open runs"].append(f"{task_id} {len(open_runs)} open")

        endings = [e["status"] for e in events[task_id] if e["status"] in ("completed", "cancelled")]
        if len(endings) > 1 or (status in ("completed", "cancelled") and endings != [status]):
            found.violations["ended more than once"].append(f"{task_id} {status} events={endings}")

        if status == "completed":
            completions = [e for e in events[task_id] if e["status"] == "completed"]
            completed_runs = [r for r in task_runs if r.status.name == "COMPLETED"]
            later_runs = [r for r in task_runs if completed_runs and r.start_time > completed_runs[0].start_time]
            if len(completions) != 1 or len(completed_runs) != 1 or later_runs:
                found.violations["completed more than once"].append(
                    f"{task_id} events={len(completions)} runs={len(completed_runs)} later={len(later_runs)}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("database", help="the SQLite file's path or the PostgreSQL URL")
    parser.add_argument("temporal", nargs="?", help="host:port of a local dev server (default: the configured "
                        "Temporal, as settings.temporal_connection reaches it)")
    parser.add_argument("--max-attempts", type=int, default=5)
    args = parser.parse_args()
    try:
        findings = check(args.database, args.temporal, args.max_attempts)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    print(findings.summary())
    return 0 if findings.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
