"""Benchmark: the processor's dispatch rate against the Temporal server's raw start rate.

    make bench-dispatch        (or: .venv/bin/python bench/dispatch.py [--tasks 1000])

In one run, on one Temporal dev server (in memory) and the web process under
gunicorn (4 workers) on a fresh SQLite file:
  1. raw rate: `start_workflow` calls straight to Temporal, at several
     concurrencies; the best is the server's rate;
  2. dispatch rate: 1,000 pending tasks, one processor at default settings
     except the poll interval; time from its start until every task is queued
     with its workflow started (pending -> queued -> workflow started);
and prints their ratio (goal >= 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from integrations import load_integrations  # noqa: E402
from processor import ProcessorSettings, TaskProcessor  # noqa: E402
from settings import load_config  # noqa: E402
from dev.stack import gunicorn, temporal_server  # noqa: E402

TOKEN = "bench-token"


async def raw_start_rate(address: str, total: int, concurrency: int) -> float:
    from temporalio.client import Client

    client = await Client.connect(address)
    queue = f"bench-raw-{uuid.uuid4().hex[:6]}"
    ids = iter(range(total))

    async def starter():
        for n in ids:
            await client.start_workflow("BenchWorkflow", {"n": n}, id=f"{queue}-{n}", task_queue=queue)

    started = time.perf_counter()
    await asyncio.gather(*[starter() for _ in range(concurrency)])
    return total / (time.perf_counter() - started)


def dispatch_rate(url: str, address: str, total: int, processors: int = 1, batch_size: int | None = None) -> float:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: requests.post(f"{url}/api/video/generate", json={"prompt": f"bench {n}"},
                                              timeout=30).raise_for_status(), range(total)))
    overrides = {"MAIN_ENDPOINT": url, "INTERNAL_API_TOKEN": TOKEN, "TEMPORAL_ADDRESS": address,
                 "POLL_INTERVAL_MS": 100}
    if batch_size:
        overrides["BATCH_SIZE"] = batch_size
    config = load_config(overrides=overrides)
    pulls = [i.get_pull_mode_config() for i in load_integrations(config)]
    workers = [TaskProcessor(ProcessorSettings.from_config(config, instance_id=f"bench-{n}"))
               for n in range(processors)]
    started = time.perf_counter()
    for worker in workers:
        worker.start(pulls)
    while sum(w.stats["started"] for w in workers) < total:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    for worker in workers:
        worker.stop()
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with temporal_server(None, tmp / "temporal.log") as address, \
                gunicorn(str(tmp / "app.db"), tmp / "gunicorn.log", workers=4,
                         env={"INTERNAL_API_TOKEN": TOKEN}) as url:
            raw = {c: asyncio.run(raw_start_rate(address, args.tasks, c)) for c in (1, 10, 50)}
            best = max(raw.values())
            rate = dispatch_rate(url, address, args.tasks)
    print(f"raw start_workflow rate over {args.tasks} starts, by concurrency:")
    for concurrency, value in raw.items():
        print(f"  {concurrency:>3} concurrent: {value:7.1f} starts/s")
    print(f"one processor, {args.tasks} tasks (pending -> queued -> started): {rate:7.1f} tasks/s")
    print(f"ratio to the best raw rate: {rate / best:.2f} (goal >= 0.8)")


if __name__ == "__main__":
    main()
